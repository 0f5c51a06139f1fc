"""docker-compose.yml keeps the promises the README makes for it (no Docker Compose needed;
tests/deploy brings it up for real)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ci_queue.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _seconds(duration: str) -> int:
    """A Compose duration such as ``6m`` or ``90s`` in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([hms])", duration))


def test_redis_persists_with_append_only():
    command = COMPOSE["services"]["redis"]["command"]
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in COMPOSE["services"]["redis"]["volumes"])


def test_workers_scale_and_run_the_real_commands():
    worker, web = COMPOSE["services"]["worker"], COMPOSE["services"]["web"]
    assert "container_name" not in worker, "a fixed name would forbid --scale worker=N"
    assert worker["command"][0] == "ci-queue-worker" and " ".join(web["command"]).startswith("ci-queue serve")
    assert "exec ci-queue worker --name" in (ROOT / "configs/container/ci-queue-worker").read_text()
    for service in (worker, web):
        assert service["environment"]["CIQ_REDIS_URL"].startswith("redis://redis:")
        assert service["image"] == "${CIQ_IMAGE:-ci-queue:latest}" and "BASE_IMAGE" in service["build"]["args"]
        assert "healthcheck" in service
    assert "user" not in web, "the web app runs as the image's unprivileged user"


def test_a_stopping_worker_hands_back_before_docker_kills_it():
    """Docker's SIGKILL must come after the worker's grace, its kill grace and a margin, or the
    jobs would wait for their leases to lapse instead of being handed back at once."""
    defaults = Settings()
    grace = _seconds(COMPOSE["services"]["worker"]["stop_grace_period"])
    assert grace >= defaults.shutdown_grace_seconds + defaults.kill_grace_seconds + 20
