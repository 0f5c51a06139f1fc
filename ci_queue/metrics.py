"""The metrics of ci-queue, kept in Redis so that they are right across processes.

Gunicorn workers, Celery pool processes and the sweeper all count the same things; per-process
Prometheus counters would each hold a part (and a scrape reaches one process). So every counter
and histogram here is a field of one Redis hash, ``P metrics`` (``P`` = the store's key prefix),
incremented with ``HINCRBY`` / ``HINCRBYFLOAT`` by whoever saw the event, and read at scrape time
by ``ci_queue.web.metrics`` (a custom Prometheus collector). Gauges (runs by status, queue depth,
workers alive) are not kept at all: they are computed from Redis and the broker when scraped.

Use, from any process that has a ``Store`` (anything with ``.r``, a redis client, and ``.prefix``)::

    from ci_queue import metrics
    metrics.WEBHOOKS.inc(store, provider="github")
    metrics.WEBHOOKS_REJECTED.inc(store, provider="github", reason="signature")
    metrics.record_job_end(store, status="success", queue="ciq.default", duration=12.3)
    metrics.record_queue_wait(store, queue="ciq.default", seconds=0.8)

Label values are bounded (a label value is a time series): providers and rejection reasons
outside their fixed sets are counted as ``other``. A failed increment (Redis down) is logged and
never raised: a metric must not break the request or the job that it counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

PROVIDERS = ("github", "gitlab", "gitea", "generic")
# why a webhook delivery was refused (HTTP status in the comment); anything else counts as `other`
REJECT_REASONS = (
    "signature",  # 401: missing or wrong signature / token
    "no_secret",  # 401: no secret configured for the repository
    "stale_timestamp",  # 401: generic hook timestamp outside the 5 minutes
    "too_large",  # 413: body above CIQ_MAX_WEBHOOK_BYTES
    "malformed",  # 400: not JSON, or not the expected shape
    "unregistered",  # 404: repository not in configs/repos.yml
    "duplicate",  # a redelivery of a delivery id already seen (answered with the first answer)
    "invalid_name",  # 400: a hostile repository / ref name
    "clone_url",  # 403 (400): the payload's clone URL is refused by the clone policy
)
JOB_FINAL_STATUSES = ("success", "failed", "canceled", "skipped")
DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0)
QUEUE_WAIT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def metrics_key(prefix: str) -> str:
    """The hash every counter and histogram lives in."""
    return f"{prefix}metrics"


def _field(name: str, labels: Sequence[str], part: str = "") -> str:
    return json.dumps([name, list(labels), part], separators=(",", ":"))


def parse_field(field: str) -> tuple[str, tuple[str, ...], str] | None:
    """The (metric name, label values, part) of a hash field; None for a field not ours."""
    try:
        name, labels, part = json.loads(field)
    except (ValueError, TypeError):
        return None
    if not (isinstance(name, str) and isinstance(labels, list) and isinstance(part, str)):
        return None
    return name, tuple(str(v) for v in labels), part


def _bounded(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else "other"


def _safe_execute(pipe: Any) -> None:
    try:
        pipe.execute()
    except Exception as exc:  # Redis down or slow: the metric is lost, the caller goes on
        from loguru import logger

        logger.warning("a metric could not be recorded: {}", exc)


@dataclass(frozen=True)
class RedisCounter:
    """A Prometheus counter family whose values live in the ``P metrics`` hash."""

    name: str  # without the `_total` suffix (prometheus-client adds it)
    documentation: str
    labelnames: tuple[str, ...] = ()

    def label_values(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {tuple(labels)}")
        values = []
        for key in self.labelnames:
            value = str(labels[key])
            if key == "provider":
                value = _bounded(value, PROVIDERS)
            elif key == "reason":
                value = _bounded(value, REJECT_REASONS)
            elif key == "status":
                value = _bounded(value, JOB_FINAL_STATUSES)
            values.append(value)
        return tuple(values)

    def inc(self, store: Any, amount: int = 1, **labels: str) -> None:
        """Add ``amount`` (a whole number) for these labels."""
        pipe = store.r.pipeline(transaction=False)
        self.add_to(pipe, store.prefix, amount, **labels)
        _safe_execute(pipe)

    def add_to(self, pipe: Any, prefix: str, amount: int = 1, **labels: str) -> None:
        """Queue the increment on a redis pipeline (to batch it with other writes)."""
        pipe.hincrby(*self.increment(prefix, amount, **labels))

    def increment(self, prefix: str, amount: int = 1, **labels: str) -> tuple[str, str, int]:
        """The increment as (hash key, field, amount), for a write that makes it itself (a new
        run's script: ``ci_queue.store.Alongside``)."""
        return metrics_key(prefix), _field(self.name, self.label_values(labels)), int(amount)


@dataclass(frozen=True)
class RedisHistogram:
    """A Prometheus histogram whose bucket counts (not cumulative: one field per bucket, the
    cumulative sums are made at scrape time), sum and count live in the ``P metrics`` hash."""

    name: str
    documentation: str
    buckets: tuple[float, ...]
    labelnames: tuple[str, ...] = ()

    def bucket_index(self, value: float) -> int:
        """The index of the first bucket whose upper bound holds ``value`` (len(buckets): +Inf)."""
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                return i
        return len(self.buckets)

    def observe(self, store: Any, value: float, **labels: str) -> None:
        pipe = store.r.pipeline(transaction=False)
        self.add_to(pipe, store.prefix, value, **labels)
        _safe_execute(pipe)

    def add_to(self, pipe: Any, prefix: str, value: float, **labels: str) -> None:
        if value is None or not math.isfinite(value) or value < 0:
            return
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, not {tuple(labels)}")
        values = tuple(str(labels[k]) for k in self.labelnames)
        key = metrics_key(prefix)
        pipe.hincrby(key, _field(self.name, values, f"b{self.bucket_index(value)}"), 1)
        pipe.hincrby(key, _field(self.name, values, "count"), 1)
        pipe.hincrbyfloat(key, _field(self.name, values, "sum"), float(value))


WEBHOOKS = RedisCounter("ciq_webhooks_received", "Webhook deliveries received, by provider (before any check).",
                        ("provider",))
WEBHOOKS_REJECTED = RedisCounter("ciq_webhooks_rejected", "Webhook deliveries refused, by provider and reason.",
                                 ("provider", "reason"))
JOBS_FINISHED = RedisCounter("ciq_jobs_finished", "Jobs that reached a final status (counted once per job end).",
                             ("status",))
JOB_DURATION = RedisHistogram("ciq_job_duration_seconds", "Run time of the last attempt of jobs that ended, by queue.",
                              DURATION_BUCKETS, ("queue",))
QUEUE_WAIT = RedisHistogram("ciq_job_queue_wait_seconds",
                            "Time from a job attempt's message being sent to a worker starting it, by queue.",
                            QUEUE_WAIT_BUCKETS, ("queue",))

COUNTERS = (WEBHOOKS, WEBHOOKS_REJECTED, JOBS_FINISHED)
HISTOGRAMS = (JOB_DURATION, QUEUE_WAIT)


def record_job_end(store: Any, *, status: str, queue: str | None, duration: float | None) -> None:
    """A job ended for good (not an attempt that is retried): count its final status and observe
    its duration, in one round trip. Call it once per job end, after the store accepted the
    result (``Store.finish_job`` returned ``ok``, not ``stale``), so a redelivery never counts twice."""
    pipe = store.r.pipeline(transaction=False)
    JOBS_FINISHED.add_to(pipe, store.prefix, status=status)
    if duration is not None:
        JOB_DURATION.add_to(pipe, store.prefix, float(duration), queue=queue or "none")
    _safe_execute(pipe)


def record_queue_wait(store: Any, *, queue: str | None, seconds: float) -> None:
    """A worker started a job attempt ``seconds`` after its message was sent."""
    QUEUE_WAIT.observe(store, max(0.0, float(seconds)), queue=queue or "none")


def read_all(client: Any, prefix: str) -> dict[tuple[str, tuple[str, ...], str], float]:
    """Every value of the metrics hash, by (metric name, label values, part)."""
    values: dict[tuple[str, tuple[str, ...], str], float] = {}
    for field, raw in client.hgetall(metrics_key(prefix)).items():
        parsed = parse_field(field)
        if parsed is None:
            continue
        try:
            values[parsed] = float(raw)
        except ValueError:
            continue
    return values
