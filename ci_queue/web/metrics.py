"""``/metrics``: Prometheus text format, computed from Redis at scrape time (open, no token).

No token, like ``/healthz``: scrapers and load balancers are not given API tokens, and nothing
here names a repository, a ref, a run or a secret; the labels are statuses, providers,
rejection reasons and queue names (tag sets). Restrict the path at the proxy if tag names are
confidential.

Every value is read when Prometheus scrapes, by one custom collector, so any gunicorn worker
answers the same numbers:
- ``ciq_runs{status}`` (gauge): runs in the store by status, the size of each status index
  ``P runs:status:<status>`` (finished runs stay until the retention drops them; a retried run
  moves back to ``running``, so this is a gauge, not a counter);
- ``ciq_jobs_finished_total{status}``, ``ciq_webhooks_received_total{provider}``,
  ``ciq_webhooks_rejected_total{provider,reason}`` (counters) and the histograms
  ``ciq_job_duration_seconds{queue}`` and ``ciq_job_queue_wait_seconds{queue}``: the ``P metrics``
  hash kept by ``ci_queue.metrics`` (incremented by whichever process saw the event);
- ``ciq_queue_depth{queue}`` (gauge): messages waiting in each Celery queue (``LLEN`` of the
  broker's list, and of its priority lists), for the known queues (``ci_queue.web.health``) and
  every queue a live worker consumes;
- ``ciq_workers_alive`` and ``ciq_queue_workers{queue}`` (gauges): from the worker inspection
  that ``/readyz`` caches;
- per tag set (labels ``queue`` and ``tags``, ``ci_queue.web.queues``): ``ciq_queue_jobs_waiting``
  (held + in the broker: what an autoscaler scales on), ``ciq_queue_jobs_held``,
  ``ciq_queue_oldest_wait_seconds``, ``ciq_queue_jobs_running``, ``ciq_queue_serving_workers``
  and ``ciq_queue_slots`` (live workers by their heartbeat, and their concurrency);
- ``ciq_redis_up`` (gauge, 1/0): whether the state Redis answered; when it did not, the families
  that need it are left out instead of failing the scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ci_queue import metrics as m
from ci_queue.store.core import RUN_STATUSES
from ci_queue.web import health as h
from ci_queue.web.queues import broker_depths, queue_rows

metrics_bp = Blueprint("metrics", __name__)

# the scheduler's gauges per tag set: (metric, field of ``queue_rows``, help)
SCHEDULER_GAUGES = (
    ("ciq_queue_jobs_waiting", "waiting", "Jobs waiting per tag set: held in Redis for a slot plus in the broker "
                                          "(scale workers on this)."),
    ("ciq_queue_jobs_held", "held", "Jobs held in Redis until a slot of a worker that serves the tag set is free."),
    ("ciq_queue_oldest_wait_seconds", "oldest_wait_seconds", "How long the longest-waiting job of the tag set has "
                                                            "waited since it became ready."),
    ("ciq_queue_jobs_running", "running", "Jobs running per tag set."),
    ("ciq_queue_serving_workers", "workers", "Live workers (by their heartbeat) that serve the tag set."),
    ("ciq_queue_slots", "slots", "Slots (concurrency) of the live workers that serve the tag set."),
)


def _format_bound(bound: float) -> str:
    return repr(float(bound))


class StoreCollector:
    """Collects the families above for the app it is made in (needs the app context)."""

    def collect(self) -> Iterator[Metric]:
        store = current_app.config["CIQ_STORE"]
        client = h.state_client()
        up = GaugeMetricFamily("ciq_redis_up", "Whether the state Redis answered this scrape (1) or not (0).")
        try:
            families = list(self._from_state(client, store))
        except (redis.RedisError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _from_state(self, client: redis.Redis, store: Any) -> Iterator[Metric]:
        pipe = client.pipeline(transaction=False)
        for status in RUN_STATUSES:
            pipe.zcard(store._index("status", status))
        counts = pipe.execute()
        runs = GaugeMetricFamily("ciq_runs", "Runs in the store (within the retention), by status.",
                                 labels=["status"])
        for status, count in zip(RUN_STATUSES, counts, strict=True):
            runs.add_metric([status], count)
        yield runs

        values = m.read_all(client, store.prefix)
        for counter in m.COUNTERS:
            family = CounterMetricFamily(counter.name, counter.documentation, labels=list(counter.labelnames))
            for (name, labels, _part), value in sorted(values.items()):
                if name == counter.name:
                    family.add_metric(list(labels), value)
            yield family
        for histogram in m.HISTOGRAMS:
            yield self._histogram(histogram, values)

        known = set(h.known_queues(client, store))
        view = h.inspect_workers()
        by_queue = view.queues()
        queues = sorted(known | set(by_queue))
        yield from self._depth(queues)
        alive = GaugeMetricFamily("ciq_workers_alive", "Workers that answered the last inspection.")
        alive.add_metric([], len(view.workers))
        yield alive
        per_queue = GaugeMetricFamily("ciq_queue_workers", "Live workers consuming each queue.", labels=["queue"])
        for queue in queues:
            per_queue.add_metric([queue], len(by_queue.get(queue, [])))
        yield per_queue
        yield from self._scheduler()

    @staticmethod
    def _histogram(histogram: m.RedisHistogram, values: dict) -> Metric:
        family = HistogramMetricFamily(histogram.name, histogram.documentation, labels=list(histogram.labelnames))
        series: dict[tuple[str, ...], dict[str, float]] = {}
        for (name, labels, part), value in values.items():
            if name == histogram.name:
                series.setdefault(labels, {})[part] = value
        for labels, parts in sorted(series.items()):
            total = 0.0
            buckets = []
            for i, bound in enumerate(histogram.buckets):
                total += parts.get(f"b{i}", 0)
                buckets.append((_format_bound(bound), total))
            total += parts.get(f"b{len(histogram.buckets)}", 0)
            buckets.append(("+Inf", total))
            family.add_metric(list(labels), buckets, sum_value=parts.get("sum", 0.0))
        return family

    @staticmethod
    def _depth(queues: list[str]) -> Iterator[Metric]:
        depths = broker_depths(queues)
        if depths is None:
            return
        depth = GaugeMetricFamily("ciq_queue_depth", "Messages waiting in each Celery queue.", labels=["queue"])
        for queue in queues:
            depth.add_metric([queue], depths[queue])
        yield depth

    @staticmethod
    def _scheduler() -> Iterator[Metric]:
        """The autoscaling signals per tag set (``ci_queue.web.queues``)."""
        rows = queue_rows()
        for name, key, documentation in SCHEDULER_GAUGES:
            family = GaugeMetricFamily(name, documentation, labels=["queue", "tags"])
            for row in rows:
                if row[key] is not None:
                    family.add_metric([row["queue"], "+".join(row["tags"])], row[key])
            yield family


def _registry() -> CollectorRegistry:
    registry = current_app.extensions.get("ciq_metrics_registry")
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StoreCollector())
        current_app.extensions["ciq_metrics_registry"] = registry
    return registry


@metrics_bp.get("/metrics")
def metrics() -> Any:
    return Response(generate_latest(_registry()), mimetype=None, content_type=CONTENT_TYPE_LATEST)
