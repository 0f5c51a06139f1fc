"""What Redis knows about artifacts, reports and caches; the bytes are in the object store.

Per job, in the run's state hash (beside the job's other ``n<i>.*`` fields, so they go with the
run when its retention ends):

- ``n<i>.artifacts``: JSON record of the newest attempt that uploaded artifacts: ``attempt``,
  ``name``, ``size``, ``sha256``, ``files`` (entries), ``key`` and ``manifest`` (object names),
  ``expires`` (epoch seconds, Redis's clock; null: ``never``), ``expire_at`` (the same, ISO 8601),
  ``expired`` (true once the janitor removed the objects);
- ``n<i>.tests``: the ``reports:junit`` summary, with its ``attempt``;
- ``n<i>.dotenv``: ``{"attempt": n, "variables": {...}}`` from ``reports:dotenv``.

Every write is fenced (``SET_IF_CURRENT``): only the attempt that runs now, holding the job token
it got when it began, records anything.

Three sorted sets drive the janitor (``ci_queue.artifacts.janitor``):

- ``P objects:expire``: ``<run>|<i>|<attempt>`` by the artifacts' expiry;
- ``P objects:runs``: run ids with objects, by the earliest time their retention can have ended;
- ``P objects:caches``: cache object names by the last push or pull;

and ``P objects:cache-sums``, a hash of cache object name -> ``<sha256>:<size>`` of what is stored.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from ci_queue.clock import iso_from_epoch
from ci_queue.store.core import Store


@dataclass(frozen=True)
class Source:
    """A job whose artifacts another job fetches, as the worker is told about it."""

    job: str
    index: int
    status: str  # ok | expired | none (made no artifacts: nothing to fetch)
    size: int = 0
    sha256: str = ""
    dotenv: dict[str, str] | None = None


def object_prefix(run_id: str) -> str:
    """Every object of a run is under this prefix (removed together when the run goes)."""
    return f"runs/{run_id}/"


def attempt_prefix(run_id: str, index: int, attempt: int) -> str:
    return f"{object_prefix(run_id)}jobs/{index}/a{attempt}/"


class ArtifactIndex:
    """The Redis side of artifacts, reports and caches (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.r
        self.expire_key = f"{store.prefix}objects:expire"
        self.runs_key = f"{store.prefix}objects:runs"
        self.caches_key = f"{store.prefix}objects:caches"
        self.cache_sums_key = f"{store.prefix}objects:cache-sums"

    # -- the job token -----------------------------------------------------------------------------
    def token_holder(self, run_id: str, index: int, attempt: int, token: str) -> bool:
        """Does ``token`` belong to the attempt of job ``index`` that runs now?"""
        att, status, held = self.r.hmget(self.store._state(run_id),
                                         [f"n{index}.att", f"n{index}.st", f"n{index}.token"])
        return (bool(token) and att == str(attempt) and status == "running"
                and hmac.compare_digest((held or "").encode(), token.encode()))

    def _set(self, run_id: str, index: int, attempt: int, token: str, fields: dict[str, Any]) -> bool:
        pairs: list[str] = []
        for name, value in fields.items():
            pairs += [name, json.dumps(value)]
        return bool(self.store._scripts["SET_IF_CURRENT"](keys=[self.store._state(run_id)],
                                                          args=[index, attempt, token, *pairs]))

    # -- records -----------------------------------------------------------------------------------
    def record_artifacts(self, run_id: str, index: int, attempt: int, token: str, record: dict[str, Any],
                         expire_in: int | None) -> dict[str, Any] | None:
        """Record the attempt's artifacts (expiring ``expire_in`` seconds from now, None: never);
        returns the record, None when the attempt is no longer the current one."""
        now = self.store.now()
        expires = now + expire_in if expire_in is not None else None
        record = {**record, "attempt": attempt, "expires": expires,
                  "expire_at": iso_from_epoch(expires) if expires is not None else None, "expired": False}
        if not self._set(run_id, index, attempt, token, {"artifacts": record}):
            return None
        pipe = self.r.pipeline()
        if expires is not None:
            pipe.zadd(self.expire_key, {f"{run_id}|{index}|{attempt}": expires})
        pipe.zadd(self.runs_key, {run_id: now + self.store.retention}, gt=True)  # GT adds new members too
        pipe.execute()
        return record

    def record_tests(self, run_id: str, index: int, attempt: int, token: str, summary: dict[str, Any]) -> bool:
        return self._set(run_id, index, attempt, token, {"tests": {**summary, "attempt": attempt}})

    def record_dotenv(self, run_id: str, index: int, attempt: int, token: str, variables: dict[str, str]) -> bool:
        return self._set(run_id, index, attempt, token, {"dotenv": {"attempt": attempt, "variables": variables}})

    def note_objects(self, run_id: str) -> None:
        """The run has objects (an upload is under way): the janitor looks at it after its retention."""
        self.r.zadd(self.runs_key, {run_id: self.store.now() + self.store.retention}, nx=True)

    def artifacts(self, run_id: str, index: int) -> dict[str, Any] | None:
        raw = self.r.hget(self.store._state(run_id), f"n{index}.artifacts")
        return json.loads(raw) if raw else None

    def sources(self, run_id: str, names: list[str]) -> list[Source]:
        """What the jobs ``names`` left for a job that fetches their artifacts: their artifacts
        (only those of each job's current attempt count) and dotenv variables."""
        store = self.store
        indexes = [store.job_index(run_id, name) for name in names]
        fields = [f"n{i}.{p}" for i in indexes if i is not None for p in ("att", "artifacts", "dotenv")]
        values = iter(self.r.hmget(store._state(run_id), fields) if fields else [])
        now = store.now()
        found: list[Source] = []
        for name, index in zip(names, indexes, strict=True):
            if index is None:
                continue
            att, raw_artifacts, raw_dotenv = next(values), next(values), next(values)
            record = json.loads(raw_artifacts) if raw_artifacts else None
            dotenv = json.loads(raw_dotenv) if raw_dotenv else None
            variables = dotenv["variables"] if dotenv and str(dotenv.get("attempt")) == att else None
            if not record or str(record.get("attempt")) != att:
                found.append(Source(name, index, "none", dotenv=variables))
                continue
            expired = record.get("expired") or (record.get("expires") is not None and record["expires"] <= now)
            found.append(Source(name, index, "expired" if expired else "ok", record.get("size", 0),
                                record.get("sha256", ""), variables))
        return found

    # -- caches ------------------------------------------------------------------------------------
    def touch_cache(self, name: str) -> None:
        self.r.zadd(self.caches_key, {name: self.store.now()})

    def record_cache(self, name: str, sha256: str, size: int) -> None:
        pipe = self.r.pipeline()
        pipe.hset(self.cache_sums_key, name, f"{sha256}:{size}")
        pipe.zadd(self.caches_key, {name: self.store.now()})
        pipe.execute()

    def cache_sum(self, name: str) -> tuple[str, int] | None:
        """The checksum and size of the stored cache ``name``, None if there is none."""
        raw = self.r.hget(self.cache_sums_key, name)
        if not raw:
            return None
        sha256, _, size = raw.partition(":")
        return sha256, int(size or 0)

    # -- the janitor's queries -----------------------------------------------------------------------
    def due_artifacts(self, now: float, limit: int = 100) -> list[tuple[str, int, int]]:
        members = self.r.zrangebyscore(self.expire_key, "-inf", now, start=0, num=limit)
        found = []
        for member in members:
            run_id, index, attempt = member.rsplit("|", 2)
            found.append((run_id, int(index), int(attempt)))
        return found

    def mark_expired(self, run_id: str, index: int, attempt: int) -> None:
        """The objects of that attempt are gone: its record says so (if the run is still there)."""
        record = self.artifacts(run_id, index)
        if record and record.get("attempt") == attempt and self.r.exists(self.store._run(run_id)):
            self.r.hset(self.store._state(run_id), f"n{index}.artifacts", json.dumps({**record, "expired": True}))
        self.r.zrem(self.expire_key, f"{run_id}|{index}|{attempt}")

    def due_runs(self, now: float, limit: int = 100) -> list[str]:
        return list(self.r.zrangebyscore(self.runs_key, "-inf", now, start=0, num=limit))

    def run_gone(self, run_id: str) -> bool:
        """True when the run's records expired; else its objects are looked at again one retention later."""
        if self.r.exists(self.store._run(run_id)):
            ttl = self.r.ttl(self.store._run(run_id))
            later = self.store.now() + (ttl if ttl and ttl > 0 else self.store.retention)
            self.r.zadd(self.runs_key, {run_id: later})
            return False
        return True

    def forget_run(self, run_id: str) -> None:
        self.r.zrem(self.runs_key, run_id)

    def stale_caches(self, cutoff: float, limit: int = 100) -> list[str]:
        return list(self.r.zrangebyscore(self.caches_key, "-inf", cutoff, start=0, num=limit))

    def forget_cache(self, name: str, cutoff: float) -> bool:
        """Drop the cache's entry unless it was used after ``cutoff`` meanwhile; True if dropped."""
        score = self.r.zscore(self.caches_key, name)
        if score is not None and score > cutoff:
            return False
        pipe = self.r.pipeline()
        pipe.zrem(self.caches_key, name)
        pipe.hdel(self.cache_sums_key, name)
        pipe.execute()
        return True
