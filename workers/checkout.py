"""Checkout: put exactly one commit of a repository into a job's workspace, fast and safely.

``checkout(clone_url, sha, dest)`` leaves ``dest`` with a detached ``HEAD`` at ``sha`` and a
clean tree. How:

1. **A per-host cache of bare mirrors** under ``CIQ_GIT_CACHE_DIR`` (empty: ``<temp
   dir>/ci-queue/git``), one per clone URL, named ``<last path part>-<sha256 of the URL without
   credentials>.git``. A mirror is made with ``git init --bare`` and a fetch of every branch and
   tag (``+refs/heads/*``, ``+refs/tags/*``), in a temporary directory renamed into place only
   once complete. It is fetched again only when the wanted sha is not in it: first all branches
   and tags (``--prune``), then, if the sha is still missing (a merge-request head, a commit of
   a deleted branch), the sha itself (protocol v2 lets a client want any object). So the second
   job of a commit uses no network at all (``CheckoutInfo.fetched`` is ``False``). The first
   fetch is a full one (no ``--depth``): a shallow mirror would have to be deepened for older
   commits and makes every later fetch costlier; correctness first.
2. **Locking**: one ``fcntl.flock`` per mirror (``<name>.lock`` beside it), shared while a
   workspace is cloned from the mirror, exclusive while the mirror is created, fetched into or
   deleted; the checkout of the tree happens after the lock is released. Threads and processes
   of one host may check out the same repository at once; the first one fetches, the others
   wait for it and use the result. ``gc.autoDetach=false`` keeps an automatic ``git gc`` inside
   the fetch, under the lock.
3. **A corrupt mirror** (not a repository any more, unreadable objects, a fetch that fails while
   the remote answers ``git ls-remote``, a clone from it or a checkout that fails with git
   naming damaged objects) is deleted and re-created once; a second failure is a
   ``CheckoutError``. Other checkout failures (a smudge filter, the disk) are plain errors and
   leave the mirror alone.
4. **The workspace is a local clone of the mirror** (``git clone --no-checkout <mirror path>``,
   no network): git hard-links the mirror's pack files (copies them when the cache is on another
   file system), then ``git checkout --detach <sha>``. Measured on a 400-commit, 3000-file
   repository: ~35 ms, against ~1 s for ``git init`` + ``git fetch <mirror> <sha>`` (that has to
   build a pack of the whole history) and ~40 ms for ``--shared``. ``--shared`` (alternates) was
   refused: the workspace would depend on the mirror for as long as it lives (a ``gc`` of the
   mirror could drop objects it still uses) and the alternates path does not exist inside a
   job's container, where the workspace is bind-mounted. Hard links make the workspace
   self-contained (deleting or repacking the mirror never touches it; git never writes into an
   existing pack file). The price: a job that deliberately opens a read-only pack file of its
   ``.git`` for writing (root in a container can) changes the mirror's copy too; if jobs must be
   isolated from the cache, clone with ``--no-hardlinks`` (a plain copy, O(repository size)).
   The workspace then has every branch as ``origin/<branch>``, every tag, no local branch, and
   its ``origin`` is the clone URL without credentials. Hooks never run (``core.hooksPath`` is
   ``/dev/null``). The sha of an annotated tag checks out the tag's commit.

5. **GitLab's Git variables** (``options``, ``workers.git_options``). ``GIT_STRATEGY=fetch`` (the
   default for jobs; the workspace hands over a directory an earlier job left, see
   ``workers.workspace``) reuses the repository found in ``dest``: its ``.git`` is stripped to
   objects and remote refs (config written anew, no hooks, index, local branches, ``info/``,
   alternates or submodule repositories; ``GIT_NO_REPLACE_OBJECTS``), then ``git checkout
   --force --detach`` of the sha rewrites every tracked file (no index: a job's forged
   ``assume-unchanged`` cannot hide a change) and ``git clean`` with ``GIT_CLEAN_FLAGS`` removes
   the rest (with the default ``-ffdx`` the work tree is emptied before the checkout instead, which
   leaves the same tree). One git command when the commit is there; otherwise it is fetched from the mirror
   with every branch and tag. Anything unusable (no repository, shallow when the whole history is
   wanted, a failed fetch) falls back to a clone. ``none`` runs no git; ``GIT_DEPTH`` makes a new
   repository and fetches that many commits from the mirror; ``GIT_SUBMODULE_STRATEGY`` runs
   ``git submodule update --init`` level by level after checking every submodule URL with the
   clone policy (credentials only to the parent's host).
6. **The planner reads the pipeline file from the mirror** (``read_files``: one ``git cat-file
   --batch --follow-symlinks``, no workspace) when nothing else of the tree is needed
   (``workers.planning.pipeline_alone``).

Credentials (HTTP(S) only; ssh uses the worker's keys / agent) come from the worker's
environment (the ``env`` argument, default ``os.environ``) and are never written to any file:

- ``CIQ_GIT_TOKEN_<HOST>`` (host upper-cased, every character other than A-Z and 0-9 turned into
  ``_``, port left out: ``CIQ_GIT_TOKEN_GITLAB_EXAMPLE_COM``), else ``CIQ_GIT_TOKEN``; the user
  name from ``CIQ_GIT_USERNAME_<HOST>``, else ``CIQ_GIT_USERNAME``, else the URL's user name,
  else ``oauth2`` (GitLab; GitHub and Gitea take any name with a token). Prefer the per-host
  variable: the global token is given to whichever server of a clone URL asks for one.
- Without a token in the environment, a ``user:password@`` of the clone URL is used the same way.
- They reach git as a credential helper given on the command line (``-c credential.helper=!f()
  {...}``, after ``-c credential.helper=`` which drops the host's configured helpers, so that no
  ``store`` helper can save them), whose text names only two environment variables of that git
  process (``CIQ_GIT_CREDENTIAL_USERNAME`` / ``CIQ_GIT_CREDENTIAL_PASSWORD``). Neither ``ps`` nor any
  config file sees a secret; no helper file is needed (``/tmp`` may be ``noexec``).
- The user information of the URL is stripped before git sees the URL (only an ssh user name,
  which is no secret, is kept), and every message is redacted: URL user information becomes
  ``***@``, secret values become ``[MASKED]``.

Webhook data is data: the sha must be 40 (or 64, SHA-256) hex digits; the URL must use file,
git, http, https or ssh (also enforced by ``GIT_ALLOW_PROTOCOL``), must not start with ``-`` nor
use ``<transport>::``; git runs without a shell, with argument lists and ``--`` before values.
With a ``policy`` (``ci_queue.clone_policy``; the worker passes one for every run whose clone URL
is not the registry's) the URL is checked right before anything is fetched: local repositories,
transports and every address of the host (resolved now, again); then git is made to connect to
exactly the checked addresses (``CloneTarget.git_config``: ``http.curloptResolve``, no redirects;
``url.<address>.insteadOf`` for git://), so a name that re-binds after the check is not followed.
A refusal is a ``CheckoutError`` that is not retried (``checkout_failed``); a host that does not
resolve now is retried like any DNS failure.
Every failure (unreachable remote, unknown sha, git missing, timeout, corrupt cache, a cache
directory that cannot be written) is a ``CheckoutError``, an ``InfrastructureError`` with a
one-line message ending in the last lines of git's stderr. ``retryable`` says whether trying
again may help (``remote_failure_is_permanent`` reads git's stderr): ``False`` for a request that
can never succeed — a malformed sha, URL or ref, a ``dest`` that is not empty, a path or URL that
is not a repository, a repository the server does not have or will not show (HTTP 401, 403,
404, 410, failed authentication, ssh keys refused), a commit or ref the remote does not have
after fetching (a force-push removed it); ``True`` for what may pass later — connection refused
or reset, timeouts, a host name that does not resolve, HTTP 5xx, 408 and 429, anything not
recognised.
``timeout`` bounds the whole checkout, lock waits included; at the deadline git's whole process
group (remote helpers, ssh) is killed. After a failure ``dest`` is left empty.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from ci_queue.clone_policy import ClonePolicy, CloneRefused, HostUnresolved
from ci_queue.settings import Settings, get_settings
from workers.git_options import DEFAULT_CLEAN_FLAGS, GitOptions
from workers.runners.base import InfrastructureError
from workers.workspace import remove_tree

ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
MASK = "[MASKED]"
DEFAULT_USERNAME = "oauth2"
_SHA_RE = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_TRANSPORT_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
# Inherited GIT_* variables that configure how to reach a server; every other GIT_* (GIT_DIR,
# GIT_WORK_TREE, GIT_CONFIG_PARAMETERS, GIT_TRACE*, GIT_ASKPASS...) is dropped.
_KEEP_GIT_ENV = frozenset(
    {
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_SSH_VARIANT",
        "GIT_SSL_CAINFO",
        "GIT_SSL_CAPATH",
        "GIT_SSL_NO_VERIFY",
        "GIT_PROXY_COMMAND",
        "GIT_PROXY_SSL_CAINFO",
        "GIT_HTTP_USER_AGENT",
        "GIT_EXEC_PATH",
        "GIT_CONFIG_GLOBAL",
        "GIT_CONFIG_SYSTEM",
        "GIT_CONFIG_NOSYSTEM",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    }
)
# The credential helper: a constant text, no secret in it; git runs it with sh for "get".
_CREDENTIAL_HELPER = (
    '!f() { cat >/dev/null; test "$1" = get || return 0; '
    'printf \'username=%s\\npassword=%s\\n\' "$CIQ_GIT_CREDENTIAL_USERNAME" "$CIQ_GIT_CREDENTIAL_PASSWORD"; }; f'
)
# What git says when a repository's own files are damaged.
_CORRUPT_MARKERS = (
    "corrupt",
    "unable to read",
    "inflate",
    "unable to unpack",
    "bad object",
    "does not match index",
    "invalid object",
    "missing blob",
    "missing tree",
    "not a git repository",
)
# What git says when the server has no such object (protocol v2 and v0 servers).
_NOT_FOUND_MARKERS = (
    "not our ref",
    "couldn't find remote ref",
    "no such remote ref",
    "unadvertised object",
    "not a valid object",
    "bad object",
)


# What git (and curl, and ssh) say when asking the same remote again cannot help. Lower case.
_PERMANENT_MARKERS = (
    "does not appear to be a git repository",  # a local path or an ssh path that is no repository
    "repository not found",  # GitHub's "remote: Repository not found."
    "authentication failed",
    "could not read username",  # the server wants credentials and none were given
    "could not read password",
    "permission denied (publickey",
    "host key verification failed",
)
_NOT_FOUND_REPOSITORY_RE = re.compile(r"repository '[^']*' not found")  # git on HTTP 404
_HTTP_STATUS_RE = re.compile(r"returned error: (\d{3})")
_TRANSIENT_HTTP = frozenset({408, 429})  # request timeout, too many requests: later may work


def remote_failure_is_permanent(stderr: str) -> bool:
    """Whether git's ``stderr`` says the remote can never serve this request (not a repository,
    not found, access refused), as opposed to a failure of the moment (network, a 5xx, a timeout);
    what is not recognised counts as of the moment."""
    text = stderr.lower()
    if any(marker in text for marker in _PERMANENT_MARKERS) or _NOT_FOUND_REPOSITORY_RE.search(text):
        return True
    status = _HTTP_STATUS_RE.search(text)
    # a 3xx is an error only when git does not follow it (the clone policy turns redirects off): the same again
    return bool(status) and 300 <= int(status.group(1)) < 500 and int(status.group(1)) not in _TRANSIENT_HTTP


def _redirect_hint(stderr: str) -> str:
    """What to do about a redirect git was told not to follow."""
    status = _HTTP_STATUS_RE.search(stderr)
    if status and 300 <= int(status.group(1)) < 400:
        return " (redirects are not followed for clone URLs the clone policy checks: use the URL it redirects to)"
    return ""


class CheckoutError(InfrastructureError):
    """The checkout failed before user code ran; the message is one redacted line."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable

    @property
    def failure_class(self) -> str:  # type: ignore[override]
        """``runner_system_failure`` (retried as another attempt) when it may work next time;
        ``checkout_failed`` (never retried) when it cannot: no such repository or commit."""
        return "runner_system_failure" if self.retryable else "checkout_failed"


class _MirrorCorrupt(Exception):
    """The cached mirror cannot be used; delete and re-create it (once)."""


@dataclass(frozen=True)
class CheckoutInfo:
    """What ``checkout`` did."""

    sha: str
    ref: str | None
    mirror: Path  # the bare mirror in the host's cache
    fetched: bool  # whether the network was used (False: the commit was already cached)
    duration: float  # seconds, the whole checkout
    url: str = ""  # the clone URL without credentials (the workspace's origin)


@dataclass(frozen=True)
class Remote:
    """A parsed clone URL. ``clean`` has no password (and for HTTP(S) no user name either)."""

    clean: str
    scheme: str  # file | git | http | https | ssh
    host: str  # lower-case host name, "" for local paths
    username: str | None  # from the URL
    password: str | None  # from the URL


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


# -- validation and parsing ----------------------------------------------------------------------


def validate_sha(sha: object) -> str:
    """The sha in lower case; ``CheckoutError`` (not retryable) unless 40 or 64 hex digits."""
    if isinstance(sha, str) and _SHA_RE.fullmatch(sha.lower()):
        return sha.lower()
    shown = repr(sha)[:80]
    raise CheckoutError(f"invalid commit sha {shown}: expected 40 (or 64) hexadecimal digits", retryable=False)


def parse_clone_url(url: object) -> Remote:
    """Check a clone URL (webhook data) and split off its credentials; ``CheckoutError`` if refused."""
    if not isinstance(url, str) or not url:
        raise CheckoutError("invalid clone URL: empty", retryable=False)
    shown = redact(url)
    if url.startswith("-"):
        raise CheckoutError(f"refused clone URL {shown!r}: it starts with '-'", retryable=False)
    if _CONTROL_RE.search(url) or len(url) > 4096:
        raise CheckoutError(f"refused clone URL {shown[:200]!r}: control characters or too long", retryable=False)
    match = _SCHEME_RE.match(url)
    if match:
        return _parse_scheme_url(url, match.group(1).lower(), shown)
    if _TRANSPORT_RE.match(url):
        raise CheckoutError(f"refused clone URL {shown!r}: '<transport>::' URLs are not allowed", retryable=False)
    if url.startswith("/"):
        return Remote(clean=url, scheme="file", host="", username=None, password=None)
    colon, slash = url.find(":"), url.find("/")
    if colon > 0 and (slash < 0 or colon < slash):  # scp-like: [user@]host:path, always ssh
        user_host = url[:colon]
        user, _, host = user_host.rpartition("@")
        if not host or host.startswith("-") or user.startswith("-"):
            raise CheckoutError(f"refused clone URL {shown!r}: bad ssh host", retryable=False)
        return Remote(clean=url, scheme="ssh", host=host.lower(), username=user or None, password=None)
    raise CheckoutError(f"refused clone URL {shown!r}: a relative path", retryable=False)


def _parse_scheme_url(url: str, scheme: str, shown: str) -> Remote:
    if scheme not in ALLOWED_PROTOCOLS.split(":"):
        raise CheckoutError(
            f"refused clone URL {shown!r}: transport {scheme!r} is not one of {ALLOWED_PROTOCOLS}", retryable=False
        )
    prefix_len = len(scheme) + 3
    rest = url[prefix_len:]
    end = len(rest)
    for stop in "/?#":
        index = rest.find(stop)
        if index >= 0:
            end = min(end, index)
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    username = password = None
    if at:
        raw_user, colon, raw_password = userinfo.partition(":")
        username = urllib.parse.unquote(raw_user) or None
        password = urllib.parse.unquote(raw_password) if colon else None
    host = hostport
    if host.startswith("["):  # [ipv6]:port
        host = host[: host.find("]") + 1] if "]" in host else host
    elif ":" in host:
        host = host.rsplit(":", 1)[0]
    if host.startswith("-") or (username or "").startswith("-"):
        raise CheckoutError(f"refused clone URL {shown!r}: bad host", retryable=False)
    if scheme != "file" and not host:
        raise CheckoutError(f"refused clone URL {shown!r}: no host", retryable=False)
    keep_user = scheme == "ssh" and username  # an ssh login name is no secret, and ssh needs it
    clean_authority = f"{urllib.parse.quote(username or '', safe='')}@{hostport}" if keep_user else hostport
    clean = f"{url[:prefix_len]}{clean_authority}{tail}"
    return Remote(clean=clean, scheme=scheme, host=host.lower(), username=username, password=password)


def checked_pins(clone_url: str, remote: Remote, policy: ClonePolicy | None) -> list[str]:
    """Apply the clone policy right before a fetch: the ``git -c`` arguments that pin the
    checked addresses, or ``CheckoutError`` (not retryable for a refusal)."""
    if policy is None:
        return []
    try:
        target = policy.check(clone_url, must_resolve=True)
    except CloneRefused as exc:
        raise CheckoutError(f"refused clone URL {redact(clone_url)!r}: {redact(str(exc))}", retryable=False) from None
    except HostUnresolved as exc:
        raise CheckoutError(f"cannot check the clone URL {remote.clean}: {exc}") from None
    if (target.scheme, target.host) != (remote.scheme, remote.host.strip("[]")):  # never: one grammar, two parsers
        raise CheckoutError(f"refused clone URL {redact(clone_url)!r}: its host reads differently to the policy "
                            f"({target.host!r}) and to git ({remote.host!r})", retryable=False)
    return target.git_config()


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without URL user information (``scheme://***@``) and without any of ``secrets``."""
    text = _USERINFO_RE.sub(r"\1***@", text)
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def host_variable_suffix(host: str) -> str:
    """``gitlab.example.com`` -> ``GITLAB_EXAMPLE_COM`` (for ``CIQ_GIT_TOKEN_<HOST>``)."""
    return re.sub(r"[^A-Z0-9]", "_", host.upper())


def credentials_for(remote: Remote, env: Mapping[str, str]) -> Credentials | None:
    """The HTTP(S) credentials for ``remote``, from ``env`` first, then from the URL; None for others."""
    if remote.scheme not in ("http", "https"):
        return None
    suffix = host_variable_suffix(remote.host)
    token = env.get(f"CIQ_GIT_TOKEN_{suffix}") or env.get("CIQ_GIT_TOKEN")
    if token:
        username = (
            env.get(f"CIQ_GIT_USERNAME_{suffix}") or env.get("CIQ_GIT_USERNAME") or remote.username or DEFAULT_USERNAME
        )
        return Credentials(username, token)
    if remote.password:
        return Credentials(remote.username or DEFAULT_USERNAME, remote.password)
    return None


def mirror_name(clean_url: str) -> str:
    """The cache directory name of a repository (without ``.git``): readable, and unique by hash."""
    digest = hashlib.sha256(clean_url.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    last = re.split(r"[/:]", clean_url.rstrip("/"))[-1]
    last = last.removesuffix(".git")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", last).strip("._-")[:40] or "repo"
    return f"{slug}-{digest}"


def default_cache_dir(settings: Settings | None = None) -> Path:
    configured = (settings or get_settings()).git_cache_dir
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "ci-queue" / "git"


# -- running git ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Result:
    returncode: int
    stdout: str
    stderr: str
    raw: bytes = b""  # stdout as git wrote it


class _Git:
    """Runs git with argument lists, a clean environment, a shared deadline, and redacted errors."""

    def __init__(
        self, env: Mapping[str, str], remote: Remote, credentials: Credentials | None, started: float, timeout: float,
        pins: Sequence[str] = (),
    ) -> None:
        self.remote = remote
        self.pins = list(pins)  # `-c` arguments of the clone policy: only the checked addresses
        self.deadline = started + timeout
        self.timeout = timeout
        self.secrets = [s for s in (remote.password, credentials and credentials.password) if s]
        self.env = _git_environment(env, credentials)
        self.auth_args = (
            ["-c", "credential.helper=", "-c", f"credential.helper={_CREDENTIAL_HELPER}"] if credentials else []
        )
        found = shutil.which("git", path=self.env.get("PATH", os.defpath))
        if not found:
            raise CheckoutError("git is not installed on this host (not found on PATH)")
        self.executable = found

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, args: Sequence[str], *, network: bool = False, cwd: Path | None = None,
            input: bytes | None = None) -> _Result:
        """Run ``git <args>`` (``input`` on its stdin); a timeout or a missing git raises
        ``CheckoutError``, a failure does not."""
        remaining = self.remaining()
        if remaining <= 0:
            raise self.timeout_error(args)
        argv = [self.executable, "-c", "protocol.version=2", "-c", "core.hooksPath=/dev/null"]
        if network:
            argv += self.auth_args + self.pins
        argv += list(args)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self.env,
                cwd=cwd,
                start_new_session=True,  # a timeout kills git and its helpers (remote-https, ssh)
            )
        except FileNotFoundError:
            raise CheckoutError("git is not installed on this host (not found on PATH)") from None
        except OSError as exc:
            raise CheckoutError(f"cannot run git: {exc.strerror}") from None
        try:
            out, err = proc.communicate(input, timeout=remaining)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)  # a helper that left the group may hold the pipes
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise self.timeout_error(args) from None
        return _Result(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), out)

    def timeout_error(self, args: Sequence[str]) -> CheckoutError:
        what = next((a for a in args if not a.startswith("-") and "=" not in a), "git")
        return CheckoutError(f"checkout of {self.remote.clean} timed out after {self.timeout:g}s (during git {what})")

    def summary(self, result: _Result, lines: int = 3) -> str:
        """The last meaningful lines of git's stderr, on one line, redacted."""
        kept = [
            line.strip()
            for line in result.stderr.splitlines()
            if line.strip() and not line.lstrip().startswith(("hint:", "Please make sure", "and the repository"))
        ]
        text = " | ".join(kept[-lines:]) or f"git exited with {result.returncode}"
        text = redact(text, self.secrets)
        return text if len(text) <= 500 else text[:497] + "..."


def _git_environment(base: Mapping[str, str], credentials: Credentials | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in base.items()
        if not (k.startswith("GIT_") and k not in _KEEP_GIT_ENV)
        and not k.startswith("CIQ_GIT_")
        and k not in ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE")
    }
    env.setdefault("PATH", os.defpath)
    env.update(
        GIT_TERMINAL_PROMPT="0",  # never wait for a user name on a terminal
        GIT_ASKPASS="",  # nor ask a graphical helper (empty: no askpass at all)
        GIT_ALLOW_PROTOCOL=ALLOWED_PROTOCOLS,  # no ext::, fd:: or other transports, submodules too
        GIT_NO_REPLACE_OBJECTS="1",  # refs/replace/ of a reused workspace never changes what a sha is
        LC_ALL="C",  # stable messages to recognise
        LANGUAGE="C",
    )
    if "GIT_SSH_COMMAND" not in env and "GIT_SSH" not in env:
        env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"  # fail instead of prompting for a password
    if credentials:
        env["CIQ_GIT_CREDENTIAL_USERNAME"] = credentials.username
        env["CIQ_GIT_CREDENTIAL_PASSWORD"] = credentials.password
    return env


# -- the mirror cache ----------------------------------------------------------------------------


class _Mirror:
    """One bare mirror of the cache, its lock, and the operations on it."""

    def __init__(self, cache_dir: Path, git: _Git, sha: str) -> None:
        self.git = git
        self.remote = git.remote
        self.cache_dir = cache_dir
        name = mirror_name(self.remote.clean)
        self.path = cache_dir / f"{name}.git"
        self.lock_path = cache_dir / f"{name}.lock"
        self.object_format = "sha256" if len(sha) == 64 else "sha1"
        self.fetched = False

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[None]:
        """Hold the mirror's flock (shared or exclusive), waiting at most until the deadline."""
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # other repositories' code: root's only
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            delay = 0.01
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if self.git.remaining() <= 0:
                    raise CheckoutError(f"checkout of {self.remote.clean} timed out waiting for the git cache lock")
                time.sleep(min(delay, max(self.git.remaining(), 0.001)))  # a lock wait, not synchronisation
                delay = min(delay * 2, 0.25)
            yield
        finally:
            os.close(fd)  # releases the lock

    def git_args(self, *args: str) -> list[str]:
        return [f"--git-dir={self.path}", *args]

    def has(self, sha: str) -> bool:
        """Whether the commit is in the mirror; ``_MirrorCorrupt`` when the mirror is unreadable."""
        if not self.path.exists():
            return False
        result = self.git.run(
            self.git_args("rev-parse", "--verify", "--quiet", "--end-of-options", f"{sha}^{{commit}}")
        )
        if result.returncode == 0:  # a commit, or an annotated tag of one (checked out as its commit)
            return True
        if result.returncode == 1 and not result.stderr.strip():
            return False
        raise _MirrorCorrupt(self.git.summary(result))

    def ensure(self, sha: str) -> None:
        """Make sure the mirror exists and holds ``sha``; fetch only if it does not."""
        with self.locked(exclusive=True):
            if not self.path.exists():
                self.create()
            elif self.has(sha):  # another job fetched it meanwhile
                return
            else:
                self.fetch_branches()
            if self.has(sha):
                return
            self.fetch_sha(sha)
            if not self.has(sha):  # fetched everything and asked for it by name: it is not there
                raise CheckoutError(f"commit {sha} not found in {self.remote.clean}", retryable=False)

    def create(self) -> None:
        """A new mirror: init in a temporary directory, fetch, rename into place (never half made)."""
        for leftover in self.cache_dir.glob(f"{self.path.stem}.tmp-*"):  # from a killed job; we hold the lock
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{self.path.stem}.tmp-", dir=self.cache_dir))
        try:
            init = self.git.run(
                ["init", "--quiet", "--bare", "--template=", f"--object-format={self.object_format}", "--", str(tmp)]
            )
            if init.returncode != 0:
                raise CheckoutError(f"cannot create a git cache in {self.cache_dir}: {self.git.summary(init)}")
            settings = [
                ("remote.origin.url", self.remote.clean),
                ("remote.origin.fetch", "+refs/heads/*:refs/heads/*"),
                ("remote.origin.fetch", "+refs/tags/*:refs/tags/*"),
                ("gc.autoDetach", "false"),  # an automatic gc runs inside the fetch, under our lock
                ("core.logAllRefUpdates", "false"),
            ]
            for key, value in settings:
                result = self.git.run([f"--git-dir={tmp}", "config", "--add", "--", key, value])
                if result.returncode != 0:
                    raise CheckoutError(f"cannot configure the git cache {tmp}: {self.git.summary(result)}")
            self._fetch([f"--git-dir={tmp}", "fetch", "--quiet", "--prune", "--no-write-fetch-head", "origin"])
            os.rename(tmp, self.path)
            logger.info("created the git cache {} for {}", self.path, self.remote.clean)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def fetch_branches(self) -> None:
        """Bring every branch and tag up to date. A failure while the remote answers means corruption."""
        args = self.git_args("fetch", "--quiet", "--prune", "--no-write-fetch-head", "origin")
        result = self.git.run(args, network=True)
        self.fetched = True
        if result.returncode == 0:
            return
        if self.remote_answers():
            raise _MirrorCorrupt(self.git.summary(result))
        raise self.unreachable(result)

    def fetch_sha(self, sha: str) -> None:
        """Fetch one commit by its sha (not on any branch: a merge request's head, a deleted branch)."""
        result = self.git.run(self.git_args("fetch", "--quiet", "--no-write-fetch-head", "origin", sha), network=True)
        self.fetched = True
        if result.returncode == 0:
            return
        stderr = result.stderr.lower()
        if any(marker in stderr for marker in _NOT_FOUND_MARKERS):
            raise CheckoutError(f"commit {sha} not found in {self.remote.clean}: {self.git.summary(result, 1)}",
                                retryable=False)
        raise self.unreachable(result)

    def _fetch(self, args: list[str]) -> None:
        result = self.git.run(args, network=True)
        self.fetched = True
        if result.returncode != 0:
            raise self.unreachable(result)

    def remote_answers(self) -> bool:
        probe = self.git.run(
            ["ls-remote", "--quiet", "--", self.remote.clean, "HEAD"], network=True, cwd=self.cache_dir
        )
        return probe.returncode == 0

    def unreachable(self, result: _Result) -> CheckoutError:
        message = f"cannot fetch from {self.remote.clean}: {self.git.summary(result)}{_redirect_hint(result.stderr)}"
        if self.remote.scheme in ("http", "https") and (
            "Username" in result.stderr or "Authentication" in result.stderr
        ):
            variable = f"CIQ_GIT_TOKEN_{host_variable_suffix(self.remote.host)}"
            message += f" (credentials are read from {variable} or CIQ_GIT_TOKEN)"
        return CheckoutError(message, retryable=not remote_failure_is_permanent(result.stderr))

    def destroy(self) -> None:
        with self.locked(exclusive=True):
            if self.path.exists():
                logger.warning("deleting the corrupt git cache {} of {}", self.path, self.remote.clean)
                doomed = self.path.with_name(f"{self.path.stem}.tmp-corrupt-{os.getpid()}-{time.monotonic_ns()}")
                os.rename(self.path, doomed)  # gone from its name at once, even if removal is slow
                shutil.rmtree(doomed, ignore_errors=True)


# -- the checkout --------------------------------------------------------------------------------


def checkout(
    clone_url: str,
    sha: str,
    dest: Path,
    *,
    ref: str | None = None,
    cache_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
    policy: ClonePolicy | None = None,
    options: GitOptions | None = None,
) -> CheckoutInfo:
    """Put exactly commit ``sha`` of ``clone_url`` into ``dest`` (detached HEAD, clean tree).

    ``dest`` must not exist or be an empty directory, unless ``options`` (a job's Git variables,
    ``workers.git_options``; None: a plain clone) reuse it: ``fetch`` updates a repository found
    there in place (see ``_reuse``), ``none`` leaves ``dest`` as it is. ``ref`` is recorded only
    (the commit is found by its sha). ``env`` is the worker's environment, where credentials are
    read (default: ``os.environ``). ``policy``: the clone policy to apply right before fetching
    (None: the URL is trusted). Raises ``CheckoutError`` for every failure.
    """
    started = time.monotonic()
    sha = validate_sha(sha)
    remote = parse_clone_url(clone_url)
    pins = checked_pins(clone_url, remote, policy)
    if ref is not None and (not isinstance(ref, str) or _CONTROL_RE.search(ref) or ref.startswith("-")):
        raise CheckoutError(f"invalid ref {redact(str(ref))[:100]!r}", retryable=False)
    options = options or GitOptions(strategy="clone")
    dest = Path(dest).absolute()
    if options.strategy == "none":  # GitLab: no Git operation at all, the directory as it is
        dest.mkdir(parents=True, exist_ok=True)
        return CheckoutInfo(sha=sha, ref=ref, mirror=Path(), fetched=False, duration=time.monotonic() - started,
                            url=remote.clean)
    if dest.exists() and (not dest.is_dir() or dest.is_symlink()):
        raise CheckoutError(f"checkout destination {dest} exists and is not a directory", retryable=False)
    if options.strategy == "clone" and dest.exists() and any(dest.iterdir()):
        raise CheckoutError(f"checkout destination {dest} exists and is not an empty directory", retryable=False)
    git, mirror = _cached(remote, sha, pins, env, cache_dir, started, timeout)
    log = logger.bind(url=remote.clean, sha=sha)
    try:
        _checkout_into(git, mirror, dest, sha, options)
        if options.submodules != "none" and options.checkout:
            _update_submodules(git, dest, clone_url, policy, options)
    except OSError as exc:  # the cache or the workspace directory itself (permissions, disk full)
        _empty(dest)
        raise CheckoutError(f"checkout of {remote.clean} failed: {redact(str(exc), git.secrets)}") from None
    except BaseException:
        _empty(dest)  # a retry may use the same directory
        raise
    duration = time.monotonic() - started
    log.info("checked out {} at {} in {:.2f}s (fetched: {})", remote.clean, sha, duration, mirror.fetched)
    return CheckoutInfo(
        sha=sha, ref=ref, mirror=mirror.path, fetched=mirror.fetched, duration=duration, url=remote.clean
    )


def _cached(remote: Remote, sha: str, pins: list[str], env: Mapping[str, str] | None, cache_dir: Path | None,
            started: float, timeout: float) -> tuple[_Git, _Mirror]:
    """The git runner (credentials from ``env``, default ``os.environ``) and the mirror of ``remote``."""
    env = os.environ if env is None else env
    cache_dir = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).absolute()
    git = _Git(env, remote, credentials_for(remote, env), started, timeout, pins)
    return git, _Mirror(cache_dir, git, sha)


def read_files(clone_url: str, sha: str, paths: Sequence[str], *, cache_dir: Path | None = None,
               env: Mapping[str, str] | None = None, timeout: float = 600,
               policy: ClonePolicy | None = None) -> dict[str, bytes | None]:
    """Files of commit ``sha`` read straight from the host's mirror, without a workspace (the
    planner's pipeline file): ``path -> content`` for each of ``paths`` the commit has, a symlink
    inside the repository followed as a checkout would; ``None`` for one that only a checkout can
    answer (a symlink out of the repository, dangling, a loop). One ``git cat-file --batch`` when
    the mirror has the commit; otherwise the mirror is fetched as for ``checkout``. Raises
    ``CheckoutError``."""
    started = time.monotonic()
    sha = validate_sha(sha)
    remote = parse_clone_url(clone_url)
    git, mirror = _cached(remote, sha, checked_pins(clone_url, remote, policy), env, cache_dir, started, timeout)
    request = "".join(f"{sha}:{path}\n" for path in paths).encode("utf-8", "surrogateescape")
    for attempt in range(2):
        with mirror.locked(exclusive=False):
            if mirror.path.exists():
                batch = git.run(mirror.git_args("cat-file", "--batch", "--follow-symlinks"), input=request)
                if batch.returncode != 0:
                    raise CheckoutError(f"cannot read the git cache of {remote.clean}: {git.summary(batch)}")
                try:
                    found = _batch_answers(batch.raw, paths)
                except (ValueError, IndexError):
                    raise CheckoutError(f"git cat-file gave an unreadable answer in the git cache of "
                                        f"{remote.clean}") from None
                if found or mirror.has(sha):  # nothing found: an unknown commit, or none of the files
                    return found
        if attempt == 0:
            mirror.ensure(sha)
    raise CheckoutError(f"commit {sha} not found in {remote.clean}", retryable=False)


def _batch_answers(raw: bytes, paths: Sequence[str]) -> dict[str, bytes | None]:
    """``git cat-file --batch --follow-symlinks`` output, one answer per path in order."""
    found: dict[str, bytes | None] = {}
    at = 0
    for path in paths:
        end = raw.index(b"\n", at)
        header = raw[at:end].split(b" ")
        at = end + 1
        if header[-1] == b"missing":
            continue
        if len(header) == 3:  # <oid> <type> <size>, then the content
            size = int(header[2])
            found[path] = raw[at:at + size] if header[1] == b"blob" else None
            at += size + 1
        else:  # symlink | dangling | loop | notdir <size>, then that many bytes of a name
            found[path] = None
            at += int(header[1]) + 1
    return found


def _checkout_into(git: _Git, mirror: _Mirror, dest: Path, sha: str, options: GitOptions) -> None:
    """Mirror up to date, then the workspace from it (reused in place, or a clone), detached at
    sha; a corrupt mirror is re-created once."""
    if options.strategy == "fetch" and options.checkout and not options.depth and _checked_out_in_place(
            git, mirror, dest, sha, options):
        return  # the reused repository had the commit: neither the mirror nor its lock was needed
    url = mirror.remote.clean
    recreated = False
    while True:
        try:
            with mirror.locked(exclusive=False):
                cached = mirror.has(sha)
                if cached:  # the common case: no exclusive lock, no network
                    fresh = _workspace_from_mirror(git, mirror, dest, sha, options)
            if cached:
                if options.checkout:
                    _detach_at(git, mirror, dest, sha, options, fresh)  # the workspace's own objects: no lock
                return
            mirror.ensure(sha)  # exclusive: create or fetch; then clone under the shared lock again
        except _MirrorCorrupt as exc:
            _empty(dest)
            reason = redact(str(exc), git.secrets)
            if recreated:
                raise CheckoutError(f"the git cache of {url} is unusable even after re-creating it: {reason}") from None
            logger.bind(url=url, sha=sha).warning(
                "the git cache {} is unusable ({}); re-creating it", mirror.path, reason
            )
            mirror.destroy()
            recreated = True


def _workspace_from_mirror(git: _Git, mirror: _Mirror, dest: Path, sha: str, options: GitOptions) -> bool:
    """Give ``dest`` the commit's objects from the mirror (under its shared lock); True when
    ``dest`` is a fresh clone, False when a repository an earlier job left was reused."""
    if options.strategy == "fetch" and _reuse(git, mirror, dest, sha, options):
        return False
    _empty(dest)
    if options.depth:
        _shallow_repository(git, mirror, dest, sha, options.depth)
    else:
        _clone_from_mirror(git, mirror, dest)
    return True


# What is kept of a reused repository's `.git`: the objects and the remote-tracking refs. The rest
# (config, hooks, info/, the index, modules/, worktrees, alternates, local branches) is what a
# job could have turned against the worker's next git command there, and is made anew.
_KEPT_GIT_ENTRIES = frozenset({"objects", "refs", "packed-refs", "shallow"})
_KEPT_REF_DIRS = frozenset({"remotes", "tags"})


def _reuse(git: _Git, mirror: _Mirror, dest: Path, sha: str, options: GitOptions) -> bool:
    """Bring a repository an earlier job left in ``dest`` to ``sha`` (GIT_STRATEGY=fetch): its
    ``.git`` stripped to objects and refs, the config written anew, the commit fetched from the
    mirror when missing (with every branch and tag, as a clone has them). False when there is
    nothing reusable there (no repository, one shallow when the whole history is wanted, a
    fetch that fails): the caller clones instead."""
    dot_git = dest / ".git"
    if not dot_git.is_dir() or dot_git.is_symlink() or not _strip_git_dir(dot_git):
        return False
    if (dot_git / "shallow").exists() and not options.depth:
        return False
    _write_config(dot_git, mirror)
    work = [f"--git-dir={dot_git}", f"--work-tree={dest}", "-c", f"safe.directory={dest}"]
    has = git.run([*work, "cat-file", "-e", f"{sha}^{{commit}}"])
    if has.returncode == 0 and not options.depth:
        return True
    fetch = [*work, "fetch", "--quiet", "--prune", "--no-write-fetch-head", "--no-tags"]
    if options.depth:
        fetch += [f"--depth={options.depth}", "--", str(mirror.path), sha]
    else:
        fetch += ["--", str(mirror.path), sha, "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"]
    result = git.run(fetch)
    if result.returncode != 0:
        logger.bind(url=mirror.remote.clean).info("cannot reuse {} ({}); cloning afresh", dest, git.summary(result))
        return False
    return True


def _checked_out_in_place(git: _Git, mirror: _Mirror, dest: Path, sha: str, options: GitOptions) -> bool:
    """The common case of GIT_STRATEGY=fetch: the reused repository has the commit; check it out
    (every file written again: the index, which a job could have forged to hide a changed file,
    was dropped) and clean. With the default ``GIT_CLEAN_FLAGS`` (``-ffdx``: nothing but the
    commit's files stays) the work tree is emptied first instead, so one git command does it all.
    False when it cannot (the caller fetches)."""
    dot_git = dest / ".git"
    if not dot_git.is_dir() or dot_git.is_symlink() or (dot_git / "shallow").exists() or not _strip_git_dir(dot_git):
        return False
    _write_config(dot_git, mirror)
    work = [f"--git-dir={dot_git}", f"--work-tree={dest}", "-c", f"safe.directory={dest}"]
    cleared = options.clean_flags == DEFAULT_CLEAN_FLAGS
    if cleared:  # what `clean -ffdx` leaves after the checkout is the checkout of an empty tree: one command less
        for entry in os.scandir(dest):
            if entry.name != ".git":
                remove_tree(Path(entry.path))
    check = git.run([*work, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "--detach", sha,
                     "--"], cwd=dest)
    if check.returncode != 0:
        return False
    if not cleared:
        _clean(git, dest, work, options)
    return True


def _clean(git: _Git, dest: Path, work: list[str], options: GitOptions) -> None:
    """``git clean`` with GIT_CLEAN_FLAGS (none: nothing)."""
    if not options.clean_flags:
        return
    clean = git.run([*work, "clean", *options.clean_flags], cwd=dest)
    if clean.returncode != 0:
        raise CheckoutError(f"git clean {' '.join(options.clean_flags)} failed in {dest}: {git.summary(clean)}",
                            retryable=False)


def _strip_git_dir(dot_git: Path) -> bool:
    """Remove from a reused ``.git`` everything but objects and refs (``_KEPT_GIT_ENTRIES``), and
    the local branches and replace refs; False when it is not a plain repository directory, or
    holds a symlink in what is kept: git, run as the worker, would write through it (a job could
    point ``objects/pack`` at any directory of the host)."""
    for name in ("objects", "refs"):
        if not (dot_git / name).is_dir() or (dot_git / name).is_symlink():
            return False
    for name in _KEPT_GIT_ENTRIES:
        if _holds_symlink(dot_git / name):
            return False
    for entry in os.scandir(dot_git):
        if entry.name not in _KEPT_GIT_ENTRIES:
            _remove(Path(entry.path))
    for entry in os.scandir(dot_git / "refs"):
        if entry.name not in _KEPT_REF_DIRS:
            _remove(Path(entry.path))
    packed = dot_git / "packed-refs"
    if packed.is_file() and not packed.is_symlink():
        lines = packed.read_text("utf-8", "replace").splitlines(keepends=True)
        kept, keep_peeled = [], False
        for line in lines:
            if line.startswith("^"):
                if keep_peeled:
                    kept.append(line)
                continue
            name = line.split(" ", 1)[1].strip() if " " in line and not line.startswith("#") else ""
            keep_peeled = line.startswith("#") or name.startswith(("refs/remotes/", "refs/tags/"))
            if keep_peeled:
                kept.append(line)
        packed.write_text("".join(kept), "utf-8")
    elif packed.exists() or packed.is_symlink():
        _remove(packed)
    (dot_git / "HEAD").write_text("ref: refs/heads/ciq-unborn\n")
    (dot_git / "refs" / "heads").mkdir(exist_ok=True)
    return True


def _holds_symlink(path: Path) -> bool:
    """Whether ``path`` is, or (a directory) holds anywhere below it, a symlink."""
    if path.is_symlink():
        return True
    for top, directories, files in os.walk(path):  # followlinks=False: a symlinked directory is listed, not entered
        if any(os.path.islink(os.path.join(top, name)) for name in (*directories, *files)):
            return True
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _write_config(dot_git: Path, mirror: _Mirror) -> None:
    """The workspace's config, written whole: what a clone from the mirror has, nothing a job added."""
    sha256 = mirror.object_format == "sha256"
    (dot_git / "config").write_text(
        "[core]\n"
        f"\trepositoryformatversion = {1 if sha256 else 0}\n"
        "\tfilemode = true\n\tbare = false\n\tlogallrefupdates = false\n"
        + ("[extensions]\n\tobjectformat = sha256\n" if sha256 else "")
        + "[remote \"origin\"]\n"
        f"\turl = {_config_value(mirror.remote.clean)}\n"
        "\tfetch = +refs/heads/*:refs/remotes/origin/*\n",
        "utf-8")


def _config_value(value: str) -> str:
    """A value quoted for a git config file (the URL is checked: no control characters)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shallow_repository(git: _Git, mirror: _Mirror, dest: Path, sha: str, depth: int) -> None:
    """A new repository in ``dest`` with the last ``depth`` commits of ``sha`` (GIT_DEPTH)."""
    dest.mkdir(parents=True, exist_ok=True)
    init = git.run(["init", "--quiet", "--template=", f"--object-format={mirror.object_format}", "--", str(dest)])
    if init.returncode != 0:
        raise CheckoutError(f"cannot create the workspace {dest}: {git.summary(init)}")
    _write_config(dest / ".git", mirror)
    fetch = git.run([f"--git-dir={dest / '.git'}", "fetch", "--quiet", "--no-tags", "--no-write-fetch-head",
                     f"--depth={depth}", "--", str(mirror.path), sha])
    if fetch.returncode != 0:
        raise _MirrorCorrupt(f"git fetch --depth={depth} from the cache failed: {git.summary(fetch)}")


def _clone_from_mirror(git: _Git, mirror: _Mirror, dest: Path) -> None:
    """Make ``dest`` a local clone of the mirror, without network (see the module's doc)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    clone = git.run(["clone", "--quiet", "--no-checkout", "--template=", "--", str(mirror.path), str(dest)])
    if clone.returncode != 0:
        raise _MirrorCorrupt(f"git clone from the cache failed: {git.summary(clone)}")


def _detach_at(git: _Git, mirror: _Mirror, dest: Path, sha: str, options: GitOptions, fresh: bool) -> None:
    """Check out ``sha`` detached; a fresh clone gets its origin's clean URL and loses its local
    branch, a reused repository is cleaned with ``GIT_CLEAN_FLAGS``."""
    work = [f"--git-dir={dest / '.git'}", f"--work-tree={dest}", "-c", f"safe.directory={dest}"]
    if fresh and not options.depth:
        set_url = git.run([*work, "config", "--", "remote.origin.url", mirror.remote.clean])
        if set_url.returncode != 0:
            raise CheckoutError(f"cannot configure the workspace {dest}: {git.summary(set_url)}")
    check = git.run([*work, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "--detach", sha,
                     "--"], cwd=dest)
    if check.returncode != 0:
        stderr = check.stderr.lower()
        if any(marker in stderr for marker in _CORRUPT_MARKERS):
            raise _MirrorCorrupt(f"git checkout failed: {git.summary(check)}")
        raise CheckoutError(f"git checkout of {sha} from {mirror.remote.clean} failed: {git.summary(check)}")
    if not fresh:
        _clean(git, dest, work, options)
    if fresh and not options.depth:
        branches = git.run([*work, "for-each-ref", "--format=%(refname:short)", "refs/heads/"])
        names = branches.stdout.split()
        if names:  # the clone's default branch would point at the mirror's tip, not at sha: drop it
            git.run([*work, "branch", "--quiet", "-D", "--", *names])


def _update_submodules(git: _Git, repo: Path, url: str, policy: ClonePolicy | None, options: GitOptions) -> None:
    """``git submodule update --init`` (GIT_SUBMODULE_STRATEGY normal; recursive: level by
    level). Every submodule URL, resolved against its parent's, passes the clone policy first and
    git connects only to the checked addresses; credentials go only to the parent's own host."""
    modules = git.run(["-C", str(repo), "config", "--file", ".gitmodules", "--get-regexp",
                       r"^submodule\..*\.(url|path)$"], cwd=repo)
    if modules.returncode != 0:  # no .gitmodules, or no submodule in it
        return
    urls: dict[str, str] = {}
    paths: dict[str, str] = {}
    for line in modules.stdout.splitlines():
        key, _, value = line.partition(" ")
        name, kind = key[len("submodule."):].rsplit(".", 1)
        (urls if kind == "url" else paths)[name] = value
    parent = parse_clone_url(url)
    pins: list[str] = []
    resolved: dict[str, str] = {}
    for name, sub_url in urls.items():
        full = _resolve_submodule_url(url, sub_url)
        sub = parse_clone_url(full)
        pins += checked_pins(full, sub, policy)
        resolved[name] = full
    same_host = all(parse_clone_url(u).host == parent.host for u in resolved.values())
    args = ["-C", str(repo), "-c", f"safe.directory={repo}", *pins,
            *(git.auth_args if same_host else []), "submodule", "update", "--init", "--quiet"]
    if options.depth:
        args.append(f"--depth={options.depth}")
    for name, full in resolved.items():  # relative URLs as resolved here, not by git against the workspace
        git.run(["-C", str(repo), "config", "--", f"submodule.{name}.url", full])
    for path in paths.values():  # a reused directory's submodules are cloned again: .git/modules is gone
        directory = (repo / path)
        if directory.is_dir() and not directory.is_symlink() and directory.resolve().is_relative_to(repo.resolve()):
            _empty(directory)
    result = git.run(args, cwd=repo)
    if result.returncode != 0:
        raise CheckoutError(f"git submodule update failed in {repo.name}: {git.summary(result)}",
                            retryable=not remote_failure_is_permanent(result.stderr))
    if options.submodules == "recursive":
        for name, path in paths.items():
            if name in resolved and (repo / path / ".git").exists():
                _update_submodules(git, repo / path, resolved[name], policy, options)


def _resolve_submodule_url(parent: str, url: str) -> str:
    """A ``.gitmodules`` URL; ``./`` and ``../`` ones are relative to the parent's URL, as git does."""
    if not url.startswith(("./", "../")):
        return url
    base = parent.rstrip("/")
    for part in url.split("/"):
        if part == "..":
            base = base.rsplit("/", 1)[0] if "/" in base.split("://", 1)[-1] else base
        elif part not in (".", ""):
            base = f"{base}/{part}"
    return base


def _empty(dest: Path) -> None:
    """Remove what a failed attempt left in ``dest`` (keeping ``dest`` itself if it existed)."""
    with contextlib.suppress(OSError):
        for child in list(dest.iterdir()) if dest.is_dir() else []:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def resolve_ref(clone_url: str, ref: str, *, env: Mapping[str, str] | None = None, timeout: float = 60,
                policy: ClonePolicy | None = None) -> str:
    """The commit a branch or tag name (or full ``refs/...`` name) points at on the remote.

    Used when a run is triggered with a ref but no sha (``POST /api/v1/runs``). A tag resolves
    to its commit (``^{}``). Raises ``CheckoutError`` when the ref does not exist or the remote
    cannot be reached (or ``policy`` refuses the URL, as for ``checkout``).
    """
    if not ref or ref.startswith("-") or any(c in ref for c in " ~^:?*[\\\x00") or ".." in ref:
        raise CheckoutError(f"invalid ref {ref!r}", retryable=False)
    remote = parse_clone_url(clone_url)
    pins = checked_pins(clone_url, remote, policy)
    env = os.environ if env is None else env
    git = _Git(env, remote, credentials_for(remote, env), time.monotonic(), timeout, pins)
    candidates = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    result = git.run(["ls-remote", "--", remote.clean, *candidates, *(f"{c}^{{}}" for c in candidates)],
                     network=True)
    if result.returncode != 0:
        raise CheckoutError(f"cannot reach {remote.clean}: {git.summary(result)}{_redirect_hint(result.stderr)}",
                            retryable=not remote_failure_is_permanent(result.stderr))
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    for name in candidates:
        sha = found.get(f"{name}^{{}}") or found.get(name)
        if sha:
            return validate_sha(sha)
    raise CheckoutError(f"ref {ref!r} not found in {remote.clean}", retryable=False)
