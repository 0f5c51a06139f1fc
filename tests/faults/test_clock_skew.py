"""Hosts whose clocks disagree: every lease and queue deadline is on Redis's clock, so a worker
30 s behind keeps its lease under a sweeper with the right clock, and a sweeper 30 s ahead does
not take a lease away from a worker with the right clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.engine.conftest import Engine, make_repo
from tests.faults.conftest import LEASE_SECONDS

SKEWED_CLOCK = Path(__file__).parent / "skewed_clock"
PIPELINE = f"""
slow:
  script:
    - sleep {LEASE_SECONDS + 5}
    - echo slow-done
"""


def _wait_for_the_sweeper_lock(engine: Engine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not engine.store.r.exists(f"{engine.store.prefix}sweeper:lock"):
        assert time.monotonic() < deadline, "no sweeper took the lock"
        time.sleep(0.1)


@pytest.mark.parametrize(("skew", "runner"), [(-30, "skewed"), (30, "right")])
def test_skewed_clocks_take_no_lease_away(fault_engine: Engine, tmp_path: Path, skew: int, runner: str):
    engine = fault_engine
    skewed = {"CIQ_TEST_CLOCK_SKEW": str(skew), "PYTHONPATH": f"{SKEWED_CLOCK}:{engine.env['PYTHONPATH']}"}
    # the host that does not run the job starts first and holds the sweeper's lock
    sweeper = "right" if runner == "skewed" else "skewed"
    engine.start_worker(sweeper, concurrency=1, untagged=False, extra_env=skewed if sweeper == "skewed" else None)
    _wait_for_the_sweeper_lock(engine)
    engine.start_worker(runner, concurrency=1, extra_env=skewed if runner == "skewed" else None)
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": PIPELINE})
    run = engine.wait(engine.trigger(repo), timeout=90)
    job = run.jobs[0]
    assert run.status == "success", run.to_dict()
    assert job.attempt == 1 and len(job.attempts) == 1, job.attempts
    assert job.worker.startswith(f"{runner}@")
