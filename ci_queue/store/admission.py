"""Holding ready jobs in Redis and admitting them to the Celery queues as slots free up.

A job made ready is *held* (``P q:<queue>:held``), not published; it is *admitted* (its Celery
message sent) when a live worker that consumes its queue has a free slot, in the fair-share
order: the repository with the fewest admitted jobs on that queue first (a repository at its
``max_concurrent_jobs`` waits), then the higher priority, then the job that waited longest.
Hold and admission are one Lua script (``admission_lua.HOLD_ADMIT``), run right where jobs
become ready and where slots free up (``ci_queue.dispatch.send_jobs``), so a job never waits
for a periodic loop when a slot is free; the sweeper runs it too, as a net. Workers announce
their slots (``register_worker``, renewed with their heartbeat); the job scripts keep the books
of which attempt is sent, running or ended (``admission_lua.HOOKS``). Key names: the Lua module.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from ci_queue.store import admission_lua
from ci_queue.store.core import Store


@dataclass(frozen=True)
class ToSend:
    """A job attempt to publish now (``HOLD_ADMIT``'s answer): ``kind`` is ``admit`` (admitted
    now), ``again`` (admitted earlier, its message lost), ``direct`` (not held: a delayed job's
    first attempt) or ``group`` (it waits in its resource group's line)."""

    kind: str
    run_id: str
    index: int
    attempt: int
    queue: str
    timeout: int | None


@dataclass(frozen=True)
class QueueState:
    """One Celery queue (a tag set of a trust class) as an autoscaler sees it."""

    queue: str
    held: int  # ready, waiting in Redis for a slot
    sent: int  # admitted, the message waits in the broker
    running: int
    workers: int  # live workers consuming it
    slots: int  # their slots (concurrency) together
    oldest_held_at: float | None  # Redis time the longest-waiting job (held or sent) became ready


class Admission:
    """The scheduler's side of a store (same Redis, same key prefix)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.r
        self.p = store.prefix
        self._hold_admit = self.r.register_script(admission_lua.HOLD_ADMIT)
        self._register = self.r.register_script(admission_lua.REGISTER_WORKER)
        self._unregister = self.r.register_script(admission_lua.UNREGISTER_WORKER)

    def _q(self, queue: str, kind: str) -> str:
        return f"{self.p}q:{queue}:{kind}"

    def hold_and_admit(self, run_id: str | None, indexes: list[int], default_limit: int = 0) -> list[ToSend]:
        """Hold the pending jobs ``indexes`` of ``run_id`` (made ready, or to send again), then
        admit held jobs of every queue to its free slots; returns what to publish now."""
        members = [f"{run_id}|{i}" for i in indexes] if run_id else []
        answer = self._hold_admit(keys=[], args=[self.p, int(default_limit), *members])
        result = []
        for kind, member, queue, timeout in answer:
            run, index, attempt = member.rsplit("|", 2)
            result.append(ToSend(kind, run, int(index), int(attempt), queue, int(timeout) if timeout else None))
        return result

    def register_worker(self, name: str, queues: list[str], concurrency: int, ttl: float) -> None:
        """A live worker's slots; call again within ``ttl`` seconds to keep them counted."""
        self._register(keys=[], args=[self.p, name, int(concurrency), float(ttl), *queues])

    def unregister_worker(self, name: str) -> None:
        """A stopping worker's slots are no longer counted (nothing more is admitted for them)."""
        self._unregister(keys=[], args=[self.p, name])

    def held_queues(self) -> list[str]:
        return sorted(self.r.smembers(f"{self.p}queues:held"))

    def live_workers(self, queue: str, now: float | None = None) -> list[str]:
        """The workers consuming ``queue`` whose heartbeat is current."""
        now = self.store.now() if now is None else now
        names = sorted(self.r.smembers(self._q(queue, "workers")))
        if not names:
            return []
        deadlines = self._deadlines(names)
        return [name for name in names if deadlines[name] > now]

    def _deadlines(self, names: list[str]) -> dict[str, float]:
        """Each worker's heartbeat deadline (0: none); ZSCOREs in one round trip (ZMSCORE would
        need Redis 6.2)."""
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.zscore(f"{self.p}workers", name)
        return {name: deadline or 0.0 for name, deadline in zip(names, pipe.execute(), strict=True)}

    def held_since(self, queue: str, before: float, limit: int = 100) -> list[tuple[str, int, int]]:
        """Held attempts of ``queue`` that became ready before ``before`` (Redis time)."""
        members = self.r.zrangebyscore(self._q(queue, "held"), "-inf", before, start=0, num=limit)
        return [(run, int(i), int(att)) for run, i, att in (m.rsplit("|", 2) for m in members)]

    def queues(self) -> list[QueueState]:
        """Every queue that has held, sent or running jobs or a live worker (queues seen once and
        idle now are left out; there is one per tag set ever used, a bounded number)."""
        now = self.store.now()
        names = sorted(self.r.smembers(f"{self.p}queues"))
        pipe = self.r.pipeline(transaction=False)
        for q in names:
            pipe.zcard(self._q(q, "held"))
            pipe.zcard(self._q(q, "sent"))
            pipe.zcard(self._q(q, "running"))
            pipe.zrange(self._q(q, "held"), 0, 0, withscores=True)
            pipe.zrange(self._q(q, "sent"), 0, 0, withscores=True)
            pipe.smembers(self._q(q, "workers"))
        answers = pipe.execute()
        workers = sorted({w for k in range(len(names)) for w in answers[6 * k + 5]})
        deadlines = self._deadlines(workers)
        alive = [w for w in workers if deadlines[w] > now]
        pipe = self.r.pipeline(transaction=False)
        for w in alive:
            pipe.hget(f"{self.p}worker:{w}:info", "concurrency")
        slots_of = {w: int(c or 0) for w, c in zip(alive, pipe.execute(), strict=True)}
        states = []
        for k, q in enumerate(names):
            held, sent, running, oldest_held, oldest_sent, serving = answers[6 * k:6 * k + 6]
            live = [w for w in serving if w in slots_of]
            oldest = [score for _, score in (*oldest_held, *oldest_sent)]
            if held or sent or running or live:
                states.append(QueueState(q, held, sent, running, len(live), sum(slots_of[w] for w in live),
                                         min(oldest) if oldest else None))
        return states


_OF_STORE: weakref.WeakKeyDictionary[Store, Admission] = weakref.WeakKeyDictionary()


def admission_of(store: Store) -> Admission:
    """The store's ``Admission``, made once: its scripts are hashed when registered, and the
    dispatch path calls it for every wave and every job's end."""
    admission = _OF_STORE.get(store)
    if admission is None:
        admission = _OF_STORE[store] = Admission(store)
    return admission
