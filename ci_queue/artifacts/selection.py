"""Which files of a job's workspace go into its artifacts or cache: GitLab's ``paths:``,
``exclude:`` and ``untracked:`` (docs.gitlab.com/ee/ci/yaml/#artifacts).

Semantics are the GitLab runner's: ``paths`` are doublestar globs relative to the project
directory (``*``, ``?``, ``[...]``, ``{a,b}``, ``**`` across directories; a leading ``./`` is
allowed); a matched directory is taken with everything below it; ``exclude`` globs remove
matched paths but are not recursive (``dist/`` drops the directory entry only, ``dist/**`` its
contents); ``untracked`` adds what ``git ls-files -o`` lists, ignored files included. A pattern
that matches nothing is a warning, and so is an empty selection: the job does not fail for it.

Trust model: the workspace was written by the job, so every name and symlink in it is hostile
until checked, and selection runs on the worker's host with the worker's rights. So nothing
outside the project directory is ever collected:

- patterns and untracked paths that are absolute or contain ``..`` are refused (a warning);
- the walk never follows a symlink: a symlink is taken as a link (its text, not its target) if
  its target resolves inside the project directory, refused with a warning otherwise, and a
  symlink to a directory is never walked into; a path through a symlinked directory is refused;
- fifos, sockets and devices are skipped with a warning (reading a fifo would block forever);
- ``git`` runs with the repository's command-running settings overridden (``core.fsmonitor``
  in a job-written ``.git/config`` would otherwise run any command on the host).

``TarWriter`` checks all of this again when it reads the files (the tree may change in between).
"""

from __future__ import annotations

import os
import posixpath
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ci_queue.pipeline.globs import compile_glob, compile_path_glob, expand_braces

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")
_MAGIC = frozenset("*?[")
GIT_TIMEOUT = 300.0


def human_bytes(n: int) -> str:
    """``1288490189`` as ``"1.2 GiB"``: binary units, at most one decimal."""
    if n < 1024:
        return "1 byte" if n == 1 else f"{n} bytes"
    value, unit = float(n), ""
    for unit in _UNITS:
        value /= 1024
        if round(value, 1) < 1024 or unit == _UNITS[-1]:
            break
    text = f"{value:.1f}".removesuffix(".0")
    return f"{text} {unit}"


def display(name: str) -> str:
    """A name as a job log may show it: in backquotes, escaped if it holds control characters or
    bytes that are not UTF-8 (a hostile name must not forge log lines)."""
    if name.isprintable():
        return f"`{name}`"
    return repr(name)


class SelectionTooLarge(Exception):
    """The selected files add up to more than the limit (``found`` counts what was seen when the
    walk stopped, so the real total may be larger)."""

    def __init__(self, found: int, limit: int) -> None:
        self.found, self.limit = found, limit
        found_text, limit_text = human_bytes(found), human_bytes(limit)
        if found_text == limit_text:
            found_text, limit_text = f"{found} bytes", f"{limit} bytes"
        super().__init__(f"artifacts are at least {found_text}, over the limit of {limit_text} "
                         "(CIQ_MAX_ARTIFACT_BYTES)")


class UntrackedError(Exception):
    """``git ls-files -o`` failed in a git work tree (or git is missing): the untracked files
    are unknown, and guessing (everything, or nothing) would be wrong."""


@dataclass
class Selection:
    entries: list[str]  # relative posix paths (files, dirs, symlinks), sorted: parents before children
    total_bytes: int  # the sum of the files' sizes
    warnings: list[str] = field(default_factory=list)  # for the job log
    matched_nothing: bool = False  # nothing was selected (GitLab: a warning, not a failure)


def select(root: Path, paths: Iterable[str], exclude: Iterable[str] = (), untracked_files: Iterable[str] = (),
           limit: int | None = None) -> Selection:
    """The entries of ``root`` (the project directory) that ``paths`` and ``untracked_files``
    name, minus ``exclude``; SelectionTooLarge as soon as the files pass ``limit`` bytes."""
    collector = _Collector(Path(root), exclude, limit)
    for pattern in paths:
        collector.add_pattern(pattern)
    for path in untracked_files:
        collector.add_untracked(path)
    entries = sorted(collector.entries)
    return Selection(entries=entries, total_bytes=collector.total, warnings=collector.warnings,
                     matched_nothing=not entries)


def untracked(root: Path) -> list[str]:
    """What ``git ls-files -o -z`` lists in ``root`` (untracked files, ignored ones included, as
    GitLab's ``untracked: true``), as relative posix paths; every file under ``root`` if it is not
    a git work tree (no ``.git``). UntrackedError if git fails."""
    top = os.path.abspath(root)
    if not os.path.lexists(os.path.join(top, ".git")):
        return _all_files(top)
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(GIT_CEILING_DIRECTORIES=os.path.dirname(top), GIT_OPTIONAL_LOCKS="0", GIT_TERMINAL_PROMPT="0")
    # The job wrote .git/config: neutralize what would run a command here, and accept the
    # repository whoever owns it (the job's user); --work-tree wins over a hostile core.worktree.
    command = ["git", "--no-pager", "-c", "core.fsmonitor=false", "-c", "core.untrackedCache=false",
               "-c", f"safe.directory={top}", "--work-tree", top, "ls-files", "-o", "-z"]
    try:
        done = subprocess.run(command, cwd=top, env=env, capture_output=True, timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UntrackedError(f"cannot list the untracked files: `git ls-files -o` failed ({exc})") from None
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()[-2000:]
        raise UntrackedError(f"cannot list the untracked files: `git ls-files -o` exited with "
                             f"{done.returncode}: {message}")
    return [os.fsdecode(name) for name in done.stdout.split(b"\0") if name]


def _all_files(top: str) -> list[str]:
    found: list[str] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            with os.scandir(os.path.join(top, rel) if rel else top) as listing:
                for item in listing:
                    child = f"{rel}/{item.name}" if rel else item.name
                    if item.is_dir(follow_symlinks=False):
                        stack.append(child)
                    else:
                        found.append(child)
        except OSError:
            continue  # select() says what it cannot read
    return sorted(found)


def split_relative(path: str) -> tuple[list[str], bool]:
    """``./a//b/`` as ``(["a", "b"], True)`` (the flag: it ended with ``/``); ValueError (the
    reason) for a path that is absolute, holds ``..`` or NUL, or is empty."""
    if "\0" in path:
        raise ValueError("it contains a NUL character")
    if path.startswith("/"):
        raise ValueError("it is absolute; paths are relative to the project directory")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError("`..` would leave the project directory")
    return parts, path.endswith("/")


MAX_SYMLINK_HOPS = 40  # Linux's MAXSYMLINKS


def resolve(path: str) -> str | None:
    """``os.path.realpath`` of the absolute ``path`` (missing components taken as they are) that
    follows at most ``MAX_SYMLINK_HOPS`` symlinks, None past that: a chain of thousands of links
    from a hostile tree must cost neither quadratic time nor a RecursionError."""
    todo = [part for part in reversed(path.split("/")) if part]
    current, hops = "/", 0
    while todo:
        part = todo.pop()
        if part == ".":
            continue
        if part == "..":
            current = posixpath.dirname(current)
            continue
        candidate = posixpath.join(current, part)
        try:
            target = os.readlink(candidate)
        except OSError:  # not a symlink, or missing
            current = candidate
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            return None
        if target.startswith("/"):
            current = "/"
        todo.extend(part for part in reversed(target.split("/")) if part)
    return current


def inside(path: str | None, top: str) -> bool:
    return path is not None and (path == top or path.startswith(top.rstrip("/") + "/"))


def link_target(root: str, root_real: str, rel: str, target: str) -> tuple[str | None, str]:
    """The target to archive for the symlink ``rel`` (relative to ``root``) whose text is
    ``target``, or ``(None, reason)`` if it leaves ``root``: lexically at any step (a target that
    goes up and back in would leave a differently named destination) or once resolved through
    the links already in the tree. An absolute target inside ``root`` becomes relative."""
    if not target:
        return None, "its target is empty"
    link_dir = posixpath.dirname(rel)
    if target.startswith("/"):
        absolute = posixpath.normpath(target)
        for base in (root, root_real):
            if absolute == base or absolute.startswith(base.rstrip("/") + "/"):
                inner = absolute[len(base):].lstrip("/") or "."
                target = posixpath.relpath(inner, link_dir or ".")
                break
        else:
            return None, "it points outside the project directory"
    depth = link_dir.count("/") + 1 if link_dir else 0
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return None, "it points outside the project directory"
        elif part not in ("", "."):
            depth += 1
    real = resolve(os.path.join(root, rel))
    if real is None:
        return None, f"it goes through more than {MAX_SYMLINK_HOPS} symlinks"
    if not inside(real, root_real):
        return None, "it resolves outside the project directory"
    return target, ""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


class _Collector:
    """One selection's walk: what was taken, what was listed, what it adds up to."""

    def __init__(self, root: Path, exclude: Iterable[str], limit: int | None) -> None:
        self.root = os.path.abspath(root)
        self.root_real = os.path.realpath(self.root)
        self.limit = limit
        self.entries: set[str] = set()
        self.total = 0
        self.warnings: list[str] = []
        self.real_dirs: set[str] = {""}  # relative paths seen to be directories, not symlinks
        self.walked: set[str] = set()
        self.listings: dict[str, list[tuple[str, os.stat_result]]] = {}
        self.exclude = []
        for pattern in exclude:
            try:
                parts, _ = split_relative(pattern)
            except ValueError as exc:
                self.warnings.append(f"exclude {display(pattern)} ignored: {exc}")
                continue
            self.exclude.append(compile_path_glob("/".join(parts) or "**"))

    # -- the file system, never through a symlink ------------------------------------------------
    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _list(self, rel: str) -> list[tuple[str, os.stat_result]]:
        listing = self.listings.get(rel)
        if listing is None:
            listing = []
            try:
                with os.scandir(self._abs(rel)) as items:
                    for item in items:
                        try:
                            listing.append((item.name, item.stat(follow_symlinks=False)))
                        except OSError:
                            continue  # gone since listed
            except OSError as exc:
                self.warnings.append(f"cannot list {display(rel or '.')}: {exc.strerror or exc}")
            self.listings[rel] = listing
        return listing

    def _lstat(self, parts: list[str]) -> os.stat_result | None:
        """lstat of ``parts`` if every parent is a real directory (None, with a warning naming a
        symlinked parent, otherwise)."""
        rel = ""
        for part in parts[:-1]:
            rel = f"{rel}/{part}" if rel else part
            if rel in self.real_dirs:
                continue
            try:
                info = os.lstat(self._abs(rel))
            except OSError:
                return None
            if stat.S_ISLNK(info.st_mode):
                self.warnings.append(f"{display('/'.join(parts))} not collected: {display(rel)} is a symlink "
                                     "(symlinks are archived as links, never followed)")
                return None
            if not stat.S_ISDIR(info.st_mode):
                return None
            self.real_dirs.add(rel)
        try:
            return os.lstat(self._abs("/".join(parts)))
        except OSError:
            return None

    # -- taking entries --------------------------------------------------------------------------
    def _excluded(self, rel: str) -> bool:
        if not self.exclude:
            return False
        return any(rx.match(rel) for rx in self.exclude)

    def _take(self, rel: str, info: os.stat_result) -> None:
        """Take ``rel`` (a directory with everything below it)."""
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            self.real_dirs.add(rel)
            if rel and not self._excluded(rel):
                self.entries.add(rel)
            self._walk(rel)
        else:
            self._take_leaf(rel, info)

    def _take_leaf(self, rel: str, info: os.stat_result) -> None:
        if rel in self.entries or self._excluded(rel):
            return
        mode = info.st_mode
        if stat.S_ISREG(mode):
            self.entries.add(rel)
            self.total += info.st_size
            if self.limit is not None and self.total > self.limit:
                raise SelectionTooLarge(self.total, self.limit)
        elif stat.S_ISLNK(mode):
            try:
                text = os.readlink(self._abs(rel))
            except OSError as exc:
                self.warnings.append(f"symlink {display(rel)} not collected: {exc.strerror or exc}")
                return
            kept, reason = link_target(self.root, self.root_real, rel, text)
            if kept is None:
                self.warnings.append(f"symlink {display(rel)} -> {display(text)} not collected: {reason}")
            else:
                self.entries.add(rel)
        else:
            self.warnings.append(f"{display(rel)} not collected: {_kind(mode)} is not archived")

    def _walk(self, top: str) -> None:
        stack = [top]
        while stack:
            rel = stack.pop()
            if rel in self.walked:
                continue
            self.walked.add(rel)
            for name, info in self._list(rel):
                child = f"{rel}/{name}" if rel else name
                if stat.S_ISDIR(info.st_mode):
                    self.real_dirs.add(child)
                    if not self._excluded(child):
                        self.entries.add(child)
                    stack.append(child)
                else:
                    self._take_leaf(child, info)
            self.listings.pop(rel, None)  # walked once; keep memory to the glob's needs

    # -- paths and untracked ---------------------------------------------------------------------
    def add_pattern(self, pattern: str) -> None:
        if not pattern.strip():
            self.warnings.append("an empty path was ignored")
            return
        try:
            expanded = expand_braces(pattern)
        except ValueError as exc:
            self.warnings.append(f"{display(pattern)}: refused, {exc}")
            return
        found = False
        for one in expanded:
            try:
                parts, dir_only = split_relative(one)
            except ValueError as exc:
                self.warnings.append(f"{display(pattern)}: refused, {exc}")
                continue
            for rel in sorted(set(self._glob(parts, 0, ""))):
                if not rel:
                    found = True
                    self._walk("")
                    continue
                info = self._lstat(rel.split("/"))
                if info is None or (dir_only and not stat.S_ISDIR(info.st_mode)):
                    continue
                found = True
                self._take(rel, info)
        self.listings.clear()
        if not found:
            self.warnings.append(f"{display(pattern)}: no matching files (paths are relative to the project "
                                 "directory)")

    def _glob(self, parts: list[str], i: int, rel: str) -> Iterable[str]:
        """Relative paths under the real directory ``rel`` that match ``parts[i:]``."""
        if i == len(parts):
            yield rel
            return
        part = parts[i]
        last = i + 1 == len(parts)
        if part == "**":
            yield from self._glob(parts, i + 1, rel)
            subdirs = [name for name, info in self._list(rel) if stat.S_ISDIR(info.st_mode)]
            self.listings.pop(rel, None)  # memory bounded by the depth of the tree, not its size
            for name in subdirs:
                yield from self._glob(parts, i, f"{rel}/{name}" if rel else name)
            return
        if not _MAGIC.intersection(part):
            child = f"{rel}/{part}" if rel else part
            info = self._lstat(child.split("/"))
            if info is None:
                return
            if last:
                yield child
            elif stat.S_ISDIR(info.st_mode):
                yield from self._glob(parts, i + 1, child)
            elif stat.S_ISLNK(info.st_mode):
                self.warnings.append(f"{display('/'.join(parts))}: {display(child)} is a symlink, not followed")
            return
        rx = compile_glob(part)
        for name, info in self._list(rel):
            if rx.match(name) is None:
                continue
            child = f"{rel}/{name}" if rel else name
            if last:
                yield child
            elif stat.S_ISDIR(info.st_mode):
                yield from self._glob(parts, i + 1, child)

    def add_untracked(self, path: str) -> None:
        try:
            parts, _ = split_relative(path)
        except ValueError as exc:
            self.warnings.append(f"untracked {display(path)} not collected: {exc}")
            return
        if not parts:
            return
        info = self._lstat(parts)
        if info is not None:
            self._take("/".join(parts), info)
