"""The Docker executor: every step of a job in a fresh container of the job's image.

Life cycle (``workers.runners.base.StepRunner``):

- ``prepare``: connect to the daemon (unreachable: ``InfrastructureError``), resolve the image by
  the pull policy (``if-not-present`` | ``always`` | ``never``; absent or unpullable:
  ``ImageMissing`` naming the image), make a per-job scratch directory for the step scripts.
- ``run``: one container per step, as GitLab's docker executor does per stage. The step's script
  is written to ``<scratch>/step-N-<name>.sh`` and the scratch directory is bind-mounted
  **read-only** at ``/ci-queue`` (see *Script delivery*); the workspace is bind-mounted
  read-write at ``env.project_dir``, which is also the working directory. Environment: exactly
  ``step.env``. No TTY, no stdin. Labels ``ci-queue.managed=1``, ``ci-queue.run``,
  ``ci-queue.job``, ``ci-queue.attempt``, ``ci-queue.step`` and ``ci-queue.runner`` (this runner
  object) let :func:`reap` and :meth:`DockerRunner.cleanup` find leftovers. The output is
  attached *before* the container starts (nothing is lost, no replay needed) and demultiplexed
  into ``log.stream(step, "out" | "err")``. At the deadline or on cancel (polled every 100 ms) the
  container gets SIGTERM, then SIGKILL after the grace period (``docker stop`` semantics, but
  without blocking, so the output keeps flowing into the log meanwhile). The container is
  removed (with its anonymous volumes) after every step, whatever happened.
  Order: exact within each stream. Across the two, lines arrive in the order the daemon forwards
  them: Docker copies a container's stdout and stderr pipes in separate goroutines, so writes to
  the two streams within about a millisecond of each other may be swapped (GitLab's docker
  executor has the same limit); output further apart keeps its order.
- ``cleanup``: removes any container of this runner still there and the scratch directory.

Services (``services:``, GitLab's semantics; docs/DESIGN.md "Service containers: the pod"): when
the job has any, ``prepare`` first starts a *pod*, a container of the job's image that only
holds a network namespace (``sh -c 'read _'`` on an open stdin, ``--init``), in the configured
network mode, with every service alias mapped to 127.0.0.1 in its ``/etc/hosts``
(``extra_hosts``). Each service, then each step, runs with network mode ``container:<pod>``: they
share the pod's namespace and its ``/etc/hosts`` (Docker hands a joined container the hosts file
of the container it joins), so ``myalias:8080`` reaches the service with no DNS, no bridge and
no published port. A service gets the job's environment without its secrets plus its own
``variables``, keeps its image's entrypoint unless ``entrypoint`` is given, has log driver
``none`` (its output is read by a thread that keeps the last lines, shown only when it does not
get ready), the labels of the job's containers plus ``ci-queue.service=<alias>``, and is
registered with the step guard like a step's container. ``prepare`` then waits, at most
``service_wait`` s (``CIQ_SERVICE_WAIT_SECONDS``), until one of the TCP ports its image exposes
(or ``HEALTHCHECK_TCP_PORT``) listens in the pod, read from ``/proc/net/tcp{,6}`` through ``docker
exec`` in the pod with shell builtins; a service that does not get ready, or exits, is a
warning in the job log and the job goes on. A job without services has no pod.

Hardening (``workers.runners.container_policy``): every container of the job, services and pod
included, gets the same ``ContainerPolicy``: not privileged unless ``CIQ_DOCKER_PRIVILEGED``,
``no-new-privileges``, all capabilities dropped but Docker's default set, a pids limit, the
memory and CPU limits, the configured volumes; a bind mount of the engine's socket is refused
(``SocketMount``). A step the kernel killed for memory (``State.OOMKilled``) fails with
``StepOutcome.detail`` saying so.

Decisions:

- *Script delivery*: a file on a read-only bind mount, run as ``sh -c <detect> sh FILE``, where
  ``<detect>`` execs bash when the image has one (``/usr/local/bin``, ``/usr/bin``, ``/bin``, the
  order GitLab's runner uses) and ``sh`` otherwise. Not ``sh -c SCRIPT`` (one argument is
  limited to 128 KiB by Linux), not stdin (a command of the script that reads stdin would eat
  the rest of the script, and attaching stdin costs a hijacked connection). The script's stdin
  is empty. Like the workspace, the scratch directory must be a path the daemon sees (a local
  daemon, or the same paths in Docker-in-Docker setups).
- *Entrypoint*: the image's ENTRYPOINT is reset (``--entrypoint ""``): an image whose entrypoint
  is a tool (``alpine/git``...) would otherwise swallow the script. GitLab keeps the entrypoint
  unless the job says ``image: {entrypoint: [""]}``; ``JobEnvironment`` has no field for that yet.
- *init*: ``--init`` (docker-init/tini as PID 1) by default, so that SIGTERM reaches the shell
  (a PID 1 shell ignores it and would always wait for the SIGKILL) and zombies are reaped.
- *User*: the image's user (root for most images) unless ``user=`` is given. Files the job
  writes into the workspace belong to that user; a worker that is not root needs ``user=
  "<uid>:<gid>"`` of the worker (or must be allowed to remove root's files) to delete the
  workspace afterwards.
- *Log driver* ``none``: the daemon keeps no copy of the output. Its default (json-file) would
  store every line on the daemon's disk unmasked (secrets included) until the container is
  removed, and it makes a flood of output three times slower (200 MB: 21 s with it, 7 s without).
- *Pull timeout*: ``pull_timeout`` (default 300 s) bounds a pull as a whole; a pull that has not
  finished by then is ``ImageMissing`` (retryable, as every ``InfrastructureError``).
- *Errors*: the daemon failing before the step's container started is an
  ``InfrastructureError`` (retryable); failing after it started (connection lost, container gone,
  a container that outlives SIGKILL) is an ``InfrastructureError`` with ``retryable = False``:
  the failure class is still ``runner_system_failure``, but the script may have run.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests
from docker import errors as docker_errors
from docker.types import LogConfig, Mount
from docker.utils import parse_repository_tag

from ci_queue.clock import now_iso
from ci_queue.settings import get_settings
from workers import guard
from workers.logs import JobLog
from workers.runners.base import (
    CancelCheck,
    ImageMissing,
    InfrastructureError,
    JobEnvironment,
    StepOutcome,
    StepSpec,
)
from workers.runners.container_policy import ContainerPolicy
from workers.runners.services import (
    LISTENING_SCRIPT,
    OutputTail,
    ServicePlan,
    health_check_ports,
    listening_ports,
    plan_services,
)

LABEL_MANAGED = "ci-queue.managed"
LABEL_RUN = "ci-queue.run"
LABEL_JOB = "ci-queue.job"
LABEL_ATTEMPT = "ci-queue.attempt"
LABEL_STEP = "ci-queue.step"
LABEL_RUNNER = "ci-queue.runner"
LABEL_SERVICE = "ci-queue.service"  # a service container: its primary alias
LABEL_POD = "ci-queue.pod"  # the container holding the network namespace of a job with services
PULL_POLICIES = ("if-not-present", "always", "never")
SCRIPTS_MOUNT = "/ci-queue"  # where the step scripts appear in the container (read-only)
PREPARE_STEP = "prepare"  # the step name of the system lines ``prepare`` writes

# $1 is the script file. bash when the image has it (GitLab's order), else POSIX sh.
_SHELL_DETECT = (
    "for s in /usr/local/bin/bash /usr/bin/bash /bin/bash; do "
    'if [ -x "$s" ]; then exec "$s" "$1"; fi; '
    'done; exec sh "$1"'
)
_POLL = 0.1  # seconds between cancel / deadline checks
_AFTER_KILL = 30.0  # seconds a SIGKILLed container may take to end before it is the daemon's fault
_EOF = object()
# The pod's program: wait for a line on stdin, which stays open and silent (no client attaches),
# so it waits for ever with nothing but a shell builtin.
_POD_COMMAND = ["sh", "-c", "read _"]


@dataclass
class _Service:
    """A started service container of the job."""

    plan: ServicePlan
    image_id: str
    container_id: str
    tail: OutputTail | None = None
    started: bool = False


class DockerRunner:
    """``StepRunner`` running each step in a fresh container (see the module docstring)."""

    def __init__(
        self,
        *,
        client: docker.DockerClient | None = None,
        base_url: str | None = None,
        pull_policy: str = "if-not-present",
        pull_timeout: float = 300.0,
        network_mode: str | None = None,
        kill_grace: float | None = None,
        user: str | None = None,
        init: bool = True,
        default_image: str | None = None,
        scratch_dir: str | os.PathLike[str] | None = None,
        api_timeout: float = 60.0,
        service_wait: float | None = None,
        policy: ContainerPolicy | None = None,
    ) -> None:
        if pull_policy not in PULL_POLICIES:
            raise ValueError(f"pull_policy must be one of {', '.join(PULL_POLICIES)}, not {pull_policy!r}")
        settings = get_settings()
        self.pull_policy = pull_policy
        self.pull_timeout = pull_timeout
        self.network_mode = network_mode or settings.docker_network
        self.kill_grace = settings.kill_grace_seconds if kill_grace is None else kill_grace
        self.user = user
        self.init = init
        self.default_image = default_image
        self.scratch_dir = scratch_dir
        self.api_timeout = api_timeout
        # seconds a service may take to listen (<= 0: services are not waited for)
        self.service_wait = settings.service_wait_seconds if service_wait is None else service_wait
        # what every container of the job may do (docs: workers/runners/container_policy.py)
        self.policy = policy if policy is not None else ContainerPolicy.from_settings(settings)
        self.runner_id = uuid.uuid4().hex
        self._base_url = base_url
        self._client = client
        self._own_client = client is None
        self._env: JobEnvironment | None = None
        self._image_id: str | None = None
        self._scratch: Path | None = None
        self._steps = 0
        self._pod_id: str | None = None  # the pod of a job with services
        self._services: list[_Service] = []

    # -- prepare ---------------------------------------------------------------------------------

    def prepare(self, env: JobEnvironment, log: JobLog) -> None:
        image = env.image or self.default_image
        if not image:
            raise ImageMissing("the job has no image and this docker runner has no default image")
        if not env.project_dir.startswith("/"):
            raise InfrastructureError(
                f"CI_PROJECT_DIR in a container must be an absolute path, not {env.project_dir!r}"
            )
        try:
            self.policy.check()
        except ValueError as exc:
            raise InfrastructureError(f"the docker executor's settings are invalid: {exc}") from None
        client = self._connect()
        self._check_network(client)
        self._image_id = self._resolve_image(client, image, log)
        if self._scratch is not None:  # prepared again without cleanup()
            shutil.rmtree(self._scratch, ignore_errors=True)
        scratch = Path(tempfile.mkdtemp(prefix="ci-queue-docker-", dir=self.scratch_dir))
        scratch.chmod(0o755)  # readable by a non-root container user
        self._scratch = scratch
        self._env = env
        self._steps = 0
        self._pod_id = None
        self._services = []
        log.system(
            PREPARE_STEP,
            f"Using docker image {image} ({self._image_id[:19]}), network mode {self.network_mode}",
        )
        log.system(PREPARE_STEP, self.policy.describe())
        if env.services:
            self._start_services(client, env, log)

    def _connect(self) -> docker.DockerClient:
        if self._client is not None:
            return self._client
        where = self._base_url or os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
        try:
            if self._base_url:
                client = docker.DockerClient(base_url=self._base_url, timeout=int(self.api_timeout))
            else:
                client = docker.from_env(timeout=int(self.api_timeout))
            client.ping()
        except (docker_errors.DockerException, requests.exceptions.RequestException) as exc:
            raise InfrastructureError(f"the Docker daemon is unreachable at {where}: {exc}") from exc
        self._client = client
        return client

    def _check_network(self, client: docker.DockerClient) -> None:
        """A named network must exist (``dockerd --bridge=none`` has no ``bridge``): say so now."""
        mode = self.network_mode
        if mode in ("none", "host") or mode.startswith("container:"):
            return
        try:
            client.networks.get(mode)
        except docker_errors.NotFound:
            raise InfrastructureError(
                f"the docker network {mode!r} (CIQ_DOCKER_NETWORK) does not exist on this Docker daemon"
            ) from None
        except (docker_errors.APIError, requests.exceptions.RequestException) as exc:
            raise InfrastructureError(f"cannot inspect the docker network {mode!r}: {exc}") from exc

    def _resolve_image(self, client: docker.DockerClient, image: str, log: JobLog, policy: str | None = None) -> str:
        policy = policy or self.pull_policy
        if policy != "always":
            try:
                return client.images.get(image).id
            except docker_errors.ImageNotFound:
                if policy == "never":
                    raise ImageMissing(
                        f"image {image} is not present on this host and the pull policy is 'never'"
                    ) from None
            except (docker_errors.APIError, requests.exceptions.RequestException) as exc:
                raise InfrastructureError(f"cannot inspect image {image}: {exc}") from exc
        log.system(PREPARE_STEP, f"Pulling docker image {image} (pull policy {policy})")
        self._pull(client, image)
        try:
            return client.images.get(image).id
        except docker_errors.ImageNotFound:
            raise ImageMissing(f"image {image} is still absent after pulling it") from None

    def _pull(self, client: docker.DockerClient, image: str) -> None:
        """Pull ``image``, bounded by ``pull_timeout`` as a whole (the pull runs in a thread)."""
        repository, tag = parse_repository_tag(image)
        outcome: list[BaseException | None] = []

        def pull() -> None:
            try:
                for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                    if isinstance(event, dict) and event.get("error"):
                        raise docker_errors.APIError(str(event["error"]))
                outcome.append(None)
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)

        worker = threading.Thread(target=pull, name=f"docker-pull {image}", daemon=True)
        worker.start()
        worker.join(self.pull_timeout)
        if worker.is_alive():
            raise ImageMissing(f"pulling image {image} did not finish within {self.pull_timeout:g} s")
        error = outcome[0] if outcome else None
        if error is None:
            return
        if isinstance(error, requests.exceptions.ConnectionError):
            raise InfrastructureError(f"the Docker daemon went away while pulling image {image}: {error}") from error
        if isinstance(error, docker_errors.APIError):
            reason = error.explanation or str(error)
            raise ImageMissing(f"image {image} cannot be pulled: {reason}") from error
        raise ImageMissing(f"image {image} cannot be pulled: {error}") from error

    # -- services --------------------------------------------------------------------------------

    def _start_services(self, client: docker.DockerClient, env: JobEnvironment, log: JobLog) -> None:
        """The pod, then each service in it; then wait until they listen (see the module docstring)."""
        if self.network_mode.startswith("container:"):
            raise InfrastructureError(
                f"services need a network namespace of the job's own, and the network mode {self.network_mode!r} "
                "(CIQ_DOCKER_NETWORK) joins another container's: use none, host, bridge or a network's name"
            )

        def warn(text: str) -> None:
            log.system(PREPARE_STEP, text)

        plans = plan_services(env.services, warn)
        if not plans:
            return
        images: list[str] = []
        for plan in plans:
            log.system(PREPARE_STEP, f"Starting service {plan.name} (aliases {', '.join(plan.aliases)})")
            images.append(self._resolve_image(client, plan.name, log, self._service_pull_policy(plan, warn)))
        api = client.api
        try:
            self._pod_id = self._start_pod(api, env, [alias for plan in plans for alias in plan.aliases])
            for plan, image_id in zip(plans, images, strict=True):
                self._services.append(self._start_service(api, env, plan, image_id, log))
            self._wait_for_services(api, env, log)
        except docker_errors.ImageNotFound as exc:
            raise ImageMissing(f"an image of the job disappeared from this host: {exc}") from exc
        except (docker_errors.DockerException, requests.exceptions.RequestException) as exc:
            raise InfrastructureError(f"cannot start the services of the job: {exc}") from exc

    def _service_pull_policy(self, plan: ServicePlan, warn: Any) -> str:
        """The service's ``pull_policy`` (its first one, if a list), else the runner's."""
        value = plan.spec.get("pull_policy")
        if value is None:
            return self.pull_policy
        policy = str(value[0] if isinstance(value, list) and value else value)
        if policy not in PULL_POLICIES:
            warn(f"WARNING: Service {plan.name}: unknown pull_policy {policy!r}; using {self.pull_policy}")
            return self.pull_policy
        return policy

    def _start_pod(self, api: docker.APIClient, env: JobEnvironment, aliases: list[str]) -> str:
        assert self._image_id is not None
        host_config = api.create_host_config(
            network_mode=self.network_mode,
            init=True,  # PID 1 forwards signals and reaps; the shell is not PID 1
            extra_hosts={alias: "127.0.0.1" for alias in aliases},
            log_config=LogConfig(type="none"),
            **self.policy.host_config(),
        )
        created = api.create_container(
            image=self._image_id,
            command=_POD_COMMAND,
            entrypoint=[""],
            labels={**self._labels(env), LABEL_POD: "1"},
            user=self.user or "",
            tty=False,
            stdin_open=True,  # nobody attaches: `read` waits for ever
            host_config=host_config,
            name=self._name(env, "pod"),
        )
        pod_id = created["Id"]
        self._guard(pod_id)
        api.start(pod_id)
        return pod_id

    def _start_service(self, api: docker.APIClient, env: JobEnvironment, plan: ServicePlan, image_id: str,
                       log: JobLog) -> _Service:
        host_config = api.create_host_config(
            network_mode=f"container:{self._pod_id}",
            mounts=self.policy.mounts([]),  # the configured volumes, as GitLab gives services too
            log_config=LogConfig(type="none"),  # see the module docstring; the tail keeps the last lines
            **self.policy.host_config(),
        )
        created = api.create_container(
            image=image_id,
            command=plan.command("command"),
            entrypoint=plan.command("entrypoint"),
            environment={**env.service_env, **plan.variables},
            labels={**self._labels(env), LABEL_SERVICE: plan.alias},
            tty=False,
            stdin_open=False,
            host_config=host_config,
            name=self._name(env, f"svc-{plan.index}-{plan.alias}"),
        )
        service = _Service(plan=plan, image_id=image_id, container_id=created["Id"])
        self._guard(service.container_id)
        with contextlib.suppress(docker_errors.APIError, requests.exceptions.RequestException):
            stream = api.attach(service.container_id, stdout=True, stderr=True, stream=True, logs=False, demux=True)
            service.tail = OutputTail(stream, plan.alias)
        try:
            api.start(service.container_id)
            service.started = True
        except docker_errors.APIError as exc:  # a wrong entrypoint / command: the job's doing, not retried
            self._not_ready(service, log, f"its container cannot start: {exc.explanation or exc}", ended=True)
        return service

    def _wait_for_services(self, api: docker.APIClient, env: JobEnvironment, log: JobLog) -> None:
        """Poll until a port of each service listens in the pod, it exits, or the wait is over."""

        def warn(text: str) -> None:
            log.system(PREPARE_STEP, text)

        waiting: list[tuple[_Service, list[int]]] = []
        for service in self._services:
            if not service.started:
                continue
            ports = health_check_ports(service.plan, api.inspect_image(service.image_id).get("Config"), warn)
            if ports:
                waiting.append((service, ports))
            else:
                warn(f"Service {service.plan.name} exposes no TCP port: not waiting for it")
        if not waiting or self.service_wait <= 0:
            return
        log.system(PREPARE_STEP, f"Waiting for services to be up and running (timeout {self.service_wait:g} seconds)")
        start = time.monotonic()
        deadline = start + self.service_wait
        while waiting:
            if env.cancel is not None and env.cancel():
                warn("Job canceled: no longer waiting for services")
                return
            try:
                listening = self._listening(api)
            except (docker_errors.DockerException, requests.exceptions.RequestException) as exc:
                for service, _ports in waiting:
                    self._not_ready(service, log, f"its ports cannot be read in the pod: {exc}")
                return
            now = time.monotonic()
            still: list[tuple[_Service, list[int]]] = []
            for service, ports in waiting:
                ready = [port for port in ports if port in listening]
                if ready:
                    log.system(PREPARE_STEP, f"Service {service.plan.name} is ready: port {ready[0]} listens "
                                             f"(after {now - start:.1f} s)")
                    continue
                state = api.inspect_container(service.container_id)["State"]
                if not state.get("Running"):
                    why = f"its container exited with code {state.get('ExitCode')}"
                    if state.get("OOMKilled"):
                        why += ": " + self.policy.oom_reason("service's")
                    self._not_ready(service, log, why, ended=True)
                elif now >= deadline:
                    which = ", ".join(map(str, ports))
                    self._not_ready(service, log, f"no TCP port of {which} listened within {self.service_wait:g} s")
                else:
                    still.append((service, ports))
            waiting = still
            if waiting:
                time.sleep(_POLL)  # the polling interval

    def _listening(self, api: docker.APIClient) -> set[int]:
        """The TCP ports listening in the pod's network namespace."""
        assert self._pod_id is not None
        exec_id = api.exec_create(self._pod_id, ["sh", "-c", LISTENING_SCRIPT], stdout=True, stderr=False)["Id"]
        output = api.exec_start(exec_id)
        return listening_ports(output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output))

    def _not_ready(self, service: _Service, log: JobLog, why: str, *, ended: bool = False) -> None:
        """GitLab's warning for a service that did not get ready, with its last lines of output
        (of a service that ended: once its output is read to the end, at most 1 s)."""
        lines = [
            f"*** WARNING: Service {service.plan.name} (aliases {', '.join(service.plan.aliases)}) "
            "probably didn't start properly.",
            f"Health check error: {why}",
        ]
        tail = service.tail.lines(settle=1.0 if ended else 0.0) if service.tail is not None else []
        if tail:
            lines.append(f"Service container logs (last {len(tail)} lines):")
            lines.extend(f"  {line}" for line in tail)
        elif service.tail is None:
            lines.append("Service container logs: not available")
        else:
            lines.append("Service container logs: (none)")
        lines.append("*********")
        for line in lines:
            log.system(PREPARE_STEP, line)

    # -- run -------------------------------------------------------------------------------------

    def run(self, step: StepSpec, log: JobLog, cancel: CancelCheck) -> StepOutcome:
        if self._env is None or self._scratch is None or self._client is None or self._image_id is None:
            raise RuntimeError("DockerRunner.run() before prepare()")
        api = self._client.api
        self._steps += 1
        script = self._scratch / f"step-{self._steps}-{_slug(step.name)}.sh"
        script.write_text(step.script, encoding="utf-8")
        script.chmod(0o644)

        started_at = now_iso()
        t0 = time.monotonic()
        out, err = log.stream(step.name, "out"), log.stream(step.name, "err")
        container_id: str | None = None
        started = False  # the step's script may have run
        attach: Any = None
        stop_reader = threading.Event()
        reader: threading.Thread | None = None
        frames: queue.Queue[Any] = queue.Queue(maxsize=256)  # bounded: a flood waits in the daemon
        try:
            container_id = self._create(step, script.name)
            self._guard(container_id)
            try:
                attach = api.attach(container_id, stdout=True, stderr=True, stream=True, logs=False, demux=True)
                reader = threading.Thread(
                    target=_pump, args=(attach, frames, stop_reader), name=f"docker-attach {step.name}", daemon=True
                )
                reader.start()
                api.start(container_id)
            except docker_errors.APIError as exc:
                if _is_missing_executable(exc):
                    # The image has no /bin/sh: the job's fault, as a shell's "command not found".
                    log.system(step.name, f"The container cannot run the step: {exc.explanation or exc}")
                    return self._outcome("failed", 127, started_at, t0)
                raise InfrastructureError(f"cannot start the container of step {step.name}: {exc}") from exc
            started = True
            status, exit_code, detail = self._supervise(api, container_id, step, log, cancel, frames, (out, err), t0)
            return self._outcome(status, exit_code, started_at, t0, detail)
        except docker_errors.ImageNotFound as exc:
            raise ImageMissing(f"image {self._env.image} disappeared from this host: {exc}") from exc
        except (docker_errors.DockerException, requests.exceptions.RequestException) as exc:
            message = f"Docker failed during step {step.name}: {exc}"
            raise (_after_start(message) if started else InfrastructureError(message)) from exc
        finally:
            stop_reader.set()
            if container_id is not None:
                self._remove(container_id, log, step.name)
            if attach is not None:
                with contextlib.suppress(Exception):
                    attach.close()
            if reader is not None:
                reader.join(5)
            out.close()
            err.close()
            with contextlib.suppress(OSError):
                script.unlink()

    def _create(self, step: StepSpec, script_name: str) -> str:
        assert self._env is not None and self._client is not None and self._scratch is not None
        env = self._env
        api = self._client.api
        labels = {**self._labels(env), LABEL_STEP: step.name}
        host_config = api.create_host_config(
            mounts=self.policy.mounts([
                Mount(target=env.project_dir, source=str(env.workspace), type="bind", read_only=False),
                Mount(target=SCRIPTS_MOUNT, source=str(self._scratch), type="bind", read_only=True),
            ]),
            network_mode=f"container:{self._pod_id}" if self._pod_id else self.network_mode,
            init=self.init,
            log_config=LogConfig(type="none"),  # the job log is ours; see the module docstring
            **self.policy.host_config(),
        )
        created = api.create_container(
            image=self._image_id,
            command=["sh", "-c", _SHELL_DETECT, "sh", f"{SCRIPTS_MOUNT}/{script_name}"],
            entrypoint=[""],
            environment=dict(step.env),
            working_dir=env.project_dir,
            labels=labels,
            user=self.user or "",
            tty=False,
            stdin_open=False,
            host_config=host_config,
            name=self._name(env, step.name),
        )
        return created["Id"]

    def _labels(self, env: JobEnvironment) -> dict[str, str]:
        """The labels of every container of the job (``cleanup``, ``reap`` and the reaper find them)."""
        return {
            LABEL_MANAGED: "1",
            LABEL_RUN: env.run_id,
            LABEL_JOB: env.job_name,
            LABEL_ATTEMPT: str(env.attempt),
            LABEL_RUNNER: self.runner_id,
        }

    @staticmethod
    def _name(env: JobEnvironment, what: str) -> str:
        name = "-".join(["ciq", _slug(env.run_id)[:24], _slug(env.job_name)[:40], str(env.attempt), _slug(what)[:30]])
        return f"{name}-{uuid.uuid4().hex[:8]}"

    def _guard(self, container_id: str) -> None:
        """A worker's job: the container runs only under its lease (the step guard pauses / kills it)."""
        if self._env is not None:
            key = guard.job_key(self._env.run_id, self._env.job_name, self._env.attempt)
            if guard.guarded(key):
                guard.client().container(key, container_id)

    def _supervise(
        self,
        api: docker.APIClient,
        container_id: str,
        step: StepSpec,
        log: JobLog,
        cancel: CancelCheck,
        frames: queue.Queue[Any],
        streams: tuple[Any, Any],
        t0: float,
    ) -> tuple[str, int | None, str | None]:
        """Feed the output to the log until the container ends; stop it at the deadline / on cancel.
        Returns the status, the exit code and why, when the kernel killed it for memory.

        Every ``JobLog`` call happens here, on the caller's thread; the reader thread only queues.
        """
        deadline = t0 + step.timeout
        reason: str | None = None  # "timeout" | "canceled" once we decided to stop the container
        term_at = kill_at = 0.0
        next_check = 0.0
        eof = False
        while True:
            if not eof:
                try:
                    item = frames.get(timeout=_POLL)
                except queue.Empty:
                    item = None
                if item is _EOF:
                    eof = True
                elif isinstance(item, BaseException):
                    raise _after_start(f"reading the output of step {step.name} failed: {item}") from item
                elif item is not None:
                    streams[item[0]].feed(item[1])
            now = time.monotonic()
            if eof:
                state = api.inspect_container(container_id)["State"]
                if not state.get("Running") and state.get("Status") != "created":
                    oom = self.policy.oom_reason() if state.get("OOMKilled") else None
                    if oom:
                        log.system(step.name, f"The kernel killed a process of the step: {oom}")
                    status = reason or ("success" if state.get("ExitCode") == 0 else "failed")
                    return status, state.get("ExitCode"), oom if status == "failed" else None
                time.sleep(_POLL)  # the output ended a moment before the daemon saw the exit
                now = time.monotonic()
            if reason is None and now >= next_check:
                next_check = now + _POLL
                if cancel():
                    reason = "canceled"
                    log.system(step.name, "Job canceled: stopping the container")
                elif now >= deadline:
                    reason = "timeout"
                    log.system(
                        step.name, f"Timeout: the step ran longer than {step.timeout:g} s; stopping the container"
                    )
                if reason is not None:
                    term_at = now
                    _signal(api, container_id, "SIGTERM")
            elif reason is not None and not kill_at and now >= term_at + self.kill_grace:
                kill_at = now
                log.system(step.name, f"The container did not stop within {self.kill_grace:g} s of SIGTERM: SIGKILL")
                _signal(api, container_id, "SIGKILL")
            elif kill_at and now >= kill_at + _AFTER_KILL:
                raise _after_start(f"the container of step {step.name} did not end {_AFTER_KILL:g} s after SIGKILL")

    def _outcome(self, status: str, exit_code: int | None, started_at: str, t0: float,
                 detail: str | None = None) -> StepOutcome:
        return StepOutcome(
            status=status,
            exit_code=exit_code,
            started_at=started_at,
            finished_at=now_iso(),
            duration=time.monotonic() - t0,
            detail=detail,
        )

    def _remove(self, container_id: str, log: JobLog, step_name: str) -> None:
        """Remove a container (force: kills it if it still runs; with its anonymous volumes)."""
        assert self._client is not None
        try:
            _remove_container(self._client.api, container_id)
        except docker_errors.NotFound:
            pass
        except Exception as exc:  # cleanup() and reap() try again by label
            with contextlib.suppress(Exception):
                log.system(step_name, f"Could not remove container {container_id[:12]}: {exc}")

    # -- cleanup ---------------------------------------------------------------------------------

    def cleanup(self) -> None:
        client, self._client = self._client, (None if self._own_client else self._client)
        if client is not None:
            with contextlib.suppress(Exception):
                _remove_labelled(client.api, [f"{LABEL_RUNNER}={self.runner_id}"])
        for service in self._services:  # their output streams ended with their containers
            if service.tail is not None:
                service.tail.close()
        self._services = []
        self._pod_id = None
        if client is not None and self._own_client:
            with contextlib.suppress(Exception):
                client.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        self._env = None
        self._image_id = None


def reap(
    client: docker.DockerClient | None = None,
    *,
    run_id: str | None = None,
    older_than: float | None = None,
) -> int:
    """Remove containers labelled ``ci-queue.managed=1`` (of one run, created over ``older_than`` s ago).

    For the sweeper: what a killed worker left behind. Returns how many containers it removed.
    A daemon that cannot be reached is an ``InfrastructureError``; a container that vanished in
    the meantime is not counted and not an error.
    """
    own = client is None
    try:
        if client is None:
            client = docker.from_env()
        labels = [f"{LABEL_RUN}={run_id}"] if run_id is not None else []
        return _remove_labelled(client.api, labels, older_than=older_than)
    except (docker_errors.DockerException, requests.exceptions.RequestException) as exc:
        raise InfrastructureError(f"reaping ci-queue containers failed: {exc}") from exc
    finally:
        if own and client is not None:
            client.close()


def _remove_labelled(api: docker.APIClient, labels: list[str], *, older_than: float | None = None) -> int:
    filters = {"label": [f"{LABEL_MANAGED}=1", *labels]}
    cutoff = time.time() - older_than if older_than is not None else None
    removed = 0
    # services and steps before their pod (removing a pod under them works too, but reads oddly)
    found = sorted(api.containers(all=True, filters=filters), key=lambda c: LABEL_POD in (c.get("Labels") or {}))
    for summary in found:
        if cutoff is not None and summary.get("Created", 0) > cutoff:
            continue
        with contextlib.suppress(docker_errors.NotFound):
            _remove_container(api, summary["Id"])
            removed += 1
    return removed


def _remove_container(api: docker.APIClient, container_id: str) -> None:
    """Force-remove; waits out a removal already in progress. NotFound: already gone."""
    deadline = time.monotonic() + 30
    while True:
        try:
            api.remove_container(container_id, force=True, v=True)
            return
        except docker_errors.NotFound:
            raise
        except docker_errors.APIError as exc:
            if exc.status_code != 409 or time.monotonic() > deadline:  # 409: removal already in progress
                raise
        time.sleep(_POLL)


def _pump(attach: Iterator[tuple[bytes | None, bytes | None]], frames: queue.Queue[Any], stop: threading.Event) -> None:
    """Reader thread: queue (stream index, bytes) frames in the order the daemon sent them."""

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                frames.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    try:
        for stdout, stderr in attach:
            if stdout and not put((0, stdout)):
                return
            if stderr and not put((1, stderr)):
                return
    except Exception as exc:  # a broken connection: the caller decides
        if not stop.is_set():
            put(exc)
        return
    put(_EOF)


def _signal(api: docker.APIClient, container_id: str, signal: str) -> None:
    try:
        api.kill(container_id, signal=signal)
    except docker_errors.APIError as exc:
        if exc.status_code not in (404, 409):  # gone / not running any more: nothing to stop
            raise


def _after_start(message: str) -> InfrastructureError:
    """A Docker failure once the step's script may have run: ``retryable = False`` tells the engine
    not to re-run the job on its own (a half-done step is never silently re-run)."""
    error = InfrastructureError(message)
    error.retryable = False  # type: ignore[attr-defined]
    return error


def _is_missing_executable(exc: docker_errors.APIError) -> bool:
    """The image has no ``sh`` (only seen with ``init=False``: docker-init exits 127 itself)."""
    return "executable file not found" in str(exc.explanation or exc).lower()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-") or "x"


__all__: list[str] = ["LABEL_MANAGED", "LABEL_POD", "LABEL_SERVICE", "PULL_POLICIES", "DockerRunner", "reap"]
