"""``ci-queue standalone`` and the client commands against it: real redis-server, gunicorn,
Celery workers, git repositories; nothing mocked."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.cli.conftest import REPO, alive, ci_queue, kill_all, no_traceback, start_standalone, wait_until
from tests.engine.conftest import make_repo

pytestmark = pytest.mark.integration

PASSING = """
stages: [build, test, report]
build:
  stage: build
  script: echo building
lint:
  stage: test
  needs: []
  script: echo linting
unit:
  stage: test
  needs: [build]
  parallel:
    matrix:
      - PART: [a, b]
  script: echo "unit $PART"
tolerated:
  stage: test
  allow_failure: true
  script: exit 4
report:
  stage: report
  script: echo "reporting $GREETING"
"""

FAILING = """
build:
  stage: build
  script:
    - echo "about to break"
    - exit 3
deploy:
  stage: deploy
  script: echo never
"""

SLOW = """
slow:
  script:
    - echo "slow job started"
    - sleep 120
"""


def test_standalone_runs_its_own_redis_and_stores_a_private_token(standalone):
    token_file = standalone.config_home / "ci-queue" / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == standalone.token
    redis_servers = [pid for pid in standalone.service.tree()
                     if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(redis_servers) == 1, "standalone did not start a redis-server of its own"
    assert "6379" not in Path(f"/proc/{redis_servers[0]}/cmdline").read_bytes().decode()
    assert requests.get(f"{standalone.url}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{standalone.url}/api/v1/runs", timeout=5).status_code == 401
    listed = requests.get(f"{standalone.url}/api/v1/runs", timeout=5,
                          headers={"Authorization": f"Bearer {standalone.token}"})
    assert listed.status_code == 200 and "runs" in listed.json()


def test_run_of_a_local_repository_succeeds_and_prints_the_final_run_as_json(standalone, tmp_path):
    repo = tmp_path / "project"
    sha = make_repo(repo, {".ci-queue.yml": PASSING})
    result = standalone.cli("run", "--repo", str(repo), "--var", "GREETING=hi", "--priority", "-3", "--format", "json")
    no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(result.stdout)
    assert (run["status"], run["repo"], run["ref"], run["sha"], run["event"]) == ("success", "project", "main", sha,
                                                                                   "push")
    assert run["priority"] == -3
    jobs = {job["name"]: job for job in run["jobs"]}
    assert {name: job["status"] for name, job in jobs.items()} == {
        "build": "success", "lint": "success", "unit: [a]": "success", "unit: [b]": "success",
        "tolerated": "failed", "report": "success"}
    assert jobs["tolerated"]["exit_code"] == 4 and jobs["tolerated"]["allow_failure"] is True
    assert all(job["worker"].startswith("local-") for job in jobs.values())
    # the live display went to stderr, one line per change (not a terminal)
    assert "succeeded" in result.stderr and "unit: [b]" in result.stderr
    report = standalone.cli("logs", run["id"], "report")
    assert report.returncode == 0 and "reporting hi" in report.stdout


def test_run_with_inputs_gives_them_to_the_pipeline_files_spec_inputs(standalone, tmp_path):
    repo = tmp_path / "with-inputs"
    make_repo(repo, {".ci-queue.yml": "spec:\n  inputs:\n    copies: {type: number}\n    word: {default: plain}\n"
                                      "---\ngreet:\n  parallel: $[[ inputs.copies ]]\n"
                                      "  script: echo $[[ inputs.word | posix_escape ]]\n"})
    result = standalone.cli("run", "--repo", str(repo), "--input", "copies=2", "--input", "word=hello world",
                            "--format", "json")
    no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(result.stdout)
    assert sorted(job["name"] for job in run["jobs"]) == ["greet 1/2", "greet 2/2"]
    log = standalone.cli("logs", run["id"], "greet 2/2")
    assert log.returncode == 0 and "hello world" in log.stdout


def test_run_from_inside_a_repository_in_text_mode(standalone, tmp_path):
    repo = tmp_path / "inside"
    make_repo(repo, {".ci-queue.yml": "only:\n  script: echo from the current directory\n"})
    (repo / "sub").mkdir()
    result = ci_queue("run", "--server", standalone.url, env=standalone.env, cwd=repo / "sub")
    no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "inside main @" in result.stdout and "only" in result.stdout and "succeeded" in result.stdout


def test_a_failing_run_exits_1_and_shows_the_end_of_the_failed_log(standalone, tmp_path):
    repo = tmp_path / "broken"
    make_repo(repo, {".ci-queue.yml": FAILING})
    result = standalone.cli("run", "--repo", str(repo))
    no_traceback(result)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout and "script_failure (exit 3)" in result.stdout
    assert "about to break" in result.stdout, "the failed job's log tail is shown"
    assert "ci-queue logs" in result.stdout and "ci-queue status" in result.stdout


def test_status_logs_follow_and_cancel(standalone, tmp_path):
    repo = tmp_path / "slow"
    make_repo(repo, {".ci-queue.yml": SLOW})
    created = standalone.cli("run", "--repo", str(repo), "--no-wait", "--format", "json")
    assert created.returncode == 0, created.stderr
    run_id = json.loads(created.stdout)["id"]

    def job_status():
        result = standalone.cli("status", run_id, "--format", "json")
        assert result.returncode == 0, result.stderr
        jobs = json.loads(result.stdout)["jobs"]
        return jobs[0]["status"] if jobs else None

    wait_until(lambda: job_status() == "running", 30, "the slow job did not start")
    wait_until(lambda: "slow job started" in standalone.cli("logs", run_id, "slow").stdout, 15,
               "the log did not show the first line")
    follower = subprocess.Popen([sys.executable, "-m", "ci_queue.cli", "logs", run_id, "slow", "--follow",
                                 "--server", standalone.url], env=standalone.env, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        table = standalone.cli("status", run_id)
        assert table.returncode == 0
        assert "JOB" in table.stdout and "STAGE" in table.stdout and "WORKER" in table.stdout
        assert any(line.split()[:3] == ["slow", "test", "running"] for line in table.stdout.splitlines()), table.stdout

        canceled = standalone.cli("cancel", run_id)
        assert canceled.returncode == 0, canceled.stderr
        assert run_id in canceled.stdout
        wait_until(lambda: job_status() == "canceled", 20, "the job was not canceled")
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert "slow job started" in out
    final = json.loads(standalone.cli("status", run_id, "--format", "json").stdout)
    assert final["status"] == "canceled"
    again = standalone.cli("cancel", run_id)
    assert again.returncode == 0 and "canceled" in again.stdout


def test_errors_are_one_clear_line_and_exit_1(standalone, tmp_path):
    wrong = standalone.cli("status", "0123456789abcdef", "--token", "not-the-token")
    no_traceback(wrong)
    assert wrong.returncode == 1 and "refused the API token (401" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1

    unknown = standalone.cli("status", "0123456789abcdef")
    assert unknown.returncode == 1 and "no run 0123456789abcdef" in unknown.stderr

    unknown_job = standalone.cli("logs", "0123456789abcdef", "build")
    assert unknown_job.returncode == 1 and "no run" in unknown_job.stderr

    closed_port = ci_queue("status", "x", "--server", "http://127.0.0.1:9", env=standalone.env, timeout=30)
    no_traceback(closed_port)
    assert closed_port.returncode == 1 and "cannot reach ci-queue at http://127.0.0.1:9" in closed_port.stderr

    no_token = ci_queue("status", "x", "--server", standalone.url, env={**standalone.env,
                                                                         "XDG_CONFIG_HOME": str(tmp_path)})
    assert no_token.returncode == 1 and "no API token" in no_token.stderr

    by_env = ci_queue("status", "0123456789abcdef", "--server", standalone.url,
                      env={**standalone.env, "XDG_CONFIG_HOME": str(tmp_path), "CIQ_API_TOKEN": standalone.token})
    assert by_env.returncode == 1 and "no run" in by_env.stderr, "CIQ_API_TOKEN is used"


def test_usage_errors_exit_2(standalone, tmp_path):
    url_without_ref = standalone.cli("run", "--repo", "https://example.com/group/project.git")
    assert url_without_ref.returncode == 2 and "--ref" in url_without_ref.stderr
    not_a_repo = standalone.cli("run", "--repo", str(tmp_path))
    assert not_a_repo.returncode == 2 and "not in a git repository" in not_a_repo.stderr
    repo = tmp_path / "r"
    make_repo(repo, {".ci-queue.yml": "a:\n  script: 'true'\n"})
    bad_ref = standalone.cli("run", "--repo", str(repo), "--ref", "no-such-branch")
    assert bad_ref.returncode == 2 and "no-such-branch" in bad_ref.stderr
    bad_var = standalone.cli("run", "--repo", str(repo), "--var", "NOEQUALS")
    assert bad_var.returncode == 2
    for result in (url_without_ref, not_a_repo, bad_ref, bad_var):
        no_traceback(result)


def test_sigint_stops_every_child_including_its_redis(tmp_path):
    import redis

    system = start_standalone(tmp_path, workers=1)
    tree = system.service.tree()
    try:
        assert len(tree) >= 5, tree  # itself, redis-server, gunicorn master + worker, celery worker + pool
        redis_port = next(int(part.rsplit(":", 1)[1].split("/")[0]) for line in system.service.lines
                          for part in line.split() if part.startswith("redis://"))
        assert redis.Redis(port=redis_port).ping()
        started = time.monotonic()
        status = system.service.stop(signal.SIGINT, timeout=30)
        assert status == 0, system.service.log.read_text()[-3000:]
        assert time.monotonic() - started < 20
        wait_until(lambda: not any(alive(pid) for pid in tree), 5,
                   f"processes left behind: {[pid for pid in tree if alive(pid)]}")
    finally:
        system.service.stop(signal.SIGKILL)
        kill_all(tree)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()


def test_retry_runs_the_failed_job_again_and_waits_for_the_run(standalone, tmp_path):
    marker = tmp_path / "failed-once"
    repo = tmp_path / "flaky"
    make_repo(repo, {".ci-queue.yml": f"""
build:
  stage: build
  script:
    - if [ ! -e {marker} ]; then touch {marker}; exit 1; fi
    - echo second time lucky
after:
  stage: deploy
  script: echo after
"""})
    first = standalone.cli("run", "--repo", str(repo), "--format", "json")
    assert first.returncode == 1, first.stderr
    run_id = json.loads(first.stdout)["id"]
    retried = standalone.cli("retry", run_id, "--wait")
    no_traceback(retried)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "again: build" in retried.stdout and "succeeded" in retried.stdout
    run = json.loads(standalone.cli("status", run_id, "--format", "json").stdout)
    jobs = {job["name"]: job for job in run["jobs"]}
    assert run["status"] == "success" and jobs["build"]["attempt"] == 2 and jobs["after"]["status"] == "success"


def test_on_a_terminal_the_display_is_redrawn_in_place(standalone, tmp_path):
    import os
    import pty

    repo = tmp_path / "tty"
    make_repo(repo, {".ci-queue.yml": "one:\n  script: sleep 1\ntwo:\n  script: echo two\n"})
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ci_queue.cli", "run", "--repo", str(repo), "--server",
                             standalone.url], env={**standalone.env, "TERM": "xterm"}, cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = output.decode(errors="replace")
    assert "\x1b[" in text and "F\x1b[J" in text, "no redraw in place"
    assert "succeeded" in text and "one" in text and "two" in text
