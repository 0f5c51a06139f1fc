"""Redis away, for real: a ``redis-server`` of the test's own, killed (connections refused) or frozen
with SIGSTOP (connections open, nothing answers). The API and the webhooks answer 503 with
``Retry-After`` and a JSON reason, leave nothing behind or name the run they made, and work again
once Redis is back. The app is the real one (Flask's test client), its store and its broker made
from the settings, on that Redis (the default topology: one Redis for state and broker)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from ci_queue.repos import parse_registry
from ci_queue.routing import CONTROL_QUEUE, DEFAULT_QUEUE
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.sweeper import Sweeper
from ci_queue.web import create_app
from tests.cli.conftest import wait_until
from tests.conftest import RedisServer
from tests.web.conftest import TOKENS, make_api
from tests.web.test_api import TWO_STAGES, finish
from tests.web.test_webhooks import REGISTRY, SECRET, github_headers, github_push

pytestmark = pytest.mark.integration

TOKEN = "tok-unavailable-5e1f08"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "ciq:"
SOCKET_TIMEOUT = 1.0  # CIQ_REDIS_SOCKET_TIMEOUT of the frozen tests


def trigger(repo: str = "o/unavailable") -> dict[str, Any]:
    return {"repo": repo, "clone_url": "file:///srv/git/r.git", "ref": "main", "sha": "c" * 40}


def make_client(server: RedisServer, monkeypatch: pytest.MonkeyPatch, **env: str) -> Any:
    """The app as ``ci-queue serve`` builds it, from ``CIQ_*`` settings only (no injected store)."""
    monkeypatch.setenv("TEST_GITHUB_SECRET", SECRET)
    settings = Settings.from_env({"CIQ_REDIS_URL": server.url, "CIQ_API_TOKENS": TOKEN, "CIQ_KEY_PREFIX": PREFIX,
                                  "CIQ_ALLOW_LOCAL_REPOS": "1", **env})  # the trigger's clone URL is file://
    app = create_app(settings, registry=parse_registry(REGISTRY))
    app.testing = True
    return app.test_client()


def stored_runs(server: RedisServer, repo: str | None = None) -> list[str]:
    runs, _ = Store(server.client(), PREFIX).list_runs(repo=repo, limit=100)
    return sorted(run.id for run in runs)


def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_unavailable(response: Any) -> dict[str, Any]:
    """503, ``Retry-After`` in seconds, a JSON body with the reason."""
    assert response.status_code == 503, (response.status_code, response.get_data(as_text=True)[:500])
    assert response.headers.get("Retry-After", "").isdigit() and int(response.headers["Retry-After"]) > 0
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body.get("error"), str) and "unavailable" in body["error"], body
    return body


def push_delivery(delivery: str, after: str = "a" * 40) -> tuple[bytes, dict[str, str]]:
    body = github_push(after=after)
    return body, github_headers(body, delivery=delivery)


def test_redis_killed_the_api_and_webhooks_answer_503_then_work_again(own_redis, monkeypatch):
    client = make_client(own_redis, monkeypatch)
    assert client.post("/api/v1/runs", json=trigger(), headers=AUTH).status_code == 202
    before = stored_runs(own_redis)
    own_redis.kill()

    response, post_seconds = timed(lambda: client.post("/api/v1/runs", json=trigger(), headers=AUTH))
    named = assert_unavailable(response)["run_id"]
    response, list_seconds = timed(lambda: client.get("/api/v1/runs", headers=AUTH))
    assert_unavailable(response)
    body, headers = push_delivery("delivery-while-down")
    response, hook_seconds = timed(lambda: client.post("/webhooks/github", data=body, headers=headers))
    assert_unavailable(response)
    assert max(post_seconds, list_seconds, hook_seconds) < 3, (post_seconds, list_seconds, hook_seconds)

    own_redis.start()  # same port, same data; the app's clients reconnect by themselves
    wait_until(lambda: client.get("/api/v1/runs", headers=AUTH).status_code == 200, 15, "the API never came back")
    assert stored_runs(own_redis) == before, "the refused trigger left nothing behind"
    assert named not in stored_runs(own_redis)
    created = client.post("/api/v1/runs", json=trigger(), headers=AUTH)
    assert created.status_code == 202, created.get_json()
    redelivered = client.post("/webhooks/github", data=body, headers=headers)
    assert redelivered.status_code == 202 and "duplicate" not in redelivered.get_json(), redelivered.get_json()
    assert set(stored_runs(own_redis)) == {*before, created.get_json()["id"], redelivered.get_json()["run_id"]}


def test_a_trigger_answered_503_while_redis_is_frozen_is_made_once_by_its_retry(own_redis, monkeypatch):
    client = make_client(own_redis, monkeypatch, CIQ_REDIS_SOCKET_TIMEOUT=str(SOCKET_TIMEOUT))
    # a warm app: its connection is open (so the write reaches Redis' socket and runs on SIGCONT,
    # as in production) and the store's scripts are loaded
    assert client.post("/api/v1/runs", json=trigger("o/warm"), headers=AUTH).status_code == 202
    key = {"Idempotency-Key": str(uuid.uuid4())}
    own_redis.freeze()
    try:
        response, seconds = timed(lambda: client.post("/api/v1/runs", json=trigger(), headers={**AUTH, **key}))
        body = assert_unavailable(response)
        response, list_seconds = timed(lambda: client.get("/api/v1/runs", headers=AUTH))
        assert_unavailable(response)
    finally:
        own_redis.thaw()
    assert seconds < SOCKET_TIMEOUT + 2 and list_seconds < SOCKET_TIMEOUT + 2, (seconds, list_seconds)
    named = body["run_id"]
    # the write Redis received before it froze ran when it woke up: the run exists...
    wait_until(lambda: stored_runs(own_redis, "o/unavailable"), 10, "the frozen write never landed")
    assert stored_runs(own_redis, "o/unavailable") == [named]
    # ...and the retry with the same key answers it instead of making another one
    again = client.post("/api/v1/runs", json=trigger(), headers={**AUTH, **key})
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["id"] == again.get_json()["run_id"] == named
    assert client.post("/api/v1/runs", json=trigger(), headers={**AUTH, **key}).get_json()["id"] == named
    assert stored_runs(own_redis, "o/unavailable") == [named]


def test_a_delivery_answered_503_while_redis_is_frozen_starts_one_run_when_redelivered(own_redis, monkeypatch):
    client = make_client(own_redis, monkeypatch, CIQ_REDIS_SOCKET_TIMEOUT=str(SOCKET_TIMEOUT))
    warm_body, warm_headers = push_delivery("warm-delivery", after="b" * 40)
    assert client.post("/webhooks/github", data=warm_body, headers=warm_headers).status_code == 202
    warm_runs = stored_runs(own_redis)
    body, headers = push_delivery("delivery-frozen")
    own_redis.freeze()
    try:
        response, seconds = timed(lambda: client.post("/webhooks/github", data=body, headers=headers))
        assert_unavailable(response)
    finally:
        own_redis.thaw()
    assert seconds < SOCKET_TIMEOUT + 2, seconds
    # GitHub redelivers with the same delivery id: whatever of the first attempt reached Redis, one run
    redelivered = client.post("/webhooks/github", data=body, headers=headers)
    assert redelivered.status_code == 202, redelivered.get_json()
    run_id = redelivered.get_json()["run_id"]
    new = [r for r in stored_runs(own_redis) if r not in warm_runs]
    assert new == [run_id], (new, redelivered.get_json())
    again = client.post("/webhooks/github", data=body, headers=headers).get_json()
    assert again["run_id"] == run_id and again["duplicate"] is True
    assert [r for r in stored_runs(own_redis) if r not in warm_runs] == [run_id]


def test_idempotency_keys_answer_the_first_run_per_token_and_refuse_another_request(api):
    """On the shared test Redis: the semantics of the key, without any fault."""
    key = {"Idempotency-Key": f'"{uuid.uuid4()}"'}  # quoted, as the IETF draft writes it
    first = api.post("/api/v1/runs", json=trigger(), headers=key)
    assert first.status_code == 202 and first.get_json()["status"] == "queued"
    run_id = first.get_json()["id"]
    again = api.post("/api/v1/runs", json=trigger(), headers={"Idempotency-Key": key["Idempotency-Key"].strip('"')})
    assert again.status_code == 200 and again.get_json() == first.get_json()
    # the replay sent the run to planning again (it is still queued): harmless, the planner claims it
    assert len(api.messages("ciq.control", run_id)) == 2
    other = api.post("/api/v1/runs", json={**trigger(), "ref": "other"}, headers=key)
    assert other.status_code == 422 and run_id in other.get_json()["error"]
    # another token has keys of its own
    mine = api.client.post("/api/v1/runs", json=trigger(), headers={**key, "Authorization": f"Bearer {TOKENS[1]}"})
    assert mine.status_code == 202 and mine.get_json()["id"] != run_id
    for bad in ("", " ", "x" * 256, "caf\u00e9"):
        response = api.post("/api/v1/runs", json=trigger(), headers={"Idempotency-Key": bad})
        assert response.status_code == 400 and "Idempotency-Key" in response.get_json()["error"], bad
    assert sorted(r.id for r in api.store.list_runs(repo="o/unavailable")[0]) == sorted([run_id, mine.get_json()["id"]])
    # the key is stored with a TTL of at most a day
    keys = [k for k in api.store.r.scan_iter(f"{api.store.prefix}idem:*")]
    assert len(keys) == 2 and all(0 < api.store.r.ttl(k) <= 86400 for k in keys)
    assert json.loads(api.store.r.get(keys[0]))["run_id"] in (run_id, mine.get_json()["id"])


def test_with_the_broker_away_what_the_state_recorded_is_answered_and_sent_later(store, own_redis, tmp_path):
    """State on the shared test Redis, the broker on a Redis of the test's own (the ``CIQ_STATE_URL``
    topology), frozen. A trigger and a retry are recorded, so they are answered as done (a 503
    would make the client repeat them); their messages are the sweeper's to send."""
    api = make_api(store, own_redis.url, tmp_path, redis_socket_timeout=SOCKET_TIMEOUT)
    api.slots(1)
    failed, index, _ = api.planned_run(TWO_STAGES)
    finish(api, failed, index["build"], "failed", exit=1, reason="script_failure")
    own_redis.freeze()
    try:
        created, trigger_seconds = timed(lambda: api.post("/api/v1/runs", json=trigger()))
        retried, retry_seconds = timed(lambda: api.post(f"/api/v1/runs/{failed}/retry"))
    finally:
        own_redis.thaw()
    assert created.status_code == 202 and retried.status_code == 202, (created.get_json(), retried.get_json())
    # a publish is retried once: about two socket timeouts, never kombu's default of forever
    assert max(trigger_seconds, retry_seconds) < 3 * SOCKET_TIMEOUT + 2, (trigger_seconds, retry_seconds)
    run_id = created.get_json()["id"]
    assert store.get_run(run_id).status == "queued"
    attempt = f"{failed}|{index['build']}|2"
    assert store.r.zscore(store.unsent_key, attempt) is not None, "the unsent retry is noted for the sweeper"
    assert store.r.zscore(store.queued_key, attempt) is None, "not taken for a message in its queue"
    sweeper = Sweeper(store, api.app.config["CIQ_CELERY"], api.app.config["CIQ_SETTINGS"])
    assert sweeper.sweep(now=time.time() + 600)["resent"] == 1
    assert ("ciq.run_job", [failed, index["build"], 2]) in api.messages(DEFAULT_QUEUE, failed)
    assert api.messages(CONTROL_QUEUE, run_id), "the run goes to planning"
