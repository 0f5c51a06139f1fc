"""Directories a killed worker left behind (workspaces, step script folders), found and removed
when the host's next worker starts.

Every such directory is held, while in use, by an ``flock`` on the directory itself, taken by
the process that made it. The kernel drops the lock when that process dies, however it dies; so
at start a worker removes each directory it can lock: nobody uses it any more. A directory in use
by another live worker (several workers may share a host and its directories) stays locked and is
left alone. Making a directory and locking it are two steps: the maker holds a shared lock on the
parent meanwhile (``made_held``), the sweep an exclusive one, so a sweep never takes a directory
in the instant between its birth and its lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from loguru import logger


def hold(path: Path) -> int | None:
    """Lock ``path`` for this process while it is in use; the file descriptor to ``release``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def _parent_locked(root: Path, mode: int) -> Iterator[None]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


def made_held(root: Path, prefix: str) -> tuple[Path, int | None]:
    """A new directory under ``root`` (``mkdtemp``: unique, mode 0700), already held."""
    root.mkdir(parents=True, exist_ok=True)
    with _parent_locked(root, fcntl.LOCK_SH):
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
        return path, hold(path)


def release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the last descriptor drops the lock


def sweep(root: Path, pattern: str = "*") -> list[Path]:
    """Remove the directories under ``root`` matching ``pattern`` that nobody holds; the list."""
    from workers.workspace import remove_tree  # workspace.py holds its directories with hold()

    removed: list[Path] = []
    if not root.is_dir():
        return removed
    with _parent_locked(root, fcntl.LOCK_EX):
        removed = _remove_unheld(root, pattern, remove_tree)
    if removed:
        logger.warning("removed {} director{} a killed worker left behind under {}", len(removed),
                       "y" if len(removed) == 1 else "ies", root)
    return removed


def _remove_unheld(root: Path, pattern: str, remove_tree: Callable[[Path], None]) -> list[Path]:
    removed = []
    for path in sorted(root.glob(pattern)):
        if not path.is_dir() or path.is_symlink():
            continue
        fd = hold(path)
        if fd is None:
            continue  # in use by a live process
        try:
            remove_tree(path)
            removed.append(path)
        except OSError as exc:
            logger.warning("could not remove the leftover {}: {}", path, exc)
        finally:
            release(fd)
    return removed
