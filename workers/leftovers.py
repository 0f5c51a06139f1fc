"""Directories a killed worker left behind (workspaces, step script folders), found and removed
when the host's next worker starts.

Every such directory is held, while in use, by an ``flock`` on the directory itself, taken by
the process that made it. The kernel drops the lock when that process dies, however it dies; so
at start a worker removes each directory it can lock: nobody uses it any more. A directory in use
by another live worker (several workers may share a host and its directories) stays locked and is
left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
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


def release(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the last descriptor drops the lock


def sweep(root: Path, pattern: str = "*") -> list[Path]:
    """Remove the directories under ``root`` matching ``pattern`` that nobody holds; the list."""
    from workers.workspace import remove_tree  # workspace.py holds its directories with hold()

    removed = []
    if not root.is_dir():
        return removed
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
    if removed:
        logger.warning("removed {} director{} a killed worker left behind under {}", len(removed),
                       "y" if len(removed) == 1 else "ies", root)
    return removed
