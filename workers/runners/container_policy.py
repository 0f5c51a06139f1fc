"""What a job's containers may do: the Docker executor's hardening, one policy for every container
of a job (each step's, each service's, and the services' pod).

- **Not privileged** unless the worker allows it (``CIQ_DOCKER_PRIVILEGED=1``, off by default; a
  pipeline cannot ask for it). A privileged container has every capability, every device and no
  seccomp or AppArmor confinement: it is root on the host. Docker-in-Docker needs it; give it
  only to workers whose jobs are trusted (``ci-queue worker --protected`` hosts).
- **no-new-privileges**: a setuid or setgid program (``sudo``, ``su``, ``ping`` on old images)
  or a file capability gives nothing more than the process had; with the capabilities below, a
  non-root user in a container stays that user.
- **Capabilities**: ``--cap-drop ALL``, then ``--cap-add`` of Docker's default set, written out
  here (``DEFAULT_CAPABILITIES``, moby's ``oci/caps/defaults.go``, the same 14 from Docker 1.x to
  28). A daemon configured with other defaults (dockerd's ``default-capabilities``, some
  distributions' builds) does not widen what a job gets, and the set is visible in one place.
  ``CAP_SYS_ADMIN`` is not in it: no ``mount``, no namespaces of the job's own. A privileged
  container gets no capability options: Docker refuses ``--cap-drop ALL`` with ``--privileged``.
- **pids limit** (``CIQ_DOCKER_PIDS_LIMIT``, default 4096; 0: none): threads count too (the
  kernel's pids controller counts tasks), so it is generous for compilers and JVMs, and a fork
  bomb stops there instead of at the host's ``pid_max``.
- **Memory and CPUs** (``CIQ_DOCKER_MEMORY``, ``CIQ_DOCKER_CPUS``: GitLab runner's ``memory`` and
  ``cpus``; empty / 0: no limit). ``memory-swap`` is set to the memory limit, so a container
  cannot use swap to get around it. Each container of the job gets the limits (a service too:
  GitLab's separate ``service_memory`` / ``service_cpus`` are not split out here). A step whose
  container the kernel killed for memory fails with a reason that says so (``oom_reason``).
- **Volumes** (``CIQ_DOCKER_VOLUMES``, GitLab's ``volumes``: ``/path`` for an anonymous volume,
  ``name:/path`` for a named one, ``/host:/path[:ro|rw]`` for a bind mount, comma-separated),
  and every bind mount the runner makes itself (the workspace, the scripts), are checked: a
  source that is the Docker engine's socket (or containerd's), the same socket under another
  path, or a directory that holds one (``/var/run``, ``/``) is refused (``SocketMount``). Whoever
  reaches the engine's socket is root on the host; a job never gets it, whatever the settings.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ci_queue.artifacts.selection import human_bytes
from ci_queue.settings import DOCKER_MIN_MEMORY, Settings
from ci_queue.sizes import parse_size
from workers.runners.base import InfrastructureError

if TYPE_CHECKING:
    from docker.types import Mount

# moby oci/caps/defaults.go, DefaultCapabilities(): what `docker run` gives without options.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)
# Where engines listen unless DOCKER_HOST says otherwise (`/var/run` is `/run` on most hosts).
ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
                  "/var/run/containerd/containerd.sock")
DEFAULT_PIDS_LIMIT = 4096


class SocketMount(InfrastructureError):
    """A mount would give a job the Docker engine's socket."""


@dataclass(frozen=True)
class Volume:
    """One entry of ``CIQ_DOCKER_VOLUMES``: a bind (``source`` an absolute host path), a named
    volume (``source`` a name) or an anonymous one (``source`` empty)."""

    target: str
    source: str = ""
    read_only: bool = False

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")

    def mount(self) -> Mount:
        from docker.types import Mount  # the docker SDK only where containers are made (engine_sockets is not)

        if self.is_bind:
            return Mount(target=self.target, source=self.source, type="bind", read_only=self.read_only)
        return Mount(target=self.target, source=self.source or None, type="volume", read_only=self.read_only)


def parse_volumes(text: str) -> tuple[Volume, ...]:
    """GitLab's ``volumes`` entries, comma-separated; ``ValueError`` naming a bad entry."""
    volumes = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        parts = entry.split(":")
        mode = ""
        if len(parts) == 3 or (len(parts) == 2 and parts[1] in ("ro", "rw")):
            mode = parts.pop()
            if mode not in ("ro", "rw"):
                raise ValueError(f"volume {entry!r}: the mode must be ro or rw, not {mode!r}")
        if len(parts) == 1:
            source, target = "", parts[0]
        elif len(parts) == 2:
            source, target = parts
        else:
            raise ValueError(f"volume {entry!r} is not /path, name:/path or /host/path:/path[:ro|rw]")
        if not target.startswith("/") or (source and not source.startswith("/") and "/" in source):
            raise ValueError(f"volume {entry!r}: the container path must be absolute, the source an absolute "
                             "host path or a volume name")
        volumes.append(Volume(target=target, source=source, read_only=mode == "ro"))
    return tuple(volumes)


def engine_sockets(environ: dict[str, str] | None = None) -> list[str]:
    """The real paths of the engine sockets of this host: DOCKER_HOST's (``unix://``) and the usual ones."""
    environ = os.environ if environ is None else environ
    candidates = list(ENGINE_SOCKETS)
    host = environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        candidates.insert(0, host[len("unix://"):])
    return list(dict.fromkeys(os.path.realpath(path) for path in candidates))


def check_bind_source(source: str, sockets: list[str] | None = None) -> None:
    """``SocketMount`` if bind-mounting ``source`` would hand the engine's socket to a job: it is
    one, the same socket by another name (a bind or hard link), or a directory above one."""
    sockets = engine_sockets() if sockets is None else sockets
    real = os.path.realpath(source)
    for socket_path in sockets:
        if real == socket_path or socket_path.startswith(real.rstrip("/") + "/"):
            raise SocketMount(f"refusing to mount {source} into a job's container: it is or contains the container "
                              f"engine's socket {socket_path}, which would make the job root on this host")
    try:
        info = os.stat(real)
    except OSError:
        return
    if stat.S_ISSOCK(info.st_mode):
        for socket_path in sockets:
            try:
                same = os.path.samestat(info, os.stat(socket_path))
            except OSError:
                continue
            if same:
                raise SocketMount(f"refusing to mount {source} into a job's container: it is the container engine's "
                                  f"socket {socket_path} under another name")


@dataclass(frozen=True)
class ContainerPolicy:
    """The hardening of a job's containers (see the module docstring)."""

    privileged: bool = False
    pids_limit: int = DEFAULT_PIDS_LIMIT  # <= 0: no limit
    memory: int = 0  # bytes; 0: no limit
    cpus: float = 0.0  # 0: no limit
    volumes: tuple[Volume, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> ContainerPolicy:
        """The policy ``settings`` ask for; ``ValueError`` for a value that cannot be one."""
        return cls(privileged=settings.docker_privileged, pids_limit=settings.docker_pids_limit,
                   memory=parse_size(settings.docker_memory) if settings.docker_memory.strip() else 0,
                   cpus=settings.docker_cpus, volumes=parse_volumes(settings.docker_volumes))

    def check(self) -> None:
        """``ValueError`` for limits Docker would refuse; ``SocketMount`` for a volume of the socket."""
        if self.memory and self.memory < DOCKER_MIN_MEMORY:
            raise ValueError(f"the memory limit {human_bytes(self.memory)} is below Docker's minimum of 6 MiB")
        if self.cpus < 0:
            raise ValueError("the CPU limit must be positive (0: no limit)")
        for volume in self.volumes:
            if volume.is_bind:
                check_bind_source(volume.source)

    def host_config(self) -> dict[str, object]:
        """The ``create_host_config`` arguments of a container of the job."""
        options: dict[str, object] = {"privileged": self.privileged, "security_opt": ["no-new-privileges:true"]}
        if not self.privileged:  # Docker refuses --cap-drop ALL with --privileged
            options.update(cap_drop=["ALL"], cap_add=list(DEFAULT_CAPABILITIES))
        if self.pids_limit > 0:
            options["pids_limit"] = self.pids_limit
        if self.memory:
            options.update(mem_limit=self.memory, memswap_limit=self.memory)
        if self.cpus:
            options["nano_cpus"] = int(self.cpus * 1e9)
        return options

    def mounts(self, own: list[Mount]) -> list[Mount]:
        """``own`` (the runner's bind mounts) and the configured volumes, every bind source checked."""
        mounts = [*own, *(volume.mount() for volume in self.volumes)]
        sockets = engine_sockets()
        for mount in mounts:
            if mount.get("Type") == "bind":
                check_bind_source(str(mount["Source"]), sockets)
        return mounts

    def describe(self) -> str:
        """One line for the job log: what the containers may do."""
        limits = [f"memory {human_bytes(self.memory)}" if self.memory else "no memory limit",
                  f"{self.cpus:g} CPUs" if self.cpus else "no CPU limit",
                  f"{self.pids_limit} processes" if self.pids_limit > 0 else "no process limit"]
        rights = "privileged (CIQ_DOCKER_PRIVILEGED)" if self.privileged else "Docker's default capabilities"
        return f"Container limits: {', '.join(limits)}; {rights}, no-new-privileges"

    def oom_reason(self, whose: str = "job's") -> str:
        """Why a container the kernel killed for memory ended (GitLab-like wording)."""
        limit = f"limit {human_bytes(self.memory)}, CIQ_DOCKER_MEMORY" if self.memory else "no limit set: the host's"
        return f"the {whose} container ran out of memory ({limit})"
