"""``/metrics``: Prometheus text computed from Redis at scrape time, the same from every process."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from ci_queue import metrics
from ci_queue.celery_app import make_celery
from ci_queue.routing import CONTROL_QUEUE, DEFAULT_QUEUE
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.web import create_app
from tests.conftest import REPO, TEST_REDIS_URL
from tests.engine.conftest import engine, make_repo  # noqa: F401 (engine: a fixture)
from tests.web.test_api import TWO_STAGES, finish
from tests.web.test_health import closed_port


def scrape(client) -> dict[str, dict[tuple, float]]:
    """Family name -> {(sample name, sorted labels): value}, through the official parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    families = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        families[family.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    return families


def value(families, family: str, sample: str | None = None, **labels: str) -> float:
    return families[family][(sample or family, tuple(sorted(labels.items())))]


def test_metrics_after_some_runs(api):
    store = api.store
    # runs: one queued, one failed to plan, one that ran (build ok, unit failed), one canceled
    store.create_run(repo="o/r", ref="main")
    bad = store.create_run(repo="o/r", ref="main")
    store.fail_run(bad, "x.yml:1:1: nope")
    run_id, index, _ = api.planned_run(TWO_STAGES)
    finish(api, run_id, index["build"], "success", exit=0)
    finish(api, run_id, index["unit"], "failed", exit=1, reason="script_failure")
    canceled, *_ = api.planned_run(TWO_STAGES)
    store.cancel_run(canceled)
    # what the engine records at a job's end and start
    metrics.record_job_end(store, status="success", queue=DEFAULT_QUEUE, duration=0.5)
    metrics.record_job_end(store, status="failed", queue=DEFAULT_QUEUE, duration=42.0)
    metrics.record_job_end(store, status="success", queue="ciq.tags.gpu", duration=99999.0)
    metrics.record_queue_wait(store, queue=DEFAULT_QUEUE, seconds=0.2)
    metrics.record_queue_wait(store, queue=DEFAULT_QUEUE, seconds=3.0)
    # what the webhook receivers record; labels outside their sets are bounded to `other`
    for _ in range(3):
        metrics.WEBHOOKS.inc(store, provider="github")
    metrics.WEBHOOKS.inc(store, provider="svn")
    metrics.WEBHOOKS_REJECTED.inc(store, provider="github", reason="signature")
    metrics.WEBHOOKS_REJECTED.inc(store, provider="github", reason="whatever; DROP TABLE")
    with pytest.raises(ValueError, match="labels"):
        metrics.WEBHOOKS.inc(store, repo="o/r")
    # queue depth: messages in a tag queue (one with a priority) known through a waiting attempt
    queue = f"ciq.tags.m{uuid.uuid4().hex[:8]}"
    waiting, *_ = api.planned_run(TWO_STAGES)
    store.mark_queued([(waiting, 0, 1, queue)], 3600)
    try:
        api.broker.rpush(queue, "m1", "m2")
        api.broker.rpush(f"{queue}\x06\x163", "m3")
        families = scrape(api.client)  # no token
    finally:
        api.broker.delete(queue, f"{queue}\x06\x163")

    assert value(families, "ciq_redis_up") == 1
    runs = {labels[0][1]: v for (_, labels), v in families["ciq_runs"].items()}
    assert runs == {"waiting_approval": 0, "queued": 1, "running": 1, "success": 0, "failed": 2, "canceled": 1,
                    "skipped": 0, "error": 0}
    assert value(families, "ciq_jobs_finished", "ciq_jobs_finished_total", status="success") == 2
    assert value(families, "ciq_jobs_finished", "ciq_jobs_finished_total", status="failed") == 1
    assert value(families, "ciq_webhooks_received", "ciq_webhooks_received_total", provider="github") == 3
    assert value(families, "ciq_webhooks_received", "ciq_webhooks_received_total", provider="other") == 1
    rejected = families["ciq_webhooks_rejected"]
    assert rejected == {("ciq_webhooks_rejected_total", (("provider", "github"), ("reason", "signature"))): 1,
                        ("ciq_webhooks_rejected_total", (("provider", "github"), ("reason", "other"))): 1}
    duration = "ciq_job_duration_seconds"
    assert value(families, duration, duration + "_bucket", queue=DEFAULT_QUEUE, le="1.0") == 1
    assert value(families, duration, duration + "_bucket", queue=DEFAULT_QUEUE, le="30.0") == 1
    assert value(families, duration, duration + "_bucket", queue=DEFAULT_QUEUE, le="60.0") == 2
    assert value(families, duration, duration + "_bucket", queue=DEFAULT_QUEUE, le="+Inf") == 2
    assert value(families, duration, duration + "_count", queue=DEFAULT_QUEUE) == 2
    assert value(families, duration, duration + "_sum", queue=DEFAULT_QUEUE) == 42.5
    assert value(families, duration, duration + "_bucket", queue="ciq.tags.gpu", le="14400.0") == 0
    assert value(families, duration, duration + "_bucket", queue="ciq.tags.gpu", le="+Inf") == 1
    wait = "ciq_job_queue_wait_seconds"
    assert value(families, wait, wait + "_bucket", queue=DEFAULT_QUEUE, le="0.1") == 0
    assert value(families, wait, wait + "_bucket", queue=DEFAULT_QUEUE, le="0.25") == 1
    assert value(families, wait, wait + "_bucket", queue=DEFAULT_QUEUE, le="5.0") == 2
    assert value(families, wait, wait + "_count", queue=DEFAULT_QUEUE) == 2
    assert value(families, "ciq_queue_depth", queue=queue) == 3
    assert {labels[0][1] for (_, labels) in families["ciq_queue_depth"]} >= {queue, DEFAULT_QUEUE, CONTROL_QUEUE}
    assert value(families, "ciq_workers_alive") == 0
    assert value(families, "ciq_queue_workers", queue=DEFAULT_QUEUE) == 0


def test_counts_are_shared_by_processes(api, store):
    """Another process (a Celery worker, another gunicorn worker) counts into the same hash; a
    second app (process) answers the same numbers."""
    code = ("import sys, redis; from ci_queue import metrics; from ci_queue.store import Store; "
            "s = Store(redis.Redis.from_url(sys.argv[1], decode_responses=True), sys.argv[2]); "
            "[metrics.record_job_end(s, status='canceled', queue='ciq.default', duration=1.0) for _ in range(4)]")
    subprocess.run([sys.executable, "-c", code, TEST_REDIS_URL, store.prefix], cwd=REPO, check=True)
    metrics.record_job_end(store, status="canceled", queue="ciq.default", duration=1.0)
    other = create_app(api.app.config["CIQ_SETTINGS"], store=Store(store.r, store.prefix, 3600),
                       celery=api.app.config["CIQ_CELERY"])
    for client in (api.client, other.test_client()):
        families = scrape(client)
        assert value(families, "ciq_jobs_finished", "ciq_jobs_finished_total", status="canceled") == 5


def test_metrics_with_redis_down_answer_redis_up_0(broker_url):
    port = closed_port()
    store = Store(redis.Redis(host="127.0.0.1", port=port, decode_responses=True), "ciq-down:")
    config = Settings(api_tokens="t", redis_url=f"redis://127.0.0.1:{port}/0", key_prefix=store.prefix)
    app = create_app(config, store=store, celery=make_celery(config))
    # a failed increment is logged, never raised (the request or job it counts goes on)
    metrics.WEBHOOKS.inc(store, provider="github")
    metrics.record_job_end(store, status="success", queue=None, duration=1.0)
    families = scrape(app.test_client())
    assert value(families, "ciq_redis_up") == 0 and "ciq_runs" not in families


@pytest.mark.integration
def test_metrics_of_a_real_run_and_worker(engine, tmp_path):  # noqa: F811 (the fixture)
    app = create_app(engine.settings, store=engine.store, celery=engine.celery)
    app.config["CIQ_READYZ_CACHE_SECONDS"] = 0
    engine.start_worker("w1")
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": "ok: {script: echo hi}\n"})
    run = engine.wait(engine.trigger(repo))
    assert run.status == "success"
    families = scrape(app.test_client())
    assert value(families, "ciq_workers_alive") == 1
    assert value(families, "ciq_queue_workers", queue=DEFAULT_QUEUE) == 1
    assert value(families, "ciq_runs", status="success") == 1
    assert value(families, "ciq_queue_depth", queue=DEFAULT_QUEUE) == 0
