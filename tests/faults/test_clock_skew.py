"""Hosts whose clocks disagree: every lease and queue deadline is on Redis's clock, so a worker
30 s behind (or ahead) keeps its leases, and a sweeper on such a host judges them right."""

from __future__ import annotations

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


@pytest.mark.parametrize("skew", [-30, 30])
def test_a_worker_with_a_skewed_clock_keeps_its_lease(fault_engine: Engine, tmp_path: Path, skew: int):
    engine = fault_engine
    # the skewed host runs the job and sweeps; a host with the right clock sweeps as well
    engine.start_worker("skewed", concurrency=1, extra_env={
        "CIQ_TEST_CLOCK_SKEW": str(skew), "PYTHONPATH": f"{SKEWED_CLOCK}:{engine.env['PYTHONPATH']}"})
    engine.start_worker("right", concurrency=1, untagged=False)
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": PIPELINE})
    run = engine.wait(engine.trigger(repo), timeout=90)
    job = run.jobs[0]
    assert run.status == "success", run.to_dict()
    assert job.attempt == 1 and len(job.attempts) == 1, job.attempts
    assert job.worker.startswith("skewed@")
