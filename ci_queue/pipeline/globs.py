"""Path globs as GitLab matches them in ``changes:`` and ``exists:``.

GitLab uses Ruby's ``File.fnmatch?`` with ``FNM_PATHNAME | FNM_DOTMATCH | FNM_EXTGLOB``: ``*``
and ``?`` stop at ``/``, ``**/`` crosses directories, ``{a,b}`` alternates, ``[...]`` is a
class, and dot files are matched like any other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from functools import lru_cache

MAX_TREE_FILES = 50_000  # bound the walk of a repository for `exists:`


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """A regular expression matching exactly the paths ``pattern`` matches."""
    out: list[str] = []
    pattern = pattern.lstrip("/")
    i, n, depth = 0, len(pattern), 0
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "," and depth:
            out.append("|")
        elif c == "}" and depth:
            depth -= 1
            out.append(")")
        else:
            out.append(re.escape(c))
        i += 1
    out.append(")" * depth)
    return re.compile("".join(out) + r"\Z")


def matches(pattern: str, path: str) -> bool:
    """True if the repository-relative ``path`` matches ``pattern``."""
    try:
        return compile_glob(pattern).match(path.lstrip("/")) is not None
    except re.error:
        return False


def any_match(patterns: Iterable[str], paths: Iterable[str]) -> bool:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(compile_glob(pattern))
        except re.error:
            continue
    return any(rx.match(path.lstrip("/")) for path in paths for rx in compiled)


def tree_files(root: str) -> list[str]:
    """Repository-relative paths of the files and directories under ``root`` (no ``.git``)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        found.extend(prefix + d for d in dirnames)
        found.extend(prefix + f for f in filenames)
        if len(found) > MAX_TREE_FILES:
            break
    return found
