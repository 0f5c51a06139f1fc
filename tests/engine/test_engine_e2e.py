"""The distributed engine end to end: real Redis, real ``ci-queue worker`` processes, real git."""

from __future__ import annotations

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
