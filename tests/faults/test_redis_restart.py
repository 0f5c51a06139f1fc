"""A Redis restart during a run costs no more than the outage: no worker exits, no job runs
twice, a job that ended while Redis was away has its end (and its whole log) recorded after."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import RedisServer
from tests.engine.conftest import Engine, make_repo
from tests.faults.conftest import LEASE_SECONDS

PIPELINE = """
long:
  script:
    - for i in $(seq 1 80); do echo "long line $i"; sleep 0.1; done
    - echo long-done
short:
  script:
    - sleep 1
    - echo short-done
later:
  stage: test
  script:
    - echo later-done
"""


def _log_text(engine: Engine, run_id: str, index: int) -> str:
    return "\n".join(fields["text"] for _, fields in engine.store.read_log(run_id, index))


def test_a_redis_restart_costs_only_the_outage(fault_engine: Engine, redis_server: RedisServer, tmp_path: Path):
    engine = fault_engine
    workers = [engine.start_worker("w1", concurrency=2), engine.start_worker("w2", concurrency=2)]
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": PIPELINE})
    run_id = engine.trigger(repo)
    engine.wait(run_id, until=lambda r: len(r.jobs) == 3 and all(j.status == "running" for j in r.jobs[:2]))

    redis_server.kill()
    outage = LEASE_SECONDS + 2  # longer than a lease: before, every running job was taken away
    down_until = time.monotonic() + outage
    while time.monotonic() < down_until:  # the outage itself; the workers must not exit meanwhile
        assert all(p.poll() is None for p in workers), "a worker exited while Redis was down"
        time.sleep(0.2)
    redis_server.start()
    back = time.monotonic()

    run = engine.wait(run_id, timeout=60)
    recovery = time.monotonic() - back
    assert run.status == "success", run.to_dict()
    for job in run.jobs:
        assert job.attempt == 1 and len(job.attempts) == 1, (job.name, job.attempts)
    long_log = _log_text(engine, run_id, 0)
    assert long_log.count("long-done") == 2  # the echoed command and its output, once each
    for i in range(1, 81):
        assert f"long line {i}\n" in long_log + "\n", f"line {i} of the log was lost"
    assert "short-done" in _log_text(engine, run_id, 1)
    assert all(p.poll() is None for p in workers), "a worker exited after Redis came back"
    assert recovery < 2 * LEASE_SECONDS, f"the run took {recovery:.1f}s to finish after Redis came back"


def test_a_message_stranded_by_the_restart_is_put_back(fault_engine: Engine, redis_server: RedisServer,
                                                       tmp_path: Path):
    """Redis dies while a worker holds the plan message it just received: kombu cannot give it
    back, and would only restore it after the visibility timeout (a day); the sweeper does."""
    engine = fault_engine
    worker = engine.start_worker("w1", concurrency=1)
    repo = tmp_path / "repo"
    make_repo(repo, {".ci-queue.yml": "only:\n  script:\n    - echo planned-and-ran\n"})
    run_id = engine.trigger(repo)
    redis_server.kill()  # the plan message is delivered or about to be: either way it must not be lost
    redis_server.start()
    back = time.monotonic()
    run = engine.wait(run_id, timeout=60)
    assert run.status == "success", run.to_dict()
    assert "planned-and-ran" in _log_text(engine, run_id, 0)
    assert worker.poll() is None
    assert time.monotonic() - back < 45
