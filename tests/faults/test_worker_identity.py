"""A worker restarted under its name is not poisoned by its predecessor's flags, and two live
workers never share one name."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO
from tests.engine.conftest import Engine, make_repo


def test_a_worker_restarted_under_its_name_is_not_handed_its_predecessors_flag(fault_engine: Engine,
                                                                                tmp_path: Path):
    engine = fault_engine
    engine.env["CIQ_SHUTDOWN_GRACE_SECONDS"] = "1"
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": "long:\n  script:\n    - sleep 4\n    - echo long-done\n"})
    worker = engine.start_worker("w", concurrency=1)
    first = engine.trigger(repo)
    engine.wait(first, until=lambda r: bool(r.jobs) and r.jobs[0].status == "running")
    worker.send_signal(signal.SIGTERM)  # the grace runs out: the job is handed back
    assert worker.wait(timeout=30) is not None

    engine.start_worker("w", concurrency=1)  # systemd / compose restart it under the same name
    run = engine.wait(first, timeout=60)
    assert run.status == "success" and run.jobs[0].attempt == 2, run.jobs[0].attempts
    second = engine.wait(engine.trigger(repo), timeout=60)
    assert second.status == "success", second.jobs[0].attempts
    assert second.jobs[0].attempt == 1 and second.jobs[0].worker.startswith("w@")


def test_a_second_live_worker_with_the_same_name_exits_with_a_clear_message(fault_engine: Engine):
    engine = fault_engine
    engine.start_worker("twin", concurrency=1)
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "ci_queue.cli", "worker", "--name", "twin", "--concurrency", "1"],
                            env=engine.env, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert second.returncode == 1
    assert "another worker named twin@" in second.stderr and "--name" in second.stderr, second.stderr
    assert time.monotonic() - started < 40
    assert all(p.poll() is None for p in engine.workers), "the first worker must go on"
