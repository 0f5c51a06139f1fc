"""Helpers of the pipeline tests: a repository directory, files written into it, and an HTTP
server on 127.0.0.1 for `include: remote:`."""

from __future__ import annotations

import contextlib
import ssl
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def write(root: Path, name: str, text: str) -> Path:
    """Write ``text`` (dedented) to ``root/name``, creating directories."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty repository tree for the pipeline under test."""
    root = tmp_path / "repo"
    root.mkdir()
    return root


@dataclass
class Served:
    """The test's HTTP server: ``pages`` by path (status, body, headers); what it was asked."""

    port: int = 0
    scheme: str = "http"
    pages: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


@pytest.fixture
def served() -> Iterator[Served]:
    """An HTTP server on 127.0.0.1 for the test (see :func:`serve`)."""
    with serve() as state:
        yield state


@contextlib.contextmanager
def serve(certificate: tuple[Path, Path] | None = None) -> Iterator[Served]:
    """An HTTP server on 127.0.0.1 answering ``pages``; ``/slow.yml`` answers only at the end.
    With ``certificate`` (cert file, key file): HTTPS."""
    state = Served(scheme="https" if certificate else "http")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, self.headers.get("Host", "")))
            if self.path == "/slow.yml":
                state.release.wait(30)  # answers only once the test is over
            status, body, headers = state.pages.get(self.path, (404, b"not found", {}))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if certificate is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certificate)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
