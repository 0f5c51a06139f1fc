"""The per-job workspace: a fresh directory for one attempt of one job, removed when it ends.

::

    with Workspace(run_id, job_name, attempt) as ws:
        checkout(url, sha, ws.builds_dir)      # the checkout; CI_PROJECT_DIR
        ...                                     # ws.tmp_dir: the job's TMPDIR

The directory is ``<root>/<run>-<job>-a<attempt>-<random>`` under ``CIQ_WORKSPACE_DIR`` (empty:
``<temp dir>/ci-queue/workspaces``). Run id and job name are user data (``build: [a, b]``,
``../x``, unicode, 10 kB names): each becomes a bounded slug of ``[A-Za-z0-9._-]`` (other
characters turn into ``_``; a name that had to be changed or shortened gets 8 hex digits of its
hash, so two different names rarely share a slug), never starting with ``.`` or ``-``; the random
suffix (``mkdtemp``: created atomically, mode 0700) makes every workspace unique. The result is
one path component directly inside the root, checked before use.

On exit the directory is removed, also when the job left read-only files or directories
(permissions are restored on the way down, symlinks are never followed), unless
``CIQ_KEEP_WORKSPACES=1``: then its path is logged. A removal that fails is logged, not raised:
it must not hide the job's own result.

**Reused project directories** (``GIT_STRATEGY`` ``fetch`` / ``none``, ``workers.git_options``):
a workspace made with a ``reuse`` key takes its ``build`` directory from the host's pool
``<root's parent>/.<root's name>-reuse/<key>/``, beside the root so that it stays on its file
system (an atomic ``rename``: two jobs never take the same one, no lock), and gives it back there
at the end instead of deleting it, at most ``POOL_SIZE`` per key (more are removed). The key is
the repository and the run's trust (``workers.tasks.project_key``: protected or not, fork or
not), so what a job leaves in its directory (files, ``.git`` objects) can only meet later jobs
that the same people could change anyway. A worker that dies with a directory taken loses it with
the workspace (a leftover). A root that is a mount point of its own gets no reuse (the rename
fails; said once).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import sys
import tempfile
import unicodedata
from pathlib import Path
from types import TracebackType

from loguru import logger

from ci_queue.settings import Settings, get_settings
from workers.jobusers import JobUser, hand_over
from workers.leftovers import made_held, release

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PART = 48  # characters of one slug (run id, job name); the whole name stays far below 255 bytes
POOL_SIZE = 8  # reused directories kept per key (about the concurrent jobs of one repository on a host)


def default_root(settings: Settings | None = None) -> Path:
    """``CIQ_WORKSPACE_DIR``, or ``<temp dir>/ci-queue/workspaces``."""
    configured = (settings or get_settings()).workspace_dir
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "ci-queue" / "workspaces"


def slug(value: object, limit: int = MAX_PART) -> str:
    """A safe, bounded file-name part for user data: ``[A-Za-z0-9._-]``, no leading ``.``/``-``."""
    text = str(value)
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    cleaned = _UNSAFE.sub("_", ascii_text).lstrip(".-_")
    cleaned = re.sub(r"\.{2,}", "_", cleaned)
    if cleaned != text or len(cleaned) > limit or not cleaned:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        cleaned = f"{cleaned[: limit - 9].rstrip('._-')}_{digest}" if cleaned[: limit - 9].strip("._-") else digest
    return cleaned


class Workspace:
    """A fresh directory for one job attempt; a context manager that removes it on exit."""

    def __init__(
        self,
        run_id: str,
        job_name: str,
        attempt: int = 1,
        *,
        settings: Settings | None = None,
        root: Path | None = None,
        keep: bool | None = None,
        reuse: str | None = None,
    ) -> None:
        settings = settings or get_settings()
        self.reuse = reuse  # the pool key of a reused ``build`` (None: a fresh one)
        self.run_id = run_id
        self.job_name = job_name
        self.attempt = int(attempt)
        self.root = Path(root) if root is not None else default_root(settings)
        self.keep = settings.keep_workspaces if keep is None else keep
        self._path: Path | None = None
        self._held: int | None = None  # the lock that keeps a starting worker from removing it

    @property
    def name_prefix(self) -> str:
        return f"{slug(self.run_id)}-{slug(self.job_name)}-a{self.attempt}-"

    @property
    def path(self) -> Path:
        """The workspace directory (exists between ``create`` / ``__enter__`` and removal)."""
        if self._path is None:
            raise RuntimeError("the workspace has not been created (use it as a context manager)")
        return self._path

    @property
    def builds_dir(self) -> Path:
        """Where the repository is checked out and the job runs: CI_PROJECT_DIR."""
        return self.path / "build"

    @property
    def tmp_dir(self) -> Path:
        """Scratch space of the job (its TMPDIR), removed with the workspace."""
        return self.path / "tmp"

    def create(self) -> Path:
        """Make the directory (unique, mode 0700) and its ``build`` and ``tmp`` subdirectories."""
        if self._path is not None:
            return self._path
        self.root.mkdir(parents=True, exist_ok=True)
        root = self.root.resolve()
        path, self._held = made_held(root, self.name_prefix)  # held while in use: a worker starting later leaves it
        if path.parent != root or path.name in ("", ".", "..") or os.sep in path.name:
            shutil.rmtree(path, ignore_errors=True)  # cannot happen with slugs; never work outside the root
            self._release()
            raise RuntimeError(f"workspace name {path.name!r} escapes {root}")
        self._path = path
        if not (self.reuse and self._take_from_pool()):
            self.builds_dir.mkdir()
        self.tmp_dir.mkdir()
        logger.debug("workspace {} created", path)
        return path

    def remove(self) -> None:
        """Remove the workspace now (also read-only trees); logs instead of raising."""
        if self._path is None:
            return
        path = self._path
        if self.reuse:
            self._give_back_to_pool()
        self._path = None
        try:
            _remove_workspace(path)
            logger.debug("workspace {} removed", path)
        except OSError as exc:
            logger.warning("could not remove workspace {}: {}", path, exc)
        self._release()

    def _pool(self) -> Path:
        return pool_root(self.root) / slug(self.reuse, 96)

    def _take_from_pool(self) -> bool:
        """Move a pooled project directory to ``build``; False when there is none to take."""
        pool = self._pool()
        try:
            candidates = sorted(os.scandir(pool), key=lambda entry: entry.name)
        except OSError:
            return False
        for entry in candidates:
            try:
                os.rename(entry.path, self.builds_dir)  # atomic: another job that tried it failed
            except OSError:
                continue
            logger.debug("workspace {} reuses {}", self.path, entry.path)
            return True
        return False

    def _give_back_to_pool(self) -> None:
        """Return ``build`` to the pool (if it is a plain directory and the pool has room)."""
        build = self.builds_dir
        try:
            if not stat.S_ISDIR(os.lstat(build).st_mode):
                return
            pool = self._pool()
            pool.mkdir(parents=True, exist_ok=True, mode=0o700)
            if sum(1 for _ in os.scandir(pool)) >= POOL_SIZE:
                return
            os.rename(build, pool / f"{os.getpid()}-{os.urandom(6).hex()}")
        except OSError as exc:
            global _pool_failed
            if not _pool_failed:
                _pool_failed = True
                logger.warning("could not keep {} for reuse (said once): {}", build, exc)

    def _release(self) -> None:
        release(self._held)
        self._held = None

    def __enter__(self) -> Workspace:
        self.create()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._path is None:
            return
        if self.keep:
            logger.info("keeping workspace {} (CIQ_KEEP_WORKSPACES)", self._path)
            self._path = None
            self._release()
            return
        self.remove()


_pool_failed = False  # a give-back failed once: not said again by this process


def pool_root(root: Path) -> Path:
    """Where the reused project directories of the workspaces under ``root`` wait (see the module)."""
    root = Path(root).resolve()
    return root.parent / f".{root.name}-reuse"


def is_checkout(builds_dir: Path, root: Path) -> bool:
    """Whether ``builds_dir`` is the ``build`` directory of a workspace directly under ``root``."""
    top = Path(builds_dir).parent
    return Path(builds_dir).name == "build" and not top.is_symlink() and top.parent == Path(root).resolve() \
        and not Path(builds_dir).is_symlink()


def open_to(builds_dir: Path, user: JobUser, root: Path) -> None:
    """Give the checkout of a workspace under ``root`` to a shell job's ``user`` (CIQ_SHELL_USER).

    The workspace directory stays root's, mode 0711: the user can pass through it but not list
    it, and, not owning it, cannot swap ``build`` for a symlink under the worker, which reads the
    artifacts and caches there afterwards. ``build`` and what is in it become the user's (mode
    0700: no other user gets in), but for the pack files hard-linked from the git cache
    (``workers.jobusers.hand_over``). Raises ``ValueError`` for a directory that is not a
    workspace the worker made under ``root`` (``ci-queue exec`` runs in the caller's own).
    """
    if not is_checkout(builds_dir, root):
        raise ValueError(f"{builds_dir} is not the checkout of a workspace under {root}")
    os.chmod(builds_dir.parent, 0o711)
    hand_over(builds_dir, user)
    os.chmod(builds_dir, 0o700)


def close_to_users(builds_dir: Path) -> None:
    """After the job: its workspace is root's only again (a kept one, CIQ_KEEP_WORKSPACES, too)."""
    with contextlib.suppress(OSError):
        os.chmod(builds_dir.parent, 0o700)


def _remove_workspace(path: Path) -> None:
    """A workspace whose ``build`` went back to the pool is two empty directories most of the
    time: ``rmdir`` them (no tree walk); anything else goes through ``remove_tree``."""
    try:
        for leftover in (path / "tmp", path / "build", path):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(leftover)
    except OSError:  # not empty: the job's files (a fresh checkout, TMPDIR contents)
        remove_tree(path)


def remove_tree(path: Path) -> None:
    """``rm -rf path``, whatever permissions the job left; symlinks are removed, never followed.

    A first ``rmtree`` removes what it can; if anything was refused, every directory of what is
    left gets ``u+rwx`` (so that its entries can be listed and removed) and files ``u+w``, and a
    second ``rmtree`` finishes. Raises ``OSError`` if the tree is still there (files of another
    owner, an immutable file, a mount point).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    errors: list[BaseException] = []
    _rmtree(path, errors)
    if not errors:
        return
    _make_removable(path)
    errors.clear()
    _rmtree(path, errors)
    if os.path.lexists(path):
        first = errors[0] if errors else None
        raise OSError(f"cannot remove {path}: {first}")


def _rmtree(path: Path, errors: list[BaseException]) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda _f, _p, exc: errors.append(exc))
    else:
        shutil.rmtree(path, onerror=lambda _f, _p, info: errors.append(info[1]))


def _make_removable(top: Path) -> None:
    """Give the owner rwx on every directory under ``top`` (and w on files), top-down, no symlinks."""
    _chmod_add(top, stat.S_IRWXU)
    for dirpath, dirnames, filenames in os.walk(top):  # followlinks=False: symlinked dirs not entered
        for name in dirnames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                _chmod_add(child, stat.S_IRWXU)  # before os.walk lists it
        for name in filenames:
            child = os.path.join(dirpath, name)
            if not os.path.islink(child):
                _chmod_add(child, stat.S_IWUSR)


def _chmod_add(path: str | Path, bits: int) -> None:
    try:
        mode = os.lstat(path).st_mode
        if not stat.S_ISLNK(mode) and (mode & bits) != bits:
            os.chmod(path, stat.S_IMODE(mode) | bits)
    except OSError:
        pass  # not ours, or gone: the second rmtree reports what stays
