"""API tokens: who may do what through ``/api/v1``.

A token has **scopes** and may be limited to **repositories**:

=========  ==================================================================================
scope      allows
=========  ==================================================================================
read       every GET of runs, jobs, logs and artifacts
trigger    ``POST /runs`` (registered repositories only: ``ci_queue.web.run_source``)
operate    cancel, retry, play, approve
admin      everything, also any clone URL the clone policy lets through and the audit log
=========  ==================================================================================

Scopes do not imply each other (a bot that triggers and follows its runs needs ``read,trigger``);
``admin`` implies all. ``repos`` are globs (``octo/*``; ``*`` also crosses ``/``, as GitLab's
subgroups need; case-insensitive, as the forges treat names) matched against a run's repository:
a run of another repository is, for that token, not there (404). An ``admin`` token cannot be
limited (it reads the audit log of every repository).

Tokens come from two places:

- ``CIQ_API_TOKENS``: comma-separated, full power (``admin``), named ``CIQ_API_TOKENS#1``,
  ``#2``... in the audit log. Kept for compatibility and for the standalone mode.
- ``CIQ_TOKENS_FILE``: YAML (or JSON when the name ends in ``.json``) holding only the SHA-256 of
  each token, with its name, scopes and repositories::

      tokens:
        - name: deploy-bot
          sha256: 5f0c...e1          # hex SHA-256 of the token; the token itself is never stored
          scopes: [read, trigger]
          repos: ['octo/*']          # optional; absent: every repository
          created: '2025-01-31T10:00:00.000Z'   # optional, informational

  ``ci-queue token create`` writes entries (atomically, refusing a name that exists) and prints
  the token once. Tokens are 256 random bits, so an unsalted SHA-256 cannot be reversed by search.
  The web app re-reads the file whenever it changed (a ``stat`` per request): a new or revoked
  token counts at once, without a restart; a file that became invalid is logged and the last
  valid one stays in force.

Checking a token hashes it once and compares the digest with every known digest in constant
time, without stopping at a match: the answer's timing says neither whether nor which token
matched (equal-length digests, so not even the length of a stored token shows).
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from loguru import logger

from ci_queue.clock import now_iso

SCOPES = ("read", "trigger", "operate", "admin")
ENV_TOKEN_NAME = "CIQ_API_TOKENS#{}"
TOKEN_PREFIX = "ciq_"  # makes a leaked token easy to recognise for secret scanners
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = frozenset({"name", "sha256", "scopes", "repos", "created"})
MAX_FILE_BYTES = 4 * 1024 * 1024


class TokenFileError(ValueError):
    """The tokens file is invalid (``str()`` names the file and the entry) or cannot be written."""


@dataclass(frozen=True)
class Identity:
    """Who called: ``g.token`` of every ``/api/v1`` request that passed ``require_token``."""

    name: str
    scopes: frozenset[str]
    repos: tuple[str, ...] = ()  # globs; empty: every repository
    digest: str = field(default="", repr=False, compare=False)  # hex SHA-256 of the token

    def allows(self, scope: str) -> bool:
        """Whether the token has ``scope`` (``admin`` has every scope)."""
        return "admin" in self.scopes or scope in self.scopes

    @property
    def limited(self) -> bool:
        return bool(self.repos)

    def sees(self, repo: str) -> bool:
        """Whether runs of ``repo`` exist for this token."""
        return not self.repos or any(fnmatch.fnmatchcase(repo.casefold(), glob.casefold()) for glob in self.repos)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scopes": sorted(self.scopes), "repos": list(self.repos)}


@dataclass(frozen=True)
class TokenEntry:
    """One entry of the tokens file."""

    name: str
    sha256: str
    scopes: tuple[str, ...]
    repos: tuple[str, ...] = ()
    created: str = ""

    def identity(self) -> Identity:
        return Identity(self.name, frozenset(self.scopes), self.repos, self.sha256)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "sha256": self.sha256, "scopes": list(self.scopes)}
        if self.repos:
            data["repos"] = list(self.repos)
        if self.created:
            data["created"] = self.created
        return data


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as the tokens file stores it."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(value: str | Iterable[object]) -> tuple[str, ...]:
    """``read,trigger`` (or a list) -> ``("read", "trigger")``; ValueError names an unknown scope."""
    items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else list(value)
    unknown = [repr(s) for s in items if s not in SCOPES]
    if unknown or not items:
        raise ValueError(f"scopes must be one or more of {', '.join(SCOPES)}"
                         + (f", not {', '.join(unknown)}" if unknown else ""))
    return tuple(dict.fromkeys(str(s) for s in items))


def check_entry(name: object, scopes: tuple[str, ...], repos: tuple[str, ...]) -> None:
    """ValueError when a token could not be configured this way."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"the name {name!r} must be 1 to 64 letters, digits, '.', '_', '@' or '-', "
                         "starting with a letter or digit")
    if "admin" in scopes and repos:
        raise ValueError("an admin token cannot be limited to repositories (admin reads the audit log of all)")
    if any(not isinstance(glob, str) or not glob.strip() or glob != glob.strip() for glob in repos):
        raise ValueError("repos must be non-empty globs without surrounding spaces")


# -- the file ----------------------------------------------------------------------------------------
def load_token_file(path: str | os.PathLike[str]) -> list[TokenEntry]:
    """The entries of the tokens file (none when it does not exist); TokenFileError if invalid."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise TokenFileError(f"{path}: cannot read it: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise TokenFileError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    return parse_token_file(data.decode("utf-8", "replace"), str(path))


def parse_token_file(text: str, file: str = "tokens file") -> list[TokenEntry]:
    """Validate a tokens file given as text (YAML; JSON is YAML too)."""
    try:
        data = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise TokenFileError(f"{file}: not valid YAML or JSON: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"tokens"} or not isinstance(data.get("tokens") or [], list):
        raise TokenFileError(f"{file}: the file must be a mapping with one key, `tokens`, a list of tokens")
    entries: list[TokenEntry] = []
    names: set[str] = set()
    digests: set[str] = set()
    for number, item in enumerate(data.get("tokens") or [], 1):
        where = f"{file}: token #{number}"
        if not isinstance(item, dict):
            raise TokenFileError(f"{where}: must be a mapping with name, sha256, scopes (and repos)")
        where += f" ({item.get('name')!r})"
        unknown = set(map(str, item)) - _ENTRY_KEYS
        if unknown:
            raise TokenFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; the keys are "
                                 f"{', '.join(sorted(_ENTRY_KEYS))}")
        digest = item.get("sha256")
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest.lower()):
            raise TokenFileError(f"{where}: sha256 must be the 64 hex digits of the token's SHA-256")
        repos = item.get("repos") or []
        if not isinstance(repos, list):
            raise TokenFileError(f"{where}: repos must be a list of globs")
        try:
            scopes = parse_scopes(item.get("scopes") or [])
            check_entry(item.get("name"), scopes, tuple(repos))
        except ValueError as exc:
            raise TokenFileError(f"{where}: {exc}") from None
        name, digest = str(item["name"]), digest.lower()
        if name in names or digest in digests:
            raise TokenFileError(f"{where}: its {'name' if name in names else 'token'} is listed twice")
        names.add(name)
        digests.add(digest)
        entries.append(TokenEntry(name, digest, scopes, tuple(repos), str(item.get("created") or "")))
    return entries


def render_token_file(entries: list[TokenEntry], path: str | os.PathLike[str]) -> str:
    """The file's text: JSON when its name ends in ``.json``, else YAML with a header comment."""
    data = {"tokens": [entry.to_dict() for entry in entries]}
    if str(path).endswith(".json"):
        return json.dumps(data, indent=2) + "\n"
    return ("# ci-queue API tokens (CIQ_TOKENS_FILE): the SHA-256 of each token, never the token.\n"
            "# Written by `ci-queue token create`; `ci-queue token revoke NAME` (or deleting its entry) revokes one.\n"
            + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Held while the file is read, changed and replaced: two `token create` never lose one."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a reader sees the old file or the new one), mode 0600."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def create_token(path: str | os.PathLike[str], name: str, scopes: tuple[str, ...],
                 repos: tuple[str, ...] = ()) -> str:
    """Add a new random token to the file and return it (the only time it exists in clear).
    ValueError for an invalid entry or a name that exists; TokenFileError for the file."""
    check_entry(name, scopes, repos)
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target):
            entries = load_token_file(target)
            if any(entry.name == name for entry in entries):
                raise ValueError(f"a token named {name!r} exists in {target}; choose another name "
                                 "(or delete its entry to revoke it first)")
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            entries.append(TokenEntry(name, hash_token(token), scopes, repos, now_iso()))
            _replace(target, render_token_file(entries, target))
    except OSError as exc:
        raise TokenFileError(f"{target}: cannot write it: {exc.strerror or exc}") from None
    return token


def revoke_token(path: str | os.PathLike[str], name: str) -> bool:
    """Remove the token ``name`` from the file; False when there is none of that name."""
    target = Path(path)
    try:
        with _locked(target):
            entries = load_token_file(target)
            kept = [entry for entry in entries if entry.name != name]
            if len(kept) == len(entries):
                return False
            _replace(target, render_token_file(kept, target))
    except OSError as exc:
        raise TokenFileError(f"{target}: cannot write it: {exc.strerror or exc}") from None
    return True


# -- the web app's table ------------------------------------------------------------------------------
class TokenTable:
    """The tokens the web app accepts: ``CIQ_API_TOKENS`` (full power) and the tokens file,
    re-read when it changed. Thread-safe."""

    def __init__(self, api_tokens: Iterable[str], file: str = "") -> None:
        self.file = file
        self._env = [(bytes.fromhex(hash_token(token)), Identity(ENV_TOKEN_NAME.format(i), frozenset({"admin"}),
                                                                  digest=hash_token(token)))
                     for i, token in enumerate(api_tokens, 1)]
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._file_entries: list[tuple[bytes, Identity]] = []
        if file:
            self._stamp = self._stat()
            self._file_entries = self._load()  # invalid at start: the app does not start

    def identify(self, given: str) -> Identity | None:
        """The identity of the token ``given``, or None; constant time in what matched."""
        found = self.identify_digest(hashlib.sha256(given.encode()).hexdigest())
        return found if given else None

    def identify_digest(self, hex_digest: str) -> Identity | None:
        """The identity whose token has this hex SHA-256 (what a web session keeps instead of the
        token), or None; constant time in what matched. A revoked token's digest matches nothing."""
        try:
            digest = bytes.fromhex(hex_digest)
        except ValueError:
            return None
        found: Identity | None = None
        for known, identity in [*self._env, *self._current()]:
            if hmac.compare_digest(digest, known) and found is None:
                found = identity
        return found

    def _current(self) -> list[tuple[bytes, Identity]]:
        if not self.file:
            return []
        stamp = self._stat()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._file_entries = self._load()
                        logger.info("tokens file {} (re)read: {} tokens", self.file, len(self._file_entries))
                    except TokenFileError as exc:
                        logger.error("the tokens file is invalid; the tokens it held before stay in force: {}", exc)
                    self._stamp = stamp
        return self._file_entries

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            info = os.stat(self.file)
        except OSError:
            return None
        return info.st_ino, info.st_mtime_ns, info.st_size

    def _load(self) -> list[tuple[bytes, Identity]]:
        return [(bytes.fromhex(entry.sha256), entry.identity()) for entry in load_token_file(self.file)]
