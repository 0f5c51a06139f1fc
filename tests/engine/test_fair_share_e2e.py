"""Fair share on a real farm: real ``ci-queue worker`` processes, real Redis, real git."""

from __future__ import annotations

import os
import signal

import pytest

from ci_queue.clock import now_iso
from ci_queue.store.admission import Admission
from tests.conftest import wait_until
from tests.engine.conftest import make_repo

pytestmark = pytest.mark.integration


def started(run) -> list[str]:
    return sorted(job.started_at for job in run.jobs if job.started_at)


def test_a_repository_of_one_job_starts_before_a_big_one_runs_8_more(engine, tmp_path):
    """Repository A queues 200 jobs, then repository B one; with 2 workers x 2 slots B's job
    starts before A has started 8 more (FIFO would make it wait for all 200)."""
    big, small = tmp_path / "big", tmp_path / "small"
    make_repo(big, {".ci-queue.yml": "".join(f"a{i}:\n  script: sleep 2\n" for i in range(200))})
    make_repo(small, {".ci-queue.yml": "b:\n  script: echo small\n"})
    engine.start_worker("w1", concurrency=2)
    engine.start_worker("w2", concurrency=2)
    a = engine.trigger(big)
    engine.wait(a, timeout=60, until=lambda r: sum(j.status == "running" for j in r.jobs) == 4)
    in_broker = engine.store.r.llen("ciq.default")
    held = {q.queue: q.held for q in Admission(engine.store).queues()}["ciq.default"]
    ended = sum(j.status == "success" for j in engine.store.get_run(a).jobs)  # none, unless the machine crawls
    assert in_broker <= ended, "the broker holds no more than the free slots (one per job that ended since)"
    assert 196 - ended <= held <= 196, "the rest wait in Redis"
    b_triggered = now_iso()
    b = engine.trigger(small)
    b_run = engine.wait(b, timeout=60, until=lambda r: bool(r.jobs) and r.jobs[0].started_at is not None)
    b_started = b_run.jobs[0].started_at
    a_run = engine.store.get_run(a)
    more = [t for t in started(a_run) if b_triggered < t < b_started]
    assert len(more) < 8, f"A started {len(more)} jobs after B was triggered and before B's job started"
    assert engine.wait(b, timeout=30).status == "success"
    engine.store.cancel_run(a)
    a_run = engine.wait(a, timeout=60)
    assert a_run.status == "canceled"
    assert all(job.attempt == 1 and len(job.attempts) <= 1 for job in a_run.jobs), "every job recorded once"


def test_a_worker_killed_while_jobs_are_held_loses_nothing(engine, tmp_path):
    repo, go = tmp_path / "repo", tmp_path / "go"
    wait_for_go = f"while [ ! -e {go} ]; do sleep 0.1; done"  # every job runs until the test says go
    make_repo(repo, {".ci-queue.yml": "".join(f"j{i}:\n  script:\n    - echo j{i}\n    - '{wait_for_go}'\n"
                                              for i in range(3))})
    engine.env["CIQ_JOB_LEASE_SECONDS"] = "3"
    victim = engine.start_worker("victim", concurrency=1)
    run_id = engine.trigger(repo)
    run = engine.wait(run_id, until=lambda r: any(j.status == "running" for j in r.jobs))
    killed = next(job for job in run.jobs if job.status == "running")

    def held() -> int | None:
        return {q.queue: q.held for q in Admission(engine.store).queues()}.get("ciq.default")

    wait_until(lambda: held() == 2 and engine.store.r.llen("ciq.default") == 0, 10,
               "two jobs held in Redis, none in the broker, while the only slot is busy")
    engine.start_worker("survivor", concurrency=1)
    os.killpg(victim.pid, signal.SIGKILL)
    go.touch()
    run = engine.wait(run_id, timeout=90)
    assert run.status == "success", run.to_dict()
    for job in run.jobs:
        out = [e[1]["text"] for e in engine.store.read_log(run_id, job.index) if e[1]["stream"] == "out"]
        assert job.status == "success" and job.worker.startswith("survivor@")
        if job.index == killed.index:
            assert [(a["attempt"], a.get("failure_reason")) for a in job.attempts] == [
                (1, "runner_system_failure"), (2, None)]
        else:
            assert job.attempt == 1 and len(job.attempts) == 1 and out.count(f"{job.name}") == 1, out


def test_a_worker_announces_its_slots_and_withdraws_them_when_told_to_stop(engine):
    def slots() -> dict[str, tuple[int, int]]:
        return {q.queue: (q.workers, q.slots) for q in Admission(engine.store).queues()}

    worker = engine.start_worker("w1", tags="docker", concurrency=3)
    served = wait_until(lambda: slots().get("ciq.tags.docker") == (1, 3) and slots(), 10, "the slots announced")
    assert served["ciq.default"] == (1, 3) and "ciq.control" not in served, "job queues only"
    worker.send_signal(signal.SIGTERM)  # to the main process, as `docker stop` does
    wait_until(lambda: "ciq.tags.docker" not in slots(), 10, "the slots withdrawn")
    assert worker.wait(timeout=30) == 0
