"""Redis away, seen by the command line: ``ci-queue run`` against a real ``ci-queue serve`` whose
Redis (a ``redis-server`` of the test's own) is killed and started again, or frozen and thawed,
while it retries; ``ci-queue worker`` given a Redis that is not there."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_queue.standalone import free_port
from ci_queue.store import Store
from tests.cli.conftest import REPO, Service, base_env, ci_queue_to_exit, kill_all, no_traceback, wait_until
from tests.conftest import TEST_REDIS_URL, RedisServer

pytestmark = pytest.mark.integration

TOKEN = "tok-cli-unavailable-91c2"
PREFIX = "ciq:"
CLONE_URL = "https://git.example.com/o/away.git"  # never cloned: no worker runs here


class Served:
    """``ci-queue serve`` on a Redis of the test's own."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.redis = RedisServer(tmp / "redis").start()
        self.url = f"http://127.0.0.1:{free_port()}"
        env = base_env(tmp / "config", CIQ_REDIS_URL=self.redis.url, CIQ_API_TOKENS=TOKEN, CIQ_KEY_PREFIX=PREFIX,
                       CIQ_REDIS_SOCKET_TIMEOUT="1")
        self.service = Service.start(["serve", "--port", self.url.rsplit(":", 1)[1], "--workers", "1",
                                      "--threads", "4"], env, tmp / "serve.log")
        self.service.wait_for_line("listening on", timeout=60)

    def run_command(self) -> tuple[subprocess.Popen, Path]:
        """``ci-queue run --no-wait --format json`` in the background; its stderr goes to a file."""
        stderr = self.tmp / "run.stderr"
        proc = subprocess.Popen([sys.executable, "-m", "ci_queue.cli", "run", "--repo", CLONE_URL, "--ref", "main",
                                 "--no-wait", "--format", "json", "--server", self.url, "--token", TOKEN],
                                env=base_env(self.tmp / "config"), cwd=REPO, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=stderr.open("wb"), text=True)
        return proc, stderr

    def runs(self) -> list[str]:
        runs, _ = Store(self.redis.client(), PREFIX).list_runs(repo="away", limit=100)
        return [run.id for run in runs]

    def warm(self) -> None:
        """One run through the API: the server's Redis connection is open and its scripts loaded,
        as on a server that has been up a while."""
        import requests

        response = requests.post(f"{self.url}/api/v1/runs", headers={"Authorization": f"Bearer {TOKEN}"},
                                 json={"clone_url": CLONE_URL, "ref": "warm", "repo": "warm"}, timeout=10)
        assert response.status_code == 202, response.text

    def stop(self) -> None:
        tree = self.service.tree()
        self.service.stop(signal.SIGTERM)
        kill_all(tree)
        self.redis.kill()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    system = Served(tmp_path)
    try:
        yield system
    finally:
        system.stop()


def finish(proc: subprocess.Popen, stderr: Path, timeout: float = 90) -> dict:
    """The created run ``ci-queue run`` printed; it must have succeeded."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, (proc.returncode, out, stderr.read_text())
    return json.loads(out)


def test_run_retries_while_redis_restarts_and_makes_one_run(served):
    served.redis.kill()
    proc, stderr = served.run_command()
    note = wait_until(lambda: "trying again" in stderr.read_text() and stderr.read_text(), 30,
                      "`ci-queue run` never said it was trying again")
    assert "503" in note and "unavailable" in note
    served.redis.start()
    created = finish(proc, stderr)
    assert created["status"] == "queued" and served.runs() == [created["id"]]
    no_traceback(subprocess.CompletedProcess([], 0, "", stderr.read_text()))


def test_run_retries_through_a_frozen_redis_and_its_key_makes_one_run(served):
    served.warm()
    served.redis.freeze()
    try:
        proc, stderr = served.run_command()
        note = wait_until(lambda: "trying again" in stderr.read_text() and stderr.read_text(), 30,
                          "`ci-queue run` never said it was trying again")
    finally:
        served.redis.thaw()
    # the server named the run it was making; its write ran when Redis woke up; the retry, with
    # the same Idempotency-Key, answered that run instead of making a second one
    named = re.search(r"\(run ([0-9a-f]{16}) may have been created", note).group(1)
    created = finish(proc, stderr)
    assert created["id"] == named, (created, note)
    assert served.runs() == [named]


def closed_port_url(password: str = "") -> str:
    return f"redis://{':' + password + '@' if password else ''}127.0.0.1:{free_port()}/0"


@pytest.mark.parametrize("variable", ["CIQ_REDIS_URL", "CIQ_STATE_URL"])
def test_a_worker_whose_redis_is_not_there_says_so_and_exits_1(tmp_path, variable):
    if variable == "CIQ_STATE_URL":
        from tests.conftest import require_redis

        require_redis()
    wrong = closed_port_url(password="s3cret-pw")
    env = base_env(tmp_path, **{"CIQ_REDIS_URL": TEST_REDIS_URL, variable: wrong})
    started = time.monotonic()
    result = ci_queue_to_exit("worker", "--name", "nowhere", env=env, what="trying to reach Redis")
    seconds = time.monotonic() - started
    out, err = result.stdout, result.stderr
    assert result.returncode == 1, (result.returncode, out, err)
    assert seconds < 10, seconds
    redacted = wrong.replace(":s3cret-pw@", "***@")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach Redis at {redacted}" in lines[0], err
    assert "s3cret" not in out + err and "Traceback" not in out + err
