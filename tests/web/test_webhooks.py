"""``POST /webhooks/<provider>`` with real payloads, real signatures, a real store and broker."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from pathlib import Path

import pytest

from ci_queue.repos import parse_registry
from tests.conftest import require_shared_fixtures
from tests.web.conftest import make_api

SECRET = "It's a Secret to Everybody"
REGISTRY = """
repositories:
  - name: octo/hello
    provider: github
    secret_env: TEST_GITHUB_SECRET
  - name: octo/unsigned
    provider: github
    secret_env: TEST_NO_SUCH_SECRET
  - name: group/project
    provider: gitlab
    secret_env: TEST_GITLAB_SECRET
  - name: team/app
    provider: generic
    clone_url: file:///srv/git/app.git
    secret_env: TEST_GENERIC_SECRET
"""


@pytest.fixture
def hooks(store, broker_url, tmp_path, monkeypatch):
    for name in ("TEST_GITHUB_SECRET", "TEST_GITLAB_SECRET", "TEST_GENERIC_SECRET"):
        monkeypatch.setenv(name, SECRET)
    api = make_api(store, broker_url, tmp_path, max_webhook_bytes=64 * 1024)
    api.app.config["CIQ_REGISTRY"] = parse_registry(REGISTRY)
    return api


def github_push(repo: str = "octo/hello", ref: str = "refs/heads/main", after: str = "a" * 40) -> bytes:
    return json.dumps({
        "ref": ref, "before": "b" * 40, "after": after, "created": False, "deleted": after == "0" * 40,
        "repository": {"full_name": repo, "clone_url": f"https://github.com/{repo}.git", "default_branch": "main"},
        "head_commit": {"id": after, "message": "change"}, "pusher": {"name": "octocat"},
        "sender": {"login": "octocat"},
    }).encode()


def github_headers(body: bytes, event: str = "push", delivery: str | None = None, secret: str = SECRET) -> dict:
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": event, "X-Hub-Signature-256": f"sha256={signature}",
            "X-GitHub-Delivery": delivery or os.urandom(8).hex(), "Content-Type": "application/json"}


def post(api, provider: str, body: bytes, headers: dict):
    return api.client.post(f"/webhooks/{provider}", data=body, headers=headers)


def runs(api) -> list:
    return api.store.list_runs(limit=100)[0]


def test_a_signed_push_makes_a_queued_run_and_a_plan_message(hooks):
    body = github_push()
    started = time.perf_counter()
    response = post(hooks, "github", body, github_headers(body))
    elapsed = time.perf_counter() - started
    assert response.status_code == 202, response.json
    run_id = response.json["run_id"]
    assert response.json["status_url"].endswith(f"/api/v1/runs/{run_id}")
    assert response.json["web_url"].endswith(f"/runs/{run_id}") and "/api/" not in response.json["web_url"]
    run = hooks.store.get_run(run_id)
    assert (run.repo, run.ref, run.sha, run.event, run.status) == ("octo/hello", "main", "a" * 40, "push", "queued")
    assert run.context["branch"] == "main" and run.context["provider"] == "github"
    assert hooks.messages("ciq.control", run_id) == [("ciq.plan_run", [run_id])]
    assert elapsed < 0.5


@pytest.mark.parametrize("case", ["missing", "wrong", "other secret"])
def test_a_bad_signature_is_401_and_stores_nothing(hooks, case):
    body = github_push()
    headers = github_headers(body, secret="not it")
    if case == "missing":
        del headers["X-Hub-Signature-256"]
    elif case == "other secret":
        headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    response = post(hooks, "github", body, headers)
    assert response.status_code == 401 and "error" in response.json
    assert runs(hooks) == []


def test_no_secret_configured_is_refused_never_accepted_unsigned(hooks):
    body = github_push(repo="octo/unsigned")
    response = post(hooks, "github", body, github_headers(body))
    assert response.status_code == 401 and "no webhook secret" in response.json["error"]
    assert runs(hooks) == []


def test_an_unregistered_repository_is_404_and_stores_nothing(hooks):
    body = github_push(repo="someone/else")
    response = post(hooks, "github", body, github_headers(body))
    assert response.status_code == 404 and "not registered" in response.json["error"]
    assert runs(hooks) == []


def test_oversized_is_413_and_malformed_is_400(hooks):
    big = b'{"x": "' + b"a" * 70_000 + b'"}'
    assert post(hooks, "github", big, github_headers(big)).status_code == 413
    for body in (b"not json", b"[1, 2]", json.dumps({"repository": "nope"}).encode()):
        response = post(hooks, "github", body, github_headers(body))
        assert response.status_code == 400, body
        assert "error" in response.json
    assert runs(hooks) == []


def test_an_absurd_ref_is_400_with_a_short_reason_and_starts_nothing(hooks):
    body = github_push(ref="refs/heads/" + "a" * 50_000)
    response = post(hooks, "github", body, github_headers(body))
    assert response.status_code == 400 and len(response.get_data()) < 300, response.get_data(as_text=True)
    assert response.json["error"].startswith("`ref` is too long: 50000 bytes, a branch or tag name has at most 255")
    assert runs(hooks) == []


def test_a_redelivery_returns_the_first_answer_and_starts_nothing(hooks):
    body = github_push()
    first = post(hooks, "github", body, github_headers(body, delivery="d-1"))
    again = post(hooks, "github", body, github_headers(body, delivery="d-1"))
    assert first.status_code == again.status_code == 202
    assert again.json["run_id"] == first.json["run_id"] and again.json["duplicate"] is True
    assert len(runs(hooks)) == 1


def test_a_run_its_audit_record_and_its_count_are_written_together_once(hooks):
    """The run's script writes the audit record (only with the run) and the delivery's count (a
    repeat counted too, as answered, never twice); a delivery without an id is no exception."""
    from ci_queue import metrics
    from ci_queue.audit import audit_key

    def counted() -> dict:
        return {key[:2]: value for key, value in metrics.read_all(hooks.store.r, hooks.store.prefix).items()}

    body = github_push()
    first = post(hooks, "github", body, github_headers(body, delivery="d-audit"))
    again = post(hooks, "github", body, github_headers(body, delivery="d-audit"))
    headers = github_headers(body)
    del headers["X-GitHub-Delivery"]
    anonymous = post(hooks, "github", body, headers)
    assert first.status_code == again.status_code == anonymous.status_code == 202
    assert again.json["duplicate"] is True and again.json["run_id"] == first.json["run_id"]
    records = hooks.store.r.xrange(audit_key(hooks.store.prefix))
    assert [(fields["action"], fields["run_id"], fields["status"], fields["token"]) for _, fields in records] == [
        ("webhook_run", first.json["run_id"], "202", "webhook:github"),
        ("webhook_run", anonymous.json["run_id"], "202", "webhook:github")]
    assert counted() == {("ciq_webhooks_received", ("github",)): 3,
                         ("ciq_webhooks_rejected", ("github", "duplicate")): 1}
    for run_id in (first.json["run_id"], anonymous.json["run_id"]):
        assert hooks.messages("ciq.control", run_id) == [("ciq.plan_run", [run_id])]


def test_the_planning_message_is_the_one_send_task_makes(hooks):
    """``dispatch.publish_plan`` (a pooled producer, Celery's message) sends what
    ``send_task(PLAN_RUN)`` sends, ids aside: the same headers, body and properties."""
    import base64

    from ci_queue.celery_app import PLAN_RUN
    from ci_queue.dispatch import publish_plan
    from ci_queue.routing import CONTROL_QUEUE

    celery, run_id = hooks.app.config["CIQ_CELERY"], os.urandom(8).hex()
    celery.send_task(PLAN_RUN, args=[run_id], queue=CONTROL_QUEUE)
    publish_plan(celery, run_id)

    def comparable(raw: str) -> dict:
        message = json.loads(raw)
        ids = {message["headers"].pop("id"), message["headers"].pop("root_id"),
               message["properties"].pop("correlation_id")}
        assert len(ids) == 1 and message["properties"].pop("delivery_tag")
        message["body"] = json.loads(base64.b64decode(message["body"]))
        return message

    ours = [raw for raw in hooks.broker.lrange(CONTROL_QUEUE, 0, -1) if run_id in raw]
    published, sent = (comparable(raw) for raw in ours)  # LPUSH: newest first
    assert published == sent
    assert published["headers"]["task"] == PLAN_RUN and published["body"][0] == [run_id]


def test_a_redelivered_delivery_that_started_nothing_gets_its_first_answer(hooks):
    ping = json.dumps({"zen": "Keep it simple.", "hook_id": 1, "repository": {"full_name": "octo/hello"}}).encode()
    first = post(hooks, "github", ping, github_headers(ping, event="ping", delivery="d-ping"))
    again = post(hooks, "github", ping, github_headers(ping, event="ping", delivery="d-ping"))
    assert first.status_code == again.status_code == 200
    assert first.json == {"pong": True} and again.json == {"pong": True, "duplicate": True}
    assert runs(hooks) == []


def test_ping_deletions_and_unknown_events_start_nothing(hooks):
    ping = json.dumps({"zen": "Keep it simple.", "hook_id": 1, "repository": {"full_name": "octo/hello"}}).encode()
    assert post(hooks, "github", ping, github_headers(ping, event="ping")).json == {"pong": True}
    deleted = github_push(after="0" * 40)
    response = post(hooks, "github", deleted, github_headers(deleted))
    assert response.status_code in (200, 202) and "ignored" in response.json
    body = github_push()
    response = post(hooks, "github", body, github_headers(body, event="watch"))
    assert response.status_code in (200, 202) and "ignored" in response.json
    assert runs(hooks) == []


def test_hostile_refs_and_names_are_data(hooks, tmp_path):
    marker = Path("x")
    for ref in ("refs/heads/$(touch x)", "refs/heads/`touch x`", "refs/heads/--upload-pack=touch x"):
        body = github_push(ref=ref)
        response = post(hooks, "github", body, github_headers(body))
        assert response.status_code in (202, 400), (ref, response.json)
        if response.status_code == 202:
            assert hooks.store.get_run(response.json["run_id"]).ref == ref.removeprefix("refs/heads/")
    body = github_push(repo="../../etc/passwd")
    assert post(hooks, "github", body, github_headers(body)).status_code in (400, 404)
    assert not marker.exists() and not (tmp_path / "x").exists()


def test_gitlab_token_and_generic_hmac_with_timestamp(hooks):
    gitlab = json.dumps({
        "object_kind": "push", "ref": "refs/heads/main", "before": "b" * 40, "after": "c" * 40,
        "checkout_sha": "c" * 40, "user_username": "dev",
        "project": {"path_with_namespace": "group/project", "git_http_url": "https://gitlab.example.com/group/project.git",
                    "default_branch": "main"},
        "commits": [{"id": "c" * 40, "message": "m"}], "total_commits_count": 1,
    }).encode()
    headers = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": SECRET, "Content-Type": "application/json"}
    assert post(hooks, "gitlab", gitlab, headers).status_code == 202
    assert post(hooks, "gitlab", gitlab, {**headers, "X-Gitlab-Token": "nope"}).status_code == 401

    generic = json.dumps({"repo": "team/app", "ref": "refs/heads/main", "sha": "d" * 40}).encode()

    def signed(timestamp: int) -> dict:
        mac = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + generic, hashlib.sha256).hexdigest()
        return {"X-CIQ-Timestamp": str(timestamp), "X-CIQ-Signature": f"sha256={mac}",
                "Content-Type": "application/json"}

    response = post(hooks, "generic", generic, signed(int(time.time())))
    assert response.status_code == 202, response.json
    assert hooks.store.get_run(response.json["run_id"]).clone_url == "file:///srv/git/app.git"
    stale = post(hooks, "generic", generic, signed(int(time.time()) - 600))
    assert stale.status_code == 401
    assert len(runs(hooks)) == 2


def test_every_github_fixture_gets_an_answer_and_only_builds_what_it_should(hooks):
    fixtures = require_shared_fixtures() / "webhooks" / "github"
    manifest = json.loads((fixtures / "MANIFEST.json").read_text())
    entries = manifest.items() if isinstance(manifest, dict) else ((e["file"], e) for e in manifest)
    answered = 0
    for name, entry in entries:
        body = (fixtures / name).read_bytes()
        repo = (json.loads(body).get("repository") or {}).get("full_name")
        hooks.app.config["CIQ_REGISTRY"] = parse_registry(
            REGISTRY + f"  - name: {repo or 'octo/none'}\n    provider: github\n    secret_env: TEST_GITHUB_SECRET\n")
        response = post(hooks, "github", body, github_headers(body, event=entry["event"]))
        assert response.status_code in (200, 202), (name, response.json)
        builds = "run_id" in response.json
        if entry["event"] in ("ping", "create", "delete") or entry.get("deleted"):
            assert not builds, name
        answered += 1
    assert answered >= 50


def test_push_to_success_sends_pending_then_success_statuses_and_the_chat_message(engine, recorder, tmp_path,
                                                                                 monkeypatch):
    """The issue's end-to-end case: a registered local repository, a signed GitHub push for its
    real head sha, 202, the run succeeds, and a recording server stands in for GitHub's API and
    for Slack."""
    from ci_queue.web import create_app
    from tests.engine.conftest import make_repo

    url = recorder.url
    repo = tmp_path / "hello"
    sha = make_repo(repo, {".ci-queue.yml": "build:\n  script: echo hello from $CI_COMMIT_BRANCH\n"})
    engine.env.update({"CIQ_GITHUB_API_URL": url, "CIQ_SLACK_WEBHOOK_URL": f"{url}/slack",
                       "TEST_STATUS_TOKEN": "status-token", "CIQ_PUBLIC_URL": "https://ci.example.com"})
    monkeypatch.setenv("TEST_GITHUB_SECRET", SECRET)
    engine.settings = engine.settings.__class__.from_env(engine.env)
    registry = parse_registry(f"repositories:\n  - name: octo/hello\n    provider: github\n"
                              f"    clone_url: file://{repo}\n    secret_env: TEST_GITHUB_SECRET\n"
                              f"    status_token_env: TEST_STATUS_TOKEN\n    notify: always\n")
    app = create_app(engine.settings, store=engine.store, celery=engine.celery, registry=registry)
    engine.start_worker("w1")
    body = github_push(after=sha)
    response = app.test_client().post("/webhooks/github", data=body, headers=github_headers(body))
    assert response.status_code == 202, response.json
    run = engine.wait(response.json["run_id"])
    assert run.status == "success" and run.sha == sha
    log = [fields["text"] for _, fields in engine.store.read_log(run.id, 0) if fields["stream"] == "out"]
    assert log[-1] == "hello from main"
    path = f"/repos/octo/hello/statuses/{sha}"

    def pipeline_states(r) -> list[str]:
        return [q.body["state"] for q in r.to(path, ok=True) if q.body.get("context") == "ci-queue/pipeline"]

    recorder.wait(lambda r: "success" in pipeline_states(r) and r.to("/slack", ok=True), timeout=30)
    states = pipeline_states(recorder)
    assert states[0] == "pending" and states[-1] == "success", states
    first = recorder.to(path, ok=True)[0]
    assert first.headers.get("Authorization") == "Bearer status-token"
    assert first.body["target_url"] == f"https://ci.example.com/runs/{run.id}"  # the run page
    jobs = [q.body for q in recorder.to(path, ok=True) if q.body.get("context") == "ci-queue/build"]
    assert jobs and jobs[-1]["state"] == "success"
    chat = json.dumps(recorder.to("/slack", ok=True)[-1].body)
    assert "octo/hello" in chat and "success" in chat.lower()
