"""Real ``ci-queue`` processes for the CLI tests: a standalone system (its own redis-server on a
free port, gunicorn, Celery workers) and client commands run as a user runs them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ci_queue.standalone import descendants, free_port
from tests.conftest import REPO, in_ci


def base_env(config_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user with no ci-queue settings, a config dir of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIQ_") and k != "XDG_CONFIG_HOME"}
    env.update({"PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(config_home), "CIQ_LOG_FORMAT": "json",
                "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def ci_queue(*args: str, env: dict[str, str], timeout: float = 60, cwd: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ci_queue.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd or REPO, stdin=subprocess.DEVNULL)


def ci_queue_to_exit(*args: str, env: dict[str, str], what: str, timeout: float = 30
                     ) -> subprocess.CompletedProcess[str]:
    """Run a command that is expected to stop by itself (a refusal at start) and wait for it; past
    ``timeout`` its whole process group is killed (``standalone``, ``serve`` have children) and the
    test fails saying it was still running ``what``."""
    argv = [sys.executable, "-m", "ci_queue.cli", *args]
    proc = subprocess.Popen(argv, env=env, cwd=REPO, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"`ci-queue {args[0]}` was still running after {timeout:g} s {what}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


def wait_until(condition, timeout: float, message: str, interval: float = 0.1):
    """Poll ``condition`` until it returns something true; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (within {timeout}s)")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


@dataclass
class Service:
    """A long-running ``ci-queue`` process whose stdout is collected line by line."""

    proc: subprocess.Popen
    log: Path
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    eof: bool = False

    @classmethod
    def start(cls, args: list[str], env: dict[str, str], log: Path) -> Service:
        proc = subprocess.Popen([sys.executable, "-m", "ci_queue.cli", *args], env=env, cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log.open("wb"),
                                text=True, start_new_session=True)
        service = cls(proc, log)
        threading.Thread(target=service._read, daemon=True).start()
        return service

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.eof = True
            self.changed.notify_all()

    def wait_for_line(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((line for line in self.lines if text in line), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or self.eof:
                    break
                self.changed.wait(left)
        raise AssertionError(f"no line with {text!r} within {timeout}s (exit status {self.proc.poll()}); "
                             f"stdout: {self.lines}\nstderr: {self.log.read_text(errors='replace')[-4000:]}")

    def tree(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        """Signal it and wait; leaves whatever it left behind for the caller to check."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def require_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    message = "no redis-server on PATH (standalone starts its own)"
    if in_ci():
        pytest.fail(message + "; CI must have one")
    pytest.skip(message)


@dataclass
class Standalone:
    service: Service
    url: str
    token: str
    env: dict[str, str]  # a client's environment: the same config dir, so the stored token
    config_home: Path

    def cli(self, *args: str, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
        return ci_queue(*args, "--server", self.url, env={**self.env, **extra}, timeout=timeout)


def start_standalone(tmp: Path, workers: int = 2, **extra: str) -> Standalone:
    """``extra``: more ``CIQ_*`` settings (a ``CIQ_REDIS_URL`` of the test's own...)."""
    require_redis_server()
    config_home = tmp / "config"
    port = free_port()
    env = base_env(config_home, CIQ_EXECUTOR="shell", CIQ_WORKSPACE_DIR=str(tmp / "workspaces"),
                   CIQ_GIT_CACHE_DIR=str(tmp / "git-cache"), CIQ_KILL_GRACE_SECONDS="1", **extra)
    service = Service.start(["standalone", "--port", str(port), "--workers", str(workers), "--concurrency", "3",
                             "--grace", "1"], env, tmp / "standalone.log")
    try:
        token_line = service.wait_for_line("API token", timeout=60)
        service.wait_for_line("ci-queue is ready at", timeout=60)
    except BaseException:
        tree = service.tree()
        service.stop()
        kill_all(tree)
        raise
    return Standalone(service, f"http://127.0.0.1:{port}", token_line.rsplit(" ", 1)[1],
                      base_env(config_home), config_home)


@pytest.fixture(scope="module")
def standalone(tmp_path_factory) -> Iterator[Standalone]:
    system = start_standalone(tmp_path_factory.mktemp("standalone"))
    tree = system.service.tree()
    try:
        yield system
    finally:
        tree += system.service.tree()
        system.service.stop()
        kill_all(tree)
