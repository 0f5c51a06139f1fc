"""The Docker executor's hardening on the real engine (workers/runners/container_policy.py): no
privileges beyond Docker's default capabilities, no-new-privileges, no mount, the pids, memory and
CPU limits, an OOM kill that says so, never the engine's socket; services and the pod the same.

Real Docker and the local busybox image (``bash .ci/docker.sh up``); network mode none.
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import pytest

from ci_queue.pipeline.model import Job
from ci_queue.settings import Settings, SettingsError
from tests.conftest import wait_until
from tests.integration.test_docker_runner import WatchingSink
from workers.job import JobRequest, JobResult, run_job
from workers.logs import JobLog, LogLine, MemorySink
from workers.runners.base import JobEnvironment, StepSpec
from workers.runners.container_policy import (
    DEFAULT_CAPABILITIES,
    ContainerPolicy,
    SocketMount,
    Volume,
    check_bind_source,
    parse_volumes,
)
from workers.runners.docker import DockerRunner, reap

pytestmark = pytest.mark.integration

SHA = "0123456789abcdef0123456789abcdef01234567"
# Capability numbers (linux/capability.h), an oracle independent of the code under test.
CAPABILITY_BITS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
                   "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13,
                   "CAP_SYS_CHROOT": 18, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31}
STATUS = "grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status"




def status_fields(lines: list[str]) -> dict[str, str]:
    wanted = re.compile(r"^(CapEff|CapBnd|NoNewPrivs):")
    return dict(re.split(r":\s*", line, maxsplit=1) for line in lines if wanted.match(line))


def mask(capabilities) -> int:
    return sum(1 << CAPABILITY_BITS[name] for name in capabilities)


def run_step(client, image: str, workspace: Path, script: str, policy: ContainerPolicy,
             sink: MemorySink | None = None, timeout: float = 60):
    """One step in a fresh DockerRunner with ``policy``; (outcome, sink)."""
    sink = sink if sink is not None else MemorySink()
    run_id = f"test-harden-{uuid.uuid4().hex[:12]}"
    log = JobLog(sink, run_id=run_id, job="hardening", max_bytes=1 << 20)
    runner = DockerRunner(client=client, network_mode="none", kill_grace=1.0, policy=policy)
    try:
        runner.prepare(JobEnvironment(workspace, "/builds/p", image, run_id, "hardening", 1), log)
        outcome = runner.run(StepSpec("script", script, {}, timeout), log, lambda: False)
    finally:
        runner.cleanup()
        reap(client, run_id=run_id)
    return outcome, sink


def run_docker_job(job: Job, workspace: Path, sink: MemorySink | None = None, **overrides) -> tuple[JobResult,
                                                                                                     MemorySink]:
    values = dict(executor="docker", docker_network="none", kill_grace_seconds=1.0, default_job_timeout=60,
                  service_wait_seconds=10)
    values.update(overrides)
    sink = sink if sink is not None else MemorySink()
    request = JobRequest(job=job, run_id=f"test-harden-{uuid.uuid4().hex[:12]}", job_id="1", pipeline_id="1",
                         sha=SHA, ref="main", project_path="group/project")
    return run_job(request, workspace, sink, lambda: False, settings=Settings(**values)), sink


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


def test_default_capabilities_and_no_new_privileges(docker_client, docker_image, workspace):
    outcome, sink = run_step(docker_client, docker_image, workspace, STATUS, ContainerPolicy())
    assert outcome.status == "success", sink.texts()
    fields = status_fields(sink.texts("out"))
    assert fields["NoNewPrivs"] == "1"
    assert int(fields["CapEff"], 16) == int(fields["CapBnd"], 16) == mask(DEFAULT_CAPABILITIES) == 0xA80425FB
    # exactly what this engine gives a container by default: the list is Docker's set, no more, no less
    plain = docker_client.containers.run(docker_image, ["sh", "-c", STATUS], network_mode="none", remove=True)
    assert int(status_fields(plain.decode().splitlines())["CapEff"], 16) == mask(DEFAULT_CAPABILITIES)
    assert "Docker's default capabilities, no-new-privileges" in "\n".join(sink.texts("system"))


def test_a_job_cannot_mount(docker_client, docker_image, workspace):
    script = "mkdir -p /mnt/t && mount -t tmpfs tmpfs /mnt/t && echo mounted"
    outcome, sink = run_step(docker_client, docker_image, workspace, script, ContainerPolicy())
    assert outcome.status == "failed" and "mounted" not in sink.texts("out")
    assert any("permission denied" in line.lower() for line in sink.texts("err")), sink.texts()


def test_privileged_only_when_the_worker_setting_says_so(docker_client, docker_image):
    """What the engine records for a container made with each policy. (Whether a privileged
    container can start at all depends on the host: this sandbox's own capability bounding set
    lacks CAP_SYS_RESOURCE, and runc refuses then.)"""
    default = ContainerPolicy.from_settings(Settings())
    allowed = ContainerPolicy.from_settings(Settings.from_env({"CIQ_DOCKER_PRIVILEGED": "1"}))
    api = docker_client.api
    for policy, privileged, cap_drop in ((default, False, ["ALL"]), (allowed, True, None)):
        created = api.create_container(docker_image, ["true"], host_config=api.create_host_config(
            network_mode="none", **policy.host_config()), labels={"ci-queue.test": "hardening"})
        try:
            host = api.inspect_container(created["Id"])["HostConfig"]
        finally:
            api.remove_container(created["Id"], force=True)
        assert (host["Privileged"], host["CapDrop"]) == (privileged, cap_drop)
        assert "no-new-privileges:true" in host["SecurityOpt"]


def test_a_fork_bomb_stops_at_the_pids_limit(docker_client, docker_image, workspace):
    script = 'i=0; while [ $i -lt 200 ]; do sleep 60 & i=$((i+1)); done; echo "forked $i"'
    outcome, sink = run_step(docker_client, docker_image, workspace, script, ContainerPolicy(pids_limit=32))
    assert outcome.status == "failed", sink.texts()
    assert not any(line.startswith("forked") for line in sink.texts("out"))
    assert any("can't fork" in line for line in sink.texts("err")), sink.texts()
    assert outcome.duration < 30  # the step ended at the refusal, not after the sleeps


def test_memory_cpu_and_pids_limits_reach_the_cgroup(docker_client, docker_image, workspace):
    script = ("for f in memory/memory.limit_in_bytes memory.max memory/memory.memsw.limit_in_bytes memory.swap.max "
              "cpu/cpu.cfs_quota_us cpu.max pids/pids.max pids.max; do "
              '[ -r /sys/fs/cgroup/$f ] && echo "$f=$(cat /sys/fs/cgroup/$f)"; done; true')
    policy = ContainerPolicy(memory=64 * 1024 * 1024, cpus=1.5, pids_limit=100)
    outcome, sink = run_step(docker_client, docker_image, workspace, script, policy)
    assert outcome.status == "success", sink.texts()
    values = dict(line.split("=", 1) for line in sink.texts("out"))
    memory = values.get("memory/memory.limit_in_bytes") or values.get("memory.max")
    assert memory == str(64 * 1024 * 1024), values
    if "memory/memory.memsw.limit_in_bytes" in values:  # cgroup v1 with swap accounting
        assert values["memory/memory.memsw.limit_in_bytes"] == str(64 * 1024 * 1024)
    if "memory.swap.max" in values:  # cgroup v2: memory-swap = memory leaves no swap
        assert values["memory.swap.max"] == "0"
    assert values.get("cpu/cpu.cfs_quota_us") == "150000" or values.get("cpu.max") == "150000 100000", values
    assert (values.get("pids/pids.max") or values.get("pids.max")) == "100", values
    assert "Container limits: memory 64 MiB, 1.5 CPUs, 100 processes" in "\n".join(sink.texts("system"))


def test_a_job_over_its_memory_limit_fails_and_says_why(docker_image, workspace):
    job = Job(name="hog", stage="test", image={"name": docker_image},
              script=["x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"])
    result, sink = run_docker_job(job, workspace, docker_memory="32m")
    assert (result.status, result.failure_class, result.exit_code) == ("failed", "script_failure", 137), sink.texts()
    assert result.reason == "the job's container ran out of memory (limit 32 MiB, CIQ_DOCKER_MEMORY) (exit code 137)"
    assert "survived" not in sink.texts("out")
    assert any("ran out of memory (limit 32 MiB" in line for line in sink.texts("system"))


def test_services_and_the_pod_get_the_same_policy(docker_client, docker_image, workspace):
    """Every container of a job with a service, seen from outside while the step runs."""
    seen: dict[str, dict] = {}
    run_ids: list[str] = []

    def look(line: LogLine) -> None:
        if line.stream == "out" and line.text == "look now" and not seen:
            run_ids.append(line.run_id)
            for container in docker_client.containers.list(filters={"label": f"ci-queue.run={line.run_id}"}):
                labels = container.labels
                kind = "pod" if "ci-queue.pod" in labels else "service" if "ci-queue.service" in labels else "step"
                seen[kind] = container.attrs["HostConfig"]

    service = {"name": docker_image, "alias": "svc", "entrypoint": ["sh", "-c", "exec sleep 300"]}
    job = Job(name="svc", stage="test", image={"name": docker_image}, services=[service],
              script=["echo look now"])
    result, sink = run_docker_job(job, workspace, WatchingSink(look), docker_memory="48m", docker_cpus=0.5,
                                  docker_pids_limit=256)
    assert result.status == "success", sink.texts()
    assert set(seen) == {"pod", "service", "step"}, seen.keys()
    for kind, host in seen.items():
        assert host["Privileged"] is False, kind
        assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == sorted(DEFAULT_CAPABILITIES), kind
        assert "no-new-privileges:true" in host["SecurityOpt"], kind
        assert (host["PidsLimit"], host["Memory"], host["MemorySwap"], host["NanoCpus"]) == (
            256, 48 << 20, 48 << 20, 500_000_000), kind
    wait_until(lambda: not docker_client.containers.list(all=True, filters={"label": f"ci-queue.run={run_ids[0]}"}),
               30, "the job's containers removed")


def test_the_engine_socket_is_never_mounted(docker_image, workspace, tmp_path):
    for volumes in ("/var/run/docker.sock:/var/run/docker.sock", "/var/run:/host-run:ro", "/:/host"):
        job = Job(name="dind", stage="test", image={"name": docker_image}, script=["ls -l /var/run/docker.sock"])
        result, sink = run_docker_job(job, workspace, docker_volumes=volumes)
        assert (result.status, result.failure_class) == ("failed", "runner_system_failure"), volumes
        assert "refusing to mount" in result.reason and "container engine's socket" in result.reason, result.reason
        assert not sink.texts("out"), volumes  # the script never ran
    # the same socket under another name (a hard link; a bind mount of it elsewhere is the same inode)
    engine = tmp_path / "engine.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(engine))
        alias = tmp_path / "innocent-looking"
        alias.hardlink_to(engine)
        with pytest.raises(SocketMount, match="under another name"):
            check_bind_source(str(alias), [str(engine)])
        check_bind_source(str(tmp_path / "workspace"), [str(engine)])  # anything else passes


def test_configured_volumes_are_mounted(docker_image, workspace, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tool.txt").write_text("from the host\n")
    job = Job(name="vol", stage="test", image={"name": docker_image},
              script=["cat /opt/shared/tool.txt", "touch /opt/shared/x 2>/dev/null && echo writable || echo read-only",
                      "echo kept > /cache/a && cat /cache/a"])
    result, sink = run_docker_job(job, workspace, docker_volumes=f"{shared}:/opt/shared:ro, /cache")
    assert result.status == "success", sink.texts()
    assert [line for line in sink.texts("out") if not line.startswith("$ ")] == ["from the host", "read-only", "kept"]


def test_volume_and_limit_settings_are_checked():
    assert parse_volumes("/cache, data:/data, /srv/a:/a:ro,/srv/b:/b:rw") == (
        Volume("/cache"), Volume("/data", "data"), Volume("/a", "/srv/a", True), Volume("/b", "/srv/b"))
    for bad in ("cache", "/a:/b:rx", "/a:b", "a/b:/c", "/a:/b:ro:x"):
        with pytest.raises(ValueError):
            parse_volumes(bad)
    assert ContainerPolicy.from_settings(Settings(docker_memory="1.5g")).memory == 1536 << 20
    for name, value in (("CIQ_DOCKER_MEMORY", "lots"), ("CIQ_DOCKER_MEMORY", "1m"), ("CIQ_DOCKER_CPUS", "-1"),
                        ("CIQ_DOCKER_PIDS_LIMIT", "-5")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
