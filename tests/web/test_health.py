"""``/healthz`` and ``/readyz`` on real services: Redis down (a closed port), no worker on the
session's broker database, and real ``ci-queue worker`` processes (the engine fixture)."""

from __future__ import annotations

import socket
import time
import uuid

import pytest
import redis

from ci_queue.celery_app import make_celery
from ci_queue.routing import CONTROL_QUEUE, DEFAULT_QUEUE
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.web import create_app
from tests.engine.conftest import engine  # noqa: F401 (a fixture)
from tests.web.conftest import make_api


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def count_inspections(app) -> list[int]:
    """Count the broadcasts of the app's Celery control (the real one still runs)."""
    control = app.config["CIQ_CELERY"].control
    calls = [0]
    real = control.inspect

    def inspect(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    control.inspect = inspect
    return calls


def test_healthz_is_open(api):
    response = api.client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_with_redis_down_is_503_fast_and_says_so(broker_url, tmp_path):
    port = closed_port()
    store = Store(redis.Redis(host="127.0.0.1", port=port, decode_responses=True), f"ciq-down-{uuid.uuid4().hex}:")
    # the state Redis is down, the broker is up
    config = Settings(api_tokens="t", redis_url=broker_url, key_prefix=store.prefix)
    app = create_app(config, store=store, celery=make_celery(config))
    started = time.monotonic()
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready" and body["redis"].startswith("error")
    assert body["broker"] == "ok" and body["problems"] == ["Redis (state) unreachable"]
    # both down (one server, as in the default setup): no broadcast is even tried
    down = f"redis://127.0.0.1:{port}/0"
    config = Settings(api_tokens="t", redis_url=down, key_prefix=store.prefix)
    app = create_app(config, store=store, celery=make_celery(config))
    calls = count_inspections(app)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and response.get_json()["redis"].startswith("error")
    assert "broker" not in response.get_json() and calls == [0]
    assert time.monotonic() - started < 5
    assert app.test_client().get("/healthz").status_code == 200  # the process itself is up


def test_readyz_without_a_worker_is_503_naming_every_known_queue(api):
    # an attempt waits in a tag queue: that queue is known too
    run_id, _, ready = api.planned_run("gpu-job: {script: x, tags: [gpu]}\n")
    api.store.mark_queued([(run_id, ready[0], 1, "ciq.tags.gpu")], 3600)
    calls = count_inspections(api.app)
    started = time.monotonic()
    response = api.client.get("/readyz")  # no token needed
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready" and body["redis"] == "ok" and body["workers"] == {}
    assert body["missing_queues"] == sorted(["ciq.tags.gpu", DEFAULT_QUEUE, CONTROL_QUEUE])
    assert body["queues"] == {q: [] for q in body["missing_queues"]}
    assert "no live worker consumes ciq.tags.gpu" in body["problems"]
    assert time.monotonic() - started < 3
    # polled again at once: the inspection is cached, the broker is not asked again
    for _ in range(5):
        assert api.client.get("/readyz").status_code == 503
    assert calls == [1]
    api.app.config["CIQ_READYZ_CACHE_SECONDS"] = 0
    api.client.get("/readyz")
    assert calls == [2]
    # the attempt started: its queue is no longer a known one
    api.store.begin_job(run_id, ready[0], 1, "w@h", 60)
    assert "ciq.tags.gpu" not in api.client.get("/readyz").get_json()["queues"]


@pytest.mark.integration
def test_readyz_with_real_workers(engine, tmp_path):  # noqa: F811 (the fixture)
    app = create_app(engine.settings, store=engine.store, celery=engine.celery)
    app.config["CIQ_READYZ_CACHE_SECONDS"] = 0
    client = app.test_client()
    engine.start_worker("w1")
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 200, body
    (worker,) = body["workers"]
    assert worker.startswith("w1@") and set(body["workers"][worker]) >= {DEFAULT_QUEUE, CONTROL_QUEUE}
    assert body == {"status": "ready", "redis": "ok", "workers": body["workers"],
                    "queues": {CONTROL_QUEUE: [worker], DEFAULT_QUEUE: [worker]}}
    # a job waits for a tag no live worker has: not ready, naming that queue
    run_id = engine.store.create_run(repo="o/r", ref="main")
    engine.store.mark_queued([(run_id, 0, 1, "ciq.tags.gpu")], 3600)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["missing_queues"] == ["ciq.tags.gpu"]
    engine.start_worker("w2", tags="gpu", untagged=False)
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready", body
    assert body["queues"]["ciq.tags.gpu"][0].startswith("w2@") and len(body["workers"]) == 2


def test_readyz_ignores_the_api_token_setting(store, broker_url, tmp_path):
    api = make_api(store, broker_url, tmp_path, api_tokens="")
    assert api.client.get("/readyz").status_code in (200, 503)
    assert api.client.get("/readyz").get_json()["redis"] == "ok"
