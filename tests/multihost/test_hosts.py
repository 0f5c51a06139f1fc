"""Faults of whole build hosts, each host a network namespace of its own (see conftest): a host
partitioned while it runs a job, a host that reboots, and a Redis restart under two hosts."""

from __future__ import annotations

import time
from pathlib import Path

from ci_queue.celery_app import make_celery
from ci_queue.dispatch import trigger_run
from ci_queue.store import RunRecord
from tests.conftest import after_takeover, deploy_pipeline, process_state, wait_until
from tests.engine.conftest import make_repo
from tests.multihost.conftest import LEASE_SECONDS, Bed

TERMINAL = ("success", "failed", "canceled", "skipped", "error")






def _trigger(bed: Bed, repo: Path) -> str:
    app = make_celery(bed.settings(), broker_url=f"redis+socket://{bed.socket}")
    return trigger_run(bed.store(), app, repo=repo.name, ref="main", clone_url=f"file://{repo}")


def _finished(bed: Bed, run_id: str, timeout: float = 120) -> RunRecord:
    return wait_until(lambda: (run := bed.store().get_run(run_id)) is not None and run.status in TERMINAL and run,
                  timeout, f"run {run_id} finishing")


def test_a_partitioned_hosts_job_runs_elsewhere_and_its_step_is_stopped(bed: Bed, tmp_path: Path):
    h1, h2 = bed.add_host("h1"), bed.add_host("h2")
    effects, pids = tmp_path / "effects", tmp_path / "pids"
    pids.mkdir()
    make_repo(tmp_path / "repo", {".ci-queue.yml": deploy_pipeline(effects, pids, first=600, later=10)})
    cut_off = bed.start_worker(h1, "a")
    run_id = _trigger(bed, tmp_path / "repo")
    wait_until(lambda: (pids / "1").exists() and effects.exists(), 60, "attempt 1 starting on h1")
    step = int((pids / "1").read_text())
    h1.cut()
    cut_at = time.monotonic()
    bed.start_worker(h2, "b")
    run = _finished(bed, run_id)
    taken_over = time.monotonic() - cut_at
    lines, first_of_2, late = after_takeover(effects)
    assert "host=h2" in lines[first_of_2] and "host=h1" in lines[0]
    assert not late, f"both attempts ran at once: {late[:3]}"
    assert process_state(step) in ("T", None), "the cut-off host's step still runs"
    h1.mend()
    wait_until(lambda: process_state(step) is None, 30, "the old attempt's step dying once its host is back")
    assert run.status == "success" and run.jobs[0].attempt == 2, run.jobs[0].attempts
    assert run.jobs[0].attempts[0]["failure_reason"] == "runner_system_failure"
    written_by_1 = first_of_2
    wait_until(lambda: len(bed.store().get_run(run_id).jobs[0].attempts) == 2, 5, "the record staying as it is")
    assert effects.read_text().count("attempt=1 ") == written_by_1, "the old attempt wrote after its host came back"
    assert cut_off.poll() is None, "the partitioned worker exited"
    assert taken_over < 6 * LEASE_SECONDS


def test_a_host_that_reboots_loses_its_job_to_another_and_cleans_up_after(bed: Bed, tmp_path: Path):
    h1, h2 = bed.add_host("h1"), bed.add_host("h2")
    marker = tmp_path / "workspace.dir"
    make_repo(tmp_path / "repo", {".ci-queue.yml": f"""
job:
  script:
    - if [ "$CI_JOB_ATTEMPT" = 1 ]; then pwd > {marker}; sleep 300; fi
    - echo "ran on $(hostname)"
"""})
    bed.start_worker(h1, "a")
    run_id = _trigger(bed, tmp_path / "repo")
    workspace = Path(wait_until(lambda: marker.exists() and marker.read_text().strip(), 60, "attempt 1 starting"))
    h1.reboot()
    assert not h1.pids(), "a process of the rebooted host survived"
    bed.start_worker(h2, "b")
    run = _finished(bed, run_id)
    assert run.status == "success" and run.jobs[0].attempt == 2 and run.jobs[0].worker.startswith("b@h2")
    assert workspace.exists(), "the dead worker's workspace is there until the host's next worker starts"
    bed.start_worker(h1, "a")  # the host is back
    assert not workspace.parent.exists(), "the next worker on the host removed what the dead one left"


def test_a_redis_restart_under_workers_on_two_hosts(bed: Bed, tmp_path: Path):
    h1, h2 = bed.add_host("h1"), bed.add_host("h2")
    make_repo(tmp_path / "repo", {".ci-queue.yml": """
one:
  script:
    - for i in $(seq 1 60); do echo "one $i"; sleep 0.1; done
two:
  script:
    - for i in $(seq 1 60); do echo "two $i"; sleep 0.1; done
"""})
    workers = [bed.start_worker(h1, "a"), bed.start_worker(h2, "b")]
    run_id = _trigger(bed, tmp_path / "repo")
    wait_until(lambda: (run := bed.store().get_run(run_id)) is not None and len(run.jobs) == 2
           and all(job.status == "running" for job in run.jobs), 60, "both jobs running")
    bed.kill_redis()
    down_until = time.monotonic() + LEASE_SECONDS + 2
    while time.monotonic() < down_until:  # the outage itself
        assert all(p.poll() is None for p in workers), "a worker exited while Redis was down"
        time.sleep(0.2)
    bed.start_redis()
    run = _finished(bed, run_id)
    assert run.status == "success", run.to_dict()
    assert [job.attempt for job in run.jobs] == [1, 1], [job.attempts for job in run.jobs]
    assert {job.worker.split("@")[1] for job in run.jobs} == {"h1", "h2"}
    for index, name in enumerate(("one", "two")):
        text = "\n".join(f["text"] for _, f in bed.store().read_log(run_id, index)) + "\n"
        assert all(f"{name} {i}\n" in text for i in range(1, 61)), f"lines of {name} were lost"
