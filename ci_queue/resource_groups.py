"""``resource_group``: at most one job of a group runs at a time across the whole farm.

A job of a group that becomes ready does not get a Celery message at once: it joins the group's
FIFO queue in Redis (``P rg:<group>:queue``) and waits as ``pending`` without holding a worker
slot. The group's holder key (``P rg:<group>:holder``, the attempt ``run|index|attempt``) is
granted to the first in line; the holder's lease keeper renews its TTL, its end releases it and
grants the next one, and if its worker dies the key expires with the lease and the sweeper
grants the next one. Granting is one Lua script, so two processes never grant twice.
"""

from __future__ import annotations

from ci_queue.store import Store

# KEYS: holder, queue. ARGV: ttl ms. Grant the group to the first waiting attempt if free.
_GRANT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local member = redis.call('LPOP', KEYS[2])
if not member then return false end
redis.call('SET', KEYS[1], member, 'PX', ARGV[1])
return member
"""

# KEYS: holder. ARGV: member, ttl ms (0: release). Renew or release only what we hold.
_HOLDER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


class ResourceGroups:
    """The resource groups of one store (same Redis, same key prefix)."""

    def __init__(self, store: Store, lease_seconds: float) -> None:
        self.store = store
        self.r = store.r
        self.ttl_ms = int(lease_seconds * 1000)
        self._grant = self.r.register_script(_GRANT)
        self._holder = self.r.register_script(_HOLDER)

    def _key(self, group: str, kind: str) -> str:
        return f"{self.store.prefix}rg:{group}:{kind}"

    @property
    def groups_key(self) -> str:
        return f"{self.store.prefix}rg:groups"

    def enqueue(self, group: str, run_id: str, index: int, attempt: int) -> None:
        """Put an attempt in line for the group."""
        pipe = self.r.pipeline()
        pipe.rpush(self._key(group, "queue"), f"{run_id}|{index}|{attempt}")
        pipe.sadd(self.groups_key, group)
        pipe.execute()

    def grant(self, group: str) -> tuple[str, int, int] | None:
        """Give the group to the next attempt still waiting for it, if the group is free.

        Entries whose job moved on (canceled, retried as a newer attempt) are dropped on the way.
        """
        while True:
            member = self._grant(keys=[self._key(group, "holder"), self._key(group, "queue")], args=[self.ttl_ms])
            if member is None:
                return None
            run_id, index, attempt = member.rsplit("|", 2)
            job = self.store.job(run_id, int(index))
            if job is not None and job.status == "pending" and job.attempt == int(attempt):
                return run_id, int(index), int(attempt)
            self.release(group, run_id, int(index), int(attempt))

    def renew(self, group: str, run_id: str, index: int, attempt: int) -> bool:
        return bool(self._holder(keys=[self._key(group, "holder")], args=[f"{run_id}|{index}|{attempt}", self.ttl_ms]))

    def release(self, group: str, run_id: str, index: int, attempt: int) -> bool:
        return bool(self._holder(keys=[self._key(group, "holder")], args=[f"{run_id}|{index}|{attempt}", 0]))

    def holder(self, group: str) -> str | None:
        return self.r.get(self._key(group, "holder"))

    def waiting(self, group: str) -> list[str]:
        return self.r.lrange(self._key(group, "queue"), 0, -1)

    def groups(self) -> list[str]:
        return sorted(self.r.smembers(self.groups_key))
