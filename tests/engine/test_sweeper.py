"""The sweeper against a real Redis and a real broker database (no worker needed)."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from ci_queue.celery_app import make_celery
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.store.admission import Admission
from ci_queue.sweeper import MAX_PLAN_ATTEMPTS, Sweeper
from tests.engine.conftest import release_database, reserve_database
from tests.engine.test_store import make_plan


@pytest.fixture
def broker(redis_client):
    db, token = reserve_database()
    client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{db}", decode_responses=True)
    prefix = f"ciq-sweep-{uuid.uuid4().hex[:8]}:"
    settings = Settings.from_env({"CIQ_REDIS_URL": f"redis://127.0.0.1:6379/{db}", "CIQ_KEY_PREFIX": prefix,
                                  "CIQ_QUEUE_TIMEOUT_SECONDS": "5"})
    yield client, settings
    release_database(client, token, prefix)


def test_a_job_whose_message_was_never_published_is_sent_again(broker, tmp_path):
    client, settings = broker
    store = Store(client, settings.key_prefix)
    plan = make_plan(tmp_path, "a: {script: x}\nb: {script: x, tags: [linux]}\n")
    Admission(store).register_worker("w@h", ["ciq.default", "ciq.tags.linux"], 2, ttl=60)  # free slots
    run_id = store.create_run(repo="o/r", ref="main")
    ready = store.set_plan(run_id, plan)  # the process "dies" here: nothing is sent
    assert sorted(ready) == [0, 1] and client.zcard(store.unsent_key) == 2
    sweeper = Sweeper(store, make_celery(settings), settings)
    assert sweeper.sweep(now=time.time())["resent"] == 0  # too young: its sender may still be at it
    assert sweeper.sweep(now=time.time() + 30)["resent"] == 2
    assert client.llen("ciq.default") == 1 and client.llen("ciq.tags.linux") == 1
    assert client.zcard(store.unsent_key) == 0
    assert {job.queue for job in store.get_run(run_id).jobs} == {"ciq.default", "ciq.tags.linux"}


def test_only_one_sweeper_holds_the_lock_and_another_takes_over(broker):
    client, settings = broker
    store = Store(client, settings.key_prefix)
    first, second = (Sweeper(store, make_celery(settings), settings) for _ in range(2))
    assert first.holds_lock() and not second.holds_lock()
    assert first.holds_lock(), "the holder renews"
    client.delete(first.lock_key)  # the holder died and its lock expired
    assert second.holds_lock() and not first.holds_lock()


def test_a_job_no_worker_takes_fails_as_stuck(broker, tmp_path):
    client, settings = broker
    store = Store(client, settings.key_prefix)
    plan = make_plan(tmp_path, "gpu: {script: x, tags: [gpu]}\nafter: {script: x, needs: [gpu], when: always}\n")
    Admission(store).register_worker("w@h", ["ciq.default"], 1, ttl=60)  # nobody serves the gpu tag
    run_id = store.create_run(repo="o/r", ref="main")
    app = make_celery(settings)
    from ci_queue.dispatch import send_jobs

    send_jobs(store, app, settings, run_id, store.set_plan(run_id, plan))
    sweeper = Sweeper(store, app, settings)
    assert sweeper.sweep(now=time.time() + 6)["stuck"] == 1
    jobs = {job.name: job for job in store.get_run(run_id).jobs}
    assert (jobs["gpu"].status, jobs["gpu"].failure_reason) == ("failed", "stuck")
    assert jobs["after"].status == "pending" and client.llen("ciq.default") == 1
    log = store.read_log(run_id, 0)
    assert "no worker took this job" in log[-1][1]["text"]


def test_a_run_nobody_planned_is_sent_to_planning_again(broker):
    client, settings = broker
    store = Store(client, settings.key_prefix)
    run_id = store.create_run(repo="o/r", ref="main")  # its plan message was lost
    claimed = store.create_run(repo="o/r", ref="main")
    assert store.claim_planning(claimed, "w1") and not store.claim_planning(claimed, "w2")
    sweeper = Sweeper(store, make_celery(settings), settings)
    assert sweeper.sweep(now=time.time())["replanned"] == 0  # young: its planner may be on it
    later = time.time() + 200
    assert sweeper.sweep(now=later)["replanned"] == 1
    assert client.llen("ciq.control") == 1 and run_id in client.lindex("ciq.control", 0)
    # no planner takes it (all workers down): one message per period, not one per tick
    assert sweeper.sweep(now=later + 2)["replanned"] == 0
    assert sweeper.sweep(now=later + 121)["replanned"] == 1
    assert client.llen("ciq.control") == 2 and store.run_status(run_id) == "queued"


def test_the_planning_claim_is_taken_again_by_its_owner_and_by_nobody_else(broker):
    """A retry of plan_run is the same task (same id): it re-enters its claim; others wait."""
    client, settings = broker
    store = Store(client, settings.key_prefix)
    run_id = store.create_run(repo="o/r", ref="main")
    key = f"{settings.key_prefix}run:{run_id}:planning"
    assert store.claim_planning(run_id, "task-1", ttl=30)
    client.expire(key, 5)
    assert store.claim_planning(run_id, "task-1", ttl=30) and client.ttl(key) > 5, "re-entered and renewed"
    assert not store.claim_planning(run_id, "task-2")
    store.release_planning(run_id, "task-2")  # not its claim: nothing happens
    assert client.get(key) == "task-1"
    store.release_planning(run_id, "task-1")
    assert store.claim_planning(run_id, "task-2")


@pytest.mark.parametrize(("noted", "reason"), [
    ("checkout failed: cannot fetch from https://h/p.git: early EOF",
     "checkout failed: cannot fetch from https://h/p.git: early EOF"),
    (None, "no planner finished it"),
])
def test_a_run_that_planners_took_again_and_again_ends_as_error_with_the_last_reason(broker, noted, reason):
    client, settings = broker
    store = Store(client, settings.key_prefix)
    run_id = store.create_run(repo="o/r", ref="main")
    sweeper = Sweeper(store, make_celery(settings), settings)
    for attempt in range(1, MAX_PLAN_ATTEMPTS + 1):  # each planner took it and died (claim lapsed)
        assert store.note_plan_attempt(run_id) == attempt
        if noted:
            store.note_plan_error(run_id, noted)
        done = sweeper.sweep(now=time.time() + 200 * attempt)
        if attempt < MAX_PLAN_ATTEMPTS:
            assert (done["replanned"], done["unplannable"]) == (1, 0)
    assert (done["replanned"], done["unplannable"]) == (0, 1)
    run = store.get_run(run_id)
    assert run.status == "error" and run.finished_at
    assert run.error.startswith(f"could not be planned after {MAX_PLAN_ATTEMPTS} attempts: {reason}")
    assert client.llen("ciq.control") == MAX_PLAN_ATTEMPTS - 1
    assert sweeper.sweep(now=time.time() + 2000)["unplannable"] == 0, "ended once"
