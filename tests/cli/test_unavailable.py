"""``ci-queue worker`` given a Redis that is not there: it says so at once and exits 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from ci_queue.standalone import free_port
from tests.cli.conftest import REPO, base_env
from tests.conftest import TEST_REDIS_URL

pytestmark = pytest.mark.integration


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
    proc = subprocess.Popen([sys.executable, "-m", "ci_queue.cli", "worker", "--name", "nowhere"], env=env, cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("the worker was still trying after 30 s") from None
    seconds = time.monotonic() - started
    assert proc.returncode == 1, (proc.returncode, out, err)
    assert seconds < 10, seconds
    redacted = wrong.replace(":s3cret-pw@", "***@")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach Redis at {redacted}" in lines[0], err
    assert "s3cret" not in out + err and "Traceback" not in out + err
