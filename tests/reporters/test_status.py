"""Commit statuses: the exact request per provider, retries, the bounded give-up, timeouts, order."""

from __future__ import annotations

import time

import pytest

from ci_queue.pipeline.model import Job, Plan
from ci_queue.reporters.ordering import StatusOrder
from ci_queue.reporters.status import StatusError, StatusTarget, StatusUpdate, build_request, post_status
from ci_queue.reporters.tasks import REPORT_STATUS, RetryPolicy, order_for, report_run
from ci_queue.routing import CONTROL_QUEUE

SHA = "0123456789abcdef0123456789abcdef01234567"
TOKEN_ENV = "CIQ_TEST_STATUS_TOKEN"
GH_PATH = f"/repos/octo-org/hello/statuses/{SHA}"


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
    return "s3cret-token"


def test_the_request_of_each_provider(recorder) -> None:
    update = StatusUpdate("ci-queue/unit tests", "running", "Running on w1", "https://ci.example/api/v1/runs/r1",
                          "main")
    github = StatusTarget("github", "octo-org/hello", recorder.url, TOKEN_ENV)
    gitlab = StatusTarget("gitlab", "group/sub/project", recorder.url + "/api/v4", TOKEN_ENV)
    gitea = StatusTarget("gitea", "me/tool", recorder.url + "/api/v1/", TOKEN_ENV)
    for target in (github, gitlab, gitea):
        assert post_status(target, SHA, update, "s3cret-token") == 201
    gh, gl, ge = recorder.requests
    assert (gh.method, gh.path) == ("POST", GH_PATH)
    assert gh.headers["Authorization"] == "Bearer s3cret-token"
    assert gh.headers["Accept"] == "application/vnd.github+json"
    assert gh.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert gh.body == {"state": "pending", "context": "ci-queue/unit tests", "description": "Running on w1",
                       "target_url": "https://ci.example/api/v1/runs/r1"}
    assert gl.path == f"/api/v4/projects/group%2Fsub%2Fproject/statuses/{SHA}"
    assert gl.headers["PRIVATE-TOKEN"] == "s3cret-token" and "Authorization" not in gl.headers
    assert gl.body == {"state": "running", "name": "ci-queue/unit tests", "description": "Running on w1",
                       "ref": "main", "target_url": "https://ci.example/api/v1/runs/r1"}
    assert ge.path == f"/api/v1/repos/me/tool/statuses/{SHA}"
    assert ge.headers["Authorization"] == "token s3cret-token"
    assert ge.body == {"state": "pending", "context": "ci-queue/unit tests", "description": "Running on w1",
                       "target_url": "https://ci.example/api/v1/runs/r1"}


@pytest.mark.parametrize(("provider", "state", "expected"), [
    ("github", "failure", "failure"), ("github", "canceled", "error"), ("github", "skipped", "success"),
    ("gitea", "error", "error"), ("gitlab", "failure", "failed"), ("gitlab", "error", "failed"),
    ("gitlab", "canceled", "canceled"), ("gitlab", "pending", "pending"),
])
def test_states_per_provider(provider: str, state: str, expected: str) -> None:
    target = StatusTarget(provider, "a/b", "https://api.example", TOKEN_ENV)
    _, _, body = build_request(target, SHA, StatusUpdate("c", state, "x" * 300), "t")
    assert body["state"] == expected
    assert len(body["description"]) < 140


@pytest.mark.parametrize(("repo", "sha"), [("a/../b", SHA), ("a/b/c", SHA), ("a/b", "refs/heads/main"),
                                           ("a/b", SHA + "/../x"), ("a", SHA)])
def test_hostile_targets_are_refused(repo: str, sha: str) -> None:
    with pytest.raises(StatusError):
        build_request(StatusTarget("github", repo, "https://api.example"), sha, StatusUpdate("c", "success"), "t")


def test_order_bookkeeping(redis_client, key_prefix) -> None:
    order = StatusOrder(redis_client, key_prefix, 60)
    key = order.key("github", "a/b", SHA)
    assert [order.next_seq(key) for _ in range(3)] == [1, 2, 3]
    order.mark_sent(key, "ctx", 3)
    order.mark_sent(key, "ctx", 2)  # a late older one never lowers the mark
    assert order.last_sent(key, "ctx") == 3
    assert order.superseded(key, "ctx", 2) and order.superseded(key, "ctx", 3)
    assert not order.superseded(key, "other", 1)


def test_retry_policy_gives_up_in_about_ten_minutes() -> None:
    assert 300 < RetryPolicy().worst_case_seconds() <= 660


def _send(farm, state: str, context: str = "ci-queue/pipeline", seq: int | None = None) -> int:
    order = order_for(farm.store)
    seq = seq or order.next_seq(order.key("github", "octo-org/hello", SHA))
    message = {"target": StatusTarget("github", "octo-org/hello", farm.settings.github_api_url, TOKEN_ENV).to_dict(),
               "sha": SHA, "update": StatusUpdate(context, state, state.title()).to_dict(), "seq": seq,
               "run_id": "r1"}
    farm.app.send_task(REPORT_STATUS, args=[message], queue=CONTROL_QUEUE)
    return seq


def test_retries_on_500_then_succeeds(farm, recorder, logs) -> None:
    recorder.fail(GH_PATH, 2)
    _send(farm, "success")
    recorder.wait(lambda r: r.to(GH_PATH, ok=True))
    assert [r.code for r in recorder.to(GH_PATH)] == [500, 500, 201]
    assert sum("failed (RetryableError: HTTP 500" in line for line in logs) == 2


def test_gives_up_after_bounded_retries_and_says_why(farm, recorder, logs) -> None:
    recorder.fail(GH_PATH, 100)
    _send(farm, "success")
    deadline = time.monotonic() + 15
    while not any(line.startswith("giving up") for line in logs):
        assert time.monotonic() < deadline, logs
        time.sleep(0.05)
    line = next(line for line in logs if line.startswith("giving up"))
    assert "after 4 attempts" in line and "HTTP 500" in line and "octo-org/hello@0123456789ab" in line
    time.sleep(1.5)
    assert [r.code for r in recorder.to(GH_PATH)] == [500] * 4  # 1 + max_retries, then nothing


def test_a_hanging_server_times_out_and_is_retried(farm, recorder, logs) -> None:
    recorder.hang(GH_PATH, 3.0)
    _send(farm, "success")
    recorder.wait(lambda r: r.to(GH_PATH, ok=True), timeout=10)
    assert len(recorder.to(GH_PATH)) == 2
    assert any("Timeout" in line and "retrying" in line for line in logs)


@pytest.mark.parametrize("farm_policy", [RetryPolicy(backoff=1, backoff_max=1, max_retries=3, read_timeout=0.5,
                                                     jitter=False)])
def test_an_update_retried_after_a_newer_one_landed_is_dropped(farm, recorder, logs) -> None:
    newer: list[int] = []

    def pending_fails(body: dict) -> bool:
        """Fail every ``pending``; while the first one is on the wire, the newer update is sent."""
        if body["state"] != "pending":
            return False
        if not newer:
            newer.append(_send(farm, "success"))
        return True

    recorder.fail(GH_PATH, 100, when=pending_fails)
    _send(farm, "pending")
    recorder.wait(lambda r: r.to(GH_PATH, ok=True))
    deadline = time.monotonic() + 10
    while not any("dropped: a newer update" in line for line in logs):  # its retry, 1 s later
        assert time.monotonic() < deadline, logs
        time.sleep(0.05)
    landed = recorder.to(GH_PATH, ok=True)
    assert [r.body["state"] for r in landed] == ["success"]
    pending = [r for r in recorder.to(GH_PATH) if r.body["state"] == "pending"]
    assert [r.code for r in pending] == [500]  # tried once, then dropped instead of sent after the newer one
    assert all(r.at < landed[0].at for r in pending)
    # A redelivered copy of an update that landed is not sent again; a newer one is.
    _send(farm, "success", seq=newer[0])
    recorder.wait(lambda r: sum("dropped: a newer update" in line for line in logs) == 2)
    _send(farm, "error")
    recorder.wait(lambda r: len(r.to(GH_PATH, ok=True)) == 2)
    assert [r.body["state"] for r in recorder.to(GH_PATH, ok=True)] == ["success", "error"]


def test_rejected_4xx_is_not_retried(farm, recorder, logs) -> None:
    recorder.fail(GH_PATH, 1, code=422)
    _send(farm, "success")
    deadline = time.monotonic() + 10
    while not any("rejected by github" in line for line in logs):
        assert time.monotonic() < deadline, logs
        time.sleep(0.05)
    time.sleep(1.2)
    assert [r.code for r in recorder.to(GH_PATH)] == [422]


def _wait_bodies(recorder, path: str, context: str, expected: list[tuple[str, str]], key: str = "context") -> None:
    def done(r) -> bool:
        return len([x for x in r.to(path, ok=True) if x.body[key] == context]) >= len(expected)

    recorder.wait(done)
    got = [(x.body["state"], x.body["description"]) for x in recorder.to(path, ok=True) if x.body[key] == context]
    assert got == expected


def test_the_engine_hook_through_a_run(farm, recorder) -> None:
    store, app, settings = farm.store, farm.app, farm.settings
    run_id = store.create_run(repo="octo-org/hello", ref="main", sha=SHA,
                              context={"provider": "github", "status_token_env": TOKEN_ENV})
    url = f"https://ci.example.test/runs/{run_id}"
    report_run(store, app, run_id, "run_queued", settings=settings)
    _wait_bodies(recorder, GH_PATH, "ci-queue/pipeline", [("pending", "Queued")])
    plan = Plan(stages=["test"], jobs=[Job(name="unit", stage="test", script=["true"]),
                                       Job(name="lint", stage="test", script=["false"], allow_failure=True)])
    assert store.set_plan(run_id, plan, SHA) == [0, 1]
    report_run(store, app, run_id, "run_planned", settings=settings)
    _wait_bodies(recorder, GH_PATH, "ci-queue/unit", [("pending", "Queued")])
    _wait_bodies(recorder, GH_PATH, "ci-queue/lint", [("pending", "Queued")])
    for index in (0, 1):
        assert store.begin_job(run_id, index, 1, "w1@host", 60).status == "ok"
        report_run(store, app, run_id, "job_started", job=index, settings=settings)
    _wait_bodies(recorder, GH_PATH, "ci-queue/unit", [("pending", "Queued"), ("pending", "Running on w1")])
    # (waited for, else the end of lint may land first and its "running" is dropped as older: by design)
    _wait_bodies(recorder, GH_PATH, "ci-queue/lint", [("pending", "Queued"), ("pending", "Running on w1")])
    store.finish_job(run_id, 1, 1, "failed", allowed=True, fields={"exit": 1, "reason": "script_failure"})
    report_run(store, app, run_id, "job_ended", job="lint", settings=settings)
    transition = store.finish_job(run_id, 0, 1, "success")
    report_run(store, app, run_id, "job_ended", job=0, settings=settings)
    assert transition.run_status == "success"
    report_run(store, app, run_id, "run_ended", settings=settings)
    _wait_bodies(recorder, GH_PATH, "ci-queue/pipeline",
                 [("pending", "Queued"), ("pending", "Running 2 jobs"), ("success", "Pipeline passed")])
    _wait_bodies(recorder, GH_PATH, "ci-queue/unit",
                 [("pending", "Queued"), ("pending", "Running on w1"), ("success", "Passed")])
    _wait_bodies(recorder, GH_PATH, "ci-queue/lint",
                 [("pending", "Queued"), ("pending", "Running on w1"),
                  ("success", "Failed, allowed to fail (script_failure, exit 1)")])
    assert all(r.body["target_url"] == url for r in recorder.to(GH_PATH))
    assert not recorder.to("/slack/hook")  # on_failure (the default) and the run passed


def test_no_statuses_without_an_api_url_or_for_generic_hooks(store, logs) -> None:
    from ci_queue.settings import Settings

    class Spy:
        sent: list = []

        def send_task(self, *args, **kwargs) -> None:
            self.sent.append((args, kwargs))

    settings = Settings(gitea_api_url="")
    app = Spy()
    for provider in ("gitea", "generic"):
        run_id = store.create_run(repo="me/tool", ref="main", sha=SHA, context={"provider": provider})
        report_run(store, app, run_id, "run_queued", settings=settings)
    assert app.sent == []
    assert any("CIQ_GITEA_API_URL is not set" in line for line in logs)
    report_run(store, app, "no-such-run", "bogus", settings=settings)  # never raises
    assert any("could not report bogus" in line for line in logs)
