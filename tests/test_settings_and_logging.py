"""Settings come from CIQ_* variables with clear errors; service logs are JSON lines or human."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ci_queue.settings import Settings, SettingsError
from tests.conftest import REPO


def test_defaults_and_conversions():
    settings = Settings.from_env({"CIQ_KEEP_WORKSPACES": "yes", "CIQ_KILL_GRACE_SECONDS": "0.5",
                                  "CIQ_MAX_LOG_BYTES": "1024", "CIQ_LOG_FORMAT": "json", "CIQ_UNRELATED": "x"})
    assert settings.keep_workspaces is True and settings.kill_grace_seconds == 0.5
    assert settings.max_log_bytes == 1024 and settings.log_format == "json"
    assert Settings.from_env({}).retention_days == 30 and Settings.from_env({}).executor == "auto"


@pytest.mark.parametrize("env,message", [
    ({"CIQ_MAX_LOG_BYTES": "lots"}, "CIQ_MAX_LOG_BYTES must be a number"),
    ({"CIQ_KEEP_WORKSPACES": "maybe"}, "CIQ_KEEP_WORKSPACES must be a boolean"),
    ({"CIQ_LOG_FORMAT": "xml"}, "CIQ_LOG_FORMAT must be auto, human or json"),
    ({"CIQ_EXECUTOR": "podman"}, "CIQ_EXECUTOR must be auto, shell or docker"),
    ({"CIQ_DEFAULT_JOB_TIMEOUT": "0"}, "CIQ_DEFAULT_JOB_TIMEOUT must be positive"),
    ({"CIQ_REDIS_SOCKET_TIMEOUT": "0"}, "CIQ_REDIS_SOCKET_TIMEOUT must be positive"),
])
def test_bad_values_are_refused_with_the_variable_named(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def _log(fmt: str) -> str:
    code = ("from ci_queue.logging import configure, bind\nconfigure()\n"
            "bind(run_id='r1', job='build', step='script').info('hello {}', 'world')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env={"CIQ_LOG_FORMAT": fmt, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, check=True)
    return result.stderr


def test_json_logs_carry_run_job_and_step():
    record = json.loads(_log("json").strip().splitlines()[-1])["record"]
    assert record["message"] == "hello world"
    assert {k: record["extra"][k] for k in ("run_id", "job", "step")} == {"run_id": "r1", "job": "build",
                                                                          "step": "script"}


def test_human_logs_show_the_context():
    line = _log("human").strip().splitlines()[-1]
    assert "[run_id=r1 job=build step=script] hello world" in line


def test_tls_files_must_exist(tmp_path):
    with pytest.raises(SettingsError, match="CIQ_REDIS_TLS_CA: no such file"):
        Settings.from_env({"CIQ_REDIS_TLS_CA": str(tmp_path / "missing.pem")})
    (tmp_path / "key.pem").write_text("key")
    with pytest.raises(SettingsError, match="CIQ_REDIS_TLS_KEY is the key of CIQ_REDIS_TLS_CERT"):
        Settings.from_env({"CIQ_REDIS_TLS_KEY": str(tmp_path / "key.pem")})
