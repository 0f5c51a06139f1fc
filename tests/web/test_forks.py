"""Pull requests from forks through the webhook receivers (real GitHub and Gitea payloads, real
signatures, a real store and broker): ``fork_pull_requests`` run | approve | never, approval
through the API, and the trusted facts each run is made with."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest

from ci_queue.repos import parse_registry
from tests.conftest import require_shared_fixtures
from tests.web.conftest import make_api
from tests.web.test_webhooks import SECRET, github_headers, github_push, post

FORK_TARGET = "ailisp/gcbapp-buildconfig-example"  # pull_request.opened.6 / synchronize.3: from byao1276's fork
REGISTRY = f"""
repositories:
  - name: {FORK_TARGET}
    provider: github
    secret_env: TEST_GITHUB_SECRET
    secrets: [{{name: DEPLOY_TOKEN, protected: true}}]
  - name: Codertocat/Hello-World          # same-repository pull requests
    provider: github
    secret_env: TEST_GITHUB_SECRET
  - name: example/example                 # gitea pull_request.opened.2: from example2/example
    provider: gitea
    secret_env: TEST_GITEA_SECRET
    fork_pull_requests: never
  - name: octo/hello
    provider: github
    secret_env: TEST_GITHUB_SECRET
    protected_branches: [main, "release/*"]
"""


@pytest.fixture
def hooks(store, broker_url, tmp_path, monkeypatch):
    for name in ("TEST_GITHUB_SECRET", "TEST_GITEA_SECRET"):
        monkeypatch.setenv(name, SECRET)
    api = make_api(store, broker_url, tmp_path)
    api.app.config["CIQ_REGISTRY"] = parse_registry(REGISTRY)
    return api


def fixture(provider: str, name: str) -> bytes:
    return (require_shared_fixtures() / "webhooks" / provider / name).read_bytes()


def gitea_headers(body: bytes, event: str = "pull_request") -> dict:
    return {"X-Gitea-Event": event, "X-Gitea-Delivery": os.urandom(8).hex(), "Content-Type": "application/json",
            "X-Gitea-Signature": hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}


def test_a_forks_pull_request_waits_for_approval_and_each_push_needs_its_own(hooks):
    body = fixture("github", "pull_request.opened.6.json")
    response = post(hooks, "github", body, github_headers(body, event="pull_request"))
    assert response.status_code == 202, response.json
    assert response.json["status"] == "waiting_approval"
    run_id = response.json["run_id"]
    run = hooks.store.get_run(run_id)
    assert (run.status, run.event, run.fork, run.protected, run.registered) == (
        "waiting_approval", "merge_request", True, False, True)
    assert [g.name for g in run.grants] == ["DEPLOY_TOKEN"]  # granted to the repository, refused to forks later
    assert hooks.messages("ciq.control", run_id) == []  # nothing is planned before the approval
    shown = hooks.get(f"/api/v1/runs/{run_id}").get_json()
    assert (shown["status"], shown["fork"], shown["protected"], shown["jobs"]) == ("waiting_approval", True, False, [])
    listed = hooks.get("/api/v1/runs?status=waiting_approval").get_json()["runs"]
    assert run_id in [r["id"] for r in listed]

    # a new push to the pull request: a new run, waiting for its own approval
    again = fixture("github", "pull_request.synchronize.3.json")
    second = post(hooks, "github", again, github_headers(again, event="pull_request")).json
    assert second["status"] == "waiting_approval" and second["run_id"] != run_id

    approved = hooks.post(f"/api/v1/runs/{run_id}/approve")
    assert approved.status_code == 202 and approved.get_json()["status"] == "queued"
    assert hooks.messages("ciq.control", run_id) == [("ciq.plan_run", [run_id])]
    run = hooks.store.get_run(run_id)
    assert run.status == "queued" and run.approved_by == approved.get_json()["approved_by"] and run.fork
    assert hooks.store.get_run(second["run_id"]).status == "waiting_approval"  # its own approval still needed
    assert hooks.messages("ciq.control", second["run_id"]) == []
    conflict = hooks.post(f"/api/v1/runs/{run_id}/approve")
    assert conflict.status_code == 409 and "not waiting for approval" in conflict.get_json()["error"]
    assert hooks.post("/api/v1/runs/0123456789abcdef/approve").status_code == 404
    assert hooks.client.post(f"/api/v1/runs/{second['run_id']}/approve").status_code == 401  # a token is needed

    # a waiting run can be canceled: it ends, nothing was ever queued for it
    canceled = hooks.post(f"/api/v1/runs/{second['run_id']}/cancel")
    assert canceled.status_code == 200 and canceled.get_json()["status"] == "canceled"
    assert hooks.post(f"/api/v1/runs/{second['run_id']}/approve").status_code == 409


def test_never_answers_with_a_reason_and_makes_no_run(hooks):
    body = fixture("gitea", "pull_request.opened.2.json")
    before = len(hooks.store.list_runs(limit=100)[0])
    response = post(hooks, "gitea", body, gitea_headers(body))
    assert response.status_code == 202
    assert "fork_pull_requests: never" in response.json["ignored"] and "run_id" not in response.json
    assert len(hooks.store.list_runs(limit=100)[0]) == before


def test_run_mode_and_same_repository_pull_requests_are_queued_at_once_untrusted(hooks):
    hooks.app.config["CIQ_REGISTRY"] = parse_registry(REGISTRY.replace(
        "    secrets: [{name: DEPLOY_TOKEN, protected: true}]", "    fork_pull_requests: run"))
    body = fixture("github", "pull_request.opened.6.json")
    answer = post(hooks, "github", body, github_headers(body, event="pull_request")).json
    assert answer["status"] == "queued"
    run = hooks.store.get_run(answer["run_id"])
    assert (run.status, run.fork, run.protected) == ("queued", True, False)
    assert hooks.messages("ciq.control", run.id) == [("ciq.plan_run", [run.id])]
    same = fixture("github", "pull_request.opened.1.json")
    answer = post(hooks, "github", same, github_headers(same, event="pull_request")).json
    run = hooks.store.get_run(answer["run_id"])
    assert (answer["status"], run.fork, run.protected) == ("queued", False, False)  # an MR ref is never protected


def test_pushes_are_protected_as_the_registry_says(hooks):
    def protected(ref: str) -> bool:
        body = github_push(ref=ref, after=os.urandom(20).hex())
        answer = post(hooks, "github", body, github_headers(body)).json
        return hooks.store.get_run(answer["run_id"]).protected

    assert protected("refs/heads/main") and protected("refs/heads/release/2.1")
    assert not protected("refs/heads/feature") and not protected("refs/tags/v1")  # no protected_tags


def test_the_api_computes_protection_and_refuses_to_be_told(hooks):
    """An API run is of a registered repository only through the registry's clone URL; its
    protection comes from the registry, never from the request (variables, default_branch)."""
    hooks.app.config["CIQ_REGISTRY"] = parse_registry("""
defaults:
  secrets: [SHARED]
repositories:
  - name: team/app
    provider: generic
    clone_url: file:///srv/git/app.git
    protected_tags: ["v*"]
    secrets: [{name: DEPLOY_TOKEN, protected: true}]
""")

    def trigger(**body):
        response = hooks.post("/api/v1/runs", json={"clone_url": "file:///srv/git/app.git", "ref": "main", **body})
        assert response.status_code == 202, response.get_json()
        return hooks.store.get_run(response.get_json()["run_id"])

    main = trigger(repo="whatever")
    assert (main.repo, main.protected, main.registered) == ("team/app", True, True)
    assert [g.name for g in main.grants] == ["SHARED", "DEPLOY_TOKEN"]
    assert trigger(ref="v2.0", event="tag").protected and not trigger(ref="nightly", event="tag").protected
    assert not trigger(ref="feature", default_branch="feature").protected  # the body cannot move the default branch
    assert not trigger(ref="main", event="merge_request").protected
    other = hooks.post("/api/v1/runs", json={"clone_url": "https://git.example/team/app.git", "repo": "team/app",
                                              "ref": "main"})
    run = hooks.store.get_run(other.get_json()["run_id"])  # not the registry's URL: not that repository
    assert (run.protected, run.registered, [g.name for g in run.grants]) == (False, False, ["SHARED"])
    refused = hooks.post("/api/v1/runs", json={"clone_url": "file:///srv/git/app.git", "ref": "feature",
                                               "variables": {"CI_COMMIT_REF_PROTECTED": "true"}})
    assert refused.status_code == 400 and "CI_COMMIT_REF_PROTECTED" in refused.get_json()["error"]
