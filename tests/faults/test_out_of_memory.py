"""Redis out of memory (``maxmemory`` with ``noeviction``, as Celery wants it) is an outage like
any other: workers wait and recover, nothing is lost; and a log that is cut says so, where."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from ci_queue.settings import Settings
from ci_queue.store import Store
from tests.conftest import RedisServer
from tests.engine.conftest import Engine, make_repo
from tests.faults.conftest import LEASE_SECONDS, engine_env


@pytest.fixture
def small_redis(tmp_path: Path):
    server = RedisServer(tmp_path / "small-redis", ("--maxmemory", "48mb", "--maxmemory-policy", "noeviction"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _engine(server: RedisServer, workdir: Path, **extra: str) -> Engine:
    env = engine_env(server.url, workdir, **extra)
    settings = Settings.from_env(env)
    return Engine(settings=settings, env=env, store=Store(server.client(), settings.key_prefix, 3600), workdir=workdir)


def _fill(client: redis.Redis) -> None:
    """Out of memory: memory used beyond ``maxmemory`` (8 MB of data, then the limit lowered below
    what is used, as a growing data set meets a fixed limit), so every write is refused with OOM."""
    for k in range(8):
        client.set(f"filler:{k}", b"x" * (1 << 20))
    client.config_set("maxmemory", "2mb")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "1")


def _free(client: redis.Redis) -> None:
    client.delete(*client.keys("filler:*"))
    client.config_set("maxmemory", "48mb")


def test_redis_out_of_memory_costs_only_its_length(small_redis: RedisServer, tmp_path: Path):
    engine = _engine(small_redis, tmp_path)
    try:
        workers = [engine.start_worker("w1", concurrency=1), engine.start_worker("w2", concurrency=1)]
        make_repo(tmp_path / "repo", {".ci-queue.yml": """
lines:
  script:
    - for i in $(seq 1 150); do echo "line $i"; sleep 0.1; done
after:
  stage: test
  script:
    - echo after-done
"""})
        run_id = engine.trigger(tmp_path / "repo")
        engine.wait(run_id, until=lambda r: bool(r.jobs) and r.jobs[0].status == "running")
        client = small_redis.client()
        _fill(client)
        full_until = time.monotonic() + LEASE_SECONDS + 2
        while time.monotonic() < full_until:  # out of memory for longer than a lease
            assert all(p.poll() is None for p in workers), "a worker exited while Redis was out of memory"
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                client.set("probe", "1")  # still out of memory
            time.sleep(0.2)
        _free(client)
        run = engine.wait(run_id, timeout=90)
        assert run.status == "success", run.to_dict()
        assert [job.attempt for job in run.jobs] == [1, 1], [job.attempts for job in run.jobs]
        text = "\n".join(fields["text"] for _, fields in engine.store.read_log(run_id, 0)) + "\n"
        assert all(f"line {i}\n" in text for i in range(1, 151)), "log lines were lost"
        assert all(p.poll() is None for p in workers)
    finally:
        engine.stop_workers()


def test_a_log_cut_by_the_stream_cap_says_so_where_it_is_cut(small_redis: RedisServer, tmp_path: Path):
    engine = _engine(small_redis, tmp_path, CIQ_LOG_STREAM_MAXLEN="1000")
    try:
        engine.start_worker("w1", concurrency=1)
        make_repo(tmp_path / "repo", {".ci-queue.yml": "long:\n  script:\n    - seq 1 5000\n"})
        run = engine.wait(engine.trigger(tmp_path / "repo"), timeout=60)
        assert run.status == "success"
        entries = engine.store.read_log(run.id, 0)
        assert "lines of this log were dropped" in entries[0][1]["text"], entries[0]
        dropped = int(entries[0][1]["text"].split("first ")[1].split()[0])
        assert dropped == int(entries[1][1]["n"]) - 1 > 3000  # the marker counts what is missing, exactly
        assert [f["text"] for _, f in entries if f["stream"] == "out"][-1] == "5000", "the log's end was kept"
    finally:
        engine.stop_workers()
