"""Chat notifications: the policies (always / on_failure / on_change) and the message."""

from __future__ import annotations

import pytest

from ci_queue.pipeline.model import Job, Plan
from ci_queue.reporters.chat import build_message, previous_outcome, should_notify
from ci_queue.reporters.tasks import ReportTarget, report_run

SHA = "89abcdef0123456789abcdef0123456789abcdef"
HOOK = "/slack/hook"


@pytest.mark.parametrize(("policy", "status", "previous", "expected"), [
    ("always", "success", "success", True), ("always", "canceled", None, True),
    ("on_failure", "failed", "failed", True), ("on_failure", "error", None, True),
    ("on_failure", "success", "failed", False), ("on_failure", "canceled", None, False),
    ("on_change", "failed", "success", True), ("on_change", "success", "failed", True),
    ("on_change", "failed", "failed", False), ("on_change", "success", "success", False),
    ("on_change", "error", "failed", True), ("on_change", "failed", None, True), ("on_change", "success", None, False),
    ("on_change", "canceled", "success", False), ("never", "failed", "success", False),
])
def test_policies(policy: str, status: str, previous: str | None, expected: bool) -> None:
    assert should_notify(policy, status, previous) is expected


def _finished_run(store, outcome: str, ref: str = "main") -> str:
    """A run of octo-org/hello at ``ref`` with jobs build (passes) and unit (``outcome``)."""
    run_id = store.create_run(repo="octo-org/hello", ref=ref, sha=SHA, context={"provider": "github"})
    plan = Plan(stages=["build", "test"], jobs=[Job(name="build", stage="build", script=["true"]),
                                                Job(name="unit <tests>", stage="test", script=["false"])])
    assert store.set_plan(run_id, plan, SHA) == [0]
    store.begin_job(run_id, 0, 1, "w1@h", 60)
    assert store.finish_job(run_id, 0, 1, "success").ready == [1]
    store.begin_job(run_id, 1, 1, "w1@h", 60)
    fields = {"exit": 1, "reason": "script_failure"} if outcome == "failed" else {}
    assert store.finish_job(run_id, 1, 1, outcome, fields=fields).run_status == outcome
    return run_id


def test_previous_outcome_is_the_last_finished_run_of_the_ref(store) -> None:
    first = _finished_run(store, "success")
    assert previous_outcome(store, store.get_run(first)) is None
    _finished_run(store, "failed", ref="other")
    second = _finished_run(store, "failed")
    canceled = store.create_run(repo="octo-org/hello", ref="main", sha=SHA)
    store.cancel_run(canceled)
    third = _finished_run(store, "success")
    assert previous_outcome(store, store.get_run(second)) == "success"
    assert previous_outcome(store, store.get_run(third)) == "failed"  # the canceled run is not an outcome


def test_message_content(store) -> None:
    run = store.get_run(_finished_run(store, "failed"))
    message = build_message(run, "https://ci.example/api/v1/runs/x", previous="success")
    assert message["text"] == (":x: octo-org/hello main: pipeline failed (was success) "
                               f"<https://ci.example/api/v1/runs/x|run {run.id}>")
    fields = {f["title"]: f["value"] for f in message["attachments"][0]["fields"]}
    assert fields == {"Repository": "octo-org/hello", "Ref": "main", "Commit": SHA[:12], "Status": "failed",
                      "Failed jobs": "unit &lt;tests&gt; (script_failure)"}
    assert message["attachments"][0]["title_link"] == "https://ci.example/api/v1/runs/x"


def test_notifications_per_policy_through_the_worker(farm, recorder) -> None:
    store, app, settings = farm.store, farm.app, farm.settings

    def end(outcome: str, policy: str) -> str:
        run_id = _finished_run(store, outcome)
        report_run(store, app, run_id, "run_ended", settings=settings,
                   target=ReportTarget.for_repository("github", "octo-org/hello", settings, notify=policy))
        return run_id

    first = end("failed", "on_change")  # no previous run, failed: a message
    recorder.wait(lambda r: len(r.to(HOOK)) == 1)
    end("failed", "on_change")  # same outcome: none
    end("success", "on_failure")  # passed: none
    end("failed", "never")
    fixed = end("success", "on_change")  # failed -> success: a message
    recorder.wait(lambda r: len(r.to(HOOK)) == 2)
    end("success", "always")
    recorder.wait(lambda r: len(r.to(HOOK)) == 3)
    bodies = [r.body for r in recorder.to(HOOK)]
    assert first in bodies[0]["text"] and "pipeline failed" in bodies[0]["text"]
    assert "unit &lt;tests&gt; (script_failure)" in str(bodies[0]["attachments"])
    assert fixed in bodies[1]["text"] and "pipeline success (fixed)" in bodies[1]["text"]
    assert f"https://ci.example.test/runs/{fixed}" in bodies[1]["text"]  # the run page
    assert "pipeline success" in bodies[2]["text"] and "(fixed)" not in bodies[2]["text"]


def test_chat_retries_on_500(farm, recorder) -> None:
    recorder.fail(HOOK, 2)
    run_id = _finished_run(farm.store, "failed")
    report_run(farm.store, farm.app, run_id, "run_ended", settings=farm.settings)  # default: on_failure
    recorder.wait(lambda r: r.to(HOOK, ok=True))
    assert [r.code for r in recorder.to(HOOK)] == [500, 500, 201]
