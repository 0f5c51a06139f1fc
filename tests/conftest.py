"""Shared test helpers: where the real-world fixtures are, and how to miss them honestly."""

from __future__ import annotations

import os
from pathlib import Path

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
