"""The shell executor's part that runs a job as an unprivileged user (``CIQ_SHELL_USER``).

``ShellRunner`` (``workers.runners.shell``) creates a ``UserSession`` when the worker names users;
the session, for one job:

- takes a free user for the job's whole life (``workers.jobusers.take``; waits while all are
  busy) and kills whatever that user still runs (a killed worker's leftovers);
- refuses to run when the user could read what it must not: the secrets file
  (``CIQ_SECRETS_FILE``), the worker's state directories (the git cache, the local cache copies;
  directories of the worker's own are made mode 0700 instead of refusing), or could connect to
  the container engine's socket; and when the directories the root worker writes into could be
  swapped by someone else (``unsafe_directory``), or the workspace is not one the worker made
  (``ci-queue exec`` runs in the caller's directory: unset ``CIQ_SHELL_USER`` there);
- makes the job's private ``HOME`` and ``TMPDIR`` (``<scratch>/home``, ``<scratch>/tmp``, the
  user's, mode 0700) inside the step scripts' directory, which stays root's (mode 0711: the user
  reads its scripts, mode 0400 and its own, but cannot list the directory or swap a file the
  worker writes later);
- before the first step, hands the checkout over (``workers.workspace.open_to``): after the
  caches and artifacts were unpacked into it, so the job owns those files too;
- runs each step with ``setgroups`` / ``setgid`` / ``setuid`` to the user (``subprocess``'s
  ``extra_groups`` / ``group`` / ``user``), through ``setpriv --no-new-privs`` when util-linux's
  ``setpriv`` is installed, so that no setuid program (``sudo``, ``su``, ``fusermount``) gives the
  job more than the user has; the environment gets ``HOME``, ``USER``, ``LOGNAME``, ``SHELL`` and
  ``TMPDIR`` of the job's user instead of the worker's;
- at the end kills every process of the user, removes what it left in ``/tmp``, ``/var/tmp`` and
  ``/dev/shm``, makes the workspace root's only again, and frees the user.

The worker stays root throughout: it collects artifacts and caches (already written for a
hostile workspace: ``O_NOFOLLOW``, symlinks never followed), stops and freezes the job's
processes (the step guard signals as root), reads its output from pipes it opened, and removes
whatever the job left.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from loguru import logger

from workers import jobusers
from workers.jobusers import R_OK, W_OK, X_OK, JobUser, UserSlot
from workers.logs import JobLog
from workers.runners.base import InfrastructureError, JobEnvironment
from workers.workspace import close_to_users, is_checkout, open_to

PREPARE_STEP = "prepare"


class UserSession:
    """One job run as a user of ``CIQ_SHELL_USER`` (see the module docstring)."""

    def __init__(self, users: list[JobUser], workspace_root: Path, protect: list[Path], sockets: list[str],
                 setpriv: str | None = None) -> None:
        self.users = users
        self.workspace_root = Path(workspace_root)
        self.protect = protect  # what the job's user must not read: secrets file, state directories
        self.sockets = sockets  # what it must not connect to: the container engine's sockets
        self.setpriv = setpriv if setpriv is not None else shutil.which("setpriv")
        self.slot: UserSlot | None = None
        self.workspace: Path | None = None
        self.home: Path | None = None
        self.tmp: Path | None = None
        self._opened = False

    @property
    def user(self) -> JobUser:
        if self.slot is None:
            raise RuntimeError("the job has no user")
        return self.slot.user

    def start(self, env: JobEnvironment, scratch: Path, log: JobLog) -> bool:
        """Take a user and make the job's private directories; False if the job was canceled while
        it waited for a user. Raises ``InfrastructureError`` when the job must not run here."""
        if os.geteuid() != 0:
            raise InfrastructureError(f"CIQ_SHELL_USER needs a worker running as root (this one is uid "
                                      f"{os.geteuid()})")
        workspace = Path(env.workspace)
        if not is_checkout(workspace, self.workspace_root):
            raise InfrastructureError(f"CIQ_SHELL_USER runs jobs only in the worker's own workspaces (under "
                                      f"{self.workspace_root}), not in {workspace}; `ci-queue exec` runs in your "
                                      "directory as you: unset CIQ_SHELL_USER for it")
        for directory in (jobusers.lock_dir().parent, scratch.parent, self.workspace_root):
            why = jobusers.unsafe_directory(directory)
            if why:
                raise InfrastructureError(f"refusing to run a job as another user in {directory}: {why}")

        def waiting() -> None:
            log.system(PREPARE_STEP, f"Waiting for a free shell user: all {len(self.users)} of CIQ_SHELL_USER run "
                                     "jobs of this host")

        self.slot = jobusers.take(self.users, env.cancel or (lambda: False), waiting)
        if self.slot is None:
            return False
        user = self.user
        left = jobusers.kill_processes_of(user.uid)
        if left:
            logger.warning("killed {} processes user {} still ran before a job took it", left, user.name)
        self._check_reach(user)
        self.workspace = workspace
        os.chmod(scratch, 0o711)
        self.home, self.tmp = scratch / "home", scratch / "tmp"
        for private in (self.home, self.tmp):
            private.mkdir(mode=0o700)
            os.lchown(private, user.uid, user.gid)
        nnp = ("setuid programs cannot raise its privileges (no_new_privs)" if self.setpriv else
               "warning: setpriv (util-linux) is not installed: setuid programs (sudo, su) work as usual")
        log.system(PREPARE_STEP, f"Running the job as {user.describe()} with a private HOME; {nnp}")
        return True

    def _check_reach(self, user: JobUser) -> None:
        """Refuse (or, for the worker's own directories, close) what the user could reach."""
        for path in self.protect:
            if not os.path.lexists(path):
                continue
            info = os.stat(path)
            # a directory the user can search but not list still gives away files of known names
            if not any(jobusers.can_access(path, user, want)
                       for want in ((R_OK, X_OK) if stat.S_ISDIR(info.st_mode) else (R_OK,))):
                continue
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid():
                os.chmod(path, stat.S_IMODE(info.st_mode) & 0o700)
                logger.info("made {} readable by its owner only: shell jobs run as other users", path)
                continue
            raise InfrastructureError(f"the job's user {user.name} could read {path} (mode "
                                      f"{stat.S_IMODE(info.st_mode):04o}): make it readable by root only "
                                      f"(chmod {'700' if stat.S_ISDIR(info.st_mode) else '600'})")
        for socket_path in self.sockets:
            if os.path.exists(socket_path) and jobusers.can_access(socket_path, user, W_OK):
                raise InfrastructureError(f"the job's user {user.name} could connect to the container engine's "
                                          f"socket {socket_path} (root on this host): take it out of that group")
        if not jobusers.can_access(self.workspace_root, user, X_OK):
            raise InfrastructureError(f"the job's user {user.name} cannot reach its workspace: a directory on the "
                                      f"way to {self.workspace_root} is not searchable by it (chmod o+x)")

    def before_step(self) -> None:
        """Hand the checkout over before the first step (caches and artifacts are in it by then)."""
        if self._opened:
            return
        assert self.workspace is not None
        try:
            open_to(self.workspace, self.user, self.workspace_root)
        except (OSError, ValueError) as exc:
            raise InfrastructureError(f"cannot give the workspace to the job's user {self.user.name}: {exc}") from exc
        self._opened = True

    def own_script(self, script: Path) -> None:
        """The step's script: the user's, readable by it only."""
        os.chown(script, self.user.uid, self.user.gid)
        os.chmod(script, 0o400)

    def argv(self, argv: list[str]) -> list[str]:
        return [self.setpriv, "--no-new-privs", "--", *argv] if self.setpriv else argv

    def popen_options(self) -> dict[str, object]:
        user = self.user
        return {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}

    def environment(self, shell: str) -> dict[str, str]:
        """Who the job is, instead of the worker's ``HOME``, ``USER``, ``LOGNAME``, ``SHELL``, ``TMPDIR``."""
        return {"HOME": str(self.home), "USER": self.user.name, "LOGNAME": self.user.name, "SHELL": shell,
                "TMPDIR": str(self.tmp)}

    def end(self) -> None:
        """Kill what the user runs, remove what it left in the temp places, free the user. Never raises."""
        if self.slot is None:
            return
        uid = self.user.uid
        try:
            jobusers.kill_processes_of(uid)
            removed = jobusers.remove_files_of(uid)
            if removed:
                logger.info("removed {} files the job's user left in temporary directories", len(removed))
        except Exception as exc:  # the next job of the user kills and removes again
            logger.opt(exception=exc).error("cleaning up after the job's user {} failed", self.user.name)
        if self.workspace is not None:
            close_to_users(self.workspace)
        self.slot.release()
        self.slot = None
