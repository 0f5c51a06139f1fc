"""The step guard: a job's steps run only while their worker holds the job's lease, and never
outlive the worker.

A worker can lose its lease without knowing it: frozen (SIGSTOP, a stalled VM), cut off from
Redis, or killed outright (``kill -9``, the OOM killer). Then the sweeper starts the job again
elsewhere, and the old attempt's step must not go on beside the new one (a deploy must not run
twice at the same time). The worker process itself cannot be trusted to stop it: it may be the
frozen one. So each pool process has a guard, a small process of its own session (a SIGSTOP or
SIGKILL of the worker's process group does not reach it), to which the worker says, through a
pipe:

- ``watch JOB TOKEN SID``: a step of JOB runs in session SID, its processes carry TOKEN in their
  environment (``workers.procs``);
- ``unwatch JOB TOKEN``: that step ended;
- ``container JOB ID``: a step of JOB runs in the Docker container ID (frozen with
  ``docker pause``, thawed with ``docker unpause``, killed with ``docker kill``);
- ``lease JOB T``: JOB's lease is confirmed until T on the host's monotonic clock (the moment
  of the last renewal that succeeded, plus the lease, minus a safety margin);
- ``kill JOB``: JOB's attempt was taken over: kill its steps now;
- ``done JOB``: JOB ended.

When T passes without a new ``lease``, the guard freezes JOB's processes (SIGSTOP: a frozen step
does nothing, and loses nothing if the lease comes back, as after a Redis restart); a later
``lease`` thaws them (SIGCONT); ``kill``, or being frozen longer than ``kill_after`` seconds,
kills them (SIGKILL). End of file on the pipe (the worker process died, however) kills every
step it guards at once. The timing argument is in docs/DESIGN.md ("Self-fencing").
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from workers.procs import TOKEN_VARIABLE, Proc, children_map, descendants, environ_has, snapshot

POLL = 0.1  # seconds between the guard's looks at its deadlines


@dataclass
class _Watched:
    """One job the guard watches: its lease and the steps (session, token) it runs."""

    valid_until: float
    steps: dict[str, int] = field(default_factory=dict)  # token -> session id
    seen: dict[int, int] = field(default_factory=dict)  # pid -> start time
    containers: list[str] = field(default_factory=list)
    frozen_at: float | None = None
    dead: bool = False

    def processes(self) -> list[Proc]:
        if not self.steps:
            return []
        table = snapshot()
        entries = {f"{TOKEN_VARIABLE}={token}".encode() for token in self.steps}
        sessions = set(self.steps.values())
        roots = {pid for pid, proc in table.items()
                 if proc.sid in sessions or proc.pgid in sessions or self.seen.get(pid) == proc.start
                 or any(environ_has(pid, entry) for entry in entries)}
        members = roots | descendants(roots, table, children_map(table))
        found = [table[pid] for pid in members if pid in table and pid != os.getpid()]
        for proc in found:
            self.seen.setdefault(proc.pid, proc.start)
        return found

    def signal(self, sig: int) -> int:
        """SIGSTOP / SIGCONT / SIGKILL the job's processes, and pause / unpause / kill its containers."""
        action = {signal.SIGSTOP: "pause", signal.SIGCONT: "unpause", signal.SIGKILL: "kill"}[sig]
        return _docker(self.containers, action) + self.signal_processes(sig)

    def signal_processes(self, sig: int) -> int:
        count = 0
        for proc in self.processes():
            if proc.state != "Z":
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(proc.pid, sig)
                    count += 1
        return count


def _docker(containers: list[str], action: str) -> int:
    """``docker pause|unpause|kill`` the containers; how many it did (best effort: a container
    that ended meanwhile is fine)."""
    done = 0
    for container in containers:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done += subprocess.run(["docker", action, container], capture_output=True, timeout=30).returncode == 0
    return done


class Guard:
    """The guard process's state: every job it watches (see the module docstring)."""

    def __init__(self, kill_after: float) -> None:
        self.kill_after = kill_after
        self.jobs: dict[str, _Watched] = {}

    def command(self, line: str, now: float) -> None:
        parts = line.split()
        if not parts:
            return
        verb, job, rest = parts[0], parts[1] if len(parts) > 1 else "", parts[2:]
        if verb == "lease" and rest:
            watched = self.jobs.setdefault(job, _Watched(float(rest[0])))
            watched.valid_until = max(watched.valid_until, float(rest[0]))
            if watched.frozen_at is not None and not watched.dead and watched.valid_until > now:
                watched.signal(signal.SIGCONT)
                watched.frozen_at = None
        elif verb == "watch" and len(rest) == 2:
            watched = self.jobs.setdefault(job, _Watched(now))
            watched.steps[rest[0]] = int(rest[1])
            if watched.frozen_at is not None or watched.dead:
                watched.signal(signal.SIGKILL if watched.dead else signal.SIGSTOP)
        elif verb == "unwatch" and rest and job in self.jobs:
            # the step ended: its session id may be a new, unrelated process's pid one day
            self.jobs[job].steps.pop(rest[0], None)
            self.jobs[job].seen.clear()
        elif verb == "container" and rest:
            watched = self.jobs.setdefault(job, _Watched(now))
            watched.containers.append(rest[0])
            if watched.frozen_at is not None or watched.dead:
                _docker([rest[0]], "kill" if watched.dead else "pause")
        elif verb == "kill" and job in self.jobs:
            self._kill(self.jobs[job])
        elif verb == "done":
            self.jobs.pop(job, None)

    def tick(self, now: float) -> None:
        """Freeze what outlived its lease, kill what stayed frozen too long."""
        for watched in self.jobs.values():
            if watched.dead or not (watched.steps or watched.containers):
                continue
            if now >= watched.valid_until:
                if watched.frozen_at is None:
                    watched.frozen_at = now
                    watched.signal(signal.SIGSTOP)
                else:  # again each tick: what forked meanwhile stops too
                    watched.signal_processes(signal.SIGSTOP)
                if now - watched.frozen_at >= self.kill_after:
                    self._kill(watched)

    def kill_all(self) -> None:
        for watched in self.jobs.values():
            self._kill(watched)

    @staticmethod
    def _kill(watched: _Watched) -> None:
        watched.dead = True
        watched.signal(signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    """The guard process: commands on stdin until end of file, then every guarded step dies."""
    args = sys.argv[1:] if argv is None else argv
    guard = Guard(kill_after=float(args[0]) if args else 600.0)
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin.buffer, selectors.EVENT_READ)
    pending = b""
    while True:
        if selector.select(POLL):
            data = os.read(sys.stdin.fileno(), 65536)
            if not data:
                guard.kill_all()
                return 0
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                guard.command(line.decode(errors="replace"), time.monotonic())
        guard.tick(time.monotonic())


class GuardClient:
    """The worker side: one guard per pool process, started with the first job."""

    def __init__(self, kill_after: float) -> None:
        self.kill_after = kill_after
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def send(self, line: str) -> None:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = subprocess.Popen([sys.executable, "-m", "workers.guard", str(self.kill_after)],
                                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                              start_new_session=True, close_fds=True)
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(line.encode() + b"\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self._proc = None

    def lease(self, job: str, valid_until: float) -> None:
        self.send(f"lease {job} {valid_until:.3f}")

    def watch(self, job: str, token: str, session: int) -> None:
        self.send(f"watch {job} {token} {session}")

    def kill(self, job: str) -> None:
        self.send(f"kill {job}")

    def unwatch(self, job: str, token: str) -> None:
        self.send(f"unwatch {job} {token}")

    def container(self, job: str, container_id: str) -> None:
        self.send(f"container {job} {container_id}")

    def done(self, job: str) -> None:
        self.send(f"done {job}")


_client: GuardClient | None = None
_guarded: dict[str, bool] = {}  # jobs of this process that have a lease the guard watches


def client(kill_after: float = 600.0) -> GuardClient:
    """This process's guard client (a pool process forks with none: each has its own guard)."""
    global _client
    if _client is None:
        _client = GuardClient(kill_after)
    return _client


def guarded(job: str) -> bool:
    """Does a lease of this process guard ``job`` (then its steps are reported to the guard)?"""
    return _guarded.get(job, False)


def set_guarded(job: str, on: bool) -> None:
    if on:
        _guarded[job] = True
    else:
        _guarded.pop(job, None)


def job_key(run_id: str, job: str, attempt: int) -> str:
    """A job attempt as the guard names it (no spaces: the protocol is words)."""
    return f"{run_id}/{attempt}/{job.encode().hex()}"


if __name__ == "__main__":
    sys.exit(main())
