"""503 when a dependency is away: the state Redis or the broker unreachable, too slow, loading,
read-only, out of memory, or refusing our credentials (a password rotated under a running server).

These are routine faults of a farm (a Redis restart, a failover, a full disk), not bugs: the
client is told to come back (``Retry-After``) with the reason in JSON, never a 500 and a
traceback. Only the answer is decided here; whether the request left something behind is the
route's business (``POST /api/v1/runs`` names the run it may have made: ``g.run_id``).
"""

from __future__ import annotations

from typing import Any

import redis
from flask import g, jsonify
from kombu.exceptions import OperationalError
from loguru import logger

from ci_queue.objects import ObjectStoreError

RETRY_AFTER_SECONDS = 5  # about one socket timeout: long enough for a restart to show, short for a client

# Credentials refused, found anywhere in the exception's chain (kombu reports a broker that
# refuses them as its own OperationalError). Not a bug of ours and not the client's: a password
# rotated in Redis before the servers were given the new one; they work again once they are.
_REFUSALS: tuple[tuple[type[BaseException], str], ...] = (
    (redis.AuthenticationError, "Redis refused our credentials"),
    (redis.exceptions.NoPermissionError, "Redis refused a command to our user (ACL permissions)"),
)
# (error class, what it means); the first that matches wins (BusyLoadingError is a ConnectionError).
# redis-py raises these for a reply inside a Lua script or a MULTI too ("OOM command not allowed
# ... script: ...", "Command # 1 ... of pipeline caused error: ...").
_FAILURES: tuple[tuple[type[BaseException], str], ...] = (
    (OperationalError, "the broker is unreachable"),  # kombu, publishing
    (redis.BusyLoadingError, "Redis is loading its data"),
    (redis.TimeoutError, "Redis did not answer in time"),
    (redis.ConnectionError, "Redis is unreachable"),
    (redis.ReadOnlyError, "Redis is read-only (a replica?)"),
    (redis.OutOfMemoryError, "Redis is out of memory"),
    (ObjectStoreError, "the artifact store is unreachable"),
)


def dependency_failure(exc: BaseException) -> str | None:
    """What is wrong, in words, when ``exc`` means a dependency is unavailable; else None. The
    words are for the client: no host, port or password of ours (the log has the details)."""
    for cause in _chain(exc):
        refused = next((meaning for kind, meaning in _REFUSALS if isinstance(cause, kind)), None)
        if refused is not None:
            return refused
    return next((meaning for kind, meaning in _FAILURES if isinstance(exc, kind)), None)


def _chain(exc: BaseException, limit: int = 5) -> list[BaseException]:
    """``exc`` and what caused it (``raise ... from`` or during the handling of), nearest first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < limit:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def unavailable(reason: str, exc: BaseException) -> Any:
    """The 503 answer to ``exc``: ``{"error": ...}`` (and ``run_id`` when the request chose one)
    with ``Retry-After``; one warning line in the log, no traceback (it is not a bug)."""
    body: dict[str, Any] = {"error": f"temporarily unavailable: {reason}; try again in {RETRY_AFTER_SECONDS} s"}
    run_id = g.get("run_id")
    if run_id:
        body["run_id"] = run_id
        body["error"] += (f" (run {run_id} may have been created: the same request repeated with the same "
                          "Idempotency-Key or delivery id answers it, never a second run)")
    response = jsonify(body)
    response.status_code = 503
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    log = logger.bind(run_id=run_id) if run_id else logger
    log.warning("answered 503: {} ({}: {})", reason, type(exc).__name__, exc)
    return response
