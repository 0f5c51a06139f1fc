"""The sweeper of the object store: expired artifacts, the objects of runs whose retention ended,
caches nobody used for ``CIQ_CACHE_EXPIRE_IN``.

It runs in the web app's process (``ci-queue serve``'s master), not in the run sweeper that
every worker carries: only the web app holds the store's credentials. One janitor works at a time
across the farm (a Redis hold, like the run sweeper's lock); the others wait. What it removes is
driven by the sorted sets of ``ci_queue.store.artifacts``, so a tick costs a few Redis reads
when nothing is due, and a store that is down only delays the work to the next tick.
"""

from __future__ import annotations

import contextlib
import threading
import uuid

from loguru import logger

from ci_queue.objects import ObjectStore
from ci_queue.pipeline.durations import parse_duration
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.store.artifacts import ArtifactIndex, attempt_prefix, object_prefix

LOCK_SECONDS = 120


class ObjectJanitor:
    """Removes what expired from the object store (see the module docstring)."""

    def __init__(self, store: Store, objects: ObjectStore, settings: Settings, interval: float = 30.0) -> None:
        self.store, self.objects, self.settings = store, objects, settings
        self.index = ArtifactIndex(store)
        self.interval = interval
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lock_key(self) -> str:
        return f"{self.store.prefix}janitor:lock"

    def start(self) -> ObjectJanitor:
        self._thread = threading.Thread(target=self._loop, name="ciq-janitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        with contextlib.suppress(Exception):
            self.store.let_go(self.lock_key, self.owner)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if self.store.hold(self.lock_key, self.owner, LOCK_SECONDS) == self.owner:
                    self.sweep()
            except Exception as exc:  # Redis or the store away: the next tick tries again
                logger.warning("object janitor tick failed: {}", exc)

    def sweep(self, now: float | None = None) -> dict[str, int]:
        """One pass; returns how many artifacts, runs and caches it removed."""
        now = self.store.now() if now is None else now
        done = {"artifacts": 0, "runs": 0, "caches": 0}
        for run_id, index, attempt in self.index.due_artifacts(now):
            self.objects.delete_prefix(attempt_prefix(run_id, index, attempt))
            self.index.mark_expired(run_id, index, attempt)
            done["artifacts"] += 1
        for run_id in self.index.due_runs(now):
            if self.index.run_gone(run_id):
                self.objects.delete_prefix(object_prefix(run_id))
                self.index.forget_run(run_id)
                done["runs"] += 1
        cutoff = now - parse_duration(self.settings.cache_expire_in)
        for name in self.index.stale_caches(cutoff):
            if self.index.forget_cache(name, cutoff):
                self.objects.delete(name)
                done["caches"] += 1
        if any(done.values()):
            logger.info("object janitor removed {artifacts} expired artifacts, the objects of {runs} runs past "
                        "their retention, {caches} unused caches", **done)
        return done
