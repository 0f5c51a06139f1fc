"""A job never runs twice at the same time: the steps of a worker that is frozen, cut off or
killed stop before another host can start the job again (``workers.guard``), and nothing a job
started outlives the worker that ran it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.conftest import after_takeover, deploy_pipeline, process_state, wait_until
from tests.engine.conftest import Engine, make_repo


def test_a_frozen_workers_step_stops_before_the_job_runs_elsewhere(fault_engine: Engine, tmp_path: Path):
    engine = fault_engine
    effects = tmp_path / "side-effects"
    pids = tmp_path / "pids"
    pids.mkdir()
    make_repo(tmp_path / "repo", {".ci-queue.yml": deploy_pipeline(effects, pids, first=400, later=20)})
    frozen = engine.start_worker("frozen", concurrency=1)
    run_id = engine.trigger(tmp_path / "repo")
    wait_until(lambda: effects.exists() and "attempt=1" in effects.read_text(), 60, "attempt 1 starting")
    step = int((pids / "1").read_text())
    os.killpg(frozen.pid, signal.SIGSTOP)  # the worker and its pool, not the step's own session
    try:
        engine.start_worker("other", concurrency=1)
        run = engine.wait(run_id, timeout=90)  # attempt 2 runs to its end while the first worker is frozen
        lines, first_of_2, late = after_takeover(effects)
        assert not late, f"attempt 1 still wrote while attempt 2 ran: {late[:3]}"
        assert process_state(step) is not None, "the frozen attempt's step is frozen, not yet killed"
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    wait_until(lambda: process_state(step) is None, 30, "the old attempt's step dying once its worker woke up")
    assert run.status == "success" and run.jobs[0].attempt == 2, run.jobs[0].attempts
    assert run.jobs[0].attempts[0]["failure_reason"] == "runner_system_failure"
    assert effects.read_text().count("attempt=1 ") == len(lines[:first_of_2]), "the old attempt went on after it woke"
    assert len(engine.store.get_run(run_id).jobs[0].attempts) == 2, "the woken worker's late result was refused"


def test_a_killed_workers_step_dies_with_it(fault_engine: Engine, tmp_path: Path):
    engine = fault_engine
    pid_file, escapee = tmp_path / "step.pid", tmp_path / "escapee.pid"
    scripts, workspace = tmp_path / "scripts.dir", tmp_path / "workspace.dir"
    make_repo(tmp_path / "repo", {".ci-queue.yml": f"""
job:
  script:
    - if [ "$CI_JOB_ATTEMPT" = 1 ]; then dirname "$0" > {scripts}; pwd > {workspace}; fi
    - if [ "$CI_JOB_ATTEMPT" = 1 ]; then setsid sh -c 'echo $$ > {escapee}; exec sleep 300' & fi
    - if [ "$CI_JOB_ATTEMPT" = 1 ]; then echo $$ > {pid_file}; sleep 300; fi
"""})
    doomed = engine.start_worker("doomed", concurrency=1)
    run_id = engine.trigger(tmp_path / "repo")
    step = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 60, "the step starting"))
    killed = time.monotonic()
    os.killpg(doomed.pid, signal.SIGKILL)  # kill -9 of the worker and its pool, as the OOM killer may
    doomed.wait(timeout=10)
    escaped = int(wait_until(lambda: escapee.exists() and escapee.read_text().strip(), 10, "the escapee starting"))
    wait_until(lambda: process_state(step) is None, 5, "the step dying with its worker")
    wait_until(lambda: process_state(escaped) is None, 5, "what the step started in a session of its own dying too")
    gone_after = time.monotonic() - killed
    left = [Path(scripts.read_text().strip()), Path(workspace.read_text().strip()).parent]
    assert all(path.exists() for path in left), "the killed worker's folders are there until the next one starts"
    engine.start_worker("next", concurrency=1)  # removes what the killed worker left on this host
    assert not any(path.exists() for path in left), left
    run = engine.wait(run_id, timeout=90)
    assert run.status == "success" and run.jobs[0].attempt == 2, run.jobs[0].attempts
    assert gone_after < 5
