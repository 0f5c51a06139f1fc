"""Messages a lost broker connection left in kombu's ``unacked`` hash, put back or dropped.

kombu's Redis transport keeps every delivered, not yet acknowledged message in the ``unacked``
hash (and its delivery time in ``unacked_index``) until the consumer acknowledges it, and gives
it back to its queue when the channel closes. When the connection is lost with Redis itself
(a restart, a failover, out of memory), that give-back fails and the worker forgets the messages
it had reserved (``ci_queue.broker``); kombu would restore them only after the visibility timeout,
a day later. A job whose message is stranded there stays ``pending`` and nobody runs it.

The sweeper calls :func:`recover` every few ticks. It knows what kombu does not: whether the job
attempt a message carries is still waiting. A message older than ``min_age`` whose job attempt
is current and still ``pending`` (or whose run still waits for planning) goes back to its queue;
one whose attempt has moved on or ended is dropped; one whose job is running is left to its
worker. Restoring a message a worker still holds is harmless: the store's fencing lets only one
delivery start the attempt.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from celery import Celery
from loguru import logger

from ci_queue.celery_app import PLAN_RUN, RUN_JOB
from ci_queue.store import Store

UNACKED_KEY = "unacked"  # kombu's defaults (transport options unacked_key / unacked_index_key)
UNACKED_INDEX_KEY = "unacked_index"
BATCH = 500


@dataclass(frozen=True)
class Stranded:
    """One message of the ``unacked`` hash: its delivery tag, payload and where it was routed."""

    tag: str
    payload: dict[str, Any]
    exchange: str
    routing_key: str

    @property
    def task(self) -> str:
        return str((self.payload.get("headers") or {}).get("task") or "")

    def args(self) -> list[Any]:
        """The task's positional arguments (Celery's message protocol 2: body = [args, kwargs, embed])."""
        body = self.payload.get("body", "")
        if (self.payload.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        decoded = json.loads(body)
        return list(decoded[0]) if isinstance(decoded, list) and decoded else []


def _verdict(store: Store, message: Stranded) -> str:
    """``restore``, ``drop`` or ``keep``."""
    try:
        args = message.args()
    except (ValueError, TypeError, IndexError):
        return "restore"  # not ours to judge: kombu's own rule, only sooner
    if message.task == RUN_JOB and len(args) == 3:
        run_id, index, attempt = str(args[0]), int(args[1]), int(args[2])
        job = store.job(run_id, index)
        if job is None or job.attempt != attempt or job.status not in ("pending", "running"):
            return "drop"
        return "restore" if job.status == "pending" else "keep"
    if message.task == PLAN_RUN and args:
        return "restore" if store.run_status(str(args[0])) == "queued" else "drop"
    return "restore"


def recover(store: Store, app: Celery, min_age: float) -> dict[str, int]:
    """Put back or drop the messages stranded for longer than ``min_age`` seconds."""
    done = {"restored": 0, "dropped": 0}
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        client = channel.client
        cutoff = store.now() - min_age
        tags = client.zrangebyscore(UNACKED_INDEX_KEY, "-inf", cutoff, start=0, num=BATCH, withscores=True)
        for raw_tag, _ in tags:
            tag = raw_tag.decode() if isinstance(raw_tag, bytes) else str(raw_tag)
            raw = client.hget(UNACKED_KEY, tag)
            if raw is None:
                client.zrem(UNACKED_INDEX_KEY, tag)  # acknowledged meanwhile
                continue
            payload, exchange, routing_key = json.loads(raw)
            message = Stranded(tag, payload, exchange, routing_key)
            verdict = _verdict(store, message)
            if verdict == "keep":
                continue
            with client.pipeline() as pipe:
                if verdict == "restore":
                    channel._do_restore_message(payload, exchange, routing_key, pipe, False)
                pipe.hdel(UNACKED_KEY, tag)
                pipe.zrem(UNACKED_INDEX_KEY, tag)
                pipe.execute()
            done["restored" if verdict == "restore" else "dropped"] += 1
            logger.info("{} a {} message stranded in the broker since a lost connection ({})",
                        "restored" if verdict == "restore" else "dropped", message.task or "?", tag)
    return done
