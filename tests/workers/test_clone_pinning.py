"""The clone policy at the worker, right before the fetch: real git, real repositories served over
HTTP on loopback addresses (127.0.0.2 is a loopback address of its own on Linux), the policy's
resolver hook standing in for a DNS server that answers the check and git differently."""

from __future__ import annotations

import functools
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ci_queue.clone_policy import ClonePolicy, parse_allow_list
from tests.engine.conftest import make_repo
from workers.checkout import CheckoutError, checkout, resolve_ref

PINNED = "127.0.0.2"  # where the repository is served; `localhost` resolves to 127.0.0.1 here


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(address: str, handler) -> Iterator[int]:
    """An HTTP server on ``address`` (a free port) for the block; yields the port."""
    server = ThreadingHTTPServer((address, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, str]:
    """A bare repository ready for git's dumb HTTP protocol: (the directory to serve, its sha)."""
    sha = make_repo(tmp_path / "source", {"README": "pinned\n"})
    root = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "source"), str(root / "repo.git")], check=True)
    subprocess.run(["git", "-C", str(root / "repo.git"), "update-server-info"], check=True)
    return root, sha


def policy(allow: str, names: dict[str, list[str]] | None = None) -> ClonePolicy:
    """The policy with ``CIQ_CLONE_ALLOW_HOSTS=allow``; ``names``: what its resolver answers."""
    allowed_names, networks = parse_allow_list(allow)
    if names is None:
        return ClonePolicy(allow_names=allowed_names, allow_networks=networks)
    return ClonePolicy(allow_names=allowed_names, allow_networks=networks, resolver=lambda host, port: names[host])


def test_git_connects_to_the_checked_address_not_to_what_it_would_resolve(served, tmp_path):
    """The check resolved ``localhost`` to 127.0.0.2 (allowed); git by itself would ask the system
    (127.0.0.1, where nothing listens): the checkout succeeds only because git used the pin."""
    root, sha = served
    with serving(PINNED, functools.partial(_Quiet, directory=str(root))) as port:
        url = f"http://localhost:{port}/repo.git"
        with pytest.raises(CheckoutError, match="onnect"):  # the control: without the pin, git goes elsewhere
            checkout(url, sha, tmp_path / "unpinned", cache_dir=tmp_path / "cache-1", timeout=60)
        pinned = policy(f"{PINNED}/32", {"localhost": [PINNED]})
        info = checkout(url, sha, tmp_path / "pinned", cache_dir=tmp_path / "cache-2", timeout=60, policy=pinned)
        assert info.fetched and (tmp_path / "pinned" / "README").read_text() == "pinned\n"
        assert resolve_ref(url, "main", policy=pinned) == sha


def test_a_name_that_resolves_to_loopback_is_refused_before_any_fetch(served, tmp_path):
    root, sha = served
    with serving("127.0.0.1", functools.partial(_Quiet, directory=str(root))) as port:
        url = f"http://localhost:{port}/repo.git"
        for call in (lambda: checkout(url, sha, tmp_path / "ws", cache_dir=tmp_path / "cache", policy=ClonePolicy()),
                     lambda: resolve_ref(url, "main", policy=ClonePolicy())):
            with pytest.raises(CheckoutError) as refused:
                call()
            assert not refused.value.retryable and refused.value.failure_class == "checkout_failed"
            assert "localhost (127.0.0.1)" in str(refused.value) and "CIQ_CLONE_ALLOW_HOSTS" in str(refused.value)
        assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*.git"))
        # allow-listed on the worker: the same checkout goes through
        info = checkout(url, sha, tmp_path / "ws", cache_dir=tmp_path / "cache", policy=policy("127.0.0.1"))
        assert info.sha == sha


def test_a_redirect_to_an_unchecked_host_is_not_followed(served, tmp_path):
    root, sha = served
    with serving("127.0.0.1", functools.partial(_Quiet, directory=str(root))) as target:

        class Redirect(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(301)
                self.send_header("Location", f"http://127.0.0.1:{target}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

        with serving(PINNED, Redirect) as port:
            url = f"http://{PINNED}:{port}/repo.git"
            # the control: git follows the redirect by itself
            assert checkout(url, sha, tmp_path / "followed", cache_dir=tmp_path / "cache-1").sha == sha
            with pytest.raises(CheckoutError, match="redirects are not followed") as refused:
                checkout(url, sha, tmp_path / "checked", cache_dir=tmp_path / "cache-2", policy=policy(PINNED))
            assert not refused.value.retryable  # asking again gets the same redirect


def test_local_repositories_need_the_workers_permission(served, tmp_path):
    root, sha = served
    url = f"file://{root / 'repo.git'}"
    with pytest.raises(CheckoutError, match="CIQ_ALLOW_LOCAL_REPOS=1") as refused:
        checkout(url, sha, tmp_path / "ws", cache_dir=tmp_path / "cache", policy=ClonePolicy())
    assert not refused.value.retryable
    assert checkout(url, sha, tmp_path / "ws", cache_dir=tmp_path / "cache",
                    policy=ClonePolicy(allow_local=True)).sha == sha
