"""``ci-queue worker --protected`` and ``protected_workers_only``: the queue families of
``ci_queue.routing`` with real ``ci-queue worker`` processes on a real broker. A job the broker
still holds is one no worker took: each "not taken" below is read from the broker's own list,
after a later job of the same worker was taken (so the worker was consuming), never after a sleep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ci_queue.routing import (
    MAX_WORKER_TAGS,
    job_queue,
    route_of,
    who_serves,
    worker_queues,
)
from ci_queue.settings import Settings
from ci_queue.store import RunRecord
from ci_queue.sweeper import Sweeper
from ci_queue.trust import RunTrust
from tests.conftest import REPO
from tests.engine.conftest import make_repo
from workers.tasks import protected_worker_refusal

pytestmark = pytest.mark.integration

PIPELINE = "deploy:\n  tags: [deploy]\n  script: echo \"deploying $CI_COMMIT_REF_NAME\"\n"
ONLY = RunTrust(protected=True, registered=True, protected_workers_only=True)
PROTECTED = RunTrust(protected=True, registered=True)
UNPROTECTED = RunTrust(registered=True)
FORK = RunTrust(fork=True, registered=True)


def test_queue_names_and_what_each_worker_consumes():
    assert job_queue(["b", "a"]) == "ciq.tags.a+b" and job_queue([]) == "ciq.default"
    assert job_queue(["a"], "protected") == "ciq.protected.tags.a"
    assert job_queue([], "protected-only") == "ciq.protected-only.default"
    ordinary, protected = worker_queues(["a"]), worker_queues(["a"], protected=True)
    assert ordinary == ["ciq.default", "ciq.tags.a", "ciq.protected.default", "ciq.protected.tags.a"]
    assert protected == ["ciq.protected.default", "ciq.protected.tags.a", "ciq.protected-only.default",
                         "ciq.protected-only.tags.a"]
    assert not any(route_of(q) == "" for q in protected)  # untrusted work never reaches a --protected worker
    assert not any(route_of(q) == "protected-only" for q in ordinary)
    many = [f"tag-{i}" for i in range(MAX_WORKER_TAGS)]
    for flag in (False, True):
        queues = worker_queues(many, protected=flag)
        assert len(queues) == len(set(queues)) == 2 * 2 ** MAX_WORKER_TAGS  # two families of 64
        assert not any("," in q for q in queues)  # Celery's --queues splits on commas
    assert "--protected" in who_serves("ciq.protected-only.tags.a") and "never" in who_serves("ciq.tags.a")
    assert RunTrust(protected=True, registered=True, fork=True).route == ""  # a fork is never protected work


def test_a_protected_worker_hands_back_what_is_not_a_protected_refs():
    settings = Settings(worker_protected=True)

    def record(trust: RunTrust) -> RunRecord:
        return RunRecord(id="r", status="running", repo="o/r", ref="main", sha="", event="push", created_at="",
                         protected=trust.protected, fork=trust.fork, registered=trust.registered)

    assert protected_worker_refusal(settings, record(PROTECTED)) is None
    for trust in (UNPROTECTED, FORK, RunTrust(protected=True)):  # the last: an unregistered repository's
        assert "--protected" in protected_worker_refusal(settings, record(trust))
    assert protected_worker_refusal(Settings(), record(FORK)) is None


def test_a_protected_worker_refuses_ordinary_queues_on_the_command_line(engine):
    result = subprocess.run([sys.executable, "-m", "ci_queue.cli", "worker", "--protected", "--queues",
                             "ciq.protected.tags.x,ciq.tags.x"], capture_output=True, text=True, timeout=60,
                            env=engine.env, cwd=REPO, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "consumes only protected queues" in result.stderr
    assert "ciq.tags.x" in result.stderr and "Traceback" not in result.stderr


def broker_holds(engine, queue: str, run_id: str) -> bool:
    """The job of ``run_id`` still waits for a worker of ``queue`` (no worker took it): held in
    Redis for a slot of that queue (``ci_queue.store.admission``), or its message in the broker."""
    import base64
    import json

    held = engine.store.r.zrange(f"{engine.store.prefix}q:{queue}:held", 0, -1)
    if any(member.startswith(f"{run_id}|") for member in held):
        return True
    for raw in engine.store.r.lrange(queue, 0, -1):
        if json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0] == run_id:
            return True
    return False


def stop(proc: subprocess.Popen) -> None:
    """A warm shutdown (SIGTERM): the worker takes nothing more and exits."""
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


def test_routing_with_real_workers(engine, tmp_path):
    repo = tmp_path / "repo"
    make_repo(repo, {".gitlab-ci.yml": PIPELINE})
    ordinary = engine.start_worker("ordinary", tags="deploy", concurrency=1)

    # 1. protected_workers_only: an ordinary worker with the tags never takes the job
    only_run = engine.trigger(repo, trust=ONLY)
    engine.wait(only_run, until=lambda run: bool(run.jobs) and run.jobs[0].queue is not None)
    taken = engine.wait(engine.trigger(repo, trust=PROTECTED))  # made later, same tags: taken by `ordinary`
    assert taken.status == "success" and taken.jobs[0].worker.startswith("ordinary@")
    assert taken.jobs[0].queue == "ciq.protected.tags.deploy"  # a protected job: any worker with its tags
    waiting = engine.store.get_run(only_run).jobs[0]
    assert (waiting.status, waiting.queue) == ("pending", "ciq.protected-only.tags.deploy")
    assert broker_holds(engine, "ciq.protected-only.tags.deploy", only_run)

    # 2. a --protected worker takes it
    stop(ordinary)
    vault = engine.start_worker("vault", tags="deploy", concurrency=1, protected=True)
    ran = engine.wait(only_run)
    assert ran.status == "success" and ran.jobs[0].worker.startswith("vault@")

    # 3. untrusted work never reaches it: an unprotected ref's and a fork's job stay in the broker
    # while a protected job made after them is taken. (A --protected worker plans nothing: a
    # worker that only plans, no tags and no untagged jobs, does.)
    engine.start_worker("planner", untagged=False, concurrency=1)
    untrusted = [engine.trigger(repo, ref="main", trust=UNPROTECTED), engine.trigger(repo, trust=FORK)]
    for run_id in untrusted:
        engine.wait(run_id, until=lambda run: bool(run.jobs) and run.jobs[0].queue is not None)
    later = engine.wait(engine.trigger(repo, trust=PROTECTED))
    assert later.status == "success" and later.jobs[0].worker.startswith("vault@")
    for run_id in untrusted:
        job = engine.store.get_run(run_id).jobs[0]
        assert (job.status, job.queue) == ("pending", "ciq.tags.deploy")
        assert broker_holds(engine, "ciq.tags.deploy", run_id)

    # 4. an ordinary worker takes them (planning included: the --protected one plans nothing)
    engine.start_worker("ordinary-2", tags="deploy", concurrency=1,
                        extra_env={"CIQ_SHELL_ALLOW_FORKS": "1"})  # the fork's job runs on its shell
    for run_id in untrusted:
        run = engine.wait(run_id)
        assert run.status == "success" and run.jobs[0].worker.startswith("ordinary-2@")

    # 5. with no --protected worker left, the stuck detection names the workers a job waits for
    stop(vault)
    stuck_run = engine.trigger(repo, trust=ONLY)
    engine.wait(stuck_run, until=lambda run: bool(run.jobs) and run.jobs[0].queue is not None)
    done = Sweeper(engine.store, engine.celery, engine.settings).sweep(
        now=engine.store.now() + engine.settings.queue_timeout_seconds + 60)
    assert done["stuck"] == 1  # every other job of the test was taken
    stuck = engine.store.get_run(stuck_run).jobs[0]
    assert (stuck.status, stuck.failure_reason) == ("failed", "stuck")
    assert "only `ci-queue worker --protected` workers with these tags take it" in stuck.attempts[-1]["reason"]
