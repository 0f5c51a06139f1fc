"""The farm: which workers are there, what they serve and what they run now.

Every ``ci-queue worker`` beats (``Heartbeat``) every ``BEAT_SECONDS``: it writes its record,
``P farm:worker:<name>`` (a hash: host, tags, queues, concurrency, started, last beat, draining,
stopped), and its name into ``P farm:workers``, a sorted set scored by the last beat (Redis's
clock, the one clock of the system). The same beat renews the worker's slots for the scheduler
(``also``: ``workers.capacity.Slots``), whose keys are its own (``P workers`` holds deadlines).
``list_workers`` reads the workers that beat within ``SEEN_SECONDS`` (an hour) and finds their
running jobs in the lease set (``P leases``: every running attempt has one), so what a page shows
as running is what the sweeper would re-queue, not a second account that could disagree.
A worker that stops says so (``stopped``); one that dies just stops beating and shows as ``lost``
once its beat is older than ``LOST_SECONDS``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ci_queue.store import Store

BEAT_SECONDS = 5.0
LOST_SECONDS = 30.0  # no beat for this long: the worker is lost (killed, host down, cut off)
SEEN_SECONDS = 3600.0  # workers listed: those that beat within the last hour
RECORD_TTL = int(SEEN_SECONDS) + 600  # a record outlives its listing a little, then goes


def _index(store: Store) -> str:
    return f"{store.prefix}farm:workers"


def _record(store: Store, name: str) -> str:
    return f"{store.prefix}farm:worker:{name}"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker says about itself when it starts."""

    name: str  # NAME@host, as jobs record it
    host: str
    tags: tuple[str, ...]
    queues: tuple[str, ...]
    concurrency: int
    protected: bool = False


class Heartbeat:
    """Keeps a worker's record fresh from a daemon thread while the worker lives. Every beat
    writes the whole record, so a beat lost to a Redis outage (or a Redis restarted empty) is
    mended by the next one. ``also`` runs after each regular beat, on the same thread: one
    announcement of the worker, not one thread per thing it tells."""

    def __init__(self, store: Store, info: WorkerInfo, interval: float = BEAT_SECONDS,
                 also: Callable[[], None] | None = None) -> None:
        self.store, self.info, self.interval, self.also = store, info, interval, also
        self._stop = threading.Event()
        self._started: float | None = None
        self._draining = False

    def start(self) -> Heartbeat:
        """Beat now (the worker is listed as soon as it runs), then every ``interval`` seconds."""
        self._announce()
        threading.Thread(target=self._loop, name="ciq-heartbeat", daemon=True).start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._announce()

    def _announce(self) -> None:
        self._beat()
        if self.also is not None:
            self.also()

    def draining(self) -> None:
        """The worker was told to stop: it takes no new jobs and lets the running ones end."""
        self._draining = True
        self._beat()

    def stop(self) -> None:
        """The worker is gone for good: its last beat says when."""
        self._stop.set()
        self._beat(stopped=True)

    def _beat(self, stopped: bool = False) -> None:
        with contextlib.suppress(Exception):  # Redis away: the next beat tries again
            now = self.store.now()
            self._started = self._started or now
            info = self.info
            key = _record(self.store, info.name)
            pipe = self.store.r.pipeline()
            pipe.hset(key, mapping={
                "name": info.name, "host": info.host, "tags": json.dumps(list(info.tags)),
                "queues": json.dumps(list(info.queues)), "concurrency": str(info.concurrency),
                "protected": "1" if info.protected else "0", "started": repr(self._started),
                "beat": repr(now), "draining": "1" if self._draining and not stopped else "0",
                "stopped": "1" if stopped else ""})
            pipe.expire(key, RECORD_TTL)
            pipe.zadd(_index(self.store), {info.name: now})
            pipe.zremrangebyscore(_index(self.store), "-inf", now - SEEN_SECONDS)
            pipe.expire(_index(self.store), RECORD_TTL)
            pipe.execute()


@dataclass
class WorkerView:
    """One worker as ``GET /api/v1/workers`` shows it."""

    name: str
    host: str
    tags: list[str]
    queues: list[str]
    concurrency: int
    protected: bool
    started_at: str | None
    last_heartbeat: str
    seconds_since_heartbeat: float
    state: str  # online | draining | stopped | lost
    draining: bool
    running: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "tags": self.tags, "queues": self.queues,
                "concurrency": self.concurrency, "protected": self.protected, "started_at": self.started_at,
                "last_heartbeat": self.last_heartbeat, "seconds_since_heartbeat": self.seconds_since_heartbeat,
                "state": self.state, "draining": self.draining, "running": self.running}


def list_workers(store: Store, now: float | None = None) -> list[WorkerView]:
    """Every worker that beat within ``SEEN_SECONDS``, by name, with the jobs it runs now."""
    now = store.now() if now is None else now
    names = store.r.zrangebyscore(_index(store), now - SEEN_SECONDS, "+inf")
    pipe = store.r.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(_record(store, name))
    records = pipe.execute()
    running = running_jobs(store)
    workers = []
    for name, raw in zip(names, records, strict=True):
        if not raw:
            continue
        beat = float(raw.get("beat") or 0)
        age = max(0.0, now - beat)
        draining = raw.get("draining") == "1"
        state = ("stopped" if raw.get("stopped") == "1" else "lost" if age > LOST_SECONDS
                 else "draining" if draining else "online")
        workers.append(WorkerView(
            name=name, host=raw.get("host", ""), tags=json.loads(raw.get("tags") or "[]"),
            queues=json.loads(raw.get("queues") or "[]"), concurrency=int(raw.get("concurrency") or 0),
            protected=raw.get("protected") == "1",
            started_at=_iso(float(raw["started"])) if raw.get("started") else None,
            last_heartbeat=_iso(beat), seconds_since_heartbeat=round(age, 1), state=state, draining=draining,
            running=running.get(name, [])))
    return sorted(workers, key=lambda w: w.name)


def running_jobs(store: Store) -> dict[str, list[dict[str, Any]]]:
    """The running attempts (every one holds a lease), by the worker that runs them."""
    members = store.r.zrange(store.leases_key, 0, -1)
    attempts = []
    for member in members:
        run_id, index, attempt = member.rsplit("|", 2)
        attempts.append((run_id, int(index), int(attempt)))
    pipe = store.r.pipeline(transaction=False)
    for run_id, index, _ in attempts:
        pipe.hmget(store._state(run_id), [f"n{index}.worker", f"n{index}.name", f"n{index}.started"])
    by_worker: dict[str, list[dict[str, Any]]] = {}
    for (run_id, _, attempt), (worker, name, started) in zip(attempts, pipe.execute(), strict=True):
        if worker and name:
            by_worker.setdefault(worker, []).append({"run_id": run_id, "job": name, "attempt": attempt,
                                                     "started_at": started})
    return by_worker
