"""The Docker executor under self-fencing: the container of a frozen worker's job is paused before
the job runs elsewhere, and killed once its worker learns the job was taken over."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from docker.errors import NotFound  # a container removed between `docker ps` and its inspection

from tests.conftest import wait_until
from tests.engine.conftest import Engine, make_repo
from tests.integration.conftest import TEST_IMAGE, docker_client, docker_image  # noqa: F401  (fixtures)


def _containers(client, run_id: str, attempt: int) -> list:
    return client.containers.list(all=True, filters={"label": [f"ci-queue.run={run_id}",
                                                              f"ci-queue.attempt={attempt}"]})




def test_a_frozen_workers_container_is_paused_then_killed(fault_engine: Engine, docker_client,  # noqa: F811
                                                          docker_image, tmp_path: Path):  # noqa: F811
    engine = fault_engine
    engine.env.update(CIQ_EXECUTOR="docker", CIQ_DOCKER_NETWORK="none")
    make_repo(tmp_path / "repo", {".ci-queue.yml": f"""
deploy:
  image: {TEST_IMAGE}
  script:
    - n=600; if [ "$CI_JOB_ATTEMPT" != 1 ]; then n=10; fi
    - for i in $(seq 1 $n); do echo "attempt=$CI_JOB_ATTEMPT i=$i"; sleep 0.1; done
"""})
    frozen = engine.start_worker("frozen", concurrency=1)
    run_id = engine.trigger(tmp_path / "repo")
    first = wait_until(lambda: [c for c in _containers(docker_client, run_id, 1) if c.status == "running"], 120,
                   "attempt 1's container running")[0]
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        engine.start_worker("other", concurrency=1)
        run = engine.wait(run_id, timeout=120)
        first.reload()
        assert first.attrs["State"]["Paused"], f"attempt 1's container ran on: {first.status}"
        assert run.status == "success" and run.jobs[0].attempt == 2, run.jobs[0].attempts
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    # killed, then removed by its runner: nothing of attempt 1 is left on the daemon
    wait_until(lambda: not _containers(docker_client, run_id, 1), 60,
               "attempt 1's container going once its worker woke up", ignore=(NotFound,))


def test_a_frozen_workers_services_are_paused_with_its_step(fault_engine: Engine, docker_client,  # noqa: F811
                                                            docker_image, tmp_path: Path):  # noqa: F811
    """The pod and the service containers are guarded like the step's: paused when the lease
    lapses, killed and removed once the worker learns that the job moved on."""
    engine = fault_engine
    engine.env.update(CIQ_EXECUTOR="docker", CIQ_DOCKER_NETWORK="none")
    make_repo(tmp_path / "repo", {".ci-queue.yml": f"""
deploy:
  image: {TEST_IMAGE}
  services:
    - name: {TEST_IMAGE}
      alias: db
      entrypoint: ["sh", "-c", "while :; do echo tick; sleep 0.1; done"]
  script:
    - n=600; if [ "$CI_JOB_ATTEMPT" != 1 ]; then n=10; fi
    - for i in $(seq 1 $n); do echo "attempt=$CI_JOB_ATTEMPT i=$i"; sleep 0.1; done
"""})
    frozen = engine.start_worker("frozen", concurrency=1)
    run_id = engine.trigger(tmp_path / "repo")
    first = wait_until(lambda: (found := [c for c in _containers(docker_client, run_id, 1) if c.status == "running"])
                       and len(found) == 3 and found, 120, "attempt 1's pod, service and step running",
                       ignore=(NotFound,))
    kinds = sorted("pod" if "ci-queue.pod" in c.labels else "service" if "ci-queue.service" in c.labels else "step"
                   for c in first)
    assert kinds == ["pod", "service", "step"]
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        engine.start_worker("other", concurrency=1)
        run = engine.wait(run_id, timeout=120)
        for container in first:
            container.reload()
        running = [c.labels for c in first if not c.attrs["State"]["Paused"]]
        assert not running, f"attempt 1's containers ran on: {running}"
        assert run.status == "success" and run.jobs[0].attempt == 2, run.jobs[0].attempts
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    wait_until(lambda: not _containers(docker_client, run_id, 1), 60,
               "attempt 1's containers going once its worker woke up", ignore=(NotFound,))
