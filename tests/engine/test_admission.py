"""Holding and admission against a real Redis and a real broker database: the fair-share
order, priorities, per-repository limits, the books of slots, and the sweeper's nets."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from ci_queue.celery_app import make_celery
from ci_queue.dispatch import send_jobs
from ci_queue.priority import Scheduling
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.store.admission import Admission
from ci_queue.sweeper import Sweeper
from tests.engine.conftest import release_database, reserve_database
from tests.engine.test_store import make_plan

QUEUE = "ciq.default"


@pytest.fixture
def farm(redis_client):
    """A store and a broker database of the test's own, with settings whose sweeper is quick."""
    db, token = reserve_database()
    client = redis.Redis.from_url(f"redis://127.0.0.1:6379/{db}", decode_responses=True)
    prefix = f"ciq-adm-{uuid.uuid4().hex[:8]}:"
    settings = Settings.from_env({"CIQ_REDIS_URL": f"redis://127.0.0.1:6379/{db}", "CIQ_KEY_PREFIX": prefix,
                                  "CIQ_QUEUE_TIMEOUT_SECONDS": "5"})
    yield Farm(Store(client, prefix), client, settings)
    release_database(client, token, prefix)


class Farm:
    def __init__(self, store: Store, client: redis.Redis, settings: Settings) -> None:
        self.store, self.client, self.settings = store, client, settings
        self.app = make_celery(settings)
        self.admission = Admission(store)

    def worker(self, name: str, slots: int, queues: tuple[str, ...] = (QUEUE,)) -> str:
        self.admission.register_worker(name, list(queues), slots, ttl=60)
        return name

    def run(self, tmp_path, repo: str, text: str, scheduling: Scheduling | None = None) -> str:
        run_id = self.store.create_run(repo=repo, ref="main", scheduling=scheduling)
        plan = make_plan(tmp_path, text)
        send_jobs(self.store, self.app, self.settings, run_id, self.store.set_plan(run_id, plan))
        return run_id

    def published(self, queue: str = QUEUE) -> list[tuple[str, int, int]]:
        """The attempts whose messages wait in the broker's queue, oldest first."""
        import json

        bodies = [json.loads(raw) for raw in reversed(self.client.lrange(queue, 0, -1))]
        import base64

        return [tuple(json.loads(base64.b64decode(b["body"]))[0]) for b in bodies]

    def take(self, worker: str, queue: str = QUEUE) -> tuple[str, int, int]:
        """A worker takes the next message and begins its attempt."""
        import base64
        import json

        raw = self.client.rpop(queue)
        assert raw is not None, "no message in the broker"
        run_id, index, attempt = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
        assert self.store.begin_job(run_id, index, attempt, worker, 60).status == "ok"
        return run_id, index, attempt

    def finish(self, run_id: str, index: int, attempt: int = 1) -> None:
        transition = self.store.finish_job(run_id, index, attempt, "success")
        send_jobs(self.store, self.app, self.settings, run_id, transition.ready)

    def name(self, run_id: str, index: int) -> str:
        return self.store.job(run_id, index).name

    @staticmethod
    def sweep_later(sweeper: Sweeper, seconds: float = 30) -> dict[str, int]:
        """A sweep as if ``seconds`` had passed (the sweeper's deadlines compare with ``now``)."""
        return sweeper.sweep(now=time.time() + seconds)


def jobs(count: int, prefix: str = "j", extra: str = "") -> str:
    return "".join(f"{prefix}{i}:\n  script: x\n{extra}" for i in range(count))


def test_ready_jobs_wait_in_redis_and_only_free_slots_are_sent(farm, tmp_path):
    run_id = farm.run(tmp_path, "o/a", jobs(10))
    assert farm.client.llen(QUEUE) == 0, "no worker: nothing is sent"
    assert [q.held for q in farm.admission.queues()] == [10]
    farm.worker("w1@h", 2)
    send_jobs(farm.store, farm.app, farm.settings, None, [])  # what the worker's heartbeat does
    assert farm.client.llen(QUEUE) == 2
    send_jobs(farm.store, farm.app, farm.settings, None, [])
    assert farm.client.llen(QUEUE) == 2, "messages already waiting use the free slots"
    first = farm.take("w1@h")
    send_jobs(farm.store, farm.app, farm.settings, None, [])
    assert farm.client.llen(QUEUE) == 1, "a running job holds its slot"
    farm.finish(*first)
    assert farm.client.llen(QUEUE) == 2, "a job's end admits the next one at once"
    state = {q.queue: q for q in farm.admission.queues()}[QUEUE]
    assert (state.held, state.sent, state.running, state.workers, state.slots) == (7, 2, 0, 1, 2)
    assert {job.status for job in farm.store.get_run(run_id).jobs} == {"pending", "success"}


def test_the_repository_with_fewest_admitted_jobs_goes_first_then_priority_then_age(farm, tmp_path):
    big = farm.run(tmp_path, "o/big", jobs(20))
    farm.worker("w1@h", 2)
    send_jobs(farm.store, farm.app, farm.settings, None, [])
    running = [farm.take("w1@h"), farm.take("w1@h")]
    small = farm.run(tmp_path, "o/small", jobs(3, "s"))
    urgent = farm.run(tmp_path, "o/urgent", jobs(1, "u"), Scheduling(priority=5))
    assert farm.client.llen(QUEUE) == 0, "no slot is free"
    farm.finish(*running.pop())
    # o/small and o/urgent have no admitted job, o/big 1: a tie between the two, priority decides
    assert [run for run, _, _ in farm.published()] == [urgent]
    running.append(farm.take("w1@h"))
    farm.finish(*running.pop())  # urgent's: o/big has 1 admitted, o/small none
    assert [run for run, _, _ in farm.published()] == [small]
    running.append(farm.take("w1@h"))
    farm.finish(*running.pop(0))  # big's: o/big 0, o/small 1
    assert [run for run, _, _ in farm.published()] == [big]
    running.append(farm.take("w1@h"))
    farm.finish(*running.pop())  # big's again: both have 1 admitted, the same priority: the oldest
    assert [run for run, _, _ in farm.published()] == [big]


def test_a_jobs_ciq_priority_orders_it_within_its_repository(farm, tmp_path):
    text = ("low:\n  script: x\n  variables: {CIQ_PRIORITY: '-3'}\n"
            "plain:\n  script: x\n"
            "deploy:\n  script: x\n  variables: {CIQ_PRIORITY: '10'}\n"
            "bogus:\n  script: x\n  variables: {CIQ_PRIORITY: 'soon'}\n")
    run_id = farm.run(tmp_path, "o/a", text, Scheduling(priority=1))
    farm.worker("w1@h", 1)
    order = []
    send_jobs(farm.store, farm.app, farm.settings, None, [])
    for _ in range(4):
        taken = farm.take("w1@h")
        order.append(farm.name(*taken[:2]))
        farm.finish(*taken)
    # deploy 10; plain and bogus have the run's 1 (bogus ignored), oldest first: plan order; low -3
    assert order == ["deploy", "plain", "bogus", "low"]
    assert farm.store.get_run(run_id).status == "success"


def test_a_repository_at_its_limit_waits_without_a_message_in_the_broker(farm, tmp_path):
    limited = farm.run(tmp_path, "o/limited", jobs(5), Scheduling(max_jobs=2))
    farm.worker("w1@h", 4)
    send_jobs(farm.store, farm.app, farm.settings, None, [])
    assert [run for run, _, _ in farm.published()] == [limited, limited], "2 of its 5, though 4 slots are free"
    other = farm.run(tmp_path, "o/other", jobs(3, "o"))
    assert [run for run, _, _ in farm.published()] == [limited, limited, other, other]
    first = farm.take("w1@h")
    assert first[0] == limited
    farm.finish(*first)
    assert farm.published()[-1][0] == limited, "below its limit again: the next one is admitted"


def test_the_farm_default_limit_applies_to_repositories_without_their_own(farm, tmp_path):
    settings = Settings.from_env({"CIQ_REDIS_URL": farm.settings.redis_url, "CIQ_KEY_PREFIX": farm.store.prefix,
                                  "CIQ_MAX_JOBS_PER_REPO": "1"})
    farm.settings = settings
    farm.run(tmp_path, "o/a", jobs(3))
    farm.run(tmp_path, "o/b", jobs(3, "b"), Scheduling(max_jobs=3))
    farm.worker("w1@h", 10)
    send_jobs(farm.store, farm.app, farm.settings, None, [])
    repos = [farm.store.get_run(run, with_jobs=False).repo for run, _, _ in farm.published()]
    assert sorted(repos) == ["o/a", "o/b", "o/b", "o/b"]


def test_cancel_and_requeue_keep_the_books(farm, tmp_path):
    run_id = farm.run(tmp_path, "o/a", jobs(4))
    farm.worker("w1@h", 2)
    send_jobs(farm.store, farm.app, farm.settings, None, [])
    taken = farm.take("w1@h")
    # a lost worker: the lease lapsed, the attempt is handed back as attempt 2 and held again
    assert farm.store.requeue_job(*taken, {"attempt": 1, "status": "failed"}) == 2
    send_jobs(farm.store, farm.app, farm.settings, run_id, [taken[1]])
    state = {q.queue: q for q in farm.admission.queues()}[QUEUE]
    assert (state.held, state.sent, state.running) == (2, 2, 0), "its slot went to the oldest held job"
    farm.store.cancel_run(run_id)
    state = {q.queue: q for q in farm.admission.queues()}[QUEUE]
    assert (state.held, state.sent, state.running) == (0, 0, 0)
    assert farm.client.hgetall(f"{farm.store.prefix}repo:active") == {}
    assert farm.client.scard(f"{farm.store.prefix}worker:w1@h:running") == 0


def test_an_admitted_job_whose_message_was_lost_is_sent_again_by_the_sweeper(farm, tmp_path):
    farm.worker("w1@h", 1)
    run_id = farm.store.create_run(repo="o/a", ref="main")
    ready = farm.store.set_plan(run_id, make_plan(tmp_path, jobs(2)))
    # the process admits the jobs and dies before publishing: admitted, noted unsent, no message
    to_send = farm.admission.hold_and_admit(run_id, ready)
    assert [s.kind for s in to_send] == ["admit"] and farm.client.llen(QUEUE) == 0
    sweeper = Sweeper(farm.store, farm.app, farm.settings)
    done = sweeper.sweep(now=time.time())
    assert done["resent"] == 0 and done["admitted"] == 0, "too young to be lost, and no slot is free"
    assert farm.sweep_later(sweeper)["resent"] == 1
    assert farm.published() == [(run_id, to_send[0].index, 1)], "the admitted one, not another"
    assert [q.held for q in farm.admission.queues()] == [1]


def test_a_held_job_of_a_queue_no_live_worker_serves_fails_as_stuck(farm, tmp_path):
    farm.worker("w1@h", 1)
    run_id = farm.run(tmp_path, "o/a", "gpu: {script: x, tags: [gpu]}\nplain: {script: x}\n"
                                       "busy: {script: x}\n")
    farm.take("w1@h")  # the only slot is busy: the other untagged job waits for it
    sweeper = Sweeper(farm.store, farm.app, farm.settings)
    done = farm.sweep_later(sweeper, 6)
    jobs_ = {job.name: job for job in farm.store.get_run(run_id).jobs}
    assert done["stuck"] == 1 and (jobs_["gpu"].status, jobs_["gpu"].failure_reason) == ("failed", "stuck")
    # the ones that wait for a slot of a served queue are not stuck, however long they wait
    assert sorted(job.status for name, job in jobs_.items() if name != "gpu") == ["pending", "running"]
    assert "no worker took this job" in farm.store.read_log(run_id, jobs_["gpu"].index)[-1][1]["text"]


def test_delayed_first_attempts_and_jobs_planned_before_holding_are_sent_directly(farm, tmp_path):
    run_id = farm.store.create_run(repo="o/a", ref="main")
    plan = make_plan(tmp_path, "later:\n  script: x\n  when: delayed\n  start_in: 1 minute\nold:\n  script: x\n")
    ready = farm.store.set_plan(run_id, plan)
    old = plan.jobs.index(next(job for job in plan.jobs if job.name == "old"))
    # a job planned by a version without holding: none of the scheduler's fields
    farm.client.hdel(f"{farm.store.prefix}run:{run_id}:state", *(f"n{old}.{p}" for p in ("hold", "queue", "tmo")))
    send_jobs(farm.store, farm.app, farm.settings, run_id, ready)  # no worker has announced a slot
    assert sorted(index for _, index, _ in farm.published()) == sorted(ready), "both sent, none held"
    assert all(q.held == 0 for q in farm.admission.queues())
    import json

    etas = [json.loads(raw)["headers"].get("eta") for raw in farm.client.lrange(QUEUE, 0, -1)]
    assert sorted(eta is not None for eta in etas) == [False, True], "the delayed one keeps its countdown"


def test_one_heartbeat_renews_the_farm_record_and_the_slots_and_neither_hides_the_other(farm):
    """The farm's record and the scheduler's slots once shared ``P workers`` (a last-beat time
    for one, a deadline for the other): each farm beat made the worker look dead to admission."""
    from ci_queue.farm import Heartbeat, WorkerInfo, list_workers
    from workers.capacity import Slots

    slots = Slots(farm.store, farm.app, farm.settings, "w1@host", [QUEUE], 2)
    beat = Heartbeat(farm.store, WorkerInfo("w1@host", "host", (), (QUEUE,), 2), also=slots.announce).start()
    try:
        assert farm.admission.live_workers(QUEUE) == ["w1@host"]
        beat.draining()  # a beat of the farm record alone, after the slots' announcement
        assert farm.admission.live_workers(QUEUE) == ["w1@host"]
        [state] = [s for s in farm.admission.queues() if s.queue == QUEUE]
        assert (state.workers, state.slots) == (1, 2)
        [view] = list_workers(farm.store)
        assert view.state == "draining" and 0 <= view.seconds_since_heartbeat < 5
    finally:
        slots.stop()
        beat.stop()
    assert farm.admission.live_workers(QUEUE) == []
    assert [view.state for view in list_workers(farm.store)] == ["stopped"]
