"""The whole engine on a Redis of the test's own, which the test kills, freezes, fills or
restarts: real ``ci-queue worker`` processes, the shell executor, short leases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_queue.settings import Settings
from ci_queue.store import Store
from tests.conftest import RedisServer
from tests.engine.conftest import Engine
from tests.engine.conftest import engine_env as shared_env

LEASE_SECONDS = 10


def engine_env(redis_url: str, workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a fault test's workers: their own Redis, short leases."""
    return shared_env(redis_url, f"ciq-fault-{uuid.uuid4().hex[:8]}:", workdir,
                      CIQ_JOB_LEASE_SECONDS=str(LEASE_SECONDS), **extra)


@pytest.fixture
def redis_server(own_redis: RedisServer) -> RedisServer:
    return own_redis


@pytest.fixture
def fault_engine(tmp_path: Path, redis_server: RedisServer) -> Iterator[Engine]:
    import redis

    env = engine_env(redis_server.url, tmp_path)
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    engine = Engine(settings=settings, env=env, store=Store(client, settings.key_prefix, 3600), workdir=tmp_path)
    try:
        yield engine
    finally:
        engine.stop_workers()
