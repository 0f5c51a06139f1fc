"""The deployment of the README, for real: the project's image built from ./Dockerfile on a Debian
base made on this machine, docker-compose.yml brought up with host networking
(configs/compose/host-network.yml; Redis and the web app on free loopback ports), workers scaled
to 2, a pipeline triggered through the web API, a worker scaled away while it runs a job (the job
is handed back and finishes on the other worker), and everything torn down.

One test, slow by nature: one to two minutes on a busy 2-core machine, about a minute more the
first time (the base image is made with debootstrap, about 40 s, and kept under its tag for later
runs, as the Redis image built on it is). The project's image (30-70 s to build), containers,
volumes and networks are removed whatever happens. Needs Docker, Docker Compose (v2 or Debian's
v1) and, for the base, debootstrap: `bash .ci/docker.sh up` installs them. Skipped without them
on a developer's machine, a failure in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from ci_queue.standalone import free_port
from tests.conftest import REPO, wait_until
from tests.engine.conftest import make_repo
from tests.integration.conftest import missing_infrastructure

BASE_IMAGE = "ci-queue-test/debian:bookworm"  # .ci/debian-base.sh; kept between runs
REDIS_IMAGE = "ci-queue-test/redis:bookworm"  # tests/deploy/redis.Dockerfile on it; kept too
HERE = Path(__file__).resolve().parent
JOB_LEASE = 300  # so long that a job re-queued within the test can only have been handed back
GRACE = 3  # CIQ_SHUTDOWN_GRACE_SECONDS of the workers: the held job outlives it

PIPELINE = """\
stages: [build, test]
build:
  stage: build
  script: echo "built by $(id -un) with $(command -v python3)"
# Both wait for the test's gate (a file on a read-only bind mount): one on each worker.
hold-a:
  stage: test
  script:
    - while [ ! -e /gate/open ]; do sleep 0.2; done
    - echo "hold-a done"
hold-b:
  stage: test
  script:
    - while [ ! -e /gate/open ]; do sleep 0.2; done
    - echo "hold-b done"
"""


def run(argv: list[str], timeout: float, **options: Any) -> subprocess.CompletedProcess[str]:
    """``argv``, failing the test with its output if it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **options)
    assert done.returncode == 0, \
        f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def compose_command() -> list[str]:
    """``docker compose`` (v2) if the CLI has it, else Debian's ``docker-compose`` (v1)."""
    if shutil.which("docker") is None:
        missing_infrastructure("no docker CLI")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        missing_infrastructure("no Docker daemon answers")
    if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    missing_infrastructure("neither `docker compose` nor `docker-compose` is installed")
    raise AssertionError("unreachable")


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True, timeout=60).returncode == 0


def ensure_base_images() -> None:
    """The Debian base (debootstrap) and the Redis image built on it, made once and kept."""
    if not image_exists(BASE_IMAGE):
        if shutil.which("debootstrap") is None:
            missing_infrastructure(f"no {BASE_IMAGE} and no debootstrap to make it")
        run(["bash", str(REPO / ".ci" / "debian-base.sh"), BASE_IMAGE], timeout=900)
    if not image_exists(REDIS_IMAGE):
        run(["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
             "-t", REDIS_IMAGE, "-f", str(HERE / "redis.Dockerfile"), str(HERE)], timeout=900)


class Deployment:
    """One Compose project of the test's own: its files, ports, image and clean-up."""

    def __init__(self, workdir: Path, compose: list[str]) -> None:
        self.compose = compose
        suffix = uuid.uuid4().hex[:10]
        self.project, self.image = f"ciqdeploy{suffix}", f"ci-queue-deploy-test:{suffix}"
        self.token = uuid.uuid4().hex + uuid.uuid4().hex
        self.redis_port, self.web_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.repo, self.gate = workdir / "repo", workdir / "gate"
        self.gate.mkdir()
        self.gate.chmod(0o755)  # the jobs run as ciq-jobN and must see the gate open
        env_file = workdir / "ci-queue.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in {
            "CIQ_API_TOKENS": self.token,
            "CIQ_ALLOW_LOCAL_REPOS": "1",  # the repository is a bind-mounted directory
            "CIQ_SHUTDOWN_GRACE_SECONDS": GRACE,
            "CIQ_KILL_GRACE_SECONDS": 1,
            "CIQ_JOB_LEASE_SECONDS": JOB_LEASE,
        }.items()))
        test_override = workdir / "compose.test.yml"
        test_override.write_text(yaml.safe_dump({"services": {
            # one job per worker, so that each of the two held jobs has a worker of its own
            "worker": {"command": ["ci-queue-worker", "--concurrency", "1"],
                       "volumes": [f"{self.repo}:/srv/repos/app:ro", f"{self.gate}:/gate:ro"],
                       "healthcheck": {"interval": "2s"}},
            "web": {"healthcheck": {"interval": "2s"}},
            "redis": {"healthcheck": {"interval": "1s"}},
        }}))
        self.files = [REPO / "docker-compose.yml", REPO / "configs" / "compose" / "host-network.yml", test_override]
        self.env = {**os.environ, "CIQ_IMAGE": self.image, "CIQ_REDIS_IMAGE": REDIS_IMAGE,
                    "CIQ_ENV_FILE": str(env_file), "CIQ_COMPOSE_REDIS_PORT": str(self.redis_port),
                    "CIQ_COMPOSE_WEB_PORT": str(self.web_port), "CIQ_COMPOSE_WEB_HOST": "127.0.0.1"}
        self.built = False

    def run_compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [*self.compose, "--project-name", self.project, "--project-directory", str(REPO)]
        for path in self.files:
            argv += ["--file", str(path)]
        return run([*argv, *args], timeout=timeout, env=self.env, cwd=REPO)

    def check_default_topology(self) -> dict[str, Any]:
        """The bridge-network files (docker-compose.yml + docker-compose.override.yml, what
        `docker compose up` reads) as Compose resolves them: the tests never run containers on a
        bridge (network rule), but Compose must accept the files."""
        argv = [*self.compose, "--project-name", self.project, "--project-directory", str(REPO),
                "--file", str(REPO / "docker-compose.yml"), "--file", str(REPO / "docker-compose.override.yml"),
                "config"]
        return yaml.safe_load(run(argv, timeout=120, env=self.env, cwd=REPO).stdout)

    def build(self) -> None:
        self.built = True  # from here on, clean-up removes the image
        run(["docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", self.image,
             str(REPO)], timeout=900)

    def scale(self, workers: int) -> None:
        self.run_compose("up", "--detach", "--no-build", "--scale", f"worker={workers}", timeout=600)

    def containers(self, service: str) -> list[str]:
        return self.run_compose("ps", "-q", service).stdout.split()

    def healthy(self, service: str, count: int) -> bool:
        ids = self.containers(service)
        if len(ids) != count:
            return False
        states = run(["docker", "inspect", "--format", "{{.State.Health.Status}}", *ids], timeout=60).stdout.split()
        return states == ["healthy"] * count

    def worker_name(self, container: str) -> str:
        """The name the replica gave itself (configs/container/ci-queue-worker)."""
        return run(["docker", "exec", container, "cat", "/var/lib/ci-queue/worker-name"], timeout=60).stdout.strip()

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, headers={"Authorization": f"Bearer {self.token}"},
                                timeout=10, **kwargs)

    def job(self, run_id: str, name: str) -> dict[str, Any]:
        answer = self.api("GET", f"/api/v1/runs/{run_id}")
        assert answer.status_code == 200, answer.text
        return next(job for job in answer.json()["jobs"] if job["name"] == name)

    def logs(self) -> str:
        try:
            return self.run_compose("logs", "--no-color", "--tail", "60", timeout=120).stdout[-20000:]
        except Exception as exc:  # the logs are a diagnosis, never the failure itself
            return f"(no logs: {exc})"

    def leftovers(self) -> dict[str, list[str]]:
        """What of this project is still on the daemon: containers, volumes, networks, the image."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {kind: subprocess.run(["docker", kind, "ls", *(["-a"] if kind == "container" else []), "-q",
                                       "--filter", label], capture_output=True, text=True, timeout=60).stdout.split()
                 for kind in ("container", "volume", "network")}
        found["image"] = [self.image] if self.built and image_exists(self.image) else []
        return found

    def tear_down(self) -> None:
        """``down -v``, then whatever it left (a half-started project), then the image. Every step
        runs whatever the previous one did."""
        subprocess.run([*self.compose, "--project-name", self.project, "--project-directory", str(REPO),
                        *(arg for path in self.files for arg in ("--file", str(path))),
                        "down", "--volumes", "--remove-orphans", "--timeout", "10"],
                       capture_output=True, timeout=300, env=self.env, cwd=REPO)
        left = self.leftovers()
        for kind, flag in (("container", "-f"), ("network", None), ("volume", "-f")):
            if left[kind]:
                subprocess.run(["docker", kind, "rm", *([flag] if flag else []), *left[kind]],
                               capture_output=True, timeout=120)
        if self.built:
            subprocess.run(["docker", "image", "rm", "-f", self.image], capture_output=True, timeout=120)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    compose = compose_command()  # Docker and Compose first: skipped (or failed in CI) without them
    ensure_base_images()
    deployment = Deployment(tmp_path, compose)
    try:
        yield deployment
    finally:
        deployment.tear_down()


@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_compose_deployment_scales_and_hands_a_running_job_back(deployment: Deployment):
    timings: dict[str, float] = {}
    started = time.monotonic()

    def lap(what: str) -> None:
        timings[what] = round(time.monotonic() - started - sum(timings.values()), 1)

    try:
        default = deployment.check_default_topology()
        assert {"redis", "web", "worker"} <= set(default["services"])
        assert "8080" in json.dumps(default["services"]["web"]["ports"]), "the web app is published by default"
        deployment.build()
        lap("build")
        deployment.scale(1)
        wait_until(lambda: all(deployment.healthy(s, 1) for s in ("redis", "web", "worker")), 180,
                   "redis, web and one worker healthy")
        deployment.scale(2)
        wait_until(lambda: deployment.healthy("worker", 2), 180, "two healthy workers")
        workers = {deployment.worker_name(c): c for c in deployment.containers("worker")}
        assert len(workers) == 2, f"the replicas share a name: {workers}"

        def ready_with_both() -> bool:  # /readyz caches its inspection of the workers for a few seconds
            answer = requests.get(deployment.url + "/readyz", timeout=10)
            return answer.ok and {name.split("@")[0] for name in answer.json()["workers"]} == set(workers)

        wait_until(ready_with_both, 60, "/readyz answering 200 with both workers", ignore=(requests.RequestException,))
        lap("up, scaled to 2")

        make_repo(deployment.repo, {".ci-queue.yml": PIPELINE})
        answer = deployment.api("POST", "/api/v1/runs", json={"clone_url": "file:///srv/repos/app", "ref": "main"})
        assert answer.status_code == 202, answer.text
        run_id = answer.json()["run_id"]
        held = wait_until(lambda: (h := [deployment.job(run_id, n) for n in ("hold-a", "hold-b")])
                          and all(j["status"] == "running" for j in h) and h, 120, "both held jobs running",
                          ignore=(StopIteration,))  # not planned yet
        on = {job["worker"].split("@")[0]: job["name"] for job in held}
        assert set(on) == set(workers), f"the held jobs should run one on each worker: {on}"
        lap("pipeline running on both")

        scaled_down = time.monotonic()
        deployment.scale(1)
        took = time.monotonic() - scaled_down
        lap("scale down")
        (remaining,) = (deployment.worker_name(c) for c in deployment.containers("worker"))
        (stopped,) = set(workers) - {remaining}
        assert workers[stopped] not in deployment.leftovers()["container"], "the stopped replica was not removed"
        # Handed back at the end of its grace, not killed at stop_grace_period (6 minutes: the
        # command would still be waiting), nor left to its lease (JOB_LEASE seconds).
        assert took < 90, f"scaling down took {took:.0f}s"
        handed = deployment.job(run_id, on[stopped])
        first = handed["attempts"][0]
        assert first["worker"].startswith(f"{stopped}@") and first["failure_reason"] == "runner_system_failure", first
        assert "handed back" in (first["reason"] or ""), first
        assert handed["attempt"] == 2 and handed["status"] in ("pending", "queued"), handed
        assert deployment.job(run_id, on[remaining])["status"] == "running", "the other job must go on"

        (deployment.gate / "open").touch()
        final = wait_until(lambda: (r := deployment.api("GET", f"/api/v1/runs/{run_id}").json())["status"]
                           not in ("queued", "running") and r, 180, "the run ending")
        lap("run finished")
        assert final["status"] == "success", json.dumps(final, indent=1)[:5000]
        jobs = {job["name"]: job for job in final["jobs"]}
        again = jobs[on[stopped]]
        assert again["attempt"] == 2 and again["worker"].startswith(f"{remaining}@"), again["attempts"]
        assert jobs[on[remaining]]["attempt"] == 1
        build_log = deployment.api("GET", f"/api/v1/runs/{run_id}/jobs/build/log").text
        # shell jobs run as the image's job users, with the system's Python (not the worker's venv)
        assert re.search(r"built by ciq-job\d with /usr/bin/python3$", build_log, re.M), build_log
        hold_log = deployment.api("GET", f"/api/v1/runs/{run_id}/jobs/{on[stopped]}/log").text
        assert f"{on[stopped]} done" in hold_log, hold_log
    except BaseException:
        print(f"timings so far (s): {timings}\n--- compose logs\n{deployment.logs()}")
        raise

    deployment.tear_down()
    lap("tear down")
    assert deployment.leftovers() == {"container": [], "volume": [], "network": [], "image": []}
    print(f"compose deployment timings (s): {timings}, total {sum(timings.values()):.0f}")
