"""A build host's local copies of caches, by the SHA-256 of their archive.

Every cache lives in the farm's object store (any host pulls it); a host that pulled or pushed a
cache keeps the archive under ``CIQ_CACHE_DIR`` named by its checksum, so the next job there asks
the web app only for the checksum (a HEAD) and unpacks the local copy when it matches. The
copies are bounded (``CIQ_CACHE_LOCAL_BYTES``): the least recently used go first. Several
worker processes share the directory: files appear by atomic rename and are only ever replaced
whole, and a copy removed while another process reads it stays readable through its open file.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from loguru import logger

from ci_queue.settings import Settings

SHA256 = re.compile(r"[0-9a-f]{64}")


def default_root(settings: Settings) -> Path:
    return Path(settings.cache_dir) if settings.cache_dir else Path(tempfile.gettempdir()) / "ci-queue" / "cache"


class LocalCaches:
    """The directory of local copies (see the module docstring)."""

    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalCaches:
        return cls(default_root(settings), settings.cache_local_bytes)

    def find(self, sha256: str) -> Path | None:
        """The local copy with this checksum, if there is one (marked as just used)."""
        if not SHA256.fullmatch(sha256 or ""):
            return None
        path = self.root / f"{sha256}.tar"
        try:
            os.utime(path)
        except OSError:
            return None
        return path

    def new_file(self) -> tuple[int, Path]:
        """A temporary file in the directory to write a copy into (``keep`` or ``discard`` it)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(dir=self.root, prefix=".incoming-", suffix=".tar")
        return fd, Path(name)

    def keep(self, temp: Path, sha256: str) -> Path:
        """Make the written ``temp`` the copy of ``sha256``, then bound the directory's size."""
        target = self.root / f"{sha256}.tar"
        os.replace(temp, target)
        self.evict()
        return target

    @staticmethod
    def discard(temp: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()

    def evict(self) -> int:
        """Remove the least recently used copies beyond the limit; returns how many went."""
        copies = []
        for path in self.root.glob("*.tar"):
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            copies.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in copies)
        removed = 0
        for _, size, path in sorted(copies):
            if total <= self.limit:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
            total -= size
        if removed:
            logger.info("removed {} local cache copies over the limit of {} bytes", removed, self.limit)
        return removed
