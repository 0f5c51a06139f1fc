"""What each job queue (a tag set of a trust class) holds, runs and has to run it: the signals an
autoscaler needs, for ``GET /api/v1/queues`` and the ``ciq_queue_*`` gauges of ``/metrics``.

Per queue: jobs ``held`` in Redis waiting for a slot (``ci_queue.store.admission``), messages
``in_broker`` (the broker's list, read with ``LLEN``; the scheduler's own count of admitted
messages when the broker cannot be read), ``waiting`` (both), the ``oldest_wait_seconds`` of a
waiting job (since it became ready), ``running`` jobs, live ``workers`` consuming it and their
``slots``. Queue names and tags only: nothing names a repository or a run.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import current_app

from ci_queue.routing import route_of, tags_of
from ci_queue.store.admission import Admission
from ci_queue.web import health as h

PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport keeps priority > 0 messages in `<queue>\x06\x16<priority>`
PRIORITY_STEPS = (3, 6, 9)


def broker_depths(queues: list[str]) -> dict[str, int] | None:
    """Messages waiting in each Celery queue (and its priority lists); None when the broker is
    not Redis or does not answer."""
    broker = h.broker_client()
    if broker is None:
        return None
    pipe = broker.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
        for step in PRIORITY_STEPS:
            pipe.llen(f"{queue}{PRIORITY_SEP}{step}")
    try:
        lengths = pipe.execute()
    except (redis.RedisError, OSError):
        return None
    width = 1 + len(PRIORITY_STEPS)
    return {queue: sum(lengths[i * width:(i + 1) * width]) for i, queue in enumerate(queues)}


def queue_rows() -> list[dict[str, Any]]:
    """One row per queue with held, sent or running jobs or a live worker (the API's answer)."""
    store = current_app.config["CIQ_STORE"]
    states = Admission(store).queues()
    depths = broker_depths([state.queue for state in states]) or {}
    now = store.now()
    rows = []
    for state in states:
        in_broker = depths.get(state.queue, state.sent)
        oldest = None if state.oldest_held_at is None else round(max(0.0, now - state.oldest_held_at), 3)
        rows.append({"queue": state.queue, "tags": list(tags_of(state.queue)), "route": route_of(state.queue),
                     "waiting": state.held + in_broker, "held": state.held, "in_broker": in_broker,
                     "oldest_wait_seconds": oldest, "running": state.running, "workers": state.workers,
                     "slots": state.slots})
    return rows
