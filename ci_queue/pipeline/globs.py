"""Path globs as GitLab matches them in ``changes:`` and ``exists:``, and as its runner matches
``artifacts:`` and ``cache:`` paths.

GitLab uses Ruby's ``File.fnmatch?`` with ``FNM_PATHNAME | FNM_DOTMATCH | FNM_EXTGLOB``: ``*``
and ``?`` stop at ``/``, ``**/`` crosses directories, ``{a,b}`` alternates, ``[...]`` is a
class, and dot files are matched like any other.

The runner matches artifact paths with Go's doublestar instead (``compile_path_glob``): the same
except that ``**`` crosses directories only as a whole path component (``a/**`` also matches
``a`` itself, ``a**`` is ``a*``).
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
    return re.compile(_translate(pattern.lstrip("/"), doublestar=False) + r"\Z")


@lru_cache(maxsize=4096)
def compile_path_glob(pattern: str) -> re.Pattern[str]:
    """Like ``compile_glob`` with doublestar's ``**`` (GitLab runner's ``artifacts:`` and
    ``cache:`` paths and ``exclude``): a whole component ``**`` is zero or more directories,
    ``a/**`` matches ``a`` and everything below it, any other ``**`` is ``*``. ``pattern`` is
    relative and already normalized (no ``./``)."""
    return re.compile(_translate(pattern, doublestar=True) + r"\Z")


def _translate(pattern: str, *, doublestar: bool) -> str:
    out: list[str] = []
    i, n, depth = 0, len(pattern), 0
    while i < n:
        c = pattern[i]
        if pattern.startswith("**", i):
            starts = i == 0 or pattern[i - 1] == "/" or (depth > 0 and pattern[i - 1] in "{,")
            after = pattern[i + 2] if i + 2 < n else ""
            ends = after in ("", "/") or (depth > 0 and after in ",}")
            if doublestar and not (starts and ends):
                out.append("[^/]*")
            elif after == "/":
                out.append("(?:.*/)?")
                i += 1
            elif doublestar and out and out[-1] == "/":
                out[-1] = "(?:/.*)?"
            else:
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
    return "".join(out)


MAX_BRACE_EXPANSIONS = 1024


def expand_braces(pattern: str, limit: int = MAX_BRACE_EXPANSIONS) -> list[str]:
    """``{a,b}/x`` as ``["a/x", "b/x"]`` (nested braces too), for walking a tree one path
    component at a time. An unbalanced brace is literal. ValueError past ``limit`` patterns."""
    done: list[str] = []
    todo = [pattern]
    while todo:
        current = todo.pop()
        group = _first_brace_group(current)
        if group is None:
            done.append(current)
            if len(done) > limit:
                raise ValueError(f"{pattern!r} expands to more than {limit} patterns")
            continue
        start, end, alternatives = group
        todo.extend(current[:start] + alt + current[end + 1 :] for alt in reversed(alternatives))
        if len(todo) > limit:
            raise ValueError(f"{pattern!r} expands to more than {limit} patterns")
    return done


def _first_brace_group(pattern: str) -> tuple[int, int, list[str]] | None:
    """The first ``{...}`` with its top-level alternatives, or None."""
    start = pattern.find("{")
    while start != -1:
        depth, pieces, last = 0, [], start + 1
        for j in range(start, len(pattern)):
            c = pattern[j]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    pieces.append(pattern[last:j])
                    return start, j, pieces
            elif c == "," and depth == 1:
                pieces.append(pattern[last:j])
                last = j + 1
        start = pattern.find("{", start + 1)
    return None


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
