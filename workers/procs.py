"""Finding and killing every process a step started (Linux ``/proc``).

A step runs in its own session and process group, but its processes can leave both
(``setsid``, double forks) and their parents can die. Three things make sure none survives:

1. the worker is a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``) while a step runs
   (:func:`subreaper_while_running`; or for good, :func:`become_subreaper`): an orphan of the step
   is re-parented to the worker, not to init, so it stays in the worker's process tree;
2. every process of a step carries a token in its environment (``CI_QUEUE_STEP_TOKEN``), which
   survives ``setsid`` and re-parenting;
3. :class:`StepProcesses` recognises a step's processes by any of: being the step's main process
   or a descendant of it, being in its process group or session, having been seen as one of those
   earlier (pid and start time remembered, polled every 100 ms while the step runs), being a
   descendant of the worker whose environment holds the token, or being an orphan re-parented to
   the worker, started after the step, in a session that is neither the worker's nor another
   running step's (a ``setsid`` escapee that also cleared its environment) — plus every
   descendant of those. It signals them, waits, SIGKILLs, and reaps the ones re-parented to the
   worker, so no zombie is left either.

As a subreaper on a kernel that lists children (``/proc/<pid>/task/<tid>/children``), only the
worker's own subtree is read, so the cost does not grow with the host's process count; otherwise
all of ``/proc`` is scanned. Without the subreaper (not Linux, or prctl refused), an orphan that
left the step's session and cleared its environment before it was ever seen can escape.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

TOKEN_VARIABLE = "CI_QUEUE_STEP_TOKEN"
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
_lock = threading.Lock()
_depth = 0  # steps running under subreaper_while_running()
_permanent = False  # the process was made a subreaper for good (then never turned off here)
_active: set[int] = set()  # main pids of the steps running in this process (a step never takes another's)


@dataclass(frozen=True, slots=True)
class Proc:
    """One line of ``/proc/<pid>/stat``, the fields that matter here."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    start: int  # start time in clock ticks since boot: (pid, start) names a process for good
    comm: str


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _get_subreaper() -> bool | None:
    libc = _libc()
    if libc is None or not hasattr(libc, "prctl"):
        return None
    value = ctypes.c_int(0)
    if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
        return None
    return bool(value.value)


def _set_subreaper(on: bool) -> bool:
    libc = _libc()
    return libc is not None and hasattr(libc, "prctl") and libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def become_subreaper() -> bool:
    """Make this process a subreaper for good (a worker may do it at start). True if it is."""
    global _permanent
    with _lock:
        if _set_subreaper(True):
            _permanent = True
    return _permanent


def subreaper_supported() -> bool:
    """Whether this process can be a child subreaper (Linux 3.4+)."""
    return _get_subreaper() is not None


@contextlib.contextmanager
def subreaper_while_running() -> Iterator[bool]:
    """Be the subreaper of this process's descendants while a step runs (nested and threads:
    counted). Turned off again after the last step unless the process already was one, so a
    process that runs steps now and then (tests, ``ci-queue exec``) does not collect unrelated
    orphans. Yields whether the process is a subreaper."""
    global _depth, _permanent
    with _lock:
        if _depth == 0:
            state = _get_subreaper()
            if state:
                _permanent = True
            elif state is not None:
                _set_subreaper(True)
        _depth += 1
        active = bool(_get_subreaper())
    try:
        yield active
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and not _permanent:
                _set_subreaper(False)


def read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    return _parse_stat(pid, raw)


def _parse_stat(pid: int, raw: bytes) -> Proc | None:
    # "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    #  stime cutime cstime priority nice num_threads itrealvalue starttime ..."; comm may hold
    # spaces and parentheses, so split after the last ")".
    close = raw.rfind(b")")
    if close == -1:
        return None
    fields = raw[close + 2:].split()
    try:
        return Proc(pid=pid, ppid=int(fields[1]), pgid=int(fields[2]), sid=int(fields[3]),
                    state=fields[0].decode("ascii", "replace"), start=int(fields[19]),
                    comm=raw[raw.find(b"(") + 1:close].decode("utf-8", "replace"))
    except (IndexError, ValueError):
        return None


def snapshot() -> dict[int, Proc]:
    """Every process visible in ``/proc``, by pid."""
    table: dict[int, Proc] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return table
    for name in names:
        if name.isdigit():
            proc = read_proc(int(name))
            if proc is not None:
                table[proc.pid] = proc
    return table


def children_listed() -> bool:
    """Whether the kernel lists children in ``/proc/<pid>/task/<tid>/children``."""
    return os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _children_of(pid: int) -> list[int]:
    """The children of ``pid`` from ``/proc/<pid>/task/*/children``."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found.extend(int(child) for child in handle.read().split())
        except (OSError, ValueError):  # the thread or the process is gone
            continue
    return found


def subtree(root: int) -> dict[int, Proc]:
    """``root`` and every process below it, by pid, without scanning all of ``/proc``
    (needs :func:`children_listed`)."""
    table: dict[int, Proc] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            continue
        proc = read_proc(pid)
        if proc is None:
            continue
        table[pid] = proc
        todo.extend(_children_of(pid))
    return table


def children_map(table: dict[int, Proc]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    return children


def descendants(roots: Iterable[int], table: dict[int, Proc],
                children: dict[int, list[int]] | None = None) -> set[int]:
    """The pids below ``roots`` (not the roots themselves unless one descends from another)."""
    children = children if children is not None else children_map(table)
    found: set[int] = set()
    todo = [child for root in roots for child in children.get(root, ())]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def environ_has(pid: int, entry: bytes) -> bool:
    """Whether ``/proc/<pid>/environ`` holds ``entry`` (``NAME=value``) exactly."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            data = handle.read()
    except OSError:
        return False
    return entry in data.split(b"\0")


class StepProcesses:
    """The processes of one step, found through ``/proc``; see the module docstring."""

    def __init__(self, main_pid: int, token: str, popen: subprocess.Popen | None = None) -> None:
        self.main_pid = main_pid
        self.token_entry = f"{TOKEN_VARIABLE}={token}".encode()
        self.me = os.getpid()
        self.popen = popen  # the main process is reaped through its Popen, never with waitpid here
        self.seen: dict[int, int] = {}  # pid -> start time of every process known to be the step's
        main = read_proc(main_pid)
        self.main_start = main.start if main is not None else 0
        if main is not None:
            self.seen[main_pid] = main.start
        self.my_sid = os.getsid(0)
        _active.add(main_pid)
        # As a subreaper, every process of the step stays below the worker: listing the
        # worker's subtree is enough (and cheap); otherwise scan all of /proc.
        self.fast = bool(_get_subreaper()) and children_listed()

    def table(self) -> dict[int, Proc]:
        return subtree(self.me) if self.fast else snapshot()

    def close(self) -> None:
        """The step is over (call after :meth:`terminate`)."""
        _active.discard(self.main_pid)

    def observe(self) -> None:
        """Remember the step's current processes (called while the step runs)."""
        self.find()

    def find(self, table: dict[int, Proc] | None = None) -> list[Proc]:
        """The step's live processes (zombies included), the worker itself never."""
        table = self.table() if table is None else table
        children = children_map(table)
        roots: set[int] = set()
        main = table.get(self.main_pid)
        if main is not None and (self.main_pid not in self.seen or self.seen[self.main_pid] == main.start):
            roots.add(self.main_pid)
        for proc in table.values():
            in_session = proc.pgid == self.main_pid or proc.sid == self.main_pid
            if in_session or self.seen.get(proc.pid) == proc.start:
                roots.add(proc.pid)
        # Orphans re-parented to the worker that left the session: recognised by the token, or,
        # when they also cleared their environment, as the worker's children started during the
        # step in a session that is neither the worker's nor another running step's.
        others = _active - {self.main_pid}
        for pid in descendants([self.me], table, children) - roots:
            proc = table.get(pid)
            if proc is None:
                continue
            orphan = (proc.ppid == self.me and proc.start >= self.main_start and proc.sid != self.my_sid
                      and proc.sid not in others and proc.pgid not in others and pid not in others)
            if orphan or environ_has(pid, self.token_entry):
                roots.add(pid)
        members = roots | descendants(roots, table, children)
        members.discard(self.me)
        result = [table[pid] for pid in members if pid in table]
        for proc in result:
            self.seen.setdefault(proc.pid, proc.start)
        return result

    def signal(self, sig: int, procs: Iterable[Proc] | None = None) -> int:
        """Send ``sig`` to the step's process group and every process of the step; the count."""
        count = 0
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.main_pid, sig)
        for proc in self.find() if procs is None else procs:
            if proc.state == "Z":
                continue
            try:
                os.kill(proc.pid, sig)
                count += 1
            except (ProcessLookupError, PermissionError):
                pass
        return count

    def reap(self, procs: Iterable[Proc]) -> None:
        """Collect the exit status of the step's processes that were re-parented to the worker."""
        for proc in procs:
            if proc.ppid != self.me:
                continue
            if proc.pid == self.main_pid:
                if self.popen is not None:
                    self.popen.poll()
                continue
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(proc.pid, os.WNOHANG)

    def alive(self) -> list[Proc]:
        """The step's processes that are not yet gone for good (reaping what can be reaped)."""
        procs = self.find()
        self.reap(procs)
        if any(p.state == "Z" and p.ppid == self.me for p in procs):
            procs = self.find()
        # A zombie whose parent is not the worker is dead; its parent reaps it (or dies too).
        return [p for p in procs if p.state != "Z" or p.ppid == self.me]

    def terminate(self, kill_at: float, *, term_sent: bool = False, poll: float = 0.02,
                  final_wait: float = 5.0) -> list[Proc]:
        """SIGTERM everything (unless ``term_sent``), SIGKILL what is left at ``kill_at``
        (a ``time.monotonic()`` value), and wait until all is gone and reaped.

        Returns the processes that were found at the start (for a message).
        """
        initial = self.alive()
        if not initial and not term_sent:
            return []
        if not term_sent:
            self.signal(signal.SIGTERM, initial)
        while time.monotonic() < kill_at:
            if not self.alive():
                return initial
            time.sleep(poll)
        deadline = time.monotonic() + final_wait
        while True:
            left = self.alive()
            if not left:
                return initial
            self.signal(signal.SIGKILL, left)
            if time.monotonic() >= deadline:
                return initial
            time.sleep(poll)
