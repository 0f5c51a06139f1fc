"""``ci_queue.unacked.recover``: messages left unacknowledged by a lost connection, judged by the
state of the job attempt they carry (real Redis, real kombu consumer)."""

from __future__ import annotations

import json
from pathlib import Path

import redis

from ci_queue.celery_app import RUN_JOB, make_celery
from ci_queue.pipeline.model import Job, Plan
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.unacked import UNACKED_KEY, Stranded, recover
from tests.conftest import RedisServer
from tests.faults.conftest import engine_env


def _deliver_without_ack(app, queue: str, count: int) -> None:
    """Take ``count`` messages off ``queue`` as a worker would, and vanish without acknowledging
    them or giving them back (as when the worker lost its connection with Redis)."""
    connection = app.connection_for_read()
    channel = connection.channel()
    channel.qos.restore_at_shutdown = False  # the give-back that fails when Redis is away
    taken = []
    consumer = app.amqp.Consumer(channel, queues=[app.amqp.queues[queue]], callbacks=[lambda b, m: taken.append(m)],
                                 accept=["json"])
    consumer.consume()
    while len(taken) < count:
        connection.drain_events(timeout=5)


def test_recover_restores_waiting_jobs_and_drops_stale_ones(redis_server: RedisServer, tmp_path: Path):
    settings = Settings.from_env(engine_env(redis_server.url, tmp_path))
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    store = Store(client, settings.key_prefix, 3600)
    app = make_celery(settings)
    run_id = store.create_run(repo="r", ref="main")
    ready = store.set_plan(run_id, Plan(stages=["test"], jobs=[Job(name="a", stage="test", script=["true"]),
                                                                Job(name="b", stage="test", script=["true"])]))
    assert ready == [0, 1]
    app.send_task(RUN_JOB, args=[run_id, 0, 1], queue="ciq.default")  # job a, attempt 1: still pending
    app.send_task(RUN_JOB, args=[run_id, 1, 1], queue="ciq.default")  # job b: its attempt 1 has ended
    store.begin_job(run_id, 1, 1, "w", 60)
    store.finish_job(run_id, 1, 1, "success")
    app.amqp.queues.select_add("ciq.default")
    _deliver_without_ack(app, "ciq.default", 2)
    assert client.hlen(UNACKED_KEY) == 2 and client.llen("ciq.default") == 0

    assert recover(store, app, min_age=3600) == {"restored": 0, "dropped": 0}  # too young to judge
    assert recover(store, app, min_age=0) == {"restored": 1, "dropped": 1}
    assert client.hlen(UNACKED_KEY) == 0
    assert client.llen("ciq.default") == 1
    restored = Stranded("", json.loads(client.lindex("ciq.default", 0)), "", "")
    assert restored.task == RUN_JOB and restored.args() == [run_id, 0, 1], "the waiting job's message came back"
