"""``ci-queue serve`` (gunicorn + the sweeper) and the gunicorn configuration module for people who
run gunicorn themselves; real processes, the test Redis with a key prefix of the test's own."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import requests

from ci_queue.standalone import free_port
from tests.cli.conftest import REPO, Service, alive, base_env, ci_queue, kill_all, no_traceback, wait_until
from tests.conftest import TEST_REDIS_URL

pytestmark = pytest.mark.integration


def test_serve_refuses_to_start_without_tokens(tmp_path):
    result = ci_queue("serve", "--port", str(free_port()), env=base_env(tmp_path), timeout=30)
    no_traceback(result)
    assert result.returncode == 2
    assert "no API tokens" in result.stderr and "CIQ_API_TOKENS" in result.stderr and "--dev" in result.stderr


def test_serve_dev_runs_gunicorn_with_a_throwaway_token_and_the_sweeper(tmp_path, redis_client, key_prefix):
    port = free_port()
    env = base_env(tmp_path, CIQ_REDIS_URL=TEST_REDIS_URL, CIQ_KEY_PREFIX=key_prefix)
    service = Service.start(["serve", "--dev", "--port", str(port), "--workers", "2"], env, tmp_path / "serve.log")
    try:
        token = service.wait_for_line("API token for this process only").rsplit(" ", 1)[1]
        service.wait_for_line(f"listening on http://127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).status_code == 200, 30, "no /healthz")
        assert requests.get(f"{url}/api/v1/runs", timeout=5).status_code == 401
        listed = requests.get(f"{url}/api/v1/runs", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert listed.status_code == 200 and listed.json()["runs"] == []
        # serve's defaults: no local repositories, even for a full-power token
        for local in ("file:///etc", "/etc"):
            refused = requests.post(f"{url}/api/v1/runs", headers={"Authorization": f"Bearer {token}"}, timeout=5,
                                    json={"repo": "o/etc", "clone_url": local, "ref": "main"})
            assert refused.status_code == 403 and "CIQ_ALLOW_LOCAL_REPOS=1" in refused.json()["error"], refused.text
        # the sweeper runs in the gunicorn master: it takes its Redis lock within a tick or two
        holder = wait_until(lambda: redis_client.get(f"{key_prefix}sweeper:lock"), 15, "the sweeper never ran")
        assert holder
        workers = wait_until(lambda: len(tree := service.tree()) == 3 and tree, 30, "not 2 gunicorn workers")
        # a client command against it, with the printed token
        status = ci_queue("status", "0123456789abcdef", "--server", url, "--token", token, env=env)
        assert status.returncode == 1 and "no run 0123456789abcdef" in status.stderr
    finally:
        tree = service.tree()
        exit_status = service.stop(signal.SIGTERM)
    try:
        assert exit_status == 0, service.log.read_text()[-3000:]
        wait_until(lambda: not any(alive(pid) for pid in workers), 10, "gunicorn workers left behind")
    finally:
        kill_all(tree)
    assert redis_client.get(f"{key_prefix}sweeper:lock") is None, "the sweeper's lock is released on exit"


def test_gunicorn_with_the_configuration_module_as_the_readme_shows(tmp_path, key_prefix):
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-c", "python:ci_queue.serve", "--bind", f"127.0.0.1:{port}",
               "--workers", "1", "ci_queue.web:create_app()"]
    env = base_env(tmp_path, CIQ_REDIS_URL=TEST_REDIS_URL, CIQ_KEY_PREFIX=key_prefix)
    refused = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no API tokens" in refused.stderr

    proc = subprocess.Popen(command, env={**env, "CIQ_API_TOKENS": "t1,t2"}, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return requests.get(f"{url}/healthz", timeout=2).status_code == 200
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stdout.read()
                return False

        wait_until(up, 30, "gunicorn did not come up")
        assert requests.get(f"{url}/api/v1/runs", headers={"Authorization": "Bearer t2"}, timeout=5).status_code == 200
        assert requests.get(f"{url}/api/v1/runs", headers={"Authorization": "Bearer t3"}, timeout=5).status_code == 401
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert "gthread" in output, output
