"""Where included files come from when they are not files of the repository being planned.

``include: project:`` reads a file of another repository at a ref, ``include: remote:`` a URL.
The pipeline package does no I/O beyond reading files, so the readers are handed in by whoever
plans: the worker reads registered repositories from its mirror cache (``workers``), the
command line reads directories given with ``--project-dir`` (:func:`directory_projects`), and
remote files come from ``ci_queue.remote_includes`` (allow-list, address rule, size, timeout).
A reader that cannot give the file raises :class:`IncludeSourceError` with a message for the
user; the composer places it at the ``include:`` entry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ci_queue.pipeline.loader import DEFAULT_MAX_BYTES, read_file

ProjectReader = Callable[[str, "str | None", str], bytes]
"""``(project, ref or None for its default branch, path) -> the file's bytes``."""

RemoteReader = Callable[[str], bytes]
"""``url -> the file's bytes``."""


class IncludeSourceError(Exception):
    """A file an ``include:`` names cannot be had; ``message`` and ``hint`` are for the user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class IncludeSources:
    """The readers of includes from outside the repository (None: that kind is not available)."""

    project: ProjectReader | None = None
    remote: RemoteReader | None = None


def directory_projects(directories: Mapping[str, str | os.PathLike[str]],
                       max_bytes: int = DEFAULT_MAX_BYTES) -> ProjectReader:
    """A reader of ``project:`` includes from local directories, ``{"group/name": path}``
    (``--project-dir``): a file with such includes can be checked offline. The ref is not looked
    at: the directory is what is checked. Paths cannot leave their directory."""
    roots = {name.strip("/").casefold(): Path(path).resolve() for name, path in directories.items()}

    def read(project: str, ref: str | None, path: str) -> bytes:
        root = roots.get(project.strip("/").casefold())
        if root is None:
            known = ", ".join(sorted(directories)) or "none"
            raise IncludeSourceError(f"project {project!r} is not one of the --project-dir projects ({known})",
                                     f"add `--project-dir {project}=PATH`")
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root):
            raise IncludeSourceError(f"{path!r} is outside project {project!r}")
        if not target.is_file():
            raise IncludeSourceError(f"{project}: file {path!r} does not exist (in {root})")
        return read_file(target, f"{project}:{path}", max_bytes)

    return read
