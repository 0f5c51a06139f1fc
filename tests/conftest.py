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
