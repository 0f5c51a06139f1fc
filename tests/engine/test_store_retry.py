"""Retrying a run (``Store.retry_run``, GitLab's "retry failed jobs") against a real Redis.

No workers: the tests drive ``begin_job`` / ``finish_job`` as a worker would, as
tests/engine/test_store.py does. The rules (GitLab's): every failed or canceled job runs again as
a new attempt, its earlier attempts kept; whatever depends on it and has not run (skipped, never
decided, waiting for a play) is decided again from its predecessors' current states; jobs that
succeeded keep their result, an ``on_failure`` job that ran included.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ci_queue.store import Store, StoreError
from tests.engine.test_store import TERMINAL, dags, make_plan

THREE_STAGES = """
stages: [build, test, deploy]
build: {stage: build, script: x}
lint: {stage: build, script: x}
unit: {stage: test, script: x}
deploy: {stage: deploy, script: x}
notify: {stage: deploy, script: x, when: on_failure}
cleanup: {stage: deploy, script: x, when: always}
"""


class Driver:
    """Plays the workers: runs ready jobs at their current attempt with chosen outcomes."""

    def __init__(self, store: Store, tmp_path, text: str) -> None:
        self.store = store
        self.plan = make_plan(tmp_path, text)
        self.run_id = store.create_run(repo="o/r", ref="main")
        self.index = {job.name: i for i, job in enumerate(self.plan.jobs)}
        self.started: list[str] = []
        self.queue = store.set_plan(self.run_id, self.plan)

    def names(self, indexes) -> list[str]:
        return sorted(self.plan.jobs[i].name for i in indexes)

    def job(self, name: str):
        return self.store.job(self.run_id, self.index[name])

    def statuses(self) -> dict[str, str]:
        return {job.name: job.status for job in self.store.get_run(self.run_id).jobs}

    def run_ready(self, outcome=lambda name: "success") -> list[str]:
        """Begin and finish every ready job (and what they make ready) until none is left."""
        order = []
        while self.queue:
            i = self.queue.pop(0)
            name = self.plan.jobs[i].name
            attempt = self.store.job(self.run_id, i).attempt
            assert self.store.begin_job(self.run_id, i, attempt, "w@test", 60).status == "ok", name
            order.append(name)
            status = outcome(name)
            record = {"attempt": attempt, "status": status, "steps": []}
            allowed = status == "failed" and self.plan.jobs[i].allow_failure
            self.queue += self.store.finish_job(self.run_id, i, attempt, status, allowed=allowed,
                                                fields={"exit": 1 if status == "failed" else 0},
                                                attempt_record=record).ready
        self.started += order
        return order

    def retry(self):
        result = self.store.retry_run(self.run_id)
        self.queue += result.ready
        return result


def test_a_failed_first_stage_job_runs_again_and_the_skipped_stages_follow_it(store, redis_client, tmp_path):
    d = Driver(store, tmp_path, THREE_STAGES)
    d.run_ready(outcome=lambda n: "failed" if n == "build" else "success")
    run = store.get_run(d.run_id)
    assert run.status == "failed" and run.finished_at is not None
    assert d.statuses() == {"build": "failed", "lint": "success", "unit": "skipped", "deploy": "skipped",
                            "notify": "success", "cleanup": "success"}
    assert redis_client.ttl(store._run(d.run_id)) > 0

    result = d.retry()
    assert result.status == "running"
    assert d.names(result.retried) == ["build"] and d.names(result.ready) == ["build"]
    run = store.get_run(d.run_id)
    assert (run.status, run.finished_at) == ("running", None)
    # successful jobs keep their result (the on_failure job that ran included); the rest starts over
    assert d.statuses() == {"build": "pending", "lint": "success", "unit": "created", "deploy": "created",
                            "notify": "success", "cleanup": "success"}
    build = d.job("build")
    assert build.attempt == 2 and build.exit_code is None and build.finished_at is None
    assert [(a["attempt"], a["status"], a.get("retried")) for a in build.attempts] == [(1, "failed", "manual")]
    assert d.job("lint").attempt == 1
    # kept again, and listed as running, no longer as failed
    for key in (store._run(d.run_id), store._state(d.run_id), store._names(d.run_id)):
        assert redis_client.ttl(key) == -1, key
    assert [r.id for r in store.list_runs(status="running")[0]] == [d.run_id]
    assert store.list_runs(status="failed")[0] == []
    assert redis_client.hmget(store._state(d.run_id), ["c.active", "c.failed", "c.blocked"]) == ["1", "0", "0"]

    assert d.run_ready() == ["build", "unit", "deploy"]  # notify and cleanup are not re-run
    run = store.get_run(d.run_id)
    assert run.status == "success" and run.finished_at is not None
    assert d.statuses()["notify"] == "success" and d.statuses()["cleanup"] == "success"
    build = d.job("build")
    assert [(a["attempt"], a["status"]) for a in build.attempts] == [(1, "failed"), (2, "success")]
    assert all(isinstance(a["steps"], list) for a in build.attempts)
    assert redis_client.ttl(store._run(d.run_id)) > 0
    assert [r.id for r in store.list_runs(status="success")[0]] == [d.run_id]


def test_an_on_failure_job_that_failed_is_decided_again_and_skipped_when_the_retry_succeeds(store, tmp_path):
    d = Driver(store, tmp_path, THREE_STAGES)
    d.run_ready(outcome=lambda n: "failed" if n in ("build", "notify") else "success")
    result = d.retry()
    assert d.names(result.retried) == ["build", "notify"] and d.names(result.ready) == ["build"]
    assert d.job("notify").status == "created" and d.job("notify").attempt == 2
    d.run_ready()
    assert d.statuses() == {"build": "success", "lint": "success", "unit": "success", "deploy": "success",
                            "notify": "skipped", "cleanup": "success"}
    notify = d.job("notify")
    assert notify.attempt == 2 and [a["attempt"] for a in notify.attempts] == [1]
    assert store.get_run(d.run_id).status == "success"


def test_a_retry_that_fails_again_runs_the_on_failure_path_again(store, tmp_path):
    d = Driver(store, tmp_path, THREE_STAGES)
    d.run_ready(outcome=lambda n: "failed" if n in ("build", "notify") else "success")
    d.retry()
    d.run_ready(outcome=lambda n: "failed" if n == "build" else "success")
    assert d.statuses() == {"build": "failed", "lint": "success", "unit": "skipped", "deploy": "skipped",
                            "notify": "success", "cleanup": "success"}
    assert store.get_run(d.run_id).status == "failed"
    assert d.started[-2:] == ["build", "notify"]  # cleanup (success) was not run again


def test_needs_dependents_wait_for_the_retried_job_and_independent_jobs_keep_their_result(store, tmp_path):
    d = Driver(store, tmp_path, """
stages: [build, test]
a: {stage: build, script: x}
b: {stage: build, script: x, needs: [a]}
free: {stage: build, script: x, needs: []}
after: {stage: test, script: x, needs: [b, free]}
staged: {stage: test, script: x}
""")
    d.run_ready(outcome=lambda n: "failed" if n == "a" else "success")
    assert d.statuses() == {"a": "failed", "b": "skipped", "free": "success", "after": "skipped",
                            "staged": "skipped"}
    result = d.retry()
    assert d.names(result.ready) == ["a"]
    assert d.statuses() == {"a": "pending", "b": "created", "free": "success", "after": "created",
                            "staged": "created"}
    assert d.run_ready() == ["a", "b", "after", "staged"]
    assert store.get_run(d.run_id).status == "success"


def test_a_late_write_of_the_old_attempt_is_refused(store, tmp_path):
    d = Driver(store, tmp_path, "a: {script: x}\nb: {script: x, needs: [a]}\n")
    i = d.index["a"]
    # attempt 1 lost its worker: the sweeper failed it; the user retries
    assert store.begin_job(d.run_id, i, 1, "zombie@host", 60).status == "ok"
    store.finish_job(d.run_id, i, 1, "failed", fields={"reason": "runner_system_failure"},
                     attempt_record={"attempt": 1, "status": "failed", "failure_reason": "runner_system_failure"})
    assert store.get_run(d.run_id).status == "failed"
    assert d.retry().ready == [i]
    assert store.begin_job(d.run_id, i, 2, "w@host", 60).status == "ok"
    # the zombie comes back: nothing it says is recorded
    assert store.begin_job(d.run_id, i, 1, "zombie@host", 60).status == "stale"
    assert store.finish_job(d.run_id, i, 1, "success", attempt_record={"attempt": 1}).status == "stale"
    assert store.requeue_job(d.run_id, i, 1, {"attempt": 1}) is None
    job = d.job("a")
    assert (job.status, job.attempt, job.worker) == ("running", 2, "w@host")
    ready = store.finish_job(d.run_id, i, 2, "success", attempt_record={"attempt": 2, "status": "success"}).ready
    assert d.names(ready) == ["b"]
    assert store.finish_job(d.run_id, i, 2, "failed").status == "stale"
    assert [a["attempt"] for a in d.job("a").attempts] == [1, 2]


def test_retry_after_cancel_runs_the_canceled_jobs_as_new_attempts(store, tmp_path):
    d = Driver(store, tmp_path, THREE_STAGES)
    first = d.queue.pop(0)
    other = d.queue.pop(0)
    assert store.begin_job(d.run_id, first, 1, "w", 60).status == "ok"
    store.cancel_run(d.run_id)
    # still stopping: a retry now would race the running job's worker
    with pytest.raises(StoreError, match="being canceled"):
        store.retry_run(d.run_id)
    assert store.begin_job(d.run_id, other, 1, "w", 60).status == "stale"  # it was canceled while pending
    store.finish_job(d.run_id, first, 1, "canceled", attempt_record={"attempt": 1, "status": "canceled"})
    assert store.get_run(d.run_id).status == "canceled"
    assert set(d.statuses().values()) == {"canceled"}

    result = d.retry()
    assert d.names(result.retried) == sorted(d.index) and d.names(result.ready) == ["build", "lint"]
    assert not store.is_canceling(d.run_id)
    assert store.begin_job(d.run_id, other, 1, "w", 60).status == "stale"  # the old message is dropped
    # a job canceled before it ran gets a record of that attempt too
    assert [(a["attempt"], a["status"], a["retried"]) for a in d.job("deploy").attempts] == [(1, "canceled", "manual")]
    d.run_ready()
    run = store.get_run(d.run_id)
    assert run.status == "success"
    assert d.statuses() == {"build": "success", "lint": "success", "unit": "success", "deploy": "success",
                            "notify": "skipped", "cleanup": "success"}
    assert {job.attempt for job in run.jobs} == {2}


def test_manual_jobs_wait_for_a_play_again(store, tmp_path):
    d = Driver(store, tmp_path, """
stages: [build, deploy]
build: {stage: build, script: x}
deploy: {stage: deploy, script: x, when: manual, allow_failure: false}
""")
    d.run_ready(outcome=lambda n: "failed")
    assert d.statuses() == {"build": "failed", "deploy": "skipped"}
    d.retry()
    d.run_ready()
    # decided again once build passed: a manual job is never started by a retry
    assert d.statuses() == {"build": "success", "deploy": "manual"}
    run = store.get_run(d.run_id)
    assert run.status == "running"
    # canceled while it waited for its play: it waits again after the retry, as a new attempt
    store.cancel_run(d.run_id)
    assert d.statuses() == {"build": "success", "deploy": "canceled"}
    result = d.retry()
    assert result.ready == [] and result.status == "running"
    deploy = d.job("deploy")
    assert (deploy.status, deploy.attempt) == ("manual", 2)
    attempt = store.play_job(d.run_id, d.index["deploy"])
    assert attempt == 2
    d.queue.append(d.index["deploy"])
    d.run_ready()
    assert store.get_run(d.run_id).status == "success"


def test_a_played_optional_manual_job_that_failed_waits_for_a_play_and_does_not_hold_later_stages(store, tmp_path):
    d = Driver(store, tmp_path, """
stages: [build, extra, final]
build: {stage: build, script: x}
optional: {stage: extra, script: x, when: manual}
final: {stage: final, script: x}
""")
    d.run_ready(outcome=lambda n: "failed" if n == "final" else "success")
    assert d.statuses() == {"build": "success", "optional": "manual", "final": "failed"}
    i = d.index["optional"]
    d.queue.append(i)
    assert store.play_job(d.run_id, i) == 1
    d.run_ready(outcome=lambda n: "failed")  # an allowed failure
    assert d.statuses()["optional"] == "failed"
    result = d.retry()
    assert d.names(result.retried) == ["final", "optional"]
    assert d.names(result.ready) == ["final"], "the optional manual job held the next stage back"
    assert (d.job("optional").status, d.job("optional").attempt) == ("manual", 2)
    d.run_ready()
    assert store.get_run(d.run_id).status == "success"


def test_retry_while_the_run_still_runs(store, tmp_path):
    d = Driver(store, tmp_path, """
stages: [build, test]
fast: {stage: build, script: x}
slow: {stage: build, script: x}
tolerated: {stage: build, script: x, allow_failure: true}
next: {stage: test, script: x}
""")
    fast, slow, tolerated = d.index["fast"], d.index["slow"], d.index["tolerated"]
    d.queue.clear()
    for i in (fast, slow, tolerated):
        store.begin_job(d.run_id, i, 1, "w", 60)
    store.finish_job(d.run_id, fast, 1, "failed")
    store.finish_job(d.run_id, tolerated, 1, "failed", allowed=True)
    result = d.retry()  # an allowed failure is retried too, as GitLab does
    assert d.names(result.retried) == ["fast", "tolerated"] and d.names(result.ready) == ["fast", "tolerated"]
    assert d.statuses() == {"fast": "pending", "slow": "running", "tolerated": "pending", "next": "created"}
    assert store.job(d.run_id, tolerated).to_dict()["allow_failure"] is True
    d.queue = [fast, tolerated]
    d.run_ready()
    assert store.get_run(d.run_id).status == "running"
    assert d.names(store.finish_job(d.run_id, slow, 1, "success").ready) == ["next"]
    d.queue = [d.index["next"]]
    d.run_ready()
    assert store.get_run(d.run_id).status == "success"


def test_jobs_canceled_one_by_one_are_retried_and_a_job_still_stopping_is_waited_for(store, tmp_path):
    """Auto-cancel of a superseded run cancels single jobs (``cancel_jobs``), not the run."""
    d = Driver(store, tmp_path, """
stages: [build, test]
a: {stage: build, script: x, interruptible: true}
b: {stage: build, script: x, interruptible: true}
c: {stage: test, script: x}
""")
    a, b = d.index["a"], d.index["b"]
    d.queue.clear()
    store.begin_job(d.run_id, a, 1, "w", 60)
    assert store.cancel_jobs(d.run_id, [a, b]) == ("running", [a])
    assert store.is_canceling(d.run_id, a)
    with pytest.raises(StoreError, match="being canceled"):
        store.retry_run(d.run_id)
    store.finish_job(d.run_id, a, 1, "canceled")
    assert store.get_run(d.run_id).status == "canceled"
    result = d.retry()
    assert d.names(result.ready) == ["a", "b"]
    assert not store.is_canceling(d.run_id, a), "the retried job would stop at once"
    d.run_ready()
    assert store.get_run(d.run_id).status == "success"
    assert d.statuses() == {"a": "success", "b": "success", "c": "success"}


def test_nothing_to_retry(store, tmp_path):
    d = Driver(store, tmp_path, "a: {script: x}\n")
    d.run_ready()
    with pytest.raises(StoreError, match="no failed or canceled job"):
        store.retry_run(d.run_id)
    queued = store.create_run(repo="o/r", ref="main")
    with pytest.raises(StoreError, match="not been planned"):
        store.retry_run(queued)
    with pytest.raises(StoreError, match="no run"):
        store.retry_run("0123456789abcdef")
    store.fail_run(queued, "x.yml:1:1: broken")  # a pipeline error has no jobs to retry
    with pytest.raises(StoreError, match="failed without jobs"):
        store.retry_run(queued)


def test_attempt_records_keep_their_empty_lists(store, tmp_path):
    """The barrier decoded and re-encoded the attempts with Redis' cjson, which writes [] as {}."""
    d = Driver(store, tmp_path, "a: {script: x}\n")
    assert store.begin_job(d.run_id, 0, 1, "w", 60).status == "ok"
    assert store.requeue_job(d.run_id, 0, 1, {"attempt": 1, "steps": [], "retried": "system"}) == 2
    store.begin_job(d.run_id, 0, 2, "w", 60)
    store.finish_job(d.run_id, 0, 2, "success", attempt_record={"attempt": 2, "steps": [], "duration": 0.1234567891})
    attempts = d.job("a").attempts
    assert attempts == [{"attempt": 1, "steps": [], "retried": "system"},
                        {"attempt": 2, "steps": [], "duration": 0.1234567891}]


@given(dags(), st.integers(1, 3))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_retried_runs_never_violate_needs_or_stage_order_and_never_rerun_a_success(store, tmp_path, case, rounds):
    text, rng = case
    plan = make_plan(tmp_path, text)
    run_id = store.create_run(repo="o/r", ref="main")
    stage_of = {job.name: plan.stages.index(job.stage) for job in plan.jobs}
    pending = store.set_plan(run_id, plan)
    for round_ in range(rounds + 1):
        dispatched: set[int] = set()
        while pending:
            i = pending.pop(rng.randrange(len(pending)))
            job = plan.jobs[i]
            assert i not in dispatched, "a job became ready twice"
            dispatched.add(i)
            jobs = store.get_run(run_id).jobs
            if job.needs is not None:
                assert all(jobs[plan.jobs.index(plan.job(n.job))].status in TERMINAL for n in job.needs)
            else:
                assert all(jobs[k].status in TERMINAL for k, other in enumerate(plan.jobs)
                           if stage_of[other.name] < stage_of[job.name])
            attempt = jobs[i].attempt
            assert store.begin_job(run_id, i, attempt, "w", 60).status == "ok"
            outcome = "success" if round_ == rounds else rng.choice(["success", "success", "failed"])
            pending += store.finish_job(run_id, i, attempt, outcome).ready
        run = store.get_run(run_id)
        assert all(j.status in TERMINAL for j in run.jobs), [(j.name, j.status) for j in run.jobs]
        failed = any(j.status == "failed" for j in run.jobs)
        assert run.status == ("failed" if failed else "success")
        if round_ == rounds or not any(j.status in ("failed", "canceled") for j in run.jobs):
            break
        before = {j.name: (j.status, j.attempt) for j in run.jobs}
        result = store.retry_run(run_id)
        pending = list(result.ready)
        after = {j.name: (j.status, j.attempt) for j in store.get_run(run_id).jobs}
        for name, (status, attempt) in before.items():
            if status == "success":
                assert after[name] == (status, attempt), f"{name} succeeded and was touched"
            elif status == "failed":
                assert after[name][1] == attempt + 1
    assert store.r.hget(store._state(run_id), "c.active") == "0"


def test_superseded_names_only_running_runs_with_an_interruptible_job(store, tmp_path):
    """Auto-cancel reads whole only the older runs it could cancel something of."""
    plain = Driver(store, tmp_path, "a: {script: x}\n")
    interruptible = Driver(store, tmp_path, "a: {script: x, interruptible: true}\n")
    finished = Driver(store, tmp_path, "a: {script: x, interruptible: true}\n")
    finished.run_ready()
    newest = Driver(store, tmp_path, "a: {script: x}\n")
    assert {store.run_status(d.run_id) for d in (plain, interruptible, newest)} == {"running"}
    assert store.superseded(newest.run_id) == [interruptible.run_id]
