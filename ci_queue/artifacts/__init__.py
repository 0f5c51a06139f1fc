"""Artifacts and caches that jobs on different hosts pass to each other: which files
(``selection``) and the tar archive that carries them (``archive``)."""

from ci_queue.artifacts.archive import (
    Entry,
    TarWriter,
    UnsafeArchive,
    safe_extract,
    write_tar,
)
from ci_queue.artifacts.selection import (
    Selection,
    SelectionTooLarge,
    UntrackedError,
    human_bytes,
    select,
    untracked,
)

__all__ = [
    "Entry",
    "Selection",
    "SelectionTooLarge",
    "TarWriter",
    "UnsafeArchive",
    "UntrackedError",
    "human_bytes",
    "safe_extract",
    "select",
    "untracked",
    "write_tar",
]
