"""DockerRunner against a real Docker daemon and the locally imported busybox image (no mocks).

Every test uses its own run id and removes only the containers labelled with it. Network mode
``none``: nothing leaves the machine (the "missing image" pull targets 127.0.0.1:1, refused).
"""

from __future__ import annotations

import re
import resource
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from workers.logs import JobLog, LogLine, MemorySink
from workers.runners.base import ImageMissing, InfrastructureError, JobEnvironment, StepSpec
from workers.runners.docker import SCRIPTS_MOUNT, DockerRunner, reap

pytestmark = pytest.mark.integration

PROJECT_DIR = "/builds/group/project"  # deliberately not the host path of the workspace


class WatchingSink(MemorySink):
    """A MemorySink that calls ``on_line`` for every line as it is stored."""

    def __init__(self, on_line=None) -> None:
        super().__init__()
        self.on_line = on_line

    def write(self, line: LogLine) -> None:
        super().write(line)
        if self.on_line is not None:
            self.on_line(line)


class Job:
    """One job's worth of runner, log and workspace, with a unique run id."""

    def __init__(self, client, image: str, workspace: Path, **runner_options) -> None:
        self.client = client
        self.run_id = f"test-docker-{uuid.uuid4().hex[:12]}"
        self.workspace = workspace
        self.sink = WatchingSink()
        self.log = JobLog(self.sink, run_id=self.run_id, job="unit: [3.11]", max_bytes=4 << 20)
        runner_options.setdefault("network_mode", "none")
        self.runner = DockerRunner(client=client, **runner_options)
        self.env = JobEnvironment(
            workspace=workspace,
            project_dir=PROJECT_DIR,
            image=image,
            run_id=self.run_id,
            job_name="unit: [3.11]",
            attempt=2,
        )

    def prepare(self) -> Job:
        self.runner.prepare(self.env, self.log)
        return self

    def run(self, script: str, *, name: str = "script", env=None, timeout: float = 30, cancel=lambda: False):
        step = StepSpec(name=name, script=script, env=dict(env or {}), timeout=timeout)
        return self.runner.run(step, self.log, cancel)

    def texts(self, stream: str) -> list[str]:
        return self.sink.texts(stream)

    def containers(self) -> list:
        return self.client.containers.list(all=True, filters={"label": f"ci-queue.run={self.run_id}"})


@pytest.fixture
def make_job(docker_client, docker_image, tmp_path):
    jobs: list[Job] = []

    def make(**runner_options) -> Job:
        workspace = tmp_path / f"workspace-{len(jobs)}"
        workspace.mkdir()
        job = Job(docker_client, docker_image, workspace, **runner_options)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.runner.cleanup()
        reap(docker_client, run_id=job.run_id)


def test_script_runs_in_the_workspace_with_the_job_environment(make_job):
    job = make_job().prepare()
    (job.workspace / "input.txt").write_text("put there by the test\n")
    outcome = job.run(
        'pwd; cat input.txt; echo "greeting=$GREETING"; echo "written in the container" > output.txt',
        env={"GREETING": "hello  world", "CI_PROJECT_DIR": PROJECT_DIR},
    )
    assert (outcome.status, outcome.exit_code) == ("success", 0)
    assert job.texts("out") == [PROJECT_DIR, "put there by the test", "greeting=hello  world"]
    assert (job.workspace / "output.txt").read_text() == "written in the container\n"
    # The worker can remove what the job wrote (containers run as root here: see ``user=``).
    (job.workspace / "output.txt").unlink()
    assert job.containers() == []


def test_labels_network_and_read_only_scripts(make_job, docker_client):
    job = make_job().prepare()
    seen: dict = {}

    def look(line: LogLine) -> None:  # the step's container, seen from outside while it exists
        if line.stream == "out" and not seen:
            for container in job.containers():
                seen.update(container.labels, network=container.attrs["HostConfig"]["NetworkMode"])

    job.sink.on_line = look
    outcome = job.run(f"touch {SCRIPTS_MOUNT}/x 2>/dev/null && echo writable || echo read-only")
    assert outcome.status == "success"
    assert job.texts("out") == ["read-only"]
    assert seen["ci-queue.managed"] == "1"
    assert (seen["ci-queue.run"], seen["ci-queue.job"], seen["ci-queue.attempt"]) == (job.run_id, "unit: [3.11]", "2")
    assert seen["network"] == "none"
    assert job.containers() == []


def test_exit_codes_and_a_fresh_container_per_step(make_job):
    job = make_job().prepare()
    first = job.run("echo inside > /tmp/marker; true")
    second = job.run("test ! -e /tmp/marker || { echo container reused; exit 9; }; exit 3")
    assert (first.status, first.exit_code) == ("success", 0)
    assert (second.status, second.exit_code) == ("failed", 3)
    assert "container reused" not in job.texts("out")
    assert first.duration > 0 and first.started_at <= first.finished_at <= second.started_at
    assert job.containers() == []


def test_stdout_and_stderr_are_separated_and_ordered(make_job):
    job = make_job().prepare()

    # Handshake: the script writes to the other stream only once the log has stored the line
    # before it (the sink touches a file in the workspace), so the expected order is causal.
    def on_line(line: LogLine) -> None:
        if line.stream in ("out", "err") and line.text.startswith("step-"):
            (job.workspace / f".seen-{line.text}").touch()

    job.sink.on_line = on_line
    script = """
        wait_for() { while [ ! -e ".seen-$1" ]; do usleep 10000; done; }
        echo step-1; wait_for step-1
        echo step-2 >&2; wait_for step-2
        i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i + 1)); done
        echo step-3; wait_for step-3
        printf 'step-4 without a newline' >&2
    """
    outcome = job.run(script, timeout=30)
    assert outcome.status == "success"
    ordered = [(line.stream, line.text) for line in job.sink.lines if line.stream in ("out", "err")]
    assert ordered == [
        ("out", "step-1"),
        ("err", "step-2"),
        *[("out", f"line {i}") for i in range(300)],
        ("out", "step-3"),
        ("err", "step-4 without a newline"),
    ]
    assert job.containers() == []


def test_a_flood_of_output_is_drained_in_flat_memory(make_job):
    job = make_job().prepare()
    job.log.max_bytes = 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    outcome = job.run("yes 'a line of output, again and again' | head -c 100000000; echo after the flood", timeout=120)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert outcome.status == "success"
    assert job.log.truncated and job.log.bytes_dropped > 90_000_000
    assert grown_mib < 50, f"the worker grew by {grown_mib:.0f} MiB for 100 MB of output"
    assert job.containers() == []


def test_timeout_stops_the_step_within_the_grace_period(make_job):
    job = make_job(kill_grace=5).prepare()
    outcome = job.run("echo started; sleep 300", timeout=2)
    assert outcome.status == "timeout"
    assert 2 <= outcome.duration < 2 + 5
    assert job.texts("out") == ["started"]
    assert any("Timeout" in text for text in job.texts("system"))
    assert job.containers() == []


def test_a_step_ignoring_sigterm_is_killed_after_the_grace_period(make_job):
    job = make_job(kill_grace=1).prepare()
    outcome = job.run("trap '' TERM; echo started; sleep 300", timeout=1)
    assert outcome.status == "timeout"
    assert 2 <= outcome.duration < 1 + 1 + 5
    assert any("SIGKILL" in text for text in job.texts("system"))
    assert job.containers() == []


def test_cancel_stops_the_step_within_two_seconds(make_job):
    job = make_job(kill_grace=10).prepare()
    ready = threading.Event()
    job.sink.on_line = lambda line: line.text == "ready" and ready.set()
    canceled_at: list[float] = []

    def cancel() -> bool:
        if ready.is_set() and not canceled_at:
            canceled_at.append(time.monotonic())
        return bool(canceled_at)

    outcome = job.run("echo ready; sleep 300", timeout=120, cancel=cancel)
    stopped_after = time.monotonic() - canceled_at[0]
    assert outcome.status == "canceled"
    assert stopped_after < 2, f"the step stopped {stopped_after:.2f} s after the cancel"
    assert job.containers() == []


def test_the_container_is_removed_when_the_caller_fails(make_job):
    job = make_job().prepare()
    ready = threading.Event()
    job.sink.on_line = lambda line: line.text == "ready" and ready.set()

    def cancel() -> bool:
        if ready.is_set():
            raise RuntimeError("the cancel flag store went away")
        return False

    with pytest.raises(RuntimeError, match="went away"):
        job.run("echo ready; sleep 300", timeout=120, cancel=cancel)
    assert job.containers() == []


def test_a_container_removed_under_the_step_is_a_non_retryable_infrastructure_error(make_job):
    job = make_job().prepare()

    def remove_it(line: LogLine) -> None:  # what a stray reaper or a daemon restart would do
        if line.text == "ready":
            for container in job.containers():
                container.remove(force=True)

    job.sink.on_line = remove_it
    with pytest.raises(InfrastructureError) as raised:
        job.run("echo ready; sleep 300", timeout=60)
    assert raised.value.retryable is False  # the script ran: the engine must not re-run it silently
    assert job.containers() == []


def test_the_image_entrypoint_does_not_swallow_the_script(make_job, docker_client, docker_image):
    base = docker_client.containers.create(docker_image, ["true"], network_mode="none")
    tag = f"entrypoint-{uuid.uuid4().hex[:8]}"
    image = base.commit(repository="ci-queue-test/entrypoint", tag=tag, changes=['ENTRYPOINT ["/bin/false"]'])
    base.remove()
    try:
        job = make_job()
        job.env = replace(job.env, image=f"ci-queue-test/entrypoint:{tag}")
        job.prepare()
        outcome = job.run("echo script ran")
        assert outcome.status == "success" and job.texts("out") == ["script ran"]
    finally:
        job.runner.cleanup()
        docker_client.images.remove(image.id, force=True)


def test_missing_image_is_image_missing_naming_the_image(make_job):
    image = "127.0.0.1:1/ci-queue-test/absent:latest"  # a registry on loopback that refuses at once
    job = make_job()
    job.env = replace(job.env, image=image)
    started = time.monotonic()
    with pytest.raises(ImageMissing, match=re.escape(image)) as raised:
        job.prepare()
    assert raised.value.failure_class == "image_missing"
    assert time.monotonic() - started < 30
    assert job.containers() == []


def test_pull_policy_never_does_not_pull(make_job):
    job = make_job(pull_policy="never")
    job.env = replace(job.env, image="ci-queue-test/absent:never")
    with pytest.raises(ImageMissing, match=r"ci-queue-test/absent:never.*'never'"):
        job.prepare()


def test_an_unreachable_daemon_is_an_infrastructure_error(tmp_path):
    runner = DockerRunner(base_url=f"unix://{tmp_path}/no-such-docker.sock", network_mode="none")
    env = JobEnvironment(tmp_path, PROJECT_DIR, "ci-queue-test/busybox:latest", "test-docker-unreachable", "job", 1)
    log = JobLog(MemorySink(), run_id="test-docker-unreachable", job="job", max_bytes=1 << 20)
    with pytest.raises(InfrastructureError, match="unreachable") as raised:
        runner.prepare(env, log)
    assert not isinstance(raised.value, ImageMissing)
    runner.cleanup()


def test_a_missing_network_is_an_infrastructure_error(make_job):
    job = make_job(network_mode="ci-queue-test-no-such-network")
    with pytest.raises(InfrastructureError, match="ci-queue-test-no-such-network"):
        job.prepare()


def test_the_user_option_runs_the_script_as_that_user(make_job):
    job = make_job(user="65534:65534").prepare()
    outcome = job.run("id -u; id -g")
    assert outcome.status == "success"
    assert job.texts("out") == ["65534", "65534"]


def test_cleanup_removes_the_scratch_directory_and_is_idempotent(make_job):
    job = make_job().prepare()
    scratch = job.runner._scratch
    assert scratch is not None and scratch.is_dir()
    assert job.run("true").status == "success"
    job.runner.cleanup()
    job.runner.cleanup()
    assert not scratch.exists()
    assert job.containers() == []


def test_reap_removes_leftover_containers_of_a_run(docker_client, docker_image):
    run_id = f"test-docker-{uuid.uuid4().hex[:12]}"
    labels = {"ci-queue.managed": "1", "ci-queue.run": run_id, "ci-queue.job": "left", "ci-queue.attempt": "1"}
    container = docker_client.containers.run(
        docker_image, ["sleep", "300"], labels=labels, network_mode="none", detach=True
    )
    try:
        assert reap(docker_client, run_id=f"{run_id}-other") == 0
        assert reap(docker_client, run_id=run_id, older_than=3600) == 0  # too young
        assert reap(docker_client, run_id=run_id) == 1
        left = docker_client.containers.list(all=True, filters={"label": f"ci-queue.run={run_id}"})
        assert left == []
    finally:
        reap(docker_client, run_id=run_id)
        del container


def test_reaper_removes_containers_no_running_attempt_owns(docker_client, docker_image, store, tmp_path):
    import contextlib

    from tests.engine.test_store import make_plan
    from workers.reaper import reap_orphans
    from workers.runners.docker import LABEL_ATTEMPT, LABEL_JOB, LABEL_MANAGED, LABEL_RUN

    plan = make_plan(tmp_path, "alive: {script: x}\ngone: {script: x}\n")
    run_id = store.create_run(repo="o/r", ref="main")
    store.set_plan(run_id, plan)
    store.begin_job(run_id, 0, 1, "w", 60)  # "alive" runs as attempt 1; "gone" never started
    made = {}
    for job, attempt in (("alive", "1"), ("gone", "1"), ("alive", "7")):
        container = docker_client.containers.create(
            docker_image, ["sleep", "300"], network_mode="none",
            labels={LABEL_MANAGED: "1", LABEL_RUN: run_id, LABEL_JOB: job, LABEL_ATTEMPT: attempt})
        made[(job, attempt)] = container.id
    try:
        assert reap_orphans(store, docker_client) == 2
        left = {c.id for c in docker_client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})}
        assert left == {made[("alive", "1")]}
    finally:
        for container_id in made.values():
            with contextlib.suppress(Exception):
                docker_client.api.remove_container(container_id, force=True)
