"""Routine faults of planning end a run as ``error`` quickly instead of leaving it ``queued``:
real Redis, real ``ci-queue worker`` processes, real git repositories (issue #8, item 6)."""

from __future__ import annotations

import functools
import socket
import subprocess
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ci_queue.dispatch import trigger_run
from tests.engine.conftest import Engine, make_repo

pytestmark = pytest.mark.integration

PIPELINE = "build:\n  script: echo built\n"

LOOPBACK_ALLOWED = {"CIQ_CLONE_ALLOW_HOSTS": "127.0.0.1"}  # the clone policy refuses loopback hosts otherwise


def _timed_wait(engine: Engine, run_id: str, timeout: float = 60):
    """The finished run and how long it took from now."""
    started = time.monotonic()
    run = engine.wait(run_id, timeout=timeout)
    return run, time.monotonic() - started


def _closed_port() -> int:
    """A port of 127.0.0.1 nobody listens on (bound, then closed: connecting is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _force_push_away(repo: Path) -> None:
    """Rewrite main's only commit and drop the old one for good, as a force-push plus the forge's
    garbage collection do."""
    git = ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "commit", "-q", "--amend", "-m", "rewritten"], check=True)
    subprocess.run([*git, "reflog", "expire", "--expire=now", "--all"], check=True)
    subprocess.run([*git, "gc", "-q", "--prune=now"], check=True)


@pytest.mark.parametrize("with_sha", [False, True], ids=["ref-only", "with-sha"])
def test_a_clone_url_that_is_not_a_repository_ends_the_run_as_error_naming_the_path(engine, tmp_path, with_sha):
    not_a_repo = tmp_path / "just-a-directory"
    not_a_repo.mkdir()
    (not_a_repo / "README").write_text("no .git here\n")
    engine.start_worker("w1")
    run_id = trigger_run(engine.store, engine.celery, repo="o/r", ref="main", clone_url=f"file://{not_a_repo}",
                         sha="ab" * 20 if with_sha else "")
    run, took = _timed_wait(engine, run_id)
    assert run.status == "error", run.to_dict()
    assert str(not_a_repo) in run.error and "does not appear to be a git repository" in run.error
    assert "\n" not in run.error and "attempts" not in run.error, "a permanent failure is not retried"
    assert took < 30


def test_a_sha_that_a_force_push_removed_ends_the_run_as_error(engine, tmp_path):
    repo = tmp_path / "repo"
    gone = make_repo(repo, {".ci-queue.yml": PIPELINE})
    _force_push_away(repo)
    engine.start_worker("w1")
    run, took = _timed_wait(engine, engine.trigger(repo, sha=gone))
    assert run.status == "error", run.to_dict()
    assert f"commit {gone} not found in file://{repo}" in run.error
    assert "attempts" not in run.error, "a permanent failure is not retried"
    assert took < 30


def test_an_unreachable_server_is_retried_a_bounded_number_of_times_then_the_run_ends_as_error(engine, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/repo.git"
    engine.start_worker("w1", extra_env=LOOPBACK_ALLOWED)
    run_id = trigger_run(engine.store, engine.celery, repo="o/r", ref="main", clone_url=url)
    run, took = _timed_wait(engine, run_id)
    assert run.status == "error", run.to_dict()
    assert run.error.startswith("checkout failed after 4 attempts: "), run.error
    assert url in run.error and "onnect" in run.error  # curl: "Failed to connect ... Couldn't connect"
    assert took < 60


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_planner_retry_proceeds_and_plans_the_run_once_the_server_answers(engine, tmp_path):
    """The retry of plan_run re-enters its own claim (before, it found the claim "held" and left
    the run queued): a server that refused the first attempt and answers the next one gets the
    run planned and run."""
    served = tmp_path / "served"
    sha = make_repo(tmp_path / "source", {".ci-queue.yml": PIPELINE})
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "source"), str(served / "repo.git")], check=True)
    subprocess.run(["git", "-C", str(served / "repo.git"), "update-server-info"], check=True)  # git's dumb HTTP
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)),
                                 bind_and_activate=False)
    server.server_bind()  # bound, not listening yet: connections are refused
    url = f"http://127.0.0.1:{server.server_address[1]}/repo.git"
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    try:
        engine.start_worker("w1", extra_env=LOOPBACK_ALLOWED)
        run_id = trigger_run(engine.store, engine.celery, repo="o/r", ref="main", clone_url=url)
        # the first attempt was refused and a retry is on its way (Celery says so in the log)
        engine.wait(run_id, 30, until=lambda _: "Retry in" in engine.worker_log("w1"))
        server.server_activate()
        serving.start()
        run, _ = _timed_wait(engine, run_id)
    finally:
        if serving.is_alive():
            server.shutdown()
        server.server_close()
    assert (run.status, run.sha) == ("success", sha), run.to_dict()
    assert int(engine.store.r.hget(f"{engine.store.prefix}run:{run_id}", "plan_attempts")) >= 2


def test_a_variable_over_the_kernels_limit_fails_the_job_once_not_three_times(engine, tmp_path):
    """A single environment string over MAX_ARG_STRLEN (128 KiB) can never be exec'd: the job
    fails at once as ``environment_too_large``, naming the variable, and is not retried, not
    even by its own ``retry: 2`` (GitLab's ``when: always``)."""
    repo = tmp_path / "repo"
    big = "x" * 200_000
    make_repo(repo, {".ci-queue.yml": f"huge:\n  retry: 2\n  script: echo never\n  variables:\n    BIG: \"{big}\"\n"
                                      "small:\n  script: echo fine\n"})
    engine.start_worker("w1")
    run, _ = _timed_wait(engine, engine.trigger(repo))
    jobs = {job.name: job for job in run.jobs}
    huge = jobs["huge"]
    assert (huge.status, huge.failure_reason, huge.attempt) == ("failed", "environment_too_large", 1), huge.attempts
    assert len(huge.attempts) == 1 and "BIG" in huge.attempts[0]["reason"]
    assert big not in huge.attempts[0]["reason"]
    assert jobs["small"].status == "success" and run.status == "failed"
