"""Status updates of one commit land in order: sequence numbers, a per-commit lock, newest wins.

Why not a per-sha queue with one consumer: it needs a list, a consumer lock, a hand-over race to
get right, and a failing head blocks every later update of that commit until it gives up. A
forge keeps only the latest status per context anyway, so what must hold is narrower: **an
update never lands after a newer one of the same context.** That is this module:

- ``next_seq`` numbers every update of a commit when the engine emits it (``INCR``), so the
  numbers follow the order of the events (queued < started < ended), whatever order the
  messages are later run in, retried in, or redelivered in;
- a task sends an update only inside ``turn`` (a Redis lock per commit, TTL above the HTTP
  timeouts), and inside it: skip the update if a newer (or the same) one of its context already
  landed (``superseded``), else send it and record its number (``mark_sent``, a max in Lua);
- so an update that failed and waits for its retry is simply dropped when it comes back after a
  newer one landed, and two updates can never race on the wire.

An older update may thus never be shown (e.g. ``pending`` skipped when ``success`` landed first):
that is the point. Keys (``P`` = the store's prefix; TTL = the store's retention, refreshed):
``P status:<provider>:<repo>:<sha>:seq`` (string), ``...:sent`` (hash context -> number),
``...:lock`` (string).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import redis
from redis.exceptions import LockError

_MARK_SENT = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return current
"""


class OrderBusy(Exception):
    """Another update of the same commit is being sent for too long: try again later."""


class StatusOrder:
    """Sequence numbers and the per-commit turn of status updates."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_seconds: int = 30 * 86400,
                 lock_seconds: float = 60.0, wait_seconds: float = 20.0) -> None:
        self.r = client
        self.prefix = prefix
        self.ttl = max(60, int(ttl_seconds))
        self.lock_seconds = lock_seconds
        self.wait_seconds = wait_seconds
        self._mark = client.register_script(_MARK_SENT)

    def key(self, provider: str, repo: str, sha: str) -> str:
        return f"{self.prefix}status:{provider}:{repo}:{sha}"

    def next_seq(self, key: str) -> int:
        pipe = self.r.pipeline()
        pipe.incr(f"{key}:seq")
        pipe.expire(f"{key}:seq", self.ttl)
        return int(pipe.execute()[0])

    def last_sent(self, key: str, context: str) -> int:
        return int(self.r.hget(f"{key}:sent", context) or 0)

    def superseded(self, key: str, context: str, seq: int) -> bool:
        """Did this update, or a newer one of its context, land already?"""
        return self.last_sent(key, context) >= seq

    def mark_sent(self, key: str, context: str, seq: int) -> None:
        self._mark(keys=[f"{key}:sent"], args=[context, seq, self.ttl])

    @contextmanager
    def turn(self, key: str) -> Iterator[None]:
        """Hold the commit's lock while checking, sending and recording one update."""
        lock = self.r.lock(f"{key}:lock", timeout=self.lock_seconds, blocking_timeout=self.wait_seconds,
                           sleep=0.05)
        if not lock.acquire():
            raise OrderBusy(f"status lock {key} held for more than {self.wait_seconds}s")
        try:
            yield
        finally:
            with suppress(LockError):  # expired while we sent: the TTL is above the HTTP timeouts, so rare
                lock.release()
