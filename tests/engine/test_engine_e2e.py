"""The distributed engine end to end: real Redis, real ``ci-queue worker`` processes, real git."""

from __future__ import annotations

import itertools

import pytest

from tests.engine.conftest import make_repo

pytestmark = pytest.mark.integration

THREE_STAGES = """
stages: [build, test, deploy]
build:
  stage: build
  script: echo building
test-ok:
  stage: test
  script: echo fine
test-broken:
  stage: test
  script: exit 3
test-tolerated:
  stage: test
  script: exit 4
  allow_failure: true
deploy:
  stage: deploy
  script: echo never
notify:
  stage: deploy
  script: echo "something failed"
  when: on_failure
cleanup:
  stage: deploy
  script: echo cleaning
  when: always
"""


def by_name(run):
    return {job.name: job for job in run.jobs}


def test_three_stages_with_a_failing_job(engine, tmp_path):
    repo = tmp_path / "repo"
    sha = make_repo(repo, {".ci-queue.yml": THREE_STAGES})
    engine.start_worker("w1")
    run_id = engine.trigger(repo)
    run = engine.wait(run_id)
    jobs = by_name(run)
    assert run.status == "failed" and run.sha == sha
    assert {name: job.status for name, job in jobs.items()} == {
        "build": "success", "test-ok": "success", "test-broken": "failed", "test-tolerated": "failed",
        "deploy": "skipped", "notify": "success", "cleanup": "success"}
    assert jobs["test-broken"].exit_code == 3 and jobs["test-broken"].failure_reason == "script_failure"
    # each stage started after the previous one ended
    assert all(jobs[t].started_at >= jobs["build"].finished_at for t in ("test-ok", "test-broken", "test-tolerated"))
    last_test = max(jobs[t].finished_at for t in ("test-ok", "test-broken", "test-tolerated"))
    assert jobs["notify"].started_at >= last_test and jobs["cleanup"].started_at >= last_test
    assert all(job.worker and job.worker.startswith("w1@") for job in jobs.values() if job.status != "skipped")
    log = engine.store.read_log(run_id, engine.store.job_index(run_id, "test-ok"))
    assert [fields["text"] for _, fields in log if fields["stream"] == "out"][-1] == "fine"


def test_an_invalid_pipeline_fails_the_run_with_positions(engine, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": "build:\n  script: make\n  stage: nope\n"})
    engine.start_worker("w1")
    run = engine.wait(engine.trigger(repo))
    assert run.status == "failed"
    assert run.error.startswith(".ci-queue.yml:3:10: ") and "stage `nope` is not defined" in run.error


def test_a_pipeline_with_no_jobs_for_its_event_is_skipped_not_a_success(engine, tmp_path):
    """GitLab creates no pipeline when the rules leave no job: the run ends as `skipped`, with
    GitLab's reason, and nothing is queued."""
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": "release:\n  script: make\n  rules:\n    - if: $CI_COMMIT_TAG\n"})
    engine.start_worker("w1")
    run = engine.wait(engine.trigger(repo))
    assert (run.status, run.jobs) == ("skipped", [])
    assert run.error == "no pipeline: No stages / jobs for this pipeline."
    assert run.to_dict()["status"] == "skipped"


def test_needs_start_a_job_while_a_slow_job_of_the_earlier_stage_runs(engine, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": """
stages: [build, test]
slow:
  stage: build
  script: sleep 4
fast:
  stage: build
  script: echo fast
after-fast:
  stage: test
  needs: [fast]
  script: echo eager
after-all:
  stage: test
  script: echo staged
"""})
    engine.start_worker("w1", concurrency=3)
    run = engine.wait(engine.trigger(repo))
    jobs = by_name(run)
    assert run.status == "success"
    assert jobs["after-fast"].started_at >= jobs["fast"].finished_at
    assert jobs["after-fast"].finished_at < jobs["slow"].finished_at, "the needs job waited for the stage"
    assert jobs["after-all"].started_at >= jobs["slow"].finished_at


def test_timeout_and_cancel_leave_no_process_behind(engine, tmp_path):
    import os
    import time

    pids = tmp_path / "pids"
    pids.mkdir()
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": f"""
slow-timeout:
  timeout: 2s
  script:
    - sleep 300 & echo $! > {pids}/timeout-child
    - sleep 300
slow-cancel:
  script:
    - sleep 300 & echo $! > {pids}/cancel-child
    - sleep 300
"""})
    engine.start_worker("w1", concurrency=2)
    run_id = engine.trigger(repo)
    engine.wait(run_id, until=lambda r: getattr(by_name(r).get("slow-cancel"), "status", None) == "running"
                and (pids / "cancel-child").exists())
    started = time.monotonic()
    engine.store.cancel_run(run_id)
    run = engine.wait(run_id, timeout=30)
    jobs = by_name(run)
    assert run.status == "canceled"
    assert jobs["slow-cancel"].status == "canceled" and time.monotonic() - started < 5
    assert jobs["slow-timeout"].status in ("failed", "canceled")
    if jobs["slow-timeout"].status == "failed":
        assert jobs["slow-timeout"].failure_reason == "timeout"
    for name in ("cancel-child", "timeout-child"):
        if (pids / name).exists():
            pid = int((pids / name).read_text())
            deadline = time.monotonic() + 5
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not os.path.exists(f"/proc/{pid}"), f"{name} {pid} survived"


def test_a_timed_out_job_fails_as_timeout(engine, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": "slow:\n  timeout: 2s\n  script: sleep 300\n"})
    engine.start_worker("w1")
    run = engine.wait(engine.trigger(repo))
    job = by_name(run)["slow"]
    assert (run.status, job.status, job.failure_reason) == ("failed", "failed", "timeout")
    assert [step["status"] for step in job.attempts[-1]["steps"]][-1] in ("timeout", "success")


def test_retry_runs_a_failing_job_again_as_attempt_2(engine, tmp_path):
    repo = tmp_path / "repo"
    marker = tmp_path / "first-attempt-done"
    make_repo(repo, {".ci-queue.yml": f"""
flaky:
  retry: 1
  script:
    - if [ ! -e {marker} ]; then touch {marker}; exit 1; fi
    - echo second time lucky
"""})
    engine.start_worker("w1")
    run = engine.wait(engine.trigger(repo))
    job = by_name(run)["flaky"]
    assert run.status == "success" and job.status == "success" and job.attempt == 2
    assert [(a["attempt"], a["status"], a.get("retried")) for a in job.attempts] == [
        (1, "failed", "yaml"), (2, "success", None)]


def test_jobs_go_only_to_workers_whose_tags_cover_theirs_and_unservable_jobs_get_stuck(engine, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": """
on-docker:
  tags: [docker]
  script: echo docker
on-both:
  tags: [docker, linux]
  script: echo both
untagged:
  script: echo anywhere
on-gpu:
  tags: [gpu]
  script: echo gpu
"""})
    engine.env["CIQ_QUEUE_TIMEOUT_SECONDS"] = "4"
    engine.start_worker("plain", untagged=True)
    engine.start_worker("tagged", tags="docker,linux", untagged=False)
    settings_timeout = engine.settings.__class__.from_env(engine.env)
    from ci_queue.dispatch import trigger_run

    engine.settings = settings_timeout
    run_id = trigger_run(engine.store, engine.celery, repo=repo.name, ref="main", clone_url=f"file://{repo}")
    run = engine.wait(run_id, timeout=60)
    jobs = by_name(run)
    states = [(j.name, j.status, j.worker, j.queue, j.failure_reason) for j in run.jobs]
    assert all(jobs[n].worker and jobs[n].worker.startswith("tagged@") for n in ("on-docker", "on-both")), states
    assert jobs["on-docker"].queue == "ciq.tags.docker" and jobs["on-both"].queue == "ciq.tags.docker+linux"
    assert jobs["untagged"].status == "success"
    assert (jobs["on-gpu"].status, jobs["on-gpu"].failure_reason) == ("failed", "stuck")
    assert run.status == "failed"


def test_sigkill_of_the_worker_running_a_job_reruns_it_elsewhere_as_attempt_2(engine, tmp_path):
    import os
    import signal

    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": "long:\n  script:\n    - echo start\n    - sleep 4\n    - echo done\n"})
    engine.env["CIQ_JOB_LEASE_SECONDS"] = "3"
    victim = engine.start_worker("victim", concurrency=1)
    run_id = engine.trigger(repo)
    run = engine.wait(run_id, until=lambda r: bool(r.jobs) and r.jobs[0].status == "running")
    assert run.jobs[0].worker.startswith("victim@")
    engine.start_worker("survivor", concurrency=1)
    os.killpg(victim.pid, signal.SIGKILL)
    run = engine.wait(run_id, timeout=90)
    job = run.jobs[0]
    assert run.status == "success" and job.status == "success"
    assert job.attempt == 2 and job.worker.startswith("survivor@")
    assert [(a["attempt"], a["status"], a.get("failure_reason"), a.get("retried")) for a in job.attempts] == [
        (1, "failed", "runner_system_failure", "system"), (2, "success", None, None)]


def test_fifty_runs_of_twenty_jobs_through_two_workers(engine, tmp_path):
    """Every run ends, every job is recorded exactly once, and after the end every key of the
    runs has a TTL (retention)."""
    import socket

    jobs = "\n".join(f"j{i}:\n  stage: s{i % 4}\n  script: echo {i}\n" for i in range(20))
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": "stages: [s0, s1, s2, s3]\n" + jobs})
    engine.start_worker("a", concurrency=4)
    engine.start_worker("b", concurrency=4)
    run_ids = [engine.trigger(repo) for _ in range(50)]
    for run_id in run_ids:
        run = engine.wait(run_id, timeout=240)
        assert run.status == "success", run.to_dict()
        assert len(run.jobs) == 20
        for job in run.jobs:
            assert job.status == "success" and job.attempt == 1 and len(job.attempts) == 1, job.to_dict()
            out = [e[1]["text"] for e in engine.store.read_log(run_id, job.index) if e[1]["stream"] == "out"]
            assert out == [f"$ echo {job.name[1:]}", job.name[1:]], out
    client = engine.store.r
    prefix = engine.store.prefix
    # the scheduler's books of the farm (ci_queue.store.admission): live workers and the queues
    # and repositories seen; not run data, and their members go as jobs end and workers stop
    farm = (f"{prefix}workers", f"{prefix}queues", f"{prefix}repo:limit")
    for key in client.scan_iter(f"{prefix}*", count=1000):
        if key.endswith(("leases", "queued", "unsent", "sweeper:lock", ":metrics")) or key in farm:
            continue  # shared sets, the lock, the metric counters: not run data (members go as jobs end)
        if key.startswith((f"{prefix}worker:", f"{prefix}q:")) and key.endswith((":info", ":running", ":workers")):
            continue  # live workers' slots and the queues they serve (a dead worker's info expires)
        assert client.ttl(key) > 0, f"{key} has no TTL"
    for shared in (engine.store.leases_key, engine.store.queued_key, engine.store.unsent_key):
        assert client.zcard(shared) == 0, shared
    for name in engine.worker_names():  # every job ended: no slot is busy, nothing is held or sent
        assert client.scard(f"{prefix}worker:{name}@{socket.gethostname()}:running") == 0
    assert not list(client.scan_iter(f"{prefix}q:*:held*")) and not list(client.scan_iter(f"{prefix}q:*:sent"))
    assert not client.exists(f"{prefix}repo:active", f"{prefix}queues:held", f"{prefix}q:ciq.default:running")


def test_a_newer_run_of_a_ref_cancels_the_interruptible_jobs_of_the_older_one(engine, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": """
stages: [test, deploy]
long-tests:
  stage: test
  interruptible: true
  script: sleep 300
migration:
  stage: test
  script: sleep 2
deploy:
  stage: deploy
  script: echo deploy
"""})
    engine.start_worker("w1", concurrency=4)
    first = engine.trigger(repo)
    engine.wait(first, until=lambda r: {j.name: j.status for j in r.jobs}.get("long-tests") == "running")
    second = engine.trigger(repo)
    old = engine.wait(first, timeout=30)
    jobs = by_name(old)
    assert jobs["long-tests"].status == "canceled"
    assert jobs["migration"].status == "success", "a job that is not interruptible is left to finish"
    assert jobs["deploy"].status in ("skipped", "canceled")
    assert old.status == "canceled"
    assert engine.wait(second, until=lambda r: by_name(r).get("long-tests") is not None
                       and by_name(r)["long-tests"].status == "running").status == "running"
    engine.store.cancel_run(second)
    assert engine.wait(second, timeout=30).status == "canceled"


def test_resource_group_runs_one_job_at_a_time_in_order_without_holding_a_slot(engine, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": """
deploy:
  resource_group: production
  script: sleep 1
"""})
    other = tmp_path / "other"
    make_repo(other, {".ci-queue.yml": """
deploy:
  resource_group: production
  script: sleep 1
unrelated:
  script: echo quick
"""})
    engine.start_worker("w1", concurrency=1)
    first = engine.trigger(repo)
    engine.wait(first, until=lambda r: bool(r.jobs) and r.jobs[0].status == "running")
    second = engine.trigger(other)
    third = engine.trigger(repo)
    runs = [engine.wait(run_id, timeout=60) for run_id in (first, second, third)]
    assert [run.status for run in runs] == ["success"] * 3
    deploys = [by_name(run)["deploy"] for run in runs]
    for earlier, later in itertools.pairwise(deploys):
        assert later.started_at >= earlier.finished_at, "two jobs of the group overlapped or ran out of order"
    unrelated = by_name(runs[1])["unrelated"]
    assert unrelated.started_at < deploys[1].started_at, "a waiting job of the group held the only worker slot"
    lines = engine.store.r
    assert lines.get(f"{engine.store.prefix}rg:production:holder") is None


def test_a_stopping_worker_finishes_its_job_and_takes_no_new_one(engine, tmp_path):
    import signal

    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": "stages: [a, b]\nfirst:\n  stage: a\n  script: sleep 2\nsecond:\n  stage: b\n"
                                      "  script: echo later\n"})
    worker = engine.start_worker("stopping", concurrency=1)
    run_id = engine.trigger(repo)
    engine.wait(run_id, until=lambda r: bool(r.jobs) and r.jobs[0].status == "running")
    worker.send_signal(signal.SIGTERM)  # to the main process only, as `docker stop` does
    assert worker.wait(timeout=30) is not None
    run = engine.store.get_run(run_id)
    assert by_name(run)["first"].status == "success", "the running job was finished, not abandoned"
    assert by_name(run)["second"].status == "pending", "a stopping worker took a new job"
    engine.start_worker("next", concurrency=1)
    run = engine.wait(run_id)
    assert run.status == "success" and by_name(run)["second"].worker.startswith("next@")


def test_a_stopping_worker_hands_back_a_job_still_running_after_the_grace(engine, tmp_path):
    import os
    import signal
    import time

    repo = tmp_path / "repo"
    pid_file = tmp_path / "step.pid"
    make_repo(repo, {".ci-queue.yml": f"long:\n  script:\n    - echo $$ > {pid_file}\n    - sleep 6\n"})
    engine.env["CIQ_SHUTDOWN_GRACE_SECONDS"] = "2"
    worker = engine.start_worker("stopping", concurrency=1)
    run_id = engine.trigger(repo)
    engine.wait(run_id, until=lambda r: bool(r.jobs) and r.jobs[0].status == "running" and pid_file.exists())
    step_pid = int(pid_file.read_text())
    worker.send_signal(signal.SIGTERM)  # to the main process only, as `docker stop` does
    assert worker.wait(timeout=30) is not None
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{step_pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{step_pid}"), "the job's shell outlived its worker"
    engine.start_worker("next", concurrency=1)
    run = engine.wait(run_id, timeout=60)
    job = run.jobs[0]
    assert run.status == "success" and job.attempt == 2 and job.worker.startswith("next@")
    assert job.attempts[0]["failure_reason"] == "runner_system_failure"


def test_state_can_live_in_its_own_redis_database(engine, tmp_path):
    import redis

    from ci_queue.store import Store
    from tests.engine.conftest import release_database, reserve_database

    db, token = reserve_database()
    state_url = f"redis://127.0.0.1:6379/{db}"
    state = redis.Redis.from_url(state_url, decode_responses=True)
    try:
        repo = tmp_path / "repo"
        make_repo(repo, {".ci-queue.yml": "job:\n  script: echo separate\n"})
        engine.env["CIQ_STATE_URL"] = state_url
        engine.start_worker("w1")
        engine.store = Store(state, engine.settings.key_prefix, 3600)
        run = engine.wait(engine.trigger(repo))
        assert run.status == "success"
        broker = redis.Redis.from_url(engine.env["CIQ_REDIS_URL"], decode_responses=True)
        assert not list(broker.scan_iter(f"{engine.settings.key_prefix}run:*")), "run state leaked into the broker"
    finally:
        release_database(state, token, engine.settings.key_prefix)


def test_a_project_include_is_read_from_the_registered_repository_and_inputs_come_from_the_trigger(engine, tmp_path):
    """`include: project:` on a real worker: the registered repository's file at its default branch
    (and its own `local:` include), read through the git mirror cache; the run's `inputs` reach
    the top-level file's `spec:inputs`. An unregistered project fails the run naming it."""
    templates = tmp_path / "templates"
    make_repo(templates, {
        "ci/build.yml": "spec: {inputs: {target: }}\n---\ninclude: {local: ci/common.yml}\n"
                        "build-$[[ inputs.target ]]:\n  extends: .common\n  script: echo built $[[ inputs.target ]]\n",
        "ci/common.yml": ".common: {stage: build}\n",
    })
    registry = tmp_path / "repos.yml"
    registry.write_text(f"repositories:\n  - name: group/templates\n    provider: gitlab\n"
                        f"    clone_url: file://{templates}\n    notify: never\n")
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": "spec: {inputs: {target: {default: linux}}}\n---\n"
                                      "include:\n  - project: group/templates\n    file: ci/build.yml\n"
                                      "    inputs: {target: '$[[ inputs.target ]]'}\n"
                                      "  - {project: group/missing, file: x.yml, rules: [{if: $BROKEN}]}\n"})
    engine.start_worker("w1", extra_env={"CIQ_REPOS_FILE": str(registry)})
    run = engine.wait(engine.trigger(repo, context={"inputs": {"target": "arm64"}}))
    assert run.status == "success", run.to_dict()
    [job] = run.jobs
    assert (job.name, job.stage) == ("build-arm64", "build")
    log = engine.store.read_log(run.id, engine.store.job_index(run.id, "build-arm64"))
    assert "built arm64" in [fields["text"] for _, fields in log if fields["stream"] == "out"]
    broken = engine.wait(engine.trigger(repo, variables={"BROKEN": "1"}))
    assert broken.status == "failed"
    assert broken.error.startswith(".ci-queue.yml:7:5: project 'group/missing' is not a registered repository")
