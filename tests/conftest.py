"""Shared test helpers: where the real-world fixtures are, and how to miss them honestly."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def require_shared_fixtures() -> Path:
    """``../shared/fixtures``: skipped on a user's clone, a failure in CI (CI=true)."""
    if SHARED_FIXTURES.is_dir():
        return SHARED_FIXTURES
    message = f"the shared real-world fixtures are not at {SHARED_FIXTURES} (they are not part of a clone)"
    if in_ci():
        pytest.fail(message + "; CI must have them")
    pytest.skip(message)


@pytest.fixture
def shared_fixtures() -> Path:
    return require_shared_fixtures()


TEST_REDIS_URL = os.environ.get("CIQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis():
    """A client of the test Redis: skipped without one on a user's machine, a failure in CI."""
    import redis

    client = redis.Redis.from_url(TEST_REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        message = f"no Redis at {TEST_REDIS_URL} ({exc})"
        if in_ci():
            pytest.fail(message + "; CI must have one (.ci/run starts it)")
        pytest.skip(message)
    return client


@pytest.fixture
def redis_client():
    return require_redis()


@pytest.fixture
def key_prefix(redis_client):
    """A key prefix of this test's own; its keys are deleted afterwards (and only its keys)."""
    import uuid

    prefix = f"ciq-test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    for key in redis_client.scan_iter(f"{prefix}*", count=1000):
        redis_client.delete(key)


@pytest.fixture
def store(redis_client, key_prefix):
    from ci_queue.store import Store

    return Store(redis_client, key_prefix, retention_seconds=3600)


class RedisServer:
    """A ``redis-server`` of the test's own (free port of 127.0.0.1, temp dir, append-only with an
    fsync per write, so a kill loses nothing) that a test may kill, start again or freeze. Never
    the shared test Redis: other test runs use that one."""

    def __init__(self, directory: Path, options: tuple[str, ...] = ()) -> None:
        import shutil

        from ci_queue.standalone import free_port

        executable = shutil.which("redis-server")
        if executable is None:
            message = "no redis-server on PATH"
            if in_ci():
                pytest.fail(message + "; CI must have one")
            pytest.skip(message)
        self.executable, self.dir, self.port = executable, directory, free_port()
        self.options = options  # more redis-server arguments (``--maxmemory``...)
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **options: Any) -> Any:
        import redis

        return redis.Redis.from_url(self.url, decode_responses=True, **options)

    def start(self, timeout: float = 15) -> RedisServer:
        """Start it (again: same port, same data) and return once it answers."""
        import redis

        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.dir), "--save", "", "--appendonly", "yes",
                                      "--appendfsync", "always", "--logfile", str(self.dir / "redis.log"),
                                      *self.options],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = self.client(socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe.ping()
                return self
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise AssertionError(f"redis-server on port {self.port} did not start:\n{log}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM killer would."""
        if self.proc is not None and self.proc.poll() is None:
            if self.frozen:
                self.thaw()
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing answers (a stalled VM, a long fork)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A started ``RedisServer`` of this test's own, killed afterwards."""
    server = RedisServer(tmp_path / "own-redis").start()
    try:
        yield server
    finally:
        server.kill()


def wait_until(predicate: Any, timeout: float, what: str, *, ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Poll ``predicate`` until it returns something true (returned), failing with ``what`` after
    ``timeout`` seconds; exceptions of the ``ignore`` kinds count as "not yet"."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except ignore:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.05)


def process_state(pid: int) -> str | None:
    """A process's state letter (R, S, T when stopped...), or None once it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None
    return None if state in ("Z", "X") else state


def deploy_pipeline(effects: Path, pids: Path, first: int, later: int) -> str:
    """A pipeline of one job, ``deploy``, whose side effects show who ran when: each attempt writes
    its shell's pid to ``pids/<attempt>``, then appends ``attempt=N host=H i=K`` to ``effects``
    every 100 ms, ``first`` lines in attempt 1 and ``later`` lines in the attempts after it."""
    return f"""
deploy:
  script:
    - echo $$ > {pids}/$CI_JOB_ATTEMPT
    - n={first}; if [ "$CI_JOB_ATTEMPT" != 1 ]; then n={later}; fi
    - for i in $(seq 1 $n); do echo "attempt=$CI_JOB_ATTEMPT host=$(hostname) i=$i" >> {effects}; sleep 0.1; done
"""


def after_takeover(effects: Path) -> tuple[list[str], int, list[str]]:
    """The side-effect lines of ``deploy_pipeline``, the index of attempt 2's first line, and the
    lines attempt 1 wrote after it (none, when the two never ran at once)."""
    lines = effects.read_text().splitlines()
    first_of_2 = next(k for k, line in enumerate(lines) if line.startswith("attempt=2"))
    return lines, first_of_2, [line for line in lines[first_of_2:] if line.startswith("attempt=1")]
