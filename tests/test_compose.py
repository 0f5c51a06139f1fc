"""docker-compose.yml keeps the promises the README makes for it (no Docker Compose needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

COMPOSE = yaml.safe_load((Path(__file__).resolve().parents[1] / "docker-compose.yml").read_text())


def test_redis_persists_with_append_only():
    command = COMPOSE["services"]["redis"]["command"]
    assert "--appendonly" in command and command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in COMPOSE["services"]["redis"]["volumes"])


def test_workers_scale_and_run_the_real_commands():
    worker, web = COMPOSE["services"]["worker"], COMPOSE["services"]["web"]
    assert "container_name" not in worker, "a fixed name would forbid --scale worker=N"
    assert "ci-queue worker" in " ".join(worker["command"]) and "ci-queue serve" in " ".join(web["command"])
    for service in (worker, web):
        assert service["environment"]["CIQ_REDIS_URL"].startswith("redis://redis:")
