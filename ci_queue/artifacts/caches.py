"""Cache keys, fallback keys and policies, as GitLab and its runner compute them.

A GitLab cache key is made in three places, and we do all three here:

1. the config is validated when the pipeline is created (``lib/gitlab/ci/config/entry/cache.rb``,
   ``key.rb``, ``files.rb``, ``prefix.rb``; ``KeyValidator`` in
   ``lib/gitlab/config/entry/validators.rb``): an error there means no pipeline, so it raises
   CacheKeyError;
2. Rails turns ``cache:key:files`` into a digest (``lib/gitlab/ci/pipeline/seed/build/cache.rb``,
   ``lib/gitlab/ci/build/cache.rb``), then ``Ci::Build#cache`` appends ``-<jobs_cache_index>``
   (the "Clear runner caches" counter) and ``-protected`` / ``-non_protected`` to the key and to
   every ``cache:fallback_keys`` entry (``app/models/ci/build.rb``);
3. the runner expands variables in the key (Go's ``os.Expand``: ``$X``/``${X}``, an undefined
   variable is empty), sanitizes it (``cache/cachekey/cachekey.go``), adds ``CACHE_FALLBACK_KEY``
   last, and checks the policy (``shells/abstract.go``, ``common/spec/spec.go``).

Rails code read in gisiahq/gisia (a fork of GitLab FOSS, 2026; the matching upstream files in
gitlabhq/gitlabhq are older snapshots in the index), runner code in gitlabhq/gitlab-runner.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ci_queue.pipeline.variables import slug

POLICIES = ("pull", "push", "pull-push")
WHENS = ("on_success", "on_failure", "always")
DEFAULT_KEY = "default"  # Entry::Key.default
MAX_FALLBACK_KEYS = 5
GIT_TIMEOUT = 60


@dataclass(frozen=True)
class CacheSpec:
    """One cache of a job, resolved: what to pull, push and under which keys."""

    key: str  # the final key, with its suffixes, expanded and sanitized
    fallback_keys: tuple[str, ...]  # tried in order when `key` has no cache: cache:fallback_keys, CACHE_FALLBACK_KEY
    paths: tuple[str, ...]
    untracked: bool
    when: str  # on_success | on_failure | always: when the job pushes it
    policy: str  # pull | push | pull-push


class CacheKeyError(ValueError):
    """A cache GitLab refuses: a config error (no pipeline in GitLab) or an unknown policy (the
    runner fails the job)."""


def resolve_caches(caches: list[dict], variables: Mapping[str, str], workspace: Path, *, protected: bool,
                   ref_name: str = "", unprotect_allowed: bool = True, separate_caches: bool = True,
                   cache_index: int | None = None, job_name: str = "") -> tuple[list[CacheSpec], list[str]]:
    """The caches of a job (``Job.cache``), resolved for one run: (specs, warnings for the job log).

    ``variables``: the job's variables as its script sees them (predefined, file, event; already
    expanded, as the runner's ``GetAllVariables``). ``workspace``: the checked-out repository, for
    ``key:files``. ``protected``: ``CI_COMMIT_REF_PROTECTED``.

    ``separate_caches`` is GitLab's project setting "Use separate caches for protected branches"
    (``ci_separated_caches``, on by default): on, every key and fallback key gets ``-protected``
    on a protected ref and ``-non_protected`` otherwise, and ``unprotect: true`` makes it
    ``-non_protected`` everywhere (the suffix is never dropped by it); off, no suffix at all.
    ``unprotect_allowed`` is ci-queue's: False ignores ``unprotect: true`` (with a warning), so
    unprotected branches cannot write caches that protected ones read. ``cache_index`` is
    GitLab's ``jobs_cache_index`` (None: never cleared): bumping it makes every key new.
    ``ref_name`` and ``job_name`` make the runner's key for an empty key, ``<job>/<ref>``.

    What is dropped, with a warning, as the runner does: a key that sanitizes to nothing (the
    cache is skipped), such fallback keys, and a ``CACHE_FALLBACK_KEY`` ending in
    ``-protected``. A cache with no ``paths`` and no ``untracked`` is skipped silently (the
    runner has nothing to do). Raises CacheKeyError for what GitLab refuses.
    """
    specs: list[CacheSpec] = []
    warnings: list[str] = []
    job_name = job_name or variables.get("CI_JOB_NAME", "")
    for index, cache in enumerate(caches):
        check_cache_config(cache)
        paths = tuple(str(p) for p in cache.get("paths") or ())
        untracked = cache.get("untracked") is True
        if not paths and not untracked:
            continue
        unprotect = cache.get("unprotect") is True
        if unprotect and not unprotect_allowed:
            warnings.append("cache:unprotect is not allowed here: this cache stays separate for protected refs")
            unprotect = False
        suffixes = ""
        if cache_index is not None:
            suffixes += f"-{cache_index}"
        if separate_caches:
            suffixes += "-protected" if protected and not unprotect else "-non_protected"
        key = _rails_key(cache, index, workspace, warnings) + suffixes
        human = _runner_key(key, variables, job_name, ref_name, warnings)
        if human is None:
            continue
        raw_policy = str(cache.get("policy") or "pull-push")
        policy = go_expand(raw_policy, variables) or "pull-push"  # the runner: "" is pull-push
        if policy not in POLICIES:
            raise CacheKeyError(f"unknown cache policy {policy} for {human}")
        fallbacks = []
        for fallback in cache.get("fallback_keys") or ():
            fallback_key = _runner_key(go_expand(str(fallback) + suffixes, variables), variables, job_name,
                                       ref_name, warnings, skip_empty=True)
            if fallback_key is not None:
                fallbacks.append(fallback_key)
        global_fallback = variables.get("CACHE_FALLBACK_KEY", "")
        if global_fallback:
            fallback_key = _runner_key(global_fallback, variables, job_name, ref_name, warnings)
            if fallback_key is not None and fallback_key.rstrip(". ").endswith("-protected"):
                # The suffix is reserved for protected refs (gitlab-org/gitlab#409111).
                warnings.append(f"CACHE_FALLBACK_KEY {_go_quote(fallback_key)} not allowed to end in "
                                f"{_go_quote('-protected')}")
            elif fallback_key is not None:
                fallbacks.append(fallback_key)
        specs.append(CacheSpec(key=human, fallback_keys=tuple(fallbacks), paths=paths, untracked=untracked,
                               when=str(cache.get("when") or "on_success"), policy=policy))
    return specs, warnings


def cache_object_name(repo: str, key: str) -> str:
    """Where a cache lives in the object store: ``caches/<repo slug>-<repo hash>/<sha256(key)>.tar``.

    The key is user data (any characters, ``..``, slashes), so it is hashed; the repository's
    slug keeps names readable, and a short hash of the exact name keeps ``a/b-c`` and ``a-b/c``
    (one slug) apart.
    """
    repo_hash = hashlib.sha256(repo.encode()).hexdigest()[:12]
    return f"caches/{slug(repo) or 'repo'}-{repo_hash}/{hashlib.sha256(key.encode()).hexdigest()}.tar"


# -- 1. the config, as GitLab validates it when it creates the pipeline ----------------------------

# Entry::Cache::ALLOWED_POLICY, /pull-push|push|pull|\$\w{1,255}*/: unanchored, and Ruby reads the
# stacked quantifier as (\w{1,255})*, so any text holding pull, push or a "$" passes.
_POLICY_FORMAT = re.compile(r"pull-push|push|pull|\$(?:\w{1,255})*")


def check_cache_config(cache: Mapping[str, Any]) -> None:
    """Raise CacheKeyError with GitLab's message for what ``Entry::Cache`` refuses.

    Quirks kept: the policy pattern is not anchored, so ``pull-only`` passes here and fails in
    the runner; a ``key`` or ``prefix`` is checked as written (before variables), after
    URL-decoding: it may not contain ``/`` (``%2F`` included) or be ``.`` or ``..``.
    """
    key = DEFAULT_KEY if cache.get("key") is None else cache["key"]
    if isinstance(key, Mapping):
        unknown = sorted(set(key) - {"files", "files_commits", "prefix"})
        if unknown:
            raise CacheKeyError(f"cache:key config contains unknown keys: {', '.join(unknown)}")
        if ("files" in key) == ("files_commits" in key):
            raise CacheKeyError("cache:key config must use exactly one of these keys: files, files_commits")
        which = "files" if "files" in key else "files_commits"
        files = key[which]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise CacheKeyError(f"cache:key:{which} config should be an array of strings")
        if not files:
            raise CacheKeyError(f"cache:key:{which} config requires at least 1 item")
        if len(files) > 2:
            raise CacheKeyError(f"cache:key:{which} config has too many items (maximum is 2)")
        if key.get("prefix") is not None:
            _check_key_text(key["prefix"], "cache:key:prefix")
    else:
        _check_key_text(key, "cache:key")
    policy = cache.get("policy")
    if policy is not None and (not isinstance(policy, str) or not _POLICY_FORMAT.search(policy)):
        raise CacheKeyError("cache:policy should be a variable or one of: pull-push, push, pull")
    when = cache.get("when")
    if when is not None and when not in WHENS:
        raise CacheKeyError(f"cache:when should be one of: {', '.join(WHENS)}")
    fallback_keys = cache.get("fallback_keys")
    if fallback_keys is not None:
        if not isinstance(fallback_keys, list) or not all(isinstance(k, str) for k in fallback_keys):
            raise CacheKeyError("cache:fallback_keys config should be an array of strings")
        if len(fallback_keys) > MAX_FALLBACK_KEYS:  # sic: GitLab's message
            raise CacheKeyError(f"cache:fallback_keys has to many entries (maximum {MAX_FALLBACK_KEYS})")
    for flag in ("unprotect", "untracked"):
        if cache.get(flag) is not None and not isinstance(cache[flag], bool):
            raise CacheKeyError(f"cache:{flag} config should be a boolean value")
    paths = cache.get("paths")
    if paths is not None and (not isinstance(paths, list) or not all(isinstance(p, str) for p in paths)):
        raise CacheKeyError("cache:paths config should be an array of strings")


def _check_key_text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        # Entry::Key: a string or a mapping (YAML symbols do not exist here); an int is neither
        raise CacheKeyError(f"{where} config should be a hash, a string or a symbol")
    text = unquote(value.replace("+", " "))  # CGI.unescape also turns + into a space
    if "/" in text:
        raise CacheKeyError(f'{where} config cannot contain the "/" character')
    if text in (".", ".."):
        raise CacheKeyError(f'{where} config cannot be "." or ".."')


# -- 2. what Rails makes of the key -------------------------------------------------------------------

def _rails_key(cache: Mapping[str, Any], index: int, workspace: Path, warnings: list[str]) -> str:
    """The key GitLab sends the runner, before the suffixes: the string as written, or
    ``<prefix>-<digest of the files>``."""
    key = DEFAULT_KEY if cache.get("key") is None else cache["key"]
    if not isinstance(key, Mapping):
        return str(key)
    files_key = "files" in key
    # Entry::Files#value drops leading slashes; the seed drops blank entries and duplicates.
    files = list(dict.fromkeys(f.lstrip("/") for f in key["files" if files_key else "files_commits"]
                               if f.strip()))
    prefix = key.get("prefix")
    if prefix is None:
        # Build::Cache#cache_prefix (gitlab-org/gitlab#388374): the cache's index, with the files'
        # names before their first dot for `files` ("0_package" for package.json; not for
        # files_commits, which keeps the bare index).
        prefix = f"{index}_{'_'.join(_ruby_split_dot_first(f) for f in files)}" if files_key else str(index)
    digest = (_files_digest(files, workspace, warnings) if files_key
              else _files_commits_digest(files, workspace, warnings)) or DEFAULT_KEY
    return "-".join(part for part in (str(prefix), digest) if part.strip())  # Ruby: select(&:present?)


def _ruby_split_dot_first(name: str) -> str:
    """Ruby's ``name.split('.').first`` (trailing empty fields dropped; nil joins as "")."""
    parts = name.split(".")
    while parts and parts[-1] == "":
        parts.pop()
    return parts[0] if parts else ""


def _files_digest(patterns: list[str], workspace: Path, warnings: list[str]) -> str | None:
    """GitLab >= 18.4 (gitlab-org/gitlab!203233): SHA-1 of the sorted, distinct git blob ids of
    the files at the pipeline's commit, joined by ``-``; patterns with ``*`` are matched against
    every file of the commit. None (-> ``default``) when no file exists.

    The blob ids come from the checkout's HEAD (``git ls-tree``), the commit GitLab reads; in a
    workspace that is not a git checkout they are computed from the files' contents the way git
    computes them (``blob <size>\\0<bytes>``), equal to GitLab's unless git filters (LFS, eol
    conversion) change what is checked out.
    """
    tree = _git_tree(workspace)
    if tree is None:
        warnings.append("cache:key:files: the workspace is not a git checkout; hashing the files as they are")
        tree = _workspace_tree(workspace) if any("*" in p for p in patterns) else {
            p: blob for p in patterns if (blob := _workspace_blob(workspace, p)) is not None}
    paths: list[str] = []
    for pattern in patterns:
        if "*" in pattern:
            regex = _wildcard_regex(pattern)
            paths.extend(path for path in tree if regex.fullmatch(path))
        else:
            paths.append(pattern)
    ids = {blob() if callable(blob) else blob for path in dict.fromkeys(paths) if (blob := tree.get(path))}
    return hashlib.sha1("-".join(sorted(ids)).encode()).hexdigest() if ids else None


def _files_commits_digest(files: list[str], workspace: Path, warnings: list[str]) -> str | None:
    """``cache:key:files_commits`` (GitLab >= 18.4; what ``files`` did before): SHA-1 of the sorted,
    distinct ids of the last commits that changed each file, up to the checked-out commit."""
    if _git_toplevel(workspace) is None:
        warnings.append("cache:key:files_commits needs a git checkout; using the key `default`")
        return None
    ids = set()
    for path in files:
        out = _git(workspace, "--literal-pathspecs", "log", "-1", "--format=%H", "HEAD", "--", path)
        if out and out.strip():
            ids.add(out.strip())
    return hashlib.sha1("-".join(sorted(ids)).encode()).hexdigest() if ids else None


def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    """``Repository#search_files_by_wildcard_path``: the pattern escaped, then ``**/`` -> any
    directories or none, ``**`` -> anything, ``*`` -> anything but ``/`` (in that order, each
    replacing left to right, as Ruby's gsub on the escaped text)."""
    star = ("*", "")
    tokens: list[tuple[str, str]] = [star if c == "*" else ("lit", re.escape(c)) for c in pattern]
    for sequence, regex in (([star, star, ("lit", "/")], "(?:.*?/)?"), ([star, star], ".*?"), ([star], "[^/]*?")):
        replaced: list[tuple[str, str]] = []
        i = 0
        while i < len(tokens):
            if tokens[i:i + len(sequence)] == sequence:
                replaced.append(("re", regex))
                i += len(sequence)
            else:
                replaced.append(tokens[i])
                i += 1
        tokens = replaced
    return re.compile("".join(text for _, text in tokens))


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def _git(workspace: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-c", f"safe.directory={workspace}", "-C", str(workspace), *args],
                                capture_output=True, timeout=GIT_TIMEOUT, env=_git_env(), check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.decode("utf-8", "surrogateescape") if result.returncode == 0 else None


def _git_toplevel(workspace: Path) -> Path | None:
    """The workspace, if it is the top of a git checkout with a commit (not a directory inside
    some other repository)."""
    top = _git(workspace, "rev-parse", "--show-toplevel")
    if top is None or _git(workspace, "rev-parse", "--verify", "-q", "HEAD^{commit}") is None:
        return None
    try:
        return workspace if Path(top.strip()).resolve() == Path(workspace).resolve() else None
    except OSError:
        return None


def _git_tree(workspace: Path) -> dict[str, Any] | None:
    """Path -> blob id of every file of HEAD, or None when the workspace is no git checkout."""
    if _git_toplevel(workspace) is None:
        return None
    out = _git(workspace, "ls-tree", "-r", "-z", "--full-tree", "HEAD")
    if out is None:
        return None
    tree: dict[str, Any] = {}
    for entry in out.split("\0"):
        meta, _, path = entry.partition("\t")
        parts = meta.split()
        if len(parts) == 3 and parts[1] == "blob":  # not submodules (commit entries)
            tree[path] = parts[2]
    return tree


def _workspace_tree(workspace: Path) -> dict[str, Any]:
    """Path -> (lazy) git blob id of every file and symbolic link under the workspace, .git left out."""
    tree: dict[str, Any] = {}
    root = Path(workspace)
    for directory, dirnames, filenames in os.walk(root):  # links to directories are listed, not followed
        dirnames[:] = [d for d in dirnames if d != ".git"]
        links = [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
        for name in filenames + links:
            path = Path(directory, name)
            tree[path.relative_to(root).as_posix()] = _lazy_blob_id(path)
    return tree


def _workspace_blob(workspace: Path, path: str):
    """The lazy blob id of one file, found as git would find it in a tree: a normalized relative
    path through real directories (not links, not .git) to a file or a link; else None. So
    ``../x`` or a path through a link never reads outside the workspace."""
    parts = path.split("/")
    if any(part in ("", ".", "..", ".git") for part in parts):
        return None
    current = Path(workspace)
    for part in parts[:-1]:
        current = current / part
        if current.is_symlink() or not current.is_dir():
            return None
    target = current / parts[-1]
    return _lazy_blob_id(target) if target.is_symlink() or target.is_file() else None


def _lazy_blob_id(path: Path):
    def blob_id() -> str:
        data = os.readlink(path).encode("utf-8", "surrogateescape") if path.is_symlink() else path.read_bytes()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return blob_id


# -- 3. what the runner makes of it ----------------------------------------------------------------------

def _runner_key(key: str, variables: Mapping[str, str], job_name: str, ref_name: str, warnings: list[str],
                *, skip_empty: bool = False) -> str | None:
    """The runner's ``cacheKey``: an empty key is ``<job>/<ref>``, else the key with variables
    expanded; then sanitized. None (with warnings) when nothing is left: the runner skips it."""
    if key == "":
        if skip_empty:
            return None
        raw = _go_clean_rooted("/".join(["", job_name, ref_name]))[1:]
    else:
        raw = go_expand(key, variables)
    human, error = sanitize_key(raw)
    if error:
        warnings.append(error)
    elif human != raw:
        warnings.append(f"cache key {_go_quote(raw)} sanitized to {_go_quote(human)}")
    if not human:
        warnings.append("Skipping cache extraction due to empty cache key")
        return None
    return human


_NORMALISE = re.compile(r"%2[fF]|%2[eE]|\\")
# Go's unicode.IsSpace: Latin-1 spaces, then the White_Space property
_GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
                      "\u200a\u2028\u2029\u202f\u205f\u3000")


def sanitize_key(key: str) -> tuple[str, str | None]:
    """The runner's ``cachekey.Sanitize`` (FF_HASH_CACHE_KEYS off, the default): ``%2F``/``%2E``
    decoded and ``\\`` made ``/``, the path cleaned under a virtual root (``..`` cannot climb out,
    ``.`` and empty segments go), trailing whitespace stripped from the last segments, dropping
    those left empty. Returns (key, error); the key is "" when nothing is left."""
    if key == "":
        return "", None
    normalised = _NORMALISE.sub(lambda m: "/" if m.group(0) in ("%2f", "%2F", "\\") else ".", key)
    parts = _go_clean_rooted("/" + normalised)[1:].split("/")
    while parts:
        parts[-1] = parts[-1].rstrip("".join(_GO_SPACE))
        if parts[-1]:
            break
        parts.pop()
    cleaned = "/".join(parts)
    if not cleaned:
        return "", f"cache key {_go_quote(key)} could not be sanitized"
    return cleaned, None


def _go_clean_rooted(path: str) -> str:
    """Go's ``path.Clean`` for a path starting with ``/``."""
    stack: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if stack:
                stack.pop()
        else:
            stack.append(segment)
    return "/" + "/".join(stack)


_GO_SPECIAL = frozenset("*#$@!?-0123456789")


def go_expand(text: str, variables: Mapping[str, str]) -> str:
    """Go's ``os.Expand`` with the job's variables, as the runner expands cache keys and policies:
    ``$NAME``, ``${NAME}`` and one-character special names (``$1``, ``$$``...) are replaced, an
    undefined one by nothing; ``$`` followed by anything else, or last, stays; ``${`` without
    ``}`` and ``${}`` are dropped."""
    out: list[str] = []
    i = 0
    start = 0
    n = len(text)
    while i < n:
        if text[i] == "$" and i + 1 < n:
            out.append(text[start:i])
            name, width = _go_shell_name(text, i + 1)
            if name == "" and width > 0:
                pass  # bad syntax: eaten
            elif name == "":
                out.append("$")
            else:
                out.append(variables.get(name, ""))
            i += width
            start = i + 1
        i += 1
    out.append(text[start:])
    return "".join(out)


def _go_shell_name(text: str, at: int) -> tuple[str, int]:
    first = text[at]
    if first == "{":
        if len(text) - at > 2 and text[at + 1] in _GO_SPECIAL and text[at + 2] == "}":
            return text[at + 1], 3
        close = text.find("}", at + 1)
        if close == -1:
            return "", 1
        if close == at + 1:
            return "", 2
        return text[at + 1:close], close - at + 1
    if first in _GO_SPECIAL:
        return first, 1
    end = at
    while end < len(text) and (text[end] == "_" or (text[end].isascii() and text[end].isalnum())):
        end += 1
    return text[at:end], end - at


def _go_quote(text: str) -> str:
    """Roughly Go's ``%q`` (double quotes, backslash escapes), for messages."""
    return json.dumps(text, ensure_ascii=False)
