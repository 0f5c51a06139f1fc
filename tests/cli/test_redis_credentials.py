"""Redis with credentials, seen by the real processes: ``ci-queue standalone`` (gunicorn, Celery
workers, the sweeper) on a ``redis-server`` that wants a password (an ACL user) or TLS with
client certificates, a job run end to end over it, and the password nowhere in what any of them
printed or answered; ``serve``, ``worker`` and ``standalone`` refusing a wrong password at start
in one line; ``serve`` answering 503 while the password is rotated under it."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from ci_queue.celery_app import make_celery
from ci_queue.settings import Settings
from ci_queue.standalone import free_port
from ci_queue.store import store_from_settings
from ci_queue.unacked import recover
from tests.cli.conftest import (
    Service,
    Standalone,
    base_env,
    ci_queue_to_exit,
    kill_all,
    no_traceback,
    start_standalone,
    wait_until,
)
from tests.engine.conftest import make_repo
from tests.secure_redis import ACL_USER, SecureRedis, TlsFiles, assert_hidden, make_tls_files

pytestmark = pytest.mark.integration

TOKEN = "tok-redis-credentials-5d0a"
PIPELINE = "hello:\n  script: echo hello-over-$CI_JOB_NAME\n"


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[SecureRedis]:
    server = SecureRedis(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


def run_a_job_and_stop(system: Standalone, tmp_path: Path) -> dict[str, str]:
    """One run of a one-job pipeline through the CLI, ``/readyz`` and ``/metrics`` read, then the
    system stopped; returns everything it printed or answered (name -> text)."""
    tree = system.service.tree()
    try:
        repo = tmp_path / "project"
        make_repo(repo, {".ci-queue.yml": PIPELINE})
        result = system.cli("run", "--repo", str(repo), "--format", "json")
        no_traceback(result)
        assert result.returncode == 0, result.stdout + result.stderr
        run = json.loads(result.stdout)
        assert run["status"] == "success" and [job["status"] for job in run["jobs"]] == ["success"], run
        log = system.cli("logs", run["id"], "hello")
        assert "hello-over-hello" in log.stdout, log.stdout + log.stderr
        ready = requests.get(f"{system.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json()["redis"] == "ok", ready.text
        metrics = requests.get(f"{system.url}/metrics", timeout=10)
        assert metrics.status_code == 200 and "ciq_redis_up 1.0" in metrics.text
        # a sweeper's first tick says so (it read Redis's INFO and took its lock over the credentials)
        wait_until(lambda: "running job(s) get" in system.service.log.read_text(errors="replace"), 20,
                   "no sweeper tick")
        tree += system.service.tree()
    finally:
        system.service.stop()
        kill_all(tree)
    return {"standalone stdout": "\n".join(system.service.lines),
            "standalone stderr (web, workers)": system.service.log.read_text(errors="replace"),
            "run": result.stdout + result.stderr, "logs": log.stdout + log.stderr,
            "readyz": ready.text, "metrics": metrics.text}


def test_standalone_on_an_acl_user_runs_a_job_and_never_prints_the_password(acl_redis, tmp_path):
    system = start_standalone(tmp_path, workers=1, CIQ_REDIS_URL=acl_redis.url)
    printed = run_a_job_and_stop(system, tmp_path)
    banner = f"Redis: redis://{ACL_USER}:***@127.0.0.1:{acl_redis.port}/0"
    assert banner in printed["standalone stdout"], printed["standalone stdout"]
    stderr = printed["standalone stderr (web, workers)"]
    # Celery's banner and connection lines were printed, with the password masked (by kombu)
    assert f"transport:   redis://{ACL_USER}:**@127.0.0.1:{acl_redis.port}/0" in stderr, stderr
    assert "sweeper tick failed" not in stderr, stderr
    assert_hidden(printed, acl_redis.secrets())
    # the sweeper's recovery of unacknowledged messages goes through kombu's channel client
    settings = Settings.from_env({"CIQ_REDIS_URL": acl_redis.url, "CIQ_KEY_PREFIX": "ciq-acl-test:"})
    assert recover(store_from_settings(settings), make_celery(settings), 0) == {"restored": 0, "dropped": 0}


def test_standalone_over_tls_with_a_client_certificate_runs_a_job(tmp_path, tls_files):
    redis = SecureRedis(tmp_path / "redis", tls=tls_files).start()
    try:
        url = redis.url_for(ACL_USER, redis.password)  # the files come from the settings
        system = start_standalone(tmp_path, workers=1, CIQ_REDIS_URL=url, CIQ_REDIS_TLS_CA=str(tls_files.ca),
                                  CIQ_REDIS_TLS_CERT=str(tls_files.client_cert),
                                  CIQ_REDIS_TLS_KEY=str(tls_files.client_key))
        printed = run_a_job_and_stop(system, tmp_path)
    finally:
        redis.kill()
    assert f"Redis: rediss://{ACL_USER}:***@127.0.0.1:{redis.port}/0" in printed["standalone stdout"]
    assert "sweeper tick failed" not in printed["standalone stderr (web, workers)"]
    assert_hidden(printed, redis.secrets())


def test_the_broker_verifies_the_servers_certificate(tmp_path, tls_files):
    """kombu, given a ``rediss://`` URL without TLS options, does not check the certificate at
    all; ours always does: without the CA that signed it the broker connection is refused, with
    it the connection works (the unacknowledged-message recovery uses it too)."""
    redis = SecureRedis(tmp_path / "redis", tls=tls_files).start()
    try:
        env = {"CIQ_REDIS_URL": redis.url_for(ACL_USER, redis.password), "CIQ_KEY_PREFIX": "ciq-tls-test:",
               "CIQ_REDIS_TLS_CERT": str(tls_files.client_cert), "CIQ_REDIS_TLS_KEY": str(tls_files.client_key)}
        untrusting = make_celery(Settings.from_env(env))
        with untrusting.connection_for_write() as connection, pytest.raises(Exception) as refused:
            connection.ensure_connection(max_retries=1)
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
        settings = Settings.from_env({**env, "CIQ_REDIS_TLS_CA": str(tls_files.ca)})
        trusting = make_celery(settings)
        assert recover(store_from_settings(settings), trusting, 0) == {"restored": 0, "dropped": 0}
    finally:
        redis.kill()


def _start_command(command: str, tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    args = {"worker": ["worker", "--name", "refused"], "serve": ["serve", "--port", str(free_port())],
            "standalone": ["standalone", "--port", str(free_port()), "--workers", "1"]}[command]
    env = base_env(tmp_path / "config", CIQ_REDIS_URL=url, CIQ_API_TOKENS=TOKEN)
    return ci_queue_to_exit(*args, env=env, what="with a wrong password")


@pytest.mark.parametrize("command", ["worker", "serve", "standalone"])
def test_a_wrong_password_is_one_line_at_start_and_exit_1(acl_redis, tmp_path, command):
    wrong = "wrong-Passw0rd-e3"
    result = _start_command(command, tmp_path, acl_redis.url_for(ACL_USER, wrong))
    no_traceback(result)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if "Redis" in line]
    assert len(lines) == 1, result.stderr
    assert f"cannot reach Redis at redis://{ACL_USER}:***@127.0.0.1:{acl_redis.port}/0" in lines[0]
    assert "refused the credentials" in lines[0], lines[0]
    assert_hidden({"stdout": result.stdout, "stderr": result.stderr}, [wrong, *acl_redis.secrets()])


def test_a_password_rotated_under_serve_is_503_with_retry_after_until_it_is_back(acl_redis, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    env = base_env(tmp_path / "config", CIQ_REDIS_URL=acl_redis.url, CIQ_API_TOKENS=TOKEN, CIQ_REDIS_SOCKET_TIMEOUT="2")
    service = Service.start(["serve", "--port", url.rsplit(":", 1)[1], "--workers", "1", "--threads", "4"], env,
                            tmp_path / "serve.log")
    tree = service.tree()
    admin = acl_redis.admin()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answers: dict[str, str] = {}
    try:
        service.wait_for_line("listening on", timeout=60)
        tree += service.tree()
        assert requests.get(f"{url}/api/v1/runs", headers=headers, timeout=10).status_code == 200
        # the operator changes the password in Redis and drops the connections made with the old one
        admin.acl_setuser(ACL_USER, enabled=True, reset_passwords=True, passwords=["+rotated-Pw-0b7"])
        admin.client_kill_filter(user=ACL_USER)
        refused = requests.get(f"{url}/api/v1/runs", headers=headers, timeout=10)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "5"
        assert "Redis refused our credentials" in refused.json()["error"]
        ready = requests.get(f"{url}/readyz", timeout=10)
        assert ready.status_code == 503 and "refused the credentials" in ready.json()["redis"], ready.text
        answers.update(refused=refused.text, readyz=ready.text)
        # the password given back (as if the servers had been given the new one): it works again
        admin.acl_setuser(ACL_USER, enabled=True, reset_passwords=True, passwords=[f"+{acl_redis.password}"])
        wait_until(lambda: requests.get(f"{url}/api/v1/runs", headers=headers, timeout=10).status_code == 200, 20,
                   "the API did not recover once the password was back")
    finally:
        service.stop(signal.SIGTERM)
        kill_all(tree)
    answers["serve log"] = service.log.read_text(errors="replace") + "\n".join(service.lines)
    assert "answered 503: Redis refused our credentials" in answers["serve log"]
    assert_hidden(answers, acl_redis.secrets())


def test_a_broker_refusing_the_credentials_is_said_as_such(acl_redis):
    """kombu reports a refused password as its own OperationalError; the web app still knows it
    for what it is (a 503 saying so, not "the broker is unreachable")."""
    from ci_queue.web.unavailable import dependency_failure

    wrong = acl_redis.url_for(ACL_USER, "wrong-Passw0rd-e3")
    app = make_celery(Settings.from_env({"CIQ_REDIS_URL": wrong}), web=True)
    with pytest.raises(Exception) as refused:
        app.send_task("ciq.plan_run", args=["0123456789abcdef"])
    assert type(refused.value).__module__.startswith("kombu")
    assert dependency_failure(refused.value) == "Redis refused our credentials"
