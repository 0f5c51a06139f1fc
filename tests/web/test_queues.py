"""``GET /api/v1/queues``, the scheduler's ``/metrics`` gauges and a run's ``priority`` through the API."""

from __future__ import annotations

import uuid

import pytest

from ci_queue.dispatch import send_jobs
from tests.web.conftest import scoped_api
from tests.web.test_metrics import scrape, value


def tag() -> str:
    """A tag of this test's own: the broker database is shared by the session's tests."""
    return f"t{uuid.uuid4().hex[:8]}"


def send(api, run_id: str | None, indexes: list[int]) -> None:
    send_jobs(api.store, api.app.config["CIQ_CELERY"], api.app.config["CIQ_SETTINGS"], run_id, indexes)


def take(api, queue: str, worker: str) -> tuple[str, int, int]:
    """A worker takes the next message of ``queue`` and begins its attempt."""
    import base64
    import json

    run_id, index, attempt = json.loads(base64.b64decode(json.loads(api.broker.rpop(queue))["body"]))[0]
    assert api.store.begin_job(run_id, index, attempt, worker, 60).status == "ok"
    return run_id, index, attempt


def test_queues_show_held_sent_running_jobs_workers_and_the_oldest_wait(api):
    gpu, linux = tag(), tag()
    queue, unserved = f"ciq.tags.{gpu}", f"ciq.tags.{linux}"
    jobs = "".join(f"g{i}: {{script: x, tags: [{gpu}]}}\n" for i in range(5)) + f"l0: {{script: x, tags: [{linux}]}}\n"
    api.slots(2, queue, worker="w1@host")
    api.slots(1, queue, worker="w2@host")
    run_id, _, ready = api.planned_run(jobs)
    try:
        send(api, run_id, ready)  # 3 slots: 3 admitted, 2 held; nobody serves the other tag
        take(api, queue, "w1@host")  # runs
        ended = take(api, queue, "w2@host")
        api.store.finish_job(*ended, "success")
        send(api, None, [])  # a slot freed: one more admitted
        response = api.get("/api/v1/queues")
        assert response.status_code == 200
        rows = {row["queue"]: row for row in response.get_json()["queues"]}
        assert rows[queue] == {"queue": queue, "tags": [gpu], "route": "", "waiting": 3, "held": 1, "in_broker": 2,
                               "oldest_wait_seconds": rows[queue]["oldest_wait_seconds"], "running": 1,
                               "workers": 2, "slots": 3}
        assert 0 <= rows[queue]["oldest_wait_seconds"] < 60
        assert rows[unserved] == {"queue": unserved, "tags": [linux], "route": "", "waiting": 1, "held": 1,
                                  "in_broker": 0, "oldest_wait_seconds": rows[unserved]["oldest_wait_seconds"],
                                  "running": 0, "workers": 0, "slots": 0}
        families = scrape(api.client)
        assert value(families, "ciq_queue_jobs_waiting", queue=queue, tags=gpu) == 3
        assert value(families, "ciq_queue_jobs_held", queue=unserved, tags=linux) == 1
        assert value(families, "ciq_queue_jobs_running", queue=queue, tags=gpu) == 1
        assert value(families, "ciq_queue_serving_workers", queue=queue, tags=gpu) == 2
        assert value(families, "ciq_queue_slots", queue=queue, tags=gpu) == 3
        assert 0 <= value(families, "ciq_queue_oldest_wait_seconds", queue=unserved, tags=linux) < 60
        assert value(families, "ciq_queue_depth", queue=queue) == 2
    finally:
        api.broker.delete(queue, unserved)


def test_queues_need_a_token_with_the_read_scope(store, broker_url, tmp_path):
    api = scoped_api(store, broker_url, tmp_path, {"reader": ("read",), "trigger": ("trigger",)}, "repositories: []")
    assert api.client.get("/api/v1/queues").status_code == 401
    assert api.client.get("/api/v1/queues", headers={"Authorization": f"Bearer {api.tokens['reader']}"}
                          ).status_code == 200
    refused = api.client.get("/api/v1/queues", headers={"Authorization": f"Bearer {api.tokens['trigger']}"})
    assert refused.status_code == 403 and "read" in refused.get_json()["error"]


REGISTRY = """
repositories:
  - {name: o/app, provider: github, clone_url: "https://git.example/o/app.git", priority: 3, tag_priority: 9,
     max_concurrent_jobs: 4}
"""


@pytest.fixture
def tokens_api(store, broker_url, tmp_path):
    return scoped_api(store, broker_url, tmp_path, {"ci": ("trigger",), "ops": ("trigger", "operate")}, REGISTRY)


def trigger(api, token: str, **body):
    return api.client.post("/api/v1/runs", json={"repo": "o/app", "ref": "main", **body},
                           headers={"Authorization": f"Bearer {api.tokens[token]}"})


def stored(api, response) -> tuple[str, str, str]:
    run = api.store.r.hmget(f"{api.store.prefix}run:{response.get_json()['run_id']}", ["priority", "max_jobs"])
    return response.status_code, *run


def test_a_runs_priority_and_limit_come_from_the_registry_or_the_request(tokens_api):
    assert stored(tokens_api, trigger(tokens_api, "ci")) == (202, "3", "4")
    assert stored(tokens_api, trigger(tokens_api, "ci", event="tag", ref="v1")) == (202, "9", "4")
    assert stored(tokens_api, trigger(tokens_api, "ci", priority=-5)) == (202, "-5", "4"), "lowering is a trigger's"
    assert stored(tokens_api, trigger(tokens_api, "ops", priority=200)) == (202, "200", "4")


@pytest.mark.parametrize(("body", "code", "words"), [
    ({"priority": 200}, 403, "operate"),
    ({"priority": "high"}, 400, "whole number"),
    ({"priority": True}, 400, "whole number"),
    ({"priority": 10**6}, 400, "whole number"),
    ({"variables": {"CIQ_PRIORITY": "9"}}, 400, "`priority`"),
])
def test_a_priority_that_is_not_allowed_is_refused_and_nothing_is_made(tokens_api, body, code, words):
    before = tokens_api.store.r.zcard(f"{tokens_api.store.prefix}runs")
    response = trigger(tokens_api, "ci", **body)
    assert response.status_code == code and words in response.get_json()["error"], response.get_json()
    assert tokens_api.store.r.zcard(f"{tokens_api.store.prefix}runs") == before
