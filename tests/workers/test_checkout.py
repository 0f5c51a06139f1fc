"""workers.checkout against real git repositories made here (file:// and a local HTTP server); no mocks."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from loguru import logger

from tests.conftest import REPO
from workers.checkout import (
    CheckoutError,
    CheckoutInfo,
    checkout,
    credentials_for,
    mirror_name,
    parse_clone_url,
    redact,
    remote_failure_is_permanent,
    resolve_ref,
    validate_sha,
)
from workers.runners.base import InfrastructureError

TOKEN = "tok-Zq81x7Lw0pYv"
SECRET = "s3cr3t-Pa55w0rd"


# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def git_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which git sees no configuration of this machine's user."""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "CIQ_GIT_"))}
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="test@example.com",
    )
    return env


def git(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip()


@dataclass
class Origin:
    """A repository standing in for the provider's: commits made with ``commit``."""

    path: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        for name, content in files.items():
            target = self.path / name
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
        git("add", "-A", cwd=self.path, env=self.env)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.path, env=self.env)
        return git("rev-parse", "HEAD", cwd=self.path, env=self.env)


@pytest.fixture
def origin(tmp_path: Path, git_env: dict[str, str]) -> Origin:
    path = tmp_path / "origin repo"  # a space in the path, on purpose
    path.mkdir()
    git("init", "-q", "-b", "main", cwd=path, env=git_env)
    return Origin(path, git_env)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


def head(dest: Path, env: dict[str, str]) -> str:
    return git("rev-parse", "HEAD", cwd=dest, env=env)


def assert_clean_detached(dest: Path, sha: str, env: dict[str, str]) -> None:
    assert head(dest, env) == sha
    detached = subprocess.run(["git", "symbolic-ref", "-q", "HEAD"], cwd=dest, env=env, capture_output=True)
    assert detached.returncode == 1, "HEAD must be detached"
    assert git("status", "--porcelain", "--untracked-files=all", cwd=dest, env=env) == ""


def files_containing(root: Path, *needles: str) -> list[str]:
    """Every file under ``root`` whose bytes contain one of ``needles`` (a recursive grep)."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path}: {n}" for n in needles if n.encode() in data]
    return hits


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- checking out --------------------------------------------------------------------------------


def test_checkout_puts_exactly_the_commit_in_a_clean_detached_tree(origin: Origin, tmp_path: Path, cache: Path):
    first = origin.commit({"a.txt": "one\n", "dir/b.txt": "bee\n"}, "first")
    second = origin.commit({"a.txt": "two\n", "c.txt": "new\n", "dir/b.txt": None}, "second")
    dest = tmp_path / "ws"

    info = checkout(origin.url, first, dest, cache_dir=cache, env=origin.env)

    assert isinstance(info, CheckoutInfo)
    assert (info.sha, info.ref, info.fetched) == (first, None, True)
    assert info.mirror.parent == cache and info.mirror.is_dir()
    assert info.duration > 0
    assert_clean_detached(dest, first, origin.env)
    assert (dest / "a.txt").read_text() == "one\n"
    assert (dest / "dir" / "b.txt").read_text() == "bee\n"
    assert not (dest / "c.txt").exists()
    assert git("config", "remote.origin.url", cwd=dest, env=origin.env) == origin.url
    assert git("branch", "--list", cwd=dest, env=origin.env).strip().startswith("* (HEAD detached")
    # the later commit is there as origin/main (a job may diff against it), the workspace is self-contained
    assert git("rev-parse", "origin/main", cwd=dest, env=origin.env) == second
    assert not (dest / ".git" / "objects" / "info" / "alternates").exists()


def test_ref_is_recorded_and_not_needed(origin: Origin, tmp_path: Path, cache: Path):
    sha = origin.commit({"a.txt": "x"})
    info = checkout(origin.url, sha.upper(), tmp_path / "ws", ref="refs/heads/main", cache_dir=cache, env=origin.env)
    assert (info.sha, info.ref) == (sha, "refs/heads/main")


def test_a_commit_on_no_branch_is_fetched_by_its_sha(origin: Origin, tmp_path: Path, cache: Path):
    """A merge request's head lives under refs/pull/N/head (or a deleted branch): not in the mirror's refspecs."""
    base = origin.commit({"a.txt": "base"})
    checkout(origin.url, base, tmp_path / "ws1", cache_dir=cache, env=origin.env)  # the mirror exists
    git("checkout", "-q", "-b", "feature", cwd=origin.path, env=origin.env)
    mr_head = origin.commit({"a.txt": "feature"})
    git("update-ref", "refs/pull/1/head", mr_head, cwd=origin.path, env=origin.env)
    git("checkout", "-q", "main", cwd=origin.path, env=origin.env)
    git("branch", "-q", "-D", "feature", cwd=origin.path, env=origin.env)

    info = checkout(origin.url, mr_head, tmp_path / "ws2", cache_dir=cache, env=origin.env)

    assert info.fetched
    assert (tmp_path / "ws2" / "a.txt").read_text() == "feature"


def test_an_annotated_tag_sha_checks_out_its_commit(origin: Origin, tmp_path: Path, cache: Path):
    commit = origin.commit({"a.txt": "tagged"})
    git("tag", "-a", "v1.0", "-m", "release", cwd=origin.path, env=origin.env)
    origin.commit({"a.txt": "later"})
    tag = git("rev-parse", "v1.0", cwd=origin.path, env=origin.env)
    assert tag != commit
    checkout(origin.url, tag, tmp_path / "ws", ref="refs/tags/v1.0", cache_dir=cache, env=origin.env)
    assert head(tmp_path / "ws", origin.env) == commit
    assert (tmp_path / "ws" / "a.txt").read_text() == "tagged"


def test_a_failing_checkout_is_not_mistaken_for_a_corrupt_cache(
    origin: Origin, tmp_path: Path, cache: Path, log_lines: list[str]
):
    """A smudge filter that fails (think git-lfs without its server) is an error, the mirror stays."""
    sha = origin.commit({".gitattributes": "*.bin filter=boom\n", "data.bin": "x"})
    (Path(origin.env["HOME"]) / ".gitconfig").write_text('[filter "boom"]\n\tsmudge = false\n\trequired = true\n')
    with pytest.raises(CheckoutError, match=f"git checkout of {sha} from .* failed: .*boom"):
        checkout(origin.url, sha, tmp_path / "ws", cache_dir=cache, env=origin.env)
    assert not [line for line in log_lines if "re-creating" in line]
    assert len(list(cache.glob("*.git"))) == 1


def test_missing_sha_is_a_permanent_infrastructure_error_naming_it(origin: Origin, tmp_path: Path, cache: Path):
    """Fetched everything, then asked for the sha by name: it is not there (a force-push removed
    it), and asking again will not change that."""
    origin.commit({"a.txt": "x"})
    missing = "1234abc" + "0" * 33
    with pytest.raises(CheckoutError) as caught:
        checkout(origin.url, missing, tmp_path / "ws", cache_dir=cache, env=origin.env)
    message = str(caught.value)
    assert f"commit {missing} not found in {origin.url}" in message
    assert "\n" not in message
    assert isinstance(caught.value, InfrastructureError) and not caught.value.retryable
    assert caught.value.failure_class == "checkout_failed"  # a job's checkout: failed once, never retried
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir()), "a retry can use the same dest"


def test_the_workspace_does_not_depend_on_the_cache(origin: Origin, tmp_path: Path, cache: Path):
    first = origin.commit({"a.txt": "one"})
    origin.commit({"a.txt": "two"})
    dest = tmp_path / "ws"
    info = checkout(origin.url, first, dest, cache_dir=cache, env=origin.env)
    shutil.rmtree(info.mirror)  # or repacked, or re-created after corruption
    git("fsck", "--full", "--no-dangling", cwd=dest, env=origin.env)
    assert git("log", "--format=%s", "origin/main", cwd=dest, env=origin.env).splitlines() == ["change", "change"]


@pytest.mark.parametrize("what", ["missing", "plain-directory"])
def test_a_path_that_is_no_repository_is_a_permanent_error(
    tmp_path: Path, cache: Path, git_env: dict[str, str], what: str
):
    path = tmp_path / what
    if what == "plain-directory":
        path.mkdir()
        (path / "README").write_text("no .git here\n")
    url = f"file://{path}"
    with pytest.raises(CheckoutError) as caught:
        checkout(url, "a" * 40, tmp_path / "ws", cache_dir=cache, env=git_env)
    message = str(caught.value)
    assert message.startswith(f"cannot fetch from {url}: ")
    assert "does not appear to be a git repository" in message
    assert "\n" not in message and not caught.value.retryable
    assert not list(cache.glob("*.git")), "no half-made mirror is left behind"
    assert not list(cache.glob("*.tmp-*"))


def test_git_missing_is_an_infrastructure_error(origin: Origin, tmp_path: Path, cache: Path):
    sha = origin.commit({"a.txt": "x"})
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with pytest.raises(CheckoutError, match="git is not installed"):
        checkout(origin.url, sha, tmp_path / "ws", cache_dir=cache, env={**origin.env, "PATH": str(empty)})


def test_destination_must_be_empty(origin: Origin, tmp_path: Path, cache: Path):
    sha = origin.commit({"a.txt": "x"})
    dest = tmp_path / "ws"
    dest.mkdir()
    (dest / "left-over").write_text("x")
    with pytest.raises(CheckoutError, match="not an empty directory") as caught:
        checkout(origin.url, sha, dest, cache_dir=cache, env=origin.env)
    assert not caught.value.retryable
    empty = tmp_path / "empty"
    empty.mkdir()
    checkout(origin.url, sha, empty, cache_dir=cache, env=origin.env)  # an existing empty directory is fine
    assert head(empty, origin.env) == sha


# -- the mirror cache ----------------------------------------------------------------------------


def test_second_checkout_uses_the_cache_without_network(origin: Origin, tmp_path: Path, cache: Path):
    first = origin.commit({"a.txt": "one"})
    origin.commit({"a.txt": "two"})
    info1 = checkout(origin.url, first, tmp_path / "ws1", cache_dir=cache, env=origin.env)
    assert info1.fetched

    origin.path.rename(tmp_path / "moved-away")  # the remote is unreachable now
    info2 = checkout(origin.url, first, tmp_path / "ws2", cache_dir=cache, env=origin.env)

    assert info2.fetched is False
    assert info2.mirror == info1.mirror
    assert_clean_detached(tmp_path / "ws2", first, origin.env)
    assert (tmp_path / "ws2" / "a.txt").read_text() == "one"
    assert [p.name for p in cache.glob("*.git")] == [info1.mirror.name]


def test_a_commit_pushed_later_is_fetched(origin: Origin, tmp_path: Path, cache: Path):
    first = origin.commit({"a.txt": "one"})
    checkout(origin.url, first, tmp_path / "ws1", cache_dir=cache, env=origin.env)
    later = origin.commit({"a.txt": "later", "new.txt": "n"})

    info = checkout(origin.url, later, tmp_path / "ws2", cache_dir=cache, env=origin.env)

    assert info.fetched
    assert_clean_detached(tmp_path / "ws2", later, origin.env)
    assert (tmp_path / "ws2" / "new.txt").read_text() == "n"
    # and the older commit is still served from the cache
    again = checkout(origin.url, first, tmp_path / "ws3", cache_dir=cache, env=origin.env)
    assert again.fetched is False


def test_mirror_name_is_a_hash_of_the_url_without_credentials(origin: Origin, tmp_path: Path, cache: Path):
    sha = origin.commit({"a.txt": "x"})
    plain = checkout(origin.url, sha, tmp_path / "ws1", cache_dir=cache, env=origin.env)
    with_user = checkout(f"file://user:{SECRET}@{origin.path}", sha, tmp_path / "ws2", cache_dir=cache, env=origin.env)
    assert with_user.mirror == plain.mirror and with_user.fetched is False
    assert plain.mirror.name == mirror_name(origin.url) + ".git"
    assert mirror_name("https://a.example/x/repo.git").startswith("repo-")
    assert mirror_name("https://a.example/x/repo.git") != mirror_name("https://b.example/x/repo.git")


@pytest.mark.parametrize("damage", ["garbage HEAD", "garbage config", "corrupt commit", "no objects", "no refs"])
def test_a_corrupt_mirror_is_recreated_once(origin: Origin, tmp_path: Path, cache: Path, damage: str, log_lines):
    sha = origin.commit({"a.txt": "one"})
    info = checkout(origin.url, sha, tmp_path / "ws1", cache_dir=cache, env=origin.env)
    if damage == "garbage HEAD":
        (info.mirror / "HEAD").write_text("this is not a ref\n")
    elif damage == "garbage config":
        (info.mirror / "config").write_text('[remote "origin"\n\turl = \x00 nonsense\n')
    elif damage == "corrupt commit":
        loose = info.mirror / "objects" / sha[:2] / sha[2:]
        packs = list((info.mirror / "objects" / "pack").glob("*.pack"))
        assert loose.is_file() or packs
        for target in [loose] if loose.is_file() else packs:
            target.unlink()  # not written through: the file may be hard-linked into ws1
            target.write_bytes(b"\x78\x9cnot zlib at all" * 3)
    elif damage == "no objects":
        for pack in (info.mirror / "objects").rglob("*"):
            if pack.is_file():
                pack.unlink()
    else:
        shutil.rmtree(info.mirror / "refs")
        (info.mirror / "packed-refs").unlink(missing_ok=True)

    again = checkout(origin.url, sha, tmp_path / "ws2", cache_dir=cache, env=origin.env)

    assert again.fetched
    assert_clean_detached(tmp_path / "ws2", sha, origin.env)
    assert (tmp_path / "ws2" / "a.txt").read_text() == "one"
    assert [p.name for p in cache.glob("*.git")] == [info.mirror.name]
    assert not list(cache.glob("*.tmp-*"))
    if damage in ("garbage HEAD", "garbage config", "corrupt commit"):  # else a plain fetch repairs it
        assert any("re-creating it" in line for line in log_lines)


def test_concurrent_checkouts_from_threads_all_succeed(origin: Origin, tmp_path: Path, cache: Path):
    shas = [origin.commit({"a.txt": f"v{i}"}) for i in range(3)]
    barrier = threading.Barrier(6)
    results: dict[int, CheckoutInfo | BaseException] = {}

    def work(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = checkout(origin.url, shas[i % 3], tmp_path / f"ws{i}", cache_dir=cache, env=origin.env)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    failures = {i: r for i, r in results.items() if isinstance(r, BaseException)}
    assert not failures
    assert len(results) == 6
    for i in range(6):
        assert_clean_detached(tmp_path / f"ws{i}", shas[i % 3], origin.env)
        assert (tmp_path / f"ws{i}" / "a.txt").read_text() == f"v{i % 3}"
    assert len(list(cache.glob("*.git"))) == 1
    assert not list(cache.glob("*.tmp-*"))


_CHILD = """
import sys
from pathlib import Path
from workers.checkout import checkout
url, sha, dest, cache = sys.argv[1:5]
info = checkout(url, sha, Path(dest), cache_dir=Path(cache))
print(info.sha, info.fetched)
"""


def test_concurrent_checkouts_from_processes_all_succeed(origin: Origin, tmp_path: Path, cache: Path):
    first = origin.commit({"a.txt": "one"})
    later = [origin.commit({"a.txt": f"later {i}"}) for i in range(2)]
    shas = [first, *later, first, later[0]]  # a cold cache: they race to create the mirror
    env = {**origin.env, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, origin.url, sha, str(tmp_path / f"ws{i}"), str(cache)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, sha in enumerate(shas)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, sha, (out, err) in zip(procs, shas, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.split()[0] == sha
    assert sum(out.split()[1] == "True" for out, _err in outputs) == 1, "one process fetched, the others waited"
    for i, sha in enumerate(shas):
        assert_clean_detached(tmp_path / f"ws{i}", sha, origin.env)
    assert len(list(cache.glob("*.git"))) == 1


def test_the_callers_git_variables_do_not_leak_in(origin: Origin, tmp_path: Path, cache: Path):
    sha = origin.commit({"a.txt": "x"})
    other = tmp_path / "other"
    other.mkdir()
    git("init", "-q", cwd=other, env=origin.env)
    env = {
        **origin.env,
        "GIT_DIR": str(other / ".git"),
        "GIT_WORK_TREE": str(other),
        "GIT_INDEX_FILE": str(other / "index"),
        "GIT_CONFIG_PARAMETERS": "'remote.origin.url'='file:///elsewhere'",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
    }
    checkout(origin.url, sha, tmp_path / "ws", cache_dir=cache, env=env)
    assert_clean_detached(tmp_path / "ws", sha, origin.env)
    assert list((other / ".git" / "objects" / "pack").iterdir()) == []
    assert not (other / "a.txt").exists()


def test_sha256_repository(tmp_path: Path, cache: Path, git_env: dict[str, str]):
    path = tmp_path / "origin256"
    path.mkdir()
    init = subprocess.run(
        ["git", "init", "-q", "-b", "main", "--object-format=sha256"], cwd=path, env=git_env, capture_output=True
    )
    if init.returncode != 0:
        pytest.skip("this git has no SHA-256 repositories")
    repo = Origin(path, git_env)
    first = repo.commit({"a.txt": "one"})
    repo.commit({"a.txt": "two"})
    assert len(first) == 64
    info = checkout(repo.url, first, tmp_path / "ws", cache_dir=cache, env=git_env)
    assert info.sha == first
    assert_clean_detached(tmp_path / "ws", first, git_env)
    assert (tmp_path / "ws" / "a.txt").read_text() == "one"


# -- input validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sha", ["", "abc", "g" * 40, "1" * 39, "1" * 41, "-" + "1" * 39, "HEAD", "main", "1" * 40 + "\n", None, 12]
)
def test_a_malformed_sha_is_refused(sha, tmp_path: Path, cache: Path, git_env: dict[str, str]):
    with pytest.raises(CheckoutError, match="invalid commit sha") as caught:
        checkout(f"file://{tmp_path}/x", sha, tmp_path / "ws", cache_dir=cache, env=git_env)
    assert not caught.value.retryable
    assert not cache.exists()


def test_sha_is_normalized():
    assert validate_sha("A" * 40) == "a" * 40
    assert validate_sha("b" * 64) == "b" * 64


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "fd::17",
        "-uhttps://example.com/x.git",
        "--upload-pack=touch /tmp/pwned",
        "ssh://-oProxyCommand=touch%20pwned/repo",
        "ftp://example.com/repo.git",
        "http:///no-host",
        "relative/path",
        "https://example.com/x\n.git",
        "",
    ],
)
def test_a_dangerous_url_is_refused(url: str, tmp_path: Path, cache: Path, git_env: dict[str, str]):
    with pytest.raises(CheckoutError, match="clone URL") as caught:
        checkout(url, "a" * 40, tmp_path / "ws", cache_dir=cache, env=git_env)
    assert not caught.value.retryable
    assert "\n" not in str(caught.value)
    assert not Path("/tmp/pwned").exists()


def test_a_dangerous_ref_is_refused(origin: Origin, tmp_path: Path, cache: Path):
    sha = origin.commit({"a.txt": "x"})
    with pytest.raises(CheckoutError, match="invalid ref"):
        checkout(origin.url, sha, tmp_path / "ws", ref="--upload-pack=x", cache_dir=cache, env=origin.env)


def test_parse_clone_url_strips_credentials():
    remote = parse_clone_url("https://user:pa%40ss@git.example.com:8443/group/repo.git")
    assert remote.clean == "https://git.example.com:8443/group/repo.git"
    assert (remote.scheme, remote.host, remote.username, remote.password) == (
        "https",
        "git.example.com",
        "user",
        "pa@ss",
    )
    ssh = parse_clone_url(f"ssh://git:{SECRET}@host.example/repo.git")
    assert ssh.clean == "ssh://git@host.example/repo.git"  # the ssh login stays, the password goes
    scp = parse_clone_url("git@github.com:owner/repo.git")
    assert (scp.scheme, scp.host, scp.clean) == ("ssh", "github.com", "git@github.com:owner/repo.git")
    assert parse_clone_url("/srv/git/repo.git").scheme == "file"
    assert parse_clone_url("https://[::1]:8080/r.git").host == "[::1]"


def test_redact():
    text = f"fatal: unable to access 'https://user:{SECRET}@host/x.git/': token {TOKEN} refused"
    assert redact(text, [TOKEN]) == "fatal: unable to access 'https://***@host/x.git/': token [MASKED] refused"


def test_credentials_come_from_the_environment_per_host_first():
    remote = parse_clone_url(f"https://me:{SECRET}@git.example.com/r.git")
    env = {"CIQ_GIT_TOKEN": "global", "CIQ_GIT_TOKEN_GIT_EXAMPLE_COM": "per-host", "CIQ_GIT_USERNAME": "bot"}
    creds = credentials_for(remote, env)
    assert creds is not None and (creds.username, creds.password) == ("bot", "per-host")
    assert credentials_for(remote, {"CIQ_GIT_TOKEN": "global"}).password == "global"
    assert credentials_for(remote, {"CIQ_GIT_TOKEN": "global"}).username == "me"
    from_url = credentials_for(remote, {})
    assert (from_url.username, from_url.password) == ("me", SECRET)
    assert credentials_for(parse_clone_url("https://host/r.git"), {"CIQ_GIT_TOKEN": "t"}).username == "oauth2"
    assert credentials_for(parse_clone_url("ssh://git@host/r.git"), {"CIQ_GIT_TOKEN": "t"}) is None
    assert credentials_for(parse_clone_url("https://host/r.git"), {}) is None


# -- credentials ---------------------------------------------------------------------------------


def test_credentials_are_never_written_nor_shown(origin: Origin, tmp_path: Path, cache: Path, log_lines):
    sha = origin.commit({"a.txt": "x"})
    env = {**origin.env, "CIQ_GIT_TOKEN": TOKEN, "CIQ_GIT_USERNAME": "bot"}
    url = f"file://user:{SECRET}@{origin.path}"
    dest = tmp_path / "ws"

    info = checkout(url, sha, dest, cache_dir=cache, env=env)

    assert info.url == origin.url
    assert git("config", "remote.origin.url", cwd=dest, env=origin.env) == origin.url
    assert files_containing(dest / ".git", TOKEN, SECRET, "user:") == []
    assert files_containing(info.mirror, TOKEN, SECRET, "user:") == []
    assert files_containing(cache, TOKEN, SECRET) == []
    # errors: an unreachable remote and a missing commit, both with credentials in the URL
    messages = []
    for bad_url, bad_sha in [(f"file://user:{SECRET}@{tmp_path}/nowhere", sha), (url, "f" * 40)]:
        with pytest.raises(CheckoutError) as caught:
            checkout(bad_url, bad_sha, tmp_path / f"bad{len(messages)}", cache_dir=cache, env=env)
        messages.append(str(caught.value))
    with pytest.raises(CheckoutError) as caught:  # a refused URL repeats the URL, redacted
        checkout(f"ftp://user:{SECRET}@host/x", sha, tmp_path / "bad-ftp", cache_dir=cache, env=env)
    messages.append(str(caught.value))
    for message in messages:
        assert SECRET not in message and TOKEN not in message, message
    assert "***@" in messages[-1]
    assert not [line for line in log_lines if SECRET in line or TOKEN in line]


# -- over HTTP, with authentication (a local git http-backend) -----------------------------------


class _GitHttp(BaseHTTPRequestHandler):
    """``git http-backend`` behind HTTP basic authentication, on 127.0.0.1."""

    server: _GitHttpServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        auth = self.headers.get("Authorization")
        self.server.authorizations.append(auth)
        if auth != self.server.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path, _, query = self.path.partition("?")
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "bot",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(self.server.root),
        }
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        header, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in header.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _GitHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, username: str, password: str) -> None:
        super().__init__(("127.0.0.1", 0), _GitHttp)
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.authorizations: list[str | None] = []


@pytest.fixture
def http_origin(origin: Origin) -> Iterator[tuple[_GitHttpServer, str]]:
    server = _GitHttpServer(origin.path.parent, "bot", TOKEN)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/{urllib.parse.quote(origin.path.name)}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_credentials_from_the_environment_are_used_and_never_stored(
    origin: Origin, http_origin, tmp_path: Path, cache: Path, log_lines
):
    server, url = http_origin
    sha = origin.commit({"a.txt": "over http"})
    home = Path(origin.env["HOME"])
    (home / ".gitconfig").write_text("[credential]\n\thelper = store\n")  # must not get to store anything
    env = {**origin.env, "CIQ_GIT_TOKEN_127_0_0_1": TOKEN, "CIQ_GIT_USERNAME": "bot", "CIQ_GIT_TOKEN": "wrong"}
    dest = tmp_path / "ws"

    info = checkout(url, sha, dest, cache_dir=cache, env=env)

    assert info.fetched
    assert (dest / "a.txt").read_text() == "over http"
    assert server.expected in server.authorizations  # the per-host token was sent, not the global one
    assert git("config", "remote.origin.url", cwd=dest, env=origin.env) == url
    assert files_containing(dest / ".git", TOKEN) == []
    assert files_containing(cache, TOKEN) == []
    assert files_containing(home, TOKEN) == []
    assert not (home / ".git-credentials").exists()
    assert not [line for line in log_lines if TOKEN in line]


def test_http_with_credentials_in_the_url_only(origin: Origin, http_origin, tmp_path: Path, cache: Path):
    _server, url = http_origin
    sha = origin.commit({"a.txt": "x"})
    authed = url.replace("http://", f"http://bot:{TOKEN}@")
    info = checkout(authed, sha, tmp_path / "ws", cache_dir=cache, env=origin.env)
    assert info.url == url
    assert files_containing(tmp_path / "ws" / ".git", TOKEN) == []
    assert files_containing(cache, TOKEN) == []


@pytest.mark.parametrize("token", [None, "wrong-token-value"])
def test_http_authentication_failure_is_a_clear_error(
    origin: Origin, http_origin, tmp_path: Path, cache: Path, token: str | None
):
    _server, url = http_origin
    sha = origin.commit({"a.txt": "x"})
    env = dict(origin.env) if token is None else {**origin.env, "CIQ_GIT_TOKEN": token}
    started = time.monotonic()
    with pytest.raises(CheckoutError) as caught:
        checkout(url, sha, tmp_path / "ws", cache_dir=cache, env=env, timeout=60)
    assert time.monotonic() - started < 30, "git must not wait for a password on a terminal"
    message = str(caught.value)
    assert message.startswith(f"cannot fetch from {url}: ")
    assert "Authentication failed" in message or "could not read Username" in message
    assert not caught.value.retryable, "the same credentials will be refused again"
    if token:
        assert token not in message


class _Status(BaseHTTPRequestHandler):
    """Answers every request with the status code named by the first path segment."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(int(self.path.split("/")[1]))
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def status_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("status", "retryable"), [
    (403, False), (404, False), (410, False), (408, True), (429, True), (500, True), (502, True), (503, True),
])
def test_http_answers_are_told_apart_permanent_from_passing(
    status_server: str, tmp_path: Path, cache: Path, git_env: dict[str, str], status: int, retryable: bool
):
    """Not found and forbidden stay so; a server error or "too many requests" may pass."""
    url = f"{status_server}/{status}/project.git"
    with pytest.raises(CheckoutError) as caught:
        checkout(url, "a" * 40, tmp_path / "ws", cache_dir=cache, env=git_env, timeout=30)
    assert caught.value.retryable is retryable, str(caught.value)
    with pytest.raises(CheckoutError) as resolved:
        resolve_ref(url, "main", env=git_env, timeout=30)
    assert resolved.value.retryable is retryable, str(resolved.value)


def test_a_refused_connection_may_pass_later(tmp_path: Path, cache: Path, git_env: dict[str, str]):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/project.git"  # nobody listens there now
    with pytest.raises(CheckoutError) as caught:
        checkout(url, "a" * 40, tmp_path / "ws", cache_dir=cache, env=git_env, timeout=30)
    assert caught.value.retryable and url in str(caught.value)
    with pytest.raises(CheckoutError) as resolved:
        resolve_ref(url, "main", env=git_env, timeout=30)
    assert resolved.value.retryable


def test_remote_failure_is_permanent_reads_what_git_curl_and_ssh_say():
    permanent = [
        "fatal: '/srv/x' does not appear to be a git repository",
        "remote: Repository not found.\nfatal: repository 'https://github.com/o/r.git/' not found",
        "fatal: Authentication failed for 'https://gitlab.example.com/g/p.git/'",
        "fatal: could not read Username for 'https://h': terminal prompts disabled",
        "git@h: Permission denied (publickey).\nfatal: Could not read from remote repository.",
        "fatal: unable to access 'https://h/p.git/': The requested URL returned error: 403",
        "fatal: unable to access 'http://h/p.git/': The requested URL returned error: 301",  # redirects off
    ]
    passing = [
        "fatal: unable to access 'https://h/p.git/': Could not resolve host: h",
        "fatal: unable to access 'https://h/p.git/': Failed to connect to h port 443: Connection refused",
        "fatal: unable to access 'https://h/p.git/': The requested URL returned error: 502",
        "error: RPC failed; curl 56 Recv failure: Connection reset by peer\nfatal: early EOF",
        "ssh: connect to host h port 22: Connection timed out",
        "",
    ]
    assert all(remote_failure_is_permanent(text) for text in permanent)
    assert not any(remote_failure_is_permanent(text) for text in passing)


def test_a_hanging_remote_times_out_and_leaves_no_git_process(origin: Origin, tmp_path: Path, cache: Path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # connections complete in the backlog, and nobody ever answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hang.git"
    try:
        started = time.monotonic()
        with pytest.raises(CheckoutError, match="timed out") as caught:
            checkout(url, "a" * 40, tmp_path / "ws", cache_dir=cache, env=origin.env, timeout=2)
        assert time.monotonic() - started < 15
        assert caught.value.retryable

        def git_processes_left() -> list[int]:
            pids = []
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        if url.encode() in (proc / "cmdline").read_bytes():
                            pids.append(int(proc.name))
                    except OSError:
                        continue
            return pids

        wait_until(lambda: not git_processes_left(), 10, "the timed-out git processes to be gone")
    finally:
        listener.close()


def test_resolve_ref_finds_branches_and_annotated_tags(tmp_path):
    import subprocess

    from workers.checkout import CheckoutError, resolve_ref

    repo = tmp_path / "origin"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "one"], check=True)
    subprocess.run([*git, "tag", "-a", "v1", "-m", "v1"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    url = f"file://{repo}"
    assert resolve_ref(url, "main") == head
    assert resolve_ref(url, "v1") == head  # the tag object's commit, not the tag object
    assert resolve_ref(url, "refs/heads/main") == head
    with pytest.raises(CheckoutError, match="'nope' not found"):
        resolve_ref(url, "nope")
    with pytest.raises(CheckoutError, match="cannot reach") as missing:
        resolve_ref(f"file://{tmp_path}/missing", "main")
    assert not missing.value.retryable and f"{tmp_path}/missing" in str(missing.value)
    with pytest.raises(CheckoutError, match="invalid ref"):
        resolve_ref(url, "--upload-pack=touch x")
