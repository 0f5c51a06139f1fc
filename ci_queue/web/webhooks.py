"""``POST /webhooks/<provider>``: forge deliveries in, runs out, in milliseconds.

In order: size limit (413 before the body is read past it), the repository named by the payload
must be registered (404), the signature must verify against that repository's secret (401), a
repeated delivery id returns the first answer and starts nothing, the payload becomes an Event
(400 when it is not what the provider sends), and the run is only recorded and queued: cloning
and planning happen on a worker. Nothing is stored for a refused delivery.

A merge request from a fork follows the repository's ``fork_pull_requests``: ``run`` queues it,
``approve`` (the default) records it as ``waiting_approval`` (``POST /api/v1/runs/<id>/approve``
sends it to planning), ``never`` answers ``{"ignored": reason}`` and makes no run. The run's
trusted facts (protected ref, fork, grants: ``ci_queue.trust``) are written with it.

The delivery record (``P delivery:<provider>:<id>``, the first answer) is written in the same
atomic step as the run it starts (``Store.create_run_once``): a delivery answered 503 (Redis away
or too slow, the write perhaps landing later) and redelivered by the forge finds either its run
or nothing, so it starts exactly one run; never a record without its run, which would swallow
the redelivery. The same script writes the run's audit record and counts the delivery
(``ci_queue.store.Alongside``): a new delivery costs two round trips, that script and the planning message.

The clone URL of a payload is checked by the clone policy (``ci_queue.clone_policy``) unless the
registry sets the repository's ``clone_url`` (trusted as configured): a forge on a private network
is allow-listed by its operator (``CIQ_CLONE_ALLOW_HOSTS``), or its repositories get a configured
``clone_url``. A refused URL is answered 403 with the reason and how to allow it, and is not
remembered for the delivery id: the forge's redelivery after the fix starts the run. Every run a
delivery starts, and every refusal by the clone policy, is an audit record (token
``webhook:<provider>``, ``ci_queue.audit``).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from loguru import logger

from ci_queue import events, metrics
from ci_queue.audit import log_record
from ci_queue.clone_policy import TRUSTED_KEY, CloneRefused
from ci_queue.dispatch import trigger_run_once
from ci_queue.repos import Registry
from ci_queue.settings import Settings
from ci_queue.store import Alongside, Created, Once, Store
from ci_queue.web.audit import audit_log
from ci_queue.web.links import run_links

webhooks = Blueprint("webhooks", __name__, url_prefix="/webhooks")
DELIVERY_TTL = 86400  # a delivery id is remembered for a day


def _refuse(store: Store, provider: str, status: int, message: str, reason: str) -> tuple[Response, int]:
    metrics.WEBHOOKS_REJECTED.inc(store, provider=provider, reason=reason)
    return jsonify(error=message), status


def _body(limit: int) -> bytes | None:
    """The raw body, or None when it is larger than ``limit`` (read no further than that)."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    data = request.stream.read(limit + 1)
    return None if len(data) > limit else data


@webhooks.before_request
def webhook_size_limit() -> None:
    """Deliveries may be larger than API bodies (GitHub sends up to 25 MiB)."""
    request.max_content_length = current_app.config["CIQ_SETTINGS"].max_webhook_bytes + 1


@webhooks.post("/<provider>")
def receive(provider: str) -> Any:
    if provider not in events.PROVIDERS:
        return jsonify(error=f"unknown provider {provider!r}; one of {', '.join(events.PROVIDERS)}"), 404
    answer = _receive(provider)
    # counted once answered: with Redis frozen, a count first would cost a whole socket timeout
    # before the delivery's own first read timed out too (a 503 is not counted: Redis is away);
    # a delivery that reached the run's script was counted there (`_start`)
    if not g.get("webhook_counted"):
        metrics.WEBHOOKS.inc(current_app.config["CIQ_STORE"], provider=provider)
    return answer


def _receive(provider: str) -> tuple[Response, int]:
    settings: Settings = current_app.config["CIQ_SETTINGS"]
    store: Store = current_app.config["CIQ_STORE"]
    registry: Registry = current_app.config["CIQ_REGISTRY"]
    body = _body(settings.max_webhook_bytes)
    if body is None:
        return _refuse(store, provider, 413, f"payload larger than {settings.max_webhook_bytes} bytes", "too_large")
    try:
        name = events.repo_of(provider, body)
    except events.BadPayload as exc:
        return _refuse(store, provider, 400, str(exc), "malformed")
    repo = registry.lookup(provider, name)
    if name is None and _is_ping(provider, body):
        return jsonify(pong=True), 200  # an organisation hook's ping names no repository; it starts nothing
    if repo is None:
        message = f"repository {name!r} is not registered for {provider} hooks"
        return _refuse(store, provider, 404, message, "unregistered")
    secret = repo.secret()
    if not secret:  # never "accept unsigned": a repository without a secret gets no runs
        return _refuse(store, provider, 401, f"no webhook secret is configured for {repo.name}", "no_secret")
    try:
        events.verify(provider, request.headers, body, secret)
    except events.SignatureError as exc:
        reason = "stale_timestamp" if "timestamp" in str(exc) else "signature"
        return _refuse(store, provider, 401, str(exc), reason)
    delivery = events.delivery_id(provider, request.headers)
    key = store.delivery_key(provider, delivery) if delivery else None
    # no read of the delivery record first (a round trip every new delivery paid): a repeat is
    # found where its answer is written, by the run's own atomic write or by `_remember`
    status, answer = _handle(provider, body, repo, store, settings, key)
    return jsonify(answer), status


def _duplicate(store: Store, provider: str, first: str) -> tuple[int, dict[str, Any]]:
    """The first answer to a delivery, again, marked as a duplicate: nothing is started."""
    record = json.loads(first)
    metrics.WEBHOOKS_REJECTED.inc(store, provider=provider, reason="duplicate")
    return record.get("status", 202), {**record.get("body", {}), "duplicate": True}


def _is_ping(provider: str, body: bytes) -> bool:
    try:
        return isinstance(events.parse(provider, request.headers, body), events.Pong)
    except events.BadPayload:
        return False


def _handle(provider: str, body: bytes, repo: Any, store: Store, settings: Settings,
            key: str | None) -> tuple[int, dict[str, Any]]:
    """The answer to a new delivery; ``key`` (its delivery record) is written with the answer, in
    the same atomic step as the run when it starts one."""
    try:
        result = events.parse(provider, request.headers, body)
    except events.BadPayload as exc:
        metrics.WEBHOOKS_REJECTED.inc(store, provider=provider, reason="malformed")
        return _remember(store, provider, key, 400, {"error": str(exc)})
    if isinstance(result, events.Pong):
        return _remember(store, provider, key, 200, {"pong": True})
    if isinstance(result, events.Ignored):
        return _remember(store, provider, key, 202, result.to_dict())
    refused = repo.fork_refused(result)
    if refused:  # `fork_pull_requests: never`: answered like any event that starts nothing
        logger.info("{} {} {} from a fork: no run ({})", provider, result.kind, result.ref, refused)
        return _remember(store, provider, key, 202, {"ignored": refused})
    arguments = repo.run_arguments(result, default_branch=settings.default_branch)
    refused = _clone_url_refused(repo, arguments)
    if refused is not None:
        metrics.WEBHOOKS_REJECTED.inc(store, provider=provider, reason="clone_url")
        _audit(provider, "", repo.name, refused[0])
        return refused
    status = "waiting_approval" if repo.fork_waits(result) else "queued"
    g.run_id = run_id = store.new_run_id()
    answer = {"run_id": run_id, "status": status, **run_links(run_id)}
    once = Once(key, json.dumps({"status": 202, "body": answer}), DELIVERY_TTL) if key else None
    created = _start(provider, store, once, run_id=run_id, status=status, **arguments)
    if not created.new:  # the same delivery, concurrently: its first answer
        return _duplicate(store, provider, created.first)
    logger.bind(run_id=run_id).info("{} {} {} -> run ({})", provider, result.kind, result.ref, status)
    return 202, answer


def _start(provider: str, store: Store, once: Once | None, **run: Any) -> Created:
    """Record the run with its delivery record, its audit record and the delivery's count in one
    script (one Redis round trip, where they were three), then send it to planning. The audit
    record is written with the run, never without it, so it is in the stream before the answer
    (``ci_queue.web.audit``); its service-log line follows the write."""
    audit = audit_log()
    fields = audit.fields(token=f"webhook:{provider}", source=request.remote_addr, action="webhook_run",
                          method=request.method, path=request.path, run_id=run["run_id"], repo=run["repo"], status=202)
    alongside = Alongside(stream=audit.key, maxlen=audit.maxlen, entry=tuple(fields.items()),
                          counts=(metrics.WEBHOOKS.increment(store.prefix, provider=provider),))
    created = trigger_run_once(store, current_app.config["CIQ_CELERY"], once, alongside=alongside, **run)
    g.webhook_counted = True
    if created.new:
        log_record(fields, streamed=True)
    return created


def _clone_url_refused(repo: Any, arguments: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """The answer refusing the payload's clone URL, or None: the registry's URL is marked trusted
    (not checked here nor at the worker); the payload's must pass the clone policy."""
    if repo.clone_url:
        arguments["context"][TRUSTED_KEY] = True
        return None
    url = arguments.get("clone_url")
    if not url:
        return None
    try:
        current_app.config["CIQ_CLONE_POLICY"].check(url)
    except CloneRefused as exc:
        return exc.status, {"error": f"the clone URL of this delivery is refused: {exc} (or set `clone_url` of "
                                     f"{repo.name} in the repository registry)"}
    return None


def _audit(provider: str, run_id: str, repo: str, status: int) -> None:
    """The audit record of a run a delivery started (or that the clone policy refused)."""
    audit_log().record(token=f"webhook:{provider}", source=request.remote_addr, action="webhook_run",
                       method=request.method, path=request.path, run_id=run_id, repo=repo, status=status)


def _remember(store: Store, provider: str, key: str | None, status: int,
              answer: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Keep the answer to a delivery that starts nothing, for its repeats (first one wins: a
    repeat gets the first answer back, marked as a duplicate). One round trip (``SET NX`` and
    ``GET`` in one transaction; ``SET NX GET`` needs Redis 7)."""
    if key is None:
        return status, answer
    pipe = store.r.pipeline(transaction=True)
    pipe.set(key, json.dumps({"status": status, "body": answer}), nx=True, ex=DELIVERY_TTL)
    pipe.get(key)
    written, first = pipe.execute()
    if not written and first is not None:
        return _duplicate(store, provider, first)
    return status, answer


