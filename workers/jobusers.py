"""The unprivileged users shell jobs run as (``CIQ_SHELL_USER``), one job per user at a time.

A worker runs as root (it must, to switch users); a shell job of a repository runs as one of the
users ``CIQ_SHELL_USER`` names, so that it cannot read what only root may: the worker's
environment (``/proc/<pid>/environ`` is readable by the same uid only), the secrets file, the
worker's caches and other jobs' workspaces. What this module holds:

- **Which users**: ``CIQ_SHELL_USER`` is a comma-separated list of user names (or uids), where
  ``{A..B}`` expands to a numeric range: ``ciq-job{1..4}`` is ``ciq-job1`` ... ``ciq-job4``.
  Root (uid 0) is refused, and so are two names of one uid.
- **One job per user at a time** (``take``): each job holds an ``flock`` on
  ``<temp dir>/ci-queue/users/<uid>.lock`` (a root-only directory) for its whole life, so two
  concurrent jobs on a host never share a uid, whatever process or worker runs them. Two
  processes of one uid can read each other's ``/proc/<pid>/environ`` (secrets included) and
  files; distinct uids cannot. List as many users as the host runs shell jobs at once; a job
  that finds them all busy waits (and says so in its log) until one is free or it is canceled.
- **Nothing of a job outlives it in its user** (``kill_processes_of``, ``remove_files_of``): the
  users are dedicated to ci-queue, so every process of the uid (in the worker's pid namespace:
  a container's processes with the same uid are left alone) is killed before a job takes the
  user and after it ends, and what the uid left directly in ``/tmp``, ``/var/tmp`` and
  ``/dev/shm`` is removed after it. A process started through another daemon (``at``, a user
  crontab) is not in the step's process tree; this catches it.
- **Permission arithmetic** (``can_access``, ``unsafe_directory``): whether a user may reach a
  path (owner, group and other bits of the path and every directory above it; ACLs are not
  read), and whether a directory the root worker writes into could be swapped under it (a
  component writable by someone else, without the sticky bit, or owned by another user).
- **Handing a tree over** (``hand_over``): ``chown -R`` that never follows a symlink and skips
  regular files with more than one link: the checkout hard-links the git cache's pack files, and
  giving the job those inodes would give it the cache's copy too (other jobs' checkouts come
  from it). Those stay root's, read-only, and the job can still read and delete its links.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
import re
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
MAX_USERS = 1024
TEMP_PLACES = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable places a job's files may outlive it in
R_OK, W_OK, X_OK = 4, 2, 1


class ShellUserError(Exception):
    """``CIQ_SHELL_USER`` cannot be used as it is (syntax, unknown user, root, worker not root)."""


@dataclass(frozen=True)
class JobUser:
    """A user a job runs as: its ids and every group it is in (the primary one included)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def lookup(cls, name: str) -> JobUser:
        """The user of this name (or uid) in the host's user database; ``ShellUserError`` if none."""
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            raise ShellUserError(f"CIQ_SHELL_USER: there is no user {name!r} on this host") from None
        return cls(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid,
                   groups=tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid)))))

    def describe(self) -> str:
        names = []
        for gid in self.groups:
            try:
                names.append(grp.getgrgid(gid).gr_name)
            except KeyError:
                names.append(str(gid))
        return f"{self.name} (uid {self.uid}, groups {', '.join(names)})"


def user_names(spec: str) -> list[str]:
    """The names ``spec`` lists (``a, b, ciq{1..4}``), in order; ``ShellUserError`` on bad syntax."""
    names: list[str] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        ranges = _RANGE.findall(item)
        if len(ranges) > 1 or "{" in _RANGE.sub("", item) or "}" in _RANGE.sub("", item):
            raise ShellUserError(f"CIQ_SHELL_USER: {item!r}: at most one {{A..B}} range per name")
        if ranges:
            low, high = int(ranges[0][0]), int(ranges[0][1])
            if high < low or high - low >= MAX_USERS:
                raise ShellUserError(f"CIQ_SHELL_USER: {item!r}: the range must go up, {MAX_USERS} names at most")
            names.extend(_RANGE.sub(str(n), item) for n in range(low, high + 1))
        else:
            names.append(item)
        if len(names) > MAX_USERS:
            raise ShellUserError(f"CIQ_SHELL_USER names more than {MAX_USERS} users")
    return names


def job_users(spec: str) -> list[JobUser]:
    """The users of ``CIQ_SHELL_USER``, looked up; ``ShellUserError`` for root, a uid named twice,
    or a user this host does not have."""
    users: list[JobUser] = []
    seen: dict[int, str] = {}
    for name in user_names(spec):
        user = JobUser.lookup(name)
        if user.uid == 0 or user.gid == 0 or 0 in user.groups:
            raise ShellUserError(f"CIQ_SHELL_USER: {name} is root or in root's group; jobs must run unprivileged")
        if user.uid in seen:
            raise ShellUserError(f"CIQ_SHELL_USER: {name} and {seen[user.uid]} are the same uid {user.uid}; "
                                 "concurrent jobs would share it")
        seen[user.uid] = name
        users.append(user)
    return users


def check_worker(spec: str) -> list[JobUser]:
    """What ``ci-queue worker`` checks at start: the users exist and this process can switch to them."""
    users = job_users(spec)
    if users and os.geteuid() != 0:
        raise ShellUserError(f"CIQ_SHELL_USER needs a worker running as root (this one is uid {os.geteuid()})")
    return users


# -- one job per user ------------------------------------------------------------------------------

def lock_dir() -> Path:
    """``<temp dir>/ci-queue/users``: the users' locks, root's only."""
    return Path(tempfile.gettempdir()) / "ci-queue" / "users"


class UserSlot:
    """A user held by one job (its lock); ``release`` when the job is over."""

    def __init__(self, user: JobUser, fd: int) -> None:
        self.user = user
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # drops the lock
            self._fd = None


def _try_lock(directory: Path, user: JobUser) -> UserSlot | None:
    fd = os.open(directory / f"{user.uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return UserSlot(user, fd)


def take(users: list[JobUser], canceled: Callable[[], bool], on_wait: Callable[[], None],
         directory: Path | None = None, poll: float = 0.2) -> UserSlot | None:
    """The first free user, held; waits while all are busy (``on_wait()`` once), None if
    ``canceled()`` meanwhile."""
    directory = directory or lock_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    waited = False
    while True:
        for user in users:
            slot = _try_lock(directory, user)
            if slot is not None:
                return slot
        if canceled():
            return None
        if not waited:
            waited = True
            on_wait()
        time.sleep(poll)  # a lock wait: another job holds every user


# -- what a job's user leaves behind ---------------------------------------------------------------

def _uids(pid: int) -> set[int]:
    """Real, effective, saved and file-system uids of ``pid`` (empty when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Uid:"):
                    return {int(value) for value in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _pid_namespace(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def processes_of(uid: int) -> list[int]:
    """The processes running with ``uid`` (any of their uids) in this process's pid namespace."""
    mine = _pid_namespace("self")
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and uid in _uids(int(name)) and _pid_namespace(name) == mine:
            found.append(int(name))
    return found


def kill_processes_of(uid: int, timeout: float = 5.0) -> int:
    """SIGKILL every process of ``uid`` until none is left (at most ``timeout`` s); how many.
    Zombies that are this process's children are reaped."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in processes_of(uid) if not _zombie(pid)]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        for pid in killed:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        if not alive or time.monotonic() >= deadline:
            return len(killed)
        time.sleep(0.01)  # SIGKILL takes effect asynchronously: look again


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def remove_files_of(uid: int, places: Iterable[str] = TEMP_PLACES) -> list[str]:
    """Remove what ``uid`` owns directly in ``places`` (whole trees, never through a symlink)."""
    from workers.workspace import remove_tree

    removed = []
    for place in places:
        try:
            entries = list(os.scandir(place))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                remove_tree(Path(entry.path))
                removed.append(entry.path)
            except OSError:
                continue  # gone meanwhile, or not removable: the next job of the user tries again
    return removed


# -- permissions -----------------------------------------------------------------------------------

def _allowed(info: os.stat_result, user: JobUser, want: int) -> bool:
    mode = info.st_mode
    if info.st_uid == user.uid:
        bits = (mode >> 6) & 7
    elif info.st_gid in user.groups:
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & want == want


def can_access(path: str | os.PathLike[str], user: JobUser, want: int) -> bool:
    """Whether ``user`` may open ``path`` for ``want`` (``R_OK`` | ``W_OK`` | ``X_OK``): every
    directory above it searchable by the user and ``path`` itself granting ``want`` (mode bits)."""
    real = Path(os.path.realpath(path))
    try:
        for parent in reversed(real.parents):
            if not _allowed(os.stat(parent), user, X_OK):
                return False
        return _allowed(os.stat(real), user, want)
    except OSError:
        return False


def unsafe_directory(path: str | os.PathLike[str]) -> str | None:
    """Why a root process should not work in ``path``, or None: a component of it (or of what a
    symlink in it points to) is owned by someone other than root or this process, or writable by
    others without the sticky bit (``/tmp`` is fine, ``/tmp/x`` of another user is not)."""
    real = Path(os.path.realpath(path))
    for component in [*reversed(real.parents), real]:
        try:
            info = os.stat(component)
        except OSError as exc:
            return f"{component}: {exc.strerror}"
        if info.st_uid not in (0, os.geteuid()):
            return f"{component} belongs to uid {info.st_uid}"
        writable = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not (info.st_mode & stat.S_ISVTX and component != real):
            return f"{component} is writable by others (mode {stat.S_IMODE(info.st_mode):04o})"
    return None


def hand_over(top: Path, user: JobUser) -> int:
    """Give ``top`` and everything under it to ``user`` (see the module docstring); how many
    entries. Symlinks get their own owner changed, never their target's."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(top):  # followlinks=False
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                continue  # shared with the git cache (a hard link): stays root's, read-only
            os.lchown(path, user.uid, user.gid)
            count += 1
    os.lchown(top, user.uid, user.gid)
    return count + 1
