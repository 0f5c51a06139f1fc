"""``/healthz``: the process is up. ``/readyz``: it can do its work. Both open (no token).

``/readyz`` answers 200 when
- Redis answers a ``PING`` within ``PING_TIMEOUT`` seconds (the state store's Redis, and the
  broker's when it is another one), and
- every *known* queue has at least one live worker consuming it. Known queues: ``ciq.default``,
  ``ciq.control``, the queue of every job attempt whose message is waiting (the store's
  ``P queued`` set, its ``n<i>.queue`` field) and every queue with jobs held for a slot
  (``P queues:held``, ``ci_queue.store.admission``).

else 503, with what is missing. Workers are found by Celery's broadcast control command
``active_queues`` (``inspect(timeout=1)``); workers run ``--without-gossip --without-mingle``
but answer broadcast commands. The answer is cached for ``CIQ_READYZ_CACHE_SECONDS`` (app
config, default 5 s) per process and shared with ``/metrics``, so a load balancer polling
``/readyz`` every second costs the broker one broadcast every few seconds, not one per poll;
concurrent requests wait for the one inspection in flight instead of starting their own.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from flask import Blueprint, current_app, jsonify
from redis.sentinel import SentinelConnectionPool

from ci_queue import redis_urls
from ci_queue.routing import CONTROL_QUEUE, DEFAULT_QUEUE

health = Blueprint("health", __name__)

PING_TIMEOUT = 1.0  # seconds, connect and read, for the readiness ping
INSPECT_TIMEOUT = 1.0  # seconds Celery waits for the workers' replies
DEFAULT_CACHE_SECONDS = 5.0
MAX_QUEUED_SCANNED = 1000  # waiting attempts read for their queue (the oldest deadlines first)


@dataclass(frozen=True)
class WorkerView:
    """What the last inspection saw: worker -> the queues it consumes."""

    workers: dict[str, list[str]]
    at: float
    error: str | None = None

    def queues(self) -> dict[str, list[str]]:
        """Queue -> the live workers consuming it."""
        result: dict[str, list[str]] = {}
        for worker, queues in sorted(self.workers.items()):
            for queue in queues:
                result.setdefault(queue, []).append(worker)
        return result


@dataclass
class _Probe:
    """Per-app state: the ping clients (short timeouts, no retries) and the inspection cache."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    view: WorkerView | None = None
    clients: dict[str, redis.Redis] = field(default_factory=dict)


def _probe() -> _Probe:
    return current_app.extensions.setdefault("ciq_health", _Probe())


def quick_client(client: redis.Redis) -> redis.Redis:
    """A client to the same server as ``client`` with short timeouts and no retries: a ping must
    fail fast when Redis is down or unreachable, not after the default retries and backoff."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": PING_TIMEOUT, "socket_connect_timeout": PING_TIMEOUT,
              "retry": _no_retry()}
    if isinstance(pool, SentinelConnectionPool):  # the primary the Sentinels name now
        kwargs.pop("connection_pool", None)
        return pool.sentinel_manager.master_for(pool.service_name, **kwargs)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, max_connections=4,
                                                            **kwargs))


def _cached_client(name: str, make: Any) -> redis.Redis:
    probe = _probe()
    client = probe.clients.get(name)
    if client is None:
        client = probe.clients[name] = make()
    return client


def state_client() -> redis.Redis:
    """The store's Redis, with short timeouts."""
    return _cached_client("state", lambda: quick_client(current_app.config["CIQ_STORE"].r))


def broker_url() -> str | None:
    """The Celery broker's URL when it is a Redis one (else None: no depth, no ping)."""
    url = str(current_app.config["CIQ_CELERY"].conf.broker_url or "")
    return url if url.startswith(("redis://", "rediss://", "unix://", redis_urls.SENTINEL_SCHEME)) else None


def broker_client() -> redis.Redis | None:
    """The broker's Redis, with short timeouts (None when the broker is not Redis)."""
    url = broker_url()
    if url is None:
        return None
    access = redis_urls.Access.from_settings(current_app.config["CIQ_SETTINGS"])
    return _cached_client("broker", lambda: redis_urls.client(
        url, access, socket_timeout=PING_TIMEOUT, socket_connect_timeout=PING_TIMEOUT, decode_responses=True,
        retry=_no_retry()))


def shown(exc: BaseException) -> str:
    """An error for the answer: in words, with the settings' Redis passwords masked (this page
    is open to anyone who reaches the server)."""
    return redis_urls.failure(exc, redis_urls.settings_secrets(current_app.config["CIQ_SETTINGS"]))


def _no_retry() -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


def _same_server(a: redis.Redis, b: redis.Redis) -> bool:
    keys = ("host", "port", "db", "path")
    ka, kb = a.connection_pool.connection_kwargs, b.connection_pool.connection_kwargs
    return all(ka.get(k) == kb.get(k) for k in keys)


def ping(client: redis.Redis) -> str:
    """``ok`` or the error, in words."""
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"error: {shown(exc)}"
    return "ok"


def inspect_workers(max_age: float | None = None) -> WorkerView:
    """The live workers and their queues, from cache when younger than ``max_age`` seconds."""
    if max_age is None:
        max_age = float(current_app.config.get("CIQ_READYZ_CACHE_SECONDS", DEFAULT_CACHE_SECONDS))
    probe = _probe()
    view = probe.view
    if view is not None and time.monotonic() - view.at < max_age:
        return view
    with probe.lock:  # one inspection at a time; the others take its answer
        view = probe.view
        if view is not None and time.monotonic() - view.at < max_age:
            return view
        celery = current_app.config["CIQ_CELERY"]
        try:
            replies = celery.control.inspect(timeout=INSPECT_TIMEOUT).active_queues() or {}
            workers = {name: sorted(q["name"] for q in queues or []) for name, queues in replies.items()}
            view = WorkerView(workers, time.monotonic())
        except Exception as exc:  # the broker vanished between the ping and the broadcast
            view = WorkerView({}, time.monotonic(), f"{type(exc).__name__}: {shown(exc)}")
        probe.view = view
        return view


def known_queues(client: redis.Redis, store: Any) -> list[str]:
    """The default and control queues, the queues of the job attempts waiting to start and those
    with jobs held for a slot (read through ``client``, a short-timeout client of the store's Redis;
    key names from the store)."""
    held = client.smembers(f"{store.prefix}queues:held")
    queues = {DEFAULT_QUEUE, CONTROL_QUEUE, *(q.decode() if isinstance(q, bytes) else q for q in held)}
    members = client.zrange(store.queued_key, 0, MAX_QUEUED_SCANNED - 1)
    if members:
        pipe = client.pipeline(transaction=False)
        for member in members:
            member = member.decode() if isinstance(member, bytes) else member
            run_id, index, _ = member.rsplit("|", 2)
            pipe.hget(store._state(run_id), f"n{index}.queue")
        for queue in pipe.execute():
            if queue:
                queues.add(queue.decode() if isinstance(queue, bytes) else queue)
    return sorted(queues)


@health.get("/healthz")
def healthz():
    return jsonify(status="ok")


@health.get("/readyz")
def readyz():
    store = current_app.config["CIQ_STORE"]
    state = state_client()
    body: dict[str, Any] = {"status": "ready", "redis": ping(state)}
    broker = broker_client()
    broker_status = "ok"
    if broker is not None and not _same_server(broker, state):
        broker_status = body["broker"] = ping(broker)
    problems = []
    if body["redis"] != "ok":
        problems.append("Redis (state) unreachable")
    if broker_status != "ok":
        problems.append("Redis (broker) unreachable")
    if problems:  # no broadcast to a broker that is down: it would only wait for its retries
        body.update(status="not ready", problems=problems)
        return jsonify(body), 503
    try:
        queues = known_queues(state, store)
    except (redis.RedisError, OSError) as exc:
        body.update(status="not ready", redis=f"error: {shown(exc)}", problems=["Redis (state) unreachable"])
        return jsonify(body), 503
    view = inspect_workers()
    by_queue = view.queues()
    body["workers"] = view.workers
    body["queues"] = {queue: by_queue.get(queue, []) for queue in queues}
    missing = [queue for queue in queues if not by_queue.get(queue)]
    if view.error:
        body["inspect_error"] = view.error
    if missing:
        body.update(status="not ready", missing_queues=missing,
                    problems=[f"no live worker consumes {queue}" for queue in missing])
        return jsonify(body), 503
    return jsonify(body), 200
