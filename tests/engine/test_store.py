"""The store against a real Redis: the barrier, fencing, cancel, manual jobs, retention."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ci_queue.pipeline.model import PlanContext
from ci_queue.pipeline.planner import load_spec, plan_spec
from ci_queue.store import Store

TERMINAL = {"success", "failed", "canceled", "skipped"}


def make_plan(tmp_path: Path, text: str, **ctx):
    path = tmp_path / "pipeline.yml"
    path.write_text(text)
    spec, _ = load_spec(path, tmp_path)
    return plan_spec(spec, PlanContext(branch="main", **ctx))


def names(plan, indexes):
    return sorted(plan.jobs[i].name for i in indexes)


def run_to_end(store: Store, run_id: str, plan, ready: list[int], outcome=lambda name: "success") -> list[str]:
    """Execute ready jobs in order until none is left; returns the order jobs started in."""
    order: list[str] = []
    queue = list(ready)
    while queue:
        i = queue.pop(0)
        assert store.begin_job(run_id, i, 1, "w@test", 60).status == "ok"
        order.append(plan.jobs[i].name)
        result = outcome(plan.jobs[i].name)
        queue.extend(store.finish_job(run_id, i, 1, result).ready)
    return order


THREE_STAGES = """
stages: [build, test, deploy]
build: {stage: build, script: x}
unit: {stage: test, script: x}
broken: {stage: test, script: x}
tolerated: {stage: test, script: x, allow_failure: true}
deploy: {stage: deploy, script: x}
notify_failure: {stage: deploy, script: x, when: on_failure}
cleanup: {stage: deploy, script: x, when: always}
"""


def test_stages_run_in_order_and_a_failure_skips_on_success_jobs(store, tmp_path):
    plan = make_plan(tmp_path, THREE_STAGES)
    run_id = store.create_run(repo="o/r", ref="main")
    ready = store.set_plan(run_id, plan)
    assert names(plan, ready) == ["build"]
    order = run_to_end(store, run_id, plan, ready,
                       outcome=lambda n: "failed" if n in ("broken", "tolerated") else "success")
    assert order[0] == "build" and set(order[1:4]) == {"unit", "broken", "tolerated"}
    run = store.get_run(run_id)
    status = {job.name: job.status for job in run.jobs}
    assert status["deploy"] == "skipped"
    assert status["notify_failure"] == "success" and status["cleanup"] == "success"
    assert run.status == "failed"


def test_an_allowed_failure_does_not_fail_the_run(store, tmp_path):
    plan = make_plan(tmp_path, THREE_STAGES.replace("broken: {stage: test, script: x}\n", ""))
    run_id = store.create_run(repo="o/r", ref="main")
    run_to_end(store, run_id, plan, store.set_plan(run_id, plan),
               outcome=lambda n: "failed" if n == "tolerated" else "success")
    # finish_job was told nothing about allow_failure above: do it as the worker does
    run = store.get_run(run_id)
    assert {j.name: j.status for j in run.jobs}["notify_failure"] == "success"  # not allowed => failure seen

    run_id = store.create_run(repo="o/r", ref="main")
    queue = store.set_plan(run_id, plan)
    while queue:
        i = queue.pop(0)
        store.begin_job(run_id, i, 1, "w", 60)
        failed = plan.jobs[i].name == "tolerated"
        queue += store.finish_job(run_id, i, 1, "failed" if failed else "success", allowed=failed).ready
    run = store.get_run(run_id)
    assert run.status == "success"
    assert {j.name: j.status for j in run.jobs}["notify_failure"] == "skipped"


def test_needs_start_eagerly_and_empty_needs_start_at_once(store, tmp_path):
    plan = make_plan(tmp_path, """
stages: [build, test]
fast: {stage: build, script: x}
slow: {stage: build, script: x}
after_fast: {stage: test, script: x, needs: [fast]}
free: {stage: test, script: x, needs: []}
staged: {stage: test, script: x}
""")
    run_id = store.create_run(repo="o/r", ref="main")
    ready = store.set_plan(run_id, plan)
    assert names(plan, ready) == ["fast", "free", "slow"]
    index = {job.name: i for i, job in enumerate(plan.jobs)}
    for i in ready:
        store.begin_job(run_id, i, 1, "w", 60)
    assert names(plan, store.finish_job(run_id, index["fast"], 1, "success").ready) == ["after_fast"]
    assert store.finish_job(run_id, index["free"], 1, "success").ready == []
    assert names(plan, store.finish_job(run_id, index["slow"], 1, "success").ready) == ["staged"]


def test_fencing_refuses_stale_and_repeated_writes(store, tmp_path):
    plan = make_plan(tmp_path, "a: {script: x}\nb: {script: x, needs: [a]}\n")
    run_id = store.create_run(repo="o/r", ref="main")
    store.set_plan(run_id, plan)
    assert store.begin_job(run_id, 0, 2, "w", 60).status == "stale"  # no such attempt
    assert store.begin_job(run_id, 0, 1, "w", 60).status == "ok"
    assert store.begin_job(run_id, 0, 1, "w2", 60).status == "stale"  # redelivered message
    assert store.requeue_job(run_id, 0, 1, {"attempt": 1, "status": "failed"}) == 2
    assert store.finish_job(run_id, 0, 1, "success").status == "stale"  # old attempt
    assert store.begin_job(run_id, 0, 2, "w", 60).status == "ok"
    first = store.finish_job(run_id, 0, 2, "success", attempt_record={"attempt": 2, "status": "success"})
    assert names(plan, first.ready) == ["b"]
    assert store.finish_job(run_id, 0, 2, "failed").status == "stale"  # terminal is never overwritten
    job = store.get_run(run_id).jobs[0]
    assert job.status == "success" and job.attempt == 2
    assert [a["attempt"] for a in job.attempts] == [1, 2]


def test_blocking_manual_jobs_hold_the_run_until_played(store, tmp_path):
    plan = make_plan(tmp_path, """
stages: [build, deploy, verify]
build: {stage: build, script: x}
deploy: {stage: deploy, script: x, when: manual, allow_failure: false}
optional: {stage: deploy, script: x, when: manual}
verify: {stage: verify, script: x}
""")
    run_id = store.create_run(repo="o/r", ref="main")
    order = run_to_end(store, run_id, plan, store.set_plan(run_id, plan))
    assert order == ["build"]
    run = store.get_run(run_id)
    assert run.status == "running"
    assert {j.name: j.status for j in run.jobs} == {"build": "success", "deploy": "manual",
                                                   "optional": "manual", "verify": "created"}
    index = store.job_index(run_id, "deploy")
    attempt = store.play_job(run_id, index)
    store.begin_job(run_id, index, attempt, "w", 60)
    ready = store.finish_job(run_id, index, attempt, "success").ready
    assert names(plan, ready) == ["verify"]
    run_to_end(store, run_id, plan, ready)
    assert store.get_run(run_id).status == "success"


def test_cancel_stops_everything_not_started(store, tmp_path):
    plan = make_plan(tmp_path, THREE_STAGES)
    run_id = store.create_run(repo="o/r", ref="main")
    ready = store.set_plan(run_id, plan)
    store.begin_job(run_id, ready[0], 1, "w", 60)
    status, running = store.cancel_run(run_id)
    assert (status, running) == ("running", ready)
    assert store.is_canceling(run_id)
    assert store.finish_job(run_id, ready[0], 1, "canceled").run_status == "canceled"
    run = store.get_run(run_id)
    assert run.status == "canceled"
    assert {j.status for j in run.jobs[1:]} == {"canceled"}


def test_finished_runs_expire(store, redis_client, key_prefix, tmp_path):
    plan = make_plan(tmp_path, "a: {script: x}\n")
    run_id = store.create_run(repo="o/r", ref="main")
    run_to_end(store, run_id, plan, store.set_plan(run_id, plan))
    store.append_log(run_id, 0, [{"n": 1, "text": "hello"}])
    store.get_run(run_id)
    keys = list(redis_client.scan_iter(f"{key_prefix}*"))
    assert keys
    for key in keys:
        if key.endswith((":log:0", ":unsent")):
            continue  # the log: written after the end in this test; unsent: no dispatcher here
        assert redis_client.ttl(key) > 0, key


@st.composite
def dags(draw):
    """Random pipelines: stages, jobs with or without needs (always on earlier or same-stage jobs)."""
    n_stages = draw(st.integers(1, 4))
    jobs = []
    for i in range(draw(st.integers(1, 9))):
        stage = draw(st.integers(0, n_stages - 1))
        earlier = [j for j in jobs if j[1] < stage]
        needs = None
        if earlier and draw(st.booleans()):
            needs = draw(st.lists(st.sampled_from([j[0] for j in earlier]), max_size=3, unique=True))
        when = draw(st.sampled_from(["on_success", "on_success", "on_failure", "always"]))
        jobs.append((f"j{i}", stage, needs, when))
    lines = [f"stages: [{', '.join(f's{k}' for k in range(n_stages))}]"]
    for name, stage, needs, when in jobs:
        extra = f", needs: [{', '.join(needs)}]" if needs is not None else ""
        lines.append(f"{name}: {{stage: s{stage}, script: x, when: {when}{extra}}}")
    return "\n".join(lines) + "\n", draw(st.randoms(use_true_random=False))


@given(dags())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_needs_and_stage_order_are_never_violated(store, tmp_path, case):
    text, rng = case
    plan = make_plan(tmp_path, text)
    run_id = store.create_run(repo="o/r", ref="main")
    ready = store.set_plan(run_id, plan)
    finished: set[str] = set()
    dispatched: list[str] = []
    stage_of = {j.name: plan.stages.index(j.stage) for j in plan.jobs}
    pending = list(ready)
    while pending:
        i = pending.pop(rng.randrange(len(pending)))  # any order a farm could produce
        job = plan.jobs[i]
        assert job.name not in dispatched, "a job became ready twice"
        dispatched.append(job.name)
        states = {j.name: j.status for j in store.get_run(run_id).jobs}
        if job.needs is not None:  # every need ended (ran here, or was skipped by the barrier)
            assert all(n.job in finished or states[n.job] in TERMINAL for n in job.needs), f"{job.name} too early"
        else:
            assert all(other.name in finished or states[other.name] in TERMINAL
                       for other in plan.jobs if stage_of[other.name] < stage_of[job.name])
        assert store.begin_job(run_id, i, 1, "w", 60).status == "ok"
        result = rng.choice(["success", "success", "failed"])
        pending += store.finish_job(run_id, i, 1, result).ready
        finished.add(job.name)
    run = store.get_run(run_id)
    assert all(j.status in TERMINAL for j in run.jobs), [(j.name, j.status) for j in run.jobs]
    assert run.status in ("success", "failed")


@pytest.mark.parametrize("status", ["queued", "running", "failed"])
def test_list_runs_newest_first_with_filters_and_cursor(store, status, tmp_path):
    ids = [store.create_run(repo="o/r" if i % 2 else "o/other", ref="main") for i in range(5)]
    runs, cursor = store.list_runs(limit=3)
    assert [r.id for r in runs] == ids[::-1][:3]
    more, end = store.list_runs(cursor=cursor, limit=3)
    assert [r.id for r in more] == ids[::-1][3:] and end is None
    assert [r.id for r in store.list_runs(repo="o/r")[0]] == [ids[3], ids[1]]
    if status == "failed":
        store.fail_run(ids[0], "x.yml:1:1: broken")
        assert [r.id for r in store.list_runs(status="failed")[0]] == [ids[0]]
        assert store.get_run(ids[0]).error == "x.yml:1:1: broken"


def test_index_entries_older_than_the_retention_are_trimmed(store, redis_client, key_prefix):
    import time

    old = store.create_run(repo="o/r", ref="main")
    new = store.create_run(repo="o/r", ref="main")
    for key in redis_client.scan_iter(f"{key_prefix}runs*"):
        redis_client.zadd(key, {old: time.time() - store.retention - 10}, xx=True)
    assert store.trim_indexes() == 4  # all, repo, ref and status indexes
    assert [r.id for r in store.list_runs()[0]] == [new]


def test_playing_a_manual_job_of_a_finished_run_brings_it_back(store, redis_client, key_prefix, tmp_path):
    plan = make_plan(tmp_path, "build: {script: x}\ndeploy: {script: x, when: manual}\n")
    run_id = store.create_run(repo="o/r", ref="main")
    run_to_end(store, run_id, plan, store.set_plan(run_id, plan))
    assert store.get_run(run_id).status == "success" and redis_client.ttl(f"{key_prefix}run:{run_id}") > 0
    index = store.job_index(run_id, "deploy")
    attempt = store.play_job(run_id, index)
    assert store.get_run(run_id).status == "running"
    assert redis_client.ttl(f"{key_prefix}run:{run_id}") == -1
    assert [r.id for r in store.list_runs(status="running")[0]] == [run_id]
    store.begin_job(run_id, index, attempt, "w", 60)
    store.finish_job(run_id, index, attempt, "success")
    assert store.get_run(run_id).status == "success" and redis_client.ttl(f"{key_prefix}run:{run_id}") > 0


def test_a_runs_record_travels_as_json_into_its_script_byte_for_byte(store, redis_client, key_prefix):
    """CREATE_RUN gets the record as one JSON argument (cjson decodes it): text that JSON escapes
    or that looks like a number comes back as it was sent."""
    texts = {"ref": "feature/é😀-\x01\t\"q\"\\", "sha": "00123", "event": "1e5"}
    variables = {"EMPTY": "", "NUL": "a\x00b", "SEP": "\u2028", "BIG": "x" * 70_000}
    run_id = store.create_run(repo="o/ünï", variables=variables, **texts)
    run = store.get_run(run_id)
    assert (run.repo, run.ref, run.sha, run.event, run.variables) == ("o/ünï", texts["ref"], "00123", "1e5", variables)
    assert redis_client.hget(f"{key_prefix}run:{run_id}", "max_jobs") == ""


def test_a_run_and_its_once_key_are_written_together_or_not_at_all(store, redis_client, key_prefix):
    from ci_queue.store import Once

    key = store.idempotency_key("scope", "client key")
    first = store.create_run_once(Once(key, "first answer", 60), repo="o/once", ref="main", run_id="aaaa")
    assert first.new and first.run_id == "aaaa" and first.first == "first answer"
    assert redis_client.get(key) == "first answer" and 0 < redis_client.ttl(key) <= 60
    # a repeat (another id chosen, as a retried request chooses) makes nothing and gets the first value
    again = store.create_run_once(Once(key, "second answer", 60), repo="o/once", ref="main", run_id="bbbb")
    assert not again.new and again.run_id is None and again.first == "first answer"
    assert [run.id for run in store.list_runs(repo="o/once")[0]] == ["aaaa"]
    assert not redis_client.exists(f"{key_prefix}run:bbbb")
    # the same write arriving twice (a lost reply, sent again) does not rewrite the run
    store.create_run(repo="o/once", ref="main", run_id="cccc")
    redis_client.hset(f"{key_prefix}run:cccc", "status", "running")
    assert store.create_run(repo="o/once", ref="main", run_id="cccc") == "cccc"
    assert store.run_status("cccc") == "running"
    # every field and index of a run, in one step
    record = redis_client.hgetall(f"{key_prefix}run:aaaa")
    assert {"id", "status", "repo", "ref", "sha", "event", "created_at", "clone_url", "variables",
            "context"} <= set(record)
    for index in ("runs", "runs:repo:o/once", "runs:ref:o/once:main", "runs:status:queued"):
        assert redis_client.zscore(f"{key_prefix}{index}", "aaaa") is not None, index
        assert redis_client.ttl(f"{key_prefix}{index}") > 0, index
