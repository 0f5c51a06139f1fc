"""``services:`` on the Docker executor: the pod, aliases, the readiness wait, environment, cleanup.

Real Docker (the busybox test image, ``bash .ci/docker.sh up``): skipped without it on a
developer's machine, a failure with CI=true (tests/integration/conftest.py). Containers use
network mode none or host (then only 127.0.0.1, on a port picked free) or the job's pod.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from docker.errors import NotFound  # a container removed between `docker ps` and its inspection

from ci_queue.pipeline.model import Job
from ci_queue.settings import Settings
from tests.conftest import wait_until
from tests.integration.conftest import TEST_IMAGE, docker_client, docker_image  # noqa: F401  (fixtures)
from workers.job import JobRequest, JobResult, run_job
from workers.logs import JobLog, MemorySink
from workers.runners.base import JobEnvironment
from workers.runners.docker import LABEL_POD, LABEL_SERVICE, DockerRunner
from workers.runners.services import (
    default_aliases,
    exposed_tcp_ports,
    image_path,
    listening_ports,
    plan_services,
    split_aliases,
    valid_hostname,
)

integration = pytest.mark.integration
SHA = "0123456789abcdef0123456789abcdef01234567"
# A service serving $1 (a text) over HTTP on port $2 of the pod, after "$3" seconds.
HTTPD = ('mkdir -p /www && printf "%s\\n" "$1" >/www/index.html && echo "httpd $1 on $2 soon" '
         '&& sleep "${3:-0}" && exec httpd -f -p "$2" -h /www')


def httpd(text: str, port: int | str = 8080, delay: float = 0) -> list[str]:
    return ["sh", "-c", HTTPD, "sh", text, str(port), str(delay)]


def settings(**overrides) -> Settings:
    values = dict(executor="docker", docker_network="none", kill_grace_seconds=1.0, default_job_timeout=60,
                  service_wait_seconds=30)
    values.update(overrides)
    return Settings(**values)


def run(job: Job, workspace: Path, *, cancel=lambda: False, run_id: str | None = None,
        **setting_overrides) -> tuple[JobResult, MemorySink, str]:
    run_id = run_id or f"test-svc-{uuid.uuid4().hex[:12]}"
    request = JobRequest(job=job, run_id=run_id, job_id="1", pipeline_id="1", sha=SHA, ref="main",
                         project_path="group/project")
    sink = MemorySink()
    result = run_job(request, workspace, sink, cancel, settings=settings(**setting_overrides))
    assert sink.closed
    return result, sink, run_id


def job(services: list[dict], script: list[str], **fields) -> Job:
    return Job(name="svc", stage="test", image={"name": TEST_IMAGE}, services=services, script=script, **fields)


def out(sink: MemorySink) -> list[str]:
    return sink.texts("out")


def system(sink: MemorySink) -> str:
    return "\n".join(sink.texts("system"))


def containers_of(client, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"ci-queue.run={run_id}"})


def none_left(client, run_id: str) -> None:
    wait_until(lambda: not containers_of(client, run_id), 30, f"no container of run {run_id} left", ignore=(NotFound,))


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def service_image(docker_client, docker_image) -> str:  # noqa: F811
    """The test image re-tagged ``ci-queue-test/svc-<random>:1`` with ``EXPOSE 8080/tcp`` (no
    registry needed: ``docker commit --change``); removed after the session."""
    name = f"ci-queue-test/svc-{uuid.uuid4().hex[:6]}"
    base = docker_client.containers.create(docker_image, ["true"], network_mode="none")
    try:
        base.commit(repository=name, tag="1", changes=["EXPOSE 8080/tcp"])
    finally:
        base.remove(force=True)
    yield f"{name}:1"
    docker_client.images.remove(f"{name}:1", force=True)


# -- aliases, ports: no Docker ----------------------------------------------------------------------

@pytest.mark.parametrize(("image", "aliases"), [
    # GitLab Runner's own table (helpers/container/services/test)
    ("service", ["service"]),
    ("service:version", ["service"]),
    ("namespace/service", ["namespace__service", "namespace-service"]),
    ("tutum/wordpress:latest", ["tutum__wordpress", "tutum-wordpress"]),
    ("domain.tld/namespace/service:version", ["domain.tld__namespace__service", "domain.tld-namespace-service"]),
    ("domain.tld:8080/service", ["domain.tld__service", "domain.tld-service"]),
    ("registry.example.com:5000/group/img:1", ["registry.example.com__group__img", "registry.example.com-group-img"]),
    ("postgres:16", ["postgres"]),
    ("namespace/service@sha256:" + "ab" * 32, ["namespace__service", "namespace-service"]),
    ("domain.tld:8080/service:1@sha256:" + "cd" * 32, ["domain.tld__service", "domain.tld-service"]),
])
def test_default_aliases_are_gitlabs(image, aliases):
    assert default_aliases(image) == aliases


def test_alias_lists_hostnames_and_ports():
    assert split_aliases("db, pg  postgres,,x") == ["db", "pg", "postgres", "x"]
    assert split_aliases(None) == []
    assert image_path("localhost:5000/a/b:2") == "localhost/a/b"
    for good in ("db", "my-db", "tutum__wordpress", "a.b-c.d", "x" * 63):
        assert valid_hostname(good), good
    for bad in ("", "-db", "db-", "a..b", "my db", "db:5432", "x" * 64, "1.2.3.4", "é"):
        assert not valid_hostname(bad), bad
    assert exposed_tcp_ports({"ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "5432/tcp": {}, "99": {}}}) == [
        99, 5432, 8080]
    assert exposed_tcp_ports(None) == []
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"
        "   1: 0100007F:0050 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2\n"
        "   0: 00000000000000000000000000000000:1538 00000000000000000000000000000000:0000 0A 0 0 0 0 0 3\n"
    )
    assert listening_ports(table) == {8080, 5432}


def test_a_taken_alias_is_ignored_and_a_service_with_none_left_is_not_started():
    warnings: list[str] = []
    plans = plan_services([
        {"name": "redis:7", "alias": "cache"},
        {"name": "redis:6", "alias": "cache, old-cache"},
        {"name": "redis"},  # every alias taken: not started (GitLab: "already created. Ignoring.")
        {"name": "postgres:16", "alias": "bad_-, db:5432, db"},
    ], warnings.append)
    assert [(p.name, p.aliases) for p in plans] == [
        ("redis:7", ["redis", "cache"]),
        ("redis:6", ["old-cache"]),
        ("postgres:16", ["postgres", "db"]),
    ]
    text = "\n".join(warnings)
    assert "Service redis:6: the alias `redis` is already taken by service redis:7" in text
    assert "`cache` is already taken by service redis:7" in text
    assert "Service redis is not started" in text
    assert "`bad_-` is not a valid host name" in text and "`db:5432` is not a valid host name" in text


# -- real containers ------------------------------------------------------------------------------

@integration
def test_a_service_is_reached_by_its_alias_with_no_network(docker_client, service_image, workspace):  # noqa: F811
    services = [{"name": service_image, "alias": "myalias, other", "entrypoint": httpd("hello from the pod")}]
    result, sink, run_id = run(job(services, ["wget -qO- http://myalias:8080/", "wget -qO- http://other:8080/"]),
                               workspace)
    assert result.status == "success", system(sink)
    assert out(sink).count("hello from the pod") == 2
    assert f"Starting service {service_image} (aliases " in system(sink)
    assert "myalias, other)" in system(sink)
    none_left(docker_client, run_id)


@integration
def test_a_service_is_reached_by_its_alias_in_host_network_mode(docker_client, docker_image, workspace):  # noqa: F811
    """Host mode shares the host's ports: the service listens on 127.0.0.1 only, on a free port,
    and names it with HEALTHCHECK_TCP_PORT (the image exposes nothing)."""
    port = free_loopback_port()
    services = [{"name": docker_image, "alias": "hostsvc", "entrypoint": httpd("hello host", f"127.0.0.1:{port}"),
                 "variables": {"HEALTHCHECK_TCP_PORT": str(port)}}]
    result, sink, run_id = run(job(services, [f"wget -qO- http://hostsvc:{port}/"]), workspace,
                               docker_network="host")
    assert result.status == "success", system(sink)
    assert "hello host" in out(sink)
    assert f"port {port} listens" in system(sink)
    none_left(docker_client, run_id)


@integration
def test_default_aliases_reach_the_service(docker_client, service_image, workspace):  # noqa: F811
    primary, secondary = default_aliases(service_image)
    assert primary.startswith("ci-queue-test__svc-") and secondary.startswith("ci-queue-test-svc-")
    services = [{"name": service_image, "command": httpd("by default")}]  # the image's entrypoint: none
    result, sink, _ = run(job(services, [f"wget -qO- http://{primary}:8080/", f"wget -qO- http://{secondary}:8080/"]),
                          workspace)
    assert result.status == "success", system(sink)
    assert out(sink).count("by default") == 2


@integration
def test_two_services_with_one_alias_keep_the_first(service_image, workspace):
    services = [{"name": service_image, "alias": "same", "entrypoint": httpd("first", 8080)},
                {"name": service_image, "alias": "same second", "entrypoint": httpd("second", 8081),
                 "variables": {"HEALTHCHECK_TCP_PORT": "8081"}}]
    primary = default_aliases(service_image)[0]
    result, sink, _ = run(job(services, ["wget -qO- http://same:8080/", "wget -qO- http://second:8081/",
                                         f"wget -qO- http://{primary}:8081/"]), workspace)
    assert result.status == "success", system(sink)
    assert out(sink)[1::2] == ["first", "second", "second"]  # the pod shares one loopback: any alias reaches 8081
    assert "the alias `same` is already taken" in system(sink)


@integration
def test_the_job_waits_for_a_service_that_listens_late(docker_client, service_image, workspace):  # noqa: F811
    services = [{"name": service_image, "alias": "slow", "entrypoint": httpd("late but there", delay=1.5)}]
    t0 = time.monotonic()
    result, sink, _ = run(job(services, ["wget -qO- http://slow:8080/"]), workspace)
    assert result.status == "success", system(sink)  # no retry in the script: the wait made it work
    assert "late but there" in out(sink)
    assert time.monotonic() - t0 >= 1.5
    assert "Service " + service_image + " is ready: port 8080 listens" in system(sink)


@integration
def test_a_service_that_never_listens_is_a_warning_and_the_job_goes_on(docker_client, service_image,  # noqa: F811
                                                                       workspace):
    services = [{"name": service_image, "alias": "mute",
                 "entrypoint": ["sh", "-c", "echo getting ready; echo still not ready >&2; exec sleep 300"]}]
    t0 = time.monotonic()
    result, sink, run_id = run(job(services, ["echo went on"]), workspace, service_wait_seconds=2)
    took = time.monotonic() - t0
    assert result.status == "success", system(sink)
    assert "went on" in out(sink)
    text = system(sink)
    assert f"*** WARNING: Service {service_image} (aliases " in text and "probably didn't start properly" in text
    assert "no TCP port of 8080 listened within 2 s" in text
    assert "  getting ready" in text and "  still not ready" in text  # its last lines of output
    assert 2 <= took < 15, took
    none_left(docker_client, run_id)


@integration
def test_a_service_that_exits_is_a_warning_with_its_exit_code(service_image, workspace):
    services = [{"name": service_image, "alias": "crash", "entrypoint": ["sh", "-c", "echo boom; exit 3"]}]
    t0 = time.monotonic()
    result, sink, _ = run(job(services, ["echo went on"]), workspace)
    assert result.status == "success", system(sink)
    assert time.monotonic() - t0 < 15  # not the whole 30 s wait
    text = system(sink)
    assert "probably didn't start properly" in text and "its container exited with code 3" in text
    assert "  boom" in text


@integration
def test_a_service_whose_command_cannot_start_is_a_warning(service_image, workspace):
    services = [{"name": service_image, "alias": "nope", "entrypoint": ["/no/such/program"]}]
    result, sink, _ = run(job(services, ["echo went on"]), workspace)
    assert result.status == "success", system(sink)
    assert "its container cannot start" in system(sink) and "/no/such/program" in system(sink)


@integration
@pytest.mark.parametrize("service", [
    {"name": "ci-queue-test/absent-service:1", "pull_policy": "never"},
    {"name": "127.0.0.1:1/ci-queue-test/absent-service:1"},  # the pull is refused at once (loopback)
], ids=["pull-policy-never", "unpullable"])
def test_a_missing_service_image_is_image_missing(docker_client, workspace, service):  # noqa: F811
    result, sink, run_id = run(job([service], ["touch ran"]), workspace)
    assert (result.status, result.failure_class) == ("failed", "image_missing"), system(sink)
    assert service["name"] in (result.reason or "")
    assert not (workspace / "ran").exists()
    none_left(docker_client, run_id)


@integration
def test_a_service_sees_the_job_variables_and_its_own_but_no_secret(docker_client, service_image, workspace,  # noqa: F811
                                                                    monkeypatch):
    monkeypatch.setenv("SVC_TEST_TOKEN", "s3cr3t-value-123")
    services = [{"name": service_image, "alias": "envsvc",
                 "entrypoint": ["sh", "-c", "mkdir /www && env >/www/index.html && exec httpd -f -p 8080 -h /www"],
                 "variables": {"SHARED": "from the service", "OWN": "own-$JOBVAR", "LEAK": "x$SVC_TEST_TOKEN"}}]
    the_job = job(services, ["wget -qO env.txt http://envsvc:8080/", "echo step sees $SVC_TEST_TOKEN"],
                  variables={"SHARED": "from the job", "JOBVAR": "j1", "DERIVED": "token=$SVC_TEST_TOKEN"},
                  secrets=["SVC_TEST_TOKEN"])
    result, sink, _ = run(the_job, workspace)
    assert result.status == "success", system(sink)
    assert "step sees [MASKED]" in out(sink)  # the step has the secret
    seen = dict(line.split("=", 1) for line in (workspace / "env.txt").read_text().splitlines() if "=" in line)
    assert seen["SHARED"] == "from the service"  # its own variables win
    assert seen["JOBVAR"] == "j1" and seen["OWN"] == "own-j1"  # the job's, and expanded against them
    assert seen["CI_JOB_NAME"] == "svc"
    assert "SVC_TEST_TOKEN" not in seen and "DERIVED" not in seen  # no secret, nor what holds one
    assert seen["LEAK"] == "x"  # a reference to a secret expands to nothing
    assert "s3cr3t-value-123" not in (workspace / "env.txt").read_text()


@integration
def test_the_pod_and_services_are_removed_after_a_timeout(docker_client, service_image, workspace):  # noqa: F811
    services = [{"name": service_image, "alias": "web", "entrypoint": httpd("up")}]
    seen: list[list] = []
    the_job = job(services, ["wget -qO- http://web:8080/", "sleep 300"], timeout=3)
    run_id = f"test-svc-{uuid.uuid4().hex[:12]}"
    watcher = threading.Thread(target=lambda: seen.append(wait_until(
        lambda: (found := containers_of(docker_client, run_id)) and len(found) >= 3 and found, 30,
        "pod, service and step running", ignore=(NotFound,))))
    watcher.start()
    result, sink, _ = run(the_job, workspace, run_id=run_id)
    watcher.join()
    assert (result.status, result.failure_class) == ("failed", "timeout"), system(sink)
    labels = [c.labels for c in seen[0]]
    assert sum(LABEL_POD in label for label in labels) == 1
    assert [label[LABEL_SERVICE] for label in labels if LABEL_SERVICE in label] == [default_aliases(service_image)[0]]
    none_left(docker_client, run_id)


@integration
def test_the_pod_and_services_are_removed_after_a_cancel(docker_client, service_image, workspace):  # noqa: F811
    services = [{"name": service_image, "alias": "web", "entrypoint": httpd("up")}]
    the_job = job(services, ["wget -qO- http://web:8080/ > fetched", "sleep 300"])
    result, sink, run_id = run(the_job, workspace, cancel=lambda: (workspace / "fetched").exists())
    assert (result.status, result.failure_class) == ("canceled", "canceled"), system(sink)
    assert (workspace / "fetched").read_text().strip() == "up"
    none_left(docker_client, run_id)


@integration
def test_a_cancel_ends_the_wait_for_services(docker_client, service_image, workspace):  # noqa: F811
    services = [{"name": service_image, "alias": "mute", "entrypoint": ["sleep", "300"]}]
    t0 = time.monotonic()
    result, sink, run_id = run(job(services, ["touch ran"]), workspace,
                               cancel=lambda: time.monotonic() - t0 > 1.5)
    assert (result.status, result.failure_class) == ("canceled", "canceled"), system(sink)
    assert time.monotonic() - t0 < 10  # not the 30 s wait
    assert "no longer waiting for services" in system(sink)
    assert not (workspace / "ran").exists()
    none_left(docker_client, run_id)


@integration
def test_the_reapers_remove_the_pod_and_services_a_killed_runner_left(docker_client, service_image, store,  # noqa: F811
                                                                      workspace):
    """A runner that never reaches cleanup (its worker was SIGKILLed) leaves its pod and services:
    both carry the job's labels, so ``reap_orphans`` (no running attempt owns them) removes them."""
    from workers.reaper import reap_orphans

    run_id = f"test-svc-{uuid.uuid4().hex[:12]}"
    runner = DockerRunner(client=docker_client, network_mode="none")
    env = JobEnvironment(workspace=workspace, project_dir="/builds/group/project", image=TEST_IMAGE, run_id=run_id,
                         job_name="left", attempt=1,
                         services=({"name": service_image, "alias": "web", "entrypoint": httpd("x")},))
    runner.prepare(env, JobLog(MemorySink(), run_id=run_id, job="left", max_bytes=1 << 20))
    left = containers_of(docker_client, run_id)
    assert sorted(LABEL_POD in c.labels for c in left) == [False, True]
    assert all(c.status == "running" for c in left)
    reap_orphans(store, docker_client)
    none_left(docker_client, run_id)
    runner.cleanup()  # nothing left to do, and no error


@integration
def test_a_job_without_services_has_no_pod(docker_client, workspace, monkeypatch):  # noqa: F811
    run_id = f"test-svc-{uuid.uuid4().hex[:12]}"
    seen: list = []
    the_job = job([], ["cat /etc/hosts > hosts.txt"])
    original = DockerRunner._create

    def spy(self, step, script_name):
        container_id = original(self, step, script_name)
        seen.append(docker_client.api.inspect_container(container_id)["HostConfig"]["NetworkMode"])
        return container_id

    monkeypatch.setattr(DockerRunner, "_create", spy)
    result, sink, _ = run(the_job, workspace, run_id=run_id)
    assert result.status == "success", system(sink)
    assert seen == ["none"]
    assert "Starting service" not in system(sink)


def test_job_environment_defaults_keep_old_callers_working(tmp_path):
    env = JobEnvironment(workspace=tmp_path, project_dir="/b", image=None, run_id="r", job_name="j", attempt=1)
    assert (env.services, dict(env.service_env), env.cancel) == ((), {}, None)
