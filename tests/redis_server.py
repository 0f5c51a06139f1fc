"""A ``redis-server`` of a test's own, on a free port, that the test may kill, freeze, fill or
restart: the shared Redis of the other tests is never touched by a fault test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import in_ci


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One ``redis-server`` process with append-only persistence in ``directory``: a restart on
    the same port and directory keeps the data, as a real Redis restart does."""

    def __init__(self, directory: Path, port: int | None = None, *, maxmemory: str | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
                "--logfile", str(self.directory / "redis.log")]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        return [*args, *self.extra]

    def start(self, timeout: float = 20) -> RedisServer:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server on {self.port} not ready in {timeout}s: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer: no shutdown, no save beyond the AOF."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def freeze(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def require_redis_server() -> str:
    """The path of ``redis-server``: skipped without one on a user's machine, a failure in CI."""
    path = shutil.which("redis-server")
    if path is None:
        if in_ci():
            pytest.fail("no redis-server on PATH; CI must have one")
        pytest.skip("no redis-server on PATH (the fault tests start their own)")
    return path


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test's own (append-only), stopped afterwards."""
    require_redis_server()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
