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


PASSWORD = 'Secr3t/"pw@x'  # a quote and a slash: JSON and URLs write it otherwise


@pytest.mark.parametrize("fmt", ["json", "human"])
def test_log_lines_never_carry_a_redis_password(fmt):
    """Whatever a message or an exception holds, the passwords of the Redis settings are masked in
    loguru's lines and in the standard-library handlers Celery's worker sets up (as `ci-queue
    worker` does: the hook first, then Celery's own logging set-up)."""
    from urllib.parse import quote

    url = f"redis://ciq:{quote(PASSWORD, safe='')}@127.0.0.1:1/0"
    code = ("import logging, sys\n"
            "from loguru import logger\n"
            "from ci_queue.logging import configure, scrub_celery_logs\n"
            "from ci_queue.celery_app import make_celery\n"
            "from ci_queue.settings import get_settings\n"
            "configure()\n"
            "scrub_celery_logs(get_settings())\n"
            "pw, url = sys.argv[1], sys.argv[2]\n"
            "logger.info('connecting to {} with {}', url, pw)\n"
            "try:\n"
            "    raise ValueError('bad password ' + pw)\n"
            "except ValueError as exc:\n"
            "    logger.opt(exception=exc).error('failed')\n"
            "make_celery().log.setup_logging_subsystem(loglevel='INFO')\n"
            "logging.getLogger('celery').error('celery says %s', pw, exc_info=ValueError('in a traceback ' + pw))\n")
    result = subprocess.run([sys.executable, "-c", code, PASSWORD, url], capture_output=True, text=True, cwd=REPO,
                            env={"CIQ_LOG_FORMAT": fmt, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                                 "CIQ_REDIS_URL": url, "CIQ_REDIS_SENTINEL_PASSWORD": "sentinel-only-pw"},
                            check=True)
    err = result.stderr
    assert "connecting to redis://ciq:***@127.0.0.1:1/0 with ***" in err, err
    assert "bad password ***" in err and "celery says ***" in err and "in a traceback ***" in err, err
    assert PASSWORD not in err and quote(PASSWORD, safe="") not in err and json.dumps(PASSWORD)[1:-1] not in err, err


def test_tls_files_must_exist(tmp_path):
    with pytest.raises(SettingsError, match="CIQ_REDIS_TLS_CA: no such file"):
        Settings.from_env({"CIQ_REDIS_TLS_CA": str(tmp_path / "missing.pem")})
    (tmp_path / "key.pem").write_text("key")
    with pytest.raises(SettingsError, match="CIQ_REDIS_TLS_KEY is the key of CIQ_REDIS_TLS_CERT"):
        Settings.from_env({"CIQ_REDIS_TLS_KEY": str(tmp_path / "key.pem")})
