"""The audit log: who changed what, from where, with what outcome.

Every state-changing call of the runs API made with a bearer token (``POST``, ``PUT``, ``PATCH``,
``DELETE`` under ``/api/v1``, the workers' job-token routes under ``/api/v1/jobs`` aside) and
every run a webhook starts (or that the clone policy refused for one) is one record, in two
places: a capped Redis stream (``P audit``, ``XADD MAXLEN ~ CIQ_AUDIT_MAXLEN``: the newest
records, readable through ``GET /api/v1/audit`` and ``ci-queue audit``) and the service log (one
structured loguru line, ``extra.audit`` holding the record, for the log collector that keeps
history longer).

A record's fields (strings; empty when not applicable): ``time`` (ISO 8601 UTC), ``token`` (the
token's name; ``webhook:<provider>`` for webhook runs), ``source`` (the client's address as the
web server saw it: behind a reverse proxy, the proxy's), ``action`` (the route's view name:
``create_run``, ``cancel_run``, ``retry_run``, ``play_job``, ``approve_run``...; ``webhook_run``),
``method``, ``path``, ``run_id``, ``job``, ``repo``, ``status`` (the answer's HTTP status). The
stream id orders them (and is the cursor of the readers).

Requests refused for their token (401) are logged only, never streamed: without a token nobody
can push real records out of the capped stream. A request answered 503 because Redis is away is
logged only too (the stream is in that Redis; writing would only wait another timeout).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis
from loguru import logger

from ci_queue.clock import now_iso

FIELDS = ("time", "token", "source", "action", "method", "path", "run_id", "job", "repo", "status")
STREAM_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
READ_BATCH = 200


def audit_key(prefix: str) -> str:
    """The stream's key (``P audit``)."""
    return f"{prefix}audit"


def log_record(fields: dict[str, str], *, streamed: bool, level: str = "INFO") -> None:
    """The record's line in the service log (``extra.audit``: the record; ``extra.streamed``)."""
    logger.bind(audit=fields, streamed=streamed).log(
        level, "audit: {} {} by {} from {} -> {}{}", fields["action"] or fields["method"], fields["run_id"] or
        fields["path"], fields["token"] or "(no valid token)", fields["source"], fields["status"],
        "" if streamed else " (not in the audit stream)")


@dataclass(frozen=True)
class AuditLog:
    """The audit stream of one key prefix."""

    client: redis.Redis
    key: str
    maxlen: int = 100_000

    @classmethod
    def of(cls, store: Any, maxlen: int) -> AuditLog:
        return cls(store.r, audit_key(store.prefix), maxlen)

    @staticmethod
    def fields(**values: Any) -> dict[str, str]:
        """A record's ``FIELDS`` as stored (strings; ``time`` defaults to now): for ``record``, and
        for a write that streams it itself (``Store.create_run_once``'s ``Alongside``, then
        ``log_record``)."""
        fields = {name: str(values.get(name) if values.get(name) is not None else "") for name in FIELDS}
        fields["time"] = fields["time"] or now_iso()
        return fields

    def record(self, stream: bool = True, **values: Any) -> str | None:
        """Write one record (``FIELDS``; ``time`` defaults to now) to the stream and the log, and
        return its stream id. With ``stream=False``, or when the stream cannot be written (the
        error is raised: the caller decides what the request answers), the log alone has it."""
        fields = self.fields(**values)
        if not stream:
            log_record(fields, streamed=False)
            return None
        try:
            entry_id = self.client.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
        except Exception:
            log_record(fields, streamed=False, level="ERROR")
            raise
        log_record(fields, streamed=True)
        return str(entry_id)

    def read(self, *, before: str | None = None, since: str | None = None, limit: int = 50,
             action: str | None = None, token: str | None = None, run_id: str | None = None,
             scan: int = 10_000) -> tuple[list[dict[str, str]], str | None]:
        """Records newest first, strictly older than stream id ``before`` and not older than
        ``since`` (a stream id), matching every filter given; at most ``limit`` of them, looking
        at most ``scan`` records. ``next`` (pass as ``before``) is None once nothing older is left."""
        wanted = {"action": action, "token": token, "run_id": run_id}
        high, low = (f"({before}" if before else "+"), (since or "-")
        found: list[dict[str, str]] = []
        last: str | None = None
        scanned = 0
        while len(found) < limit and scanned < scan:
            batch = self.client.xrevrange(self.key, high, low, count=min(READ_BATCH, scan - scanned))
            if not batch:
                return found, None
            for entry_id, fields in batch:
                scanned += 1
                last = str(entry_id)
                if all(not value or fields.get(name) == value for name, value in wanted.items()):
                    found.append({"id": last, **{name: fields.get(name, "") for name in FIELDS}})
                    if len(found) == limit:
                        break
            high = f"({last}"
        older = self.client.xrevrange(self.key, high, low, count=1) if last else []
        return found, (last if older else None)
