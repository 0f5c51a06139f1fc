"""A worker's slots, announced to the scheduler (``ci_queue.store.admission``) while it lives.

Held jobs are admitted to a queue only up to the free slots of the live workers that consume it,
so a worker says which job queues it consumes and how many jobs it runs at once, and renews that
with each beat of its heartbeat (``ci_queue.farm.Heartbeat`` calls ``announce``: one thread, one
interval; a worker killed without a word stops counting ``TTL`` seconds after its last beat).
Each announcement also admits held jobs to the slots that are free: a worker that starts gets
work at once. A worker that stops takes its slots away first.
"""

from __future__ import annotations

import contextlib
import threading

from celery import Celery
from loguru import logger

from ci_queue.dispatch import send_jobs
from ci_queue.farm import BEAT_SECONDS
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.store.admission import Admission

TTL = 3 * BEAT_SECONDS  # seconds a worker's slots count after its last announcement


class Slots:
    """Announces one worker's slots (``announce``, on each heartbeat) until ``stop``."""

    def __init__(self, store: Store, app: Celery, settings: Settings, name: str, queues: list[str],
                 concurrency: int) -> None:
        self.store, self.app, self.settings = store, app, settings
        self.name, self.queues, self.concurrency = name, queues, concurrency
        self.admission = Admission(store)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # a heartbeat in flight never re-registers a worker that stopped

    def announce(self) -> None:
        """Register the slots (renewed) and admit held jobs to those that are free."""
        try:
            with self._lock:
                if self._stop.is_set():
                    return
                self.admission.register_worker(self.name, self.queues, self.concurrency, TTL)
            send_jobs(self.store, self.app, self.settings, None, [])
        except Exception as exc:  # Redis or the broker away: the next heartbeat tries again
            logger.warning("could not announce this worker's slots: {}", exc)

    def stop(self) -> None:
        self._stop.set()
        with self._lock, contextlib.suppress(Exception):  # stopping must not fail; the slots lapse anyway
            self.admission.unregister_worker(self.name)
