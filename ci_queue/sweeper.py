"""The sweeper: the periodic repair of what crashed processes leave behind.

It runs inside every ``ci-queue worker`` and ``ci-queue serve`` process, behind a Redis lock so
that exactly one sweeps at a time and another takes over within seconds when that one dies; a
deployment has no extra process to forget. Each tick it

- re-queues, as a new attempt, every running job whose lease lapsed (its worker or host is
  gone) while ``CIQ_SYSTEM_FAILURE_RETRIES`` allows, else fails it as ``runner_system_failure``;
- fails as ``stuck`` every job that waited longer than ``CIQ_QUEUE_TIMEOUT_SECONDS`` because no
  worker has its tags (or, for a ``protected_workers_only`` repository's protected job, no
  ``--protected`` worker has them: the message says which kind of worker it waited for);
  a run ``waiting_approval`` has nothing queued and is never stuck: it waits for a person;
- fails as ``stuck`` the held jobs (``ci_queue.store.admission``) that waited longer than
  ``CIQ_QUEUE_TIMEOUT_SECONDS`` in a queue that no live worker consumes;
- re-sends jobs made ready or admitted whose Celery message was never published (a crash between
  the barrier or the admission and the publish), and runs nobody planned within two minutes (at most once per two
  minutes; a run that ``MAX_PLAN_ATTEMPTS`` planners took without planning it ends as ``error``
  with the last planner's reason);
- grants resource groups whose holder vanished;
- admits held jobs to free slots (a net: admission happens where jobs become ready and where
  slots free up; a cancel frees slots without admitting, and a new worker's slots are admitted
  to by its own heartbeat);
- puts back job messages that a lost broker connection stranded in kombu's ``unacked`` hash
  (``ci_queue.unacked``).

After Redis was away (a restart, a failover, or this process cut off from it), no worker could
renew its lease; the first tick after the outage gives every running attempt a full lease period
from now before any lease is judged (``Store.extend_leases``), so an outage costs no more than its
own length. A restart or failover is recognised by Redis's ``run_id`` changing, whichever process
sweeps.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import defaultdict

from celery import Celery
from loguru import logger

from ci_queue.clock import now_iso
from ci_queue.dispatch import grant_next, publish, report, report_job_end, send_jobs, send_to_planning
from ci_queue.resource_groups import ResourceGroups
from ci_queue.routing import who_serves
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.store.admission import Admission
from ci_queue.unacked import recover as recover_unacked

LOCK_SECONDS = 10.0
MAX_PLAN_ATTEMPTS = 3  # planners that took a run and did not plan it before it ends as error
TRIM_INTERVAL = 600.0  # seconds between trims of the run indexes
UNACKED_INTERVAL = 5.0  # seconds between looks at the broker's unacknowledged messages
UNACKED_AGE = 15.0  # a message unacknowledged this long whose job still waits is put back

class Sweeper:
    """One sweeper per process; only the lock holder does any work."""

    def __init__(self, store: Store, app: Celery, settings: Settings, interval: float = 2.0) -> None:
        self.store, self.app, self.settings = store, app, settings
        self.interval = interval
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trimmed = float("-inf")
        self._unacked_checked = float("-inf")
        self._saw_outage = False

    @property
    def lock_key(self) -> str:
        return f"{self.store.prefix}sweeper:lock"

    def holds_lock(self) -> bool:
        return self.store.hold(self.lock_key, self.owner, LOCK_SECONDS) == self.owner

    def start(self) -> Sweeper:
        self._thread = threading.Thread(target=self._loop, name="ciq-sweeper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=LOCK_SECONDS)
        with contextlib.suppress(Exception):  # stopping must not fail; the lock expires by itself
            self.store.let_go(self.lock_key, self.owner)

    @property
    def redis_id_key(self) -> str:
        return f"{self.store.prefix}redis:run_id"

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.forgive_outage()
                if self.holds_lock():
                    self.sweep()
            except Exception as exc:  # Redis away for a moment: the next tick tries again
                self._saw_outage = True
                logger.warning("sweeper tick failed: {}", exc)

    def forgive_outage(self) -> int:
        """After an outage of Redis (seen by this process, or a restart or failover: Redis's
        ``run_id`` changed or was never recorded), give every running attempt a full lease period to renew before any
        lease is judged. Returns the number of leases extended."""
        server = str(self.store.r.info("server").get("run_id", ""))
        previous = self.store.r.set(self.redis_id_key, server, get=True, ex=self.store.retention)
        if not self._saw_outage and previous == server:
            return 0
        # None: a Redis that never saw a sweeper, or restarted before the first one looked
        extended = self.store.extend_leases(self.settings.job_lease_seconds)
        why = "Redis was unreachable" if previous == server else "Redis started, restarted or failed over"
        logger.warning("{}: {} running job(s) get {}s to renew their leases", why, extended,
                       self.settings.job_lease_seconds)
        resent = self._resend_in_flight()
        if resent:
            logger.warning("{}: sent {} waiting job(s) and run(s) again, in case their message was lost", why, resent)
        self._saw_outage = False
        return extended

    def _resend_in_flight(self) -> int:
        """A message Redis lost with the outage (kombu moves a message to its ``unacked`` hash only
        after BRPOP returned it, so one in flight then is gone) would leave its job ``pending``
        for good: send every waiting attempt and every unplanned run again. The copies that were
        not lost are dropped by fencing (a stale attempt, a run already claimed)."""
        store = self.store
        waiting: dict[str, list[int]] = defaultdict(list)
        for run_id, index, _ in store.expired(store.queued_key, float("inf"), limit=100_000):
            waiting[run_id].append(index)
        for run_id, indexes in waiting.items():  # send_jobs sends only what is still pending, one wave a run
            send_jobs(store, self.app, self.settings, run_id, sorted(indexes))
        unplanned = store.unplanned(0.0, limit=100_000)
        for run in unplanned:
            send_to_planning(self.app, run.run_id)
        return sum(map(len, waiting.values())) + len(unplanned)

    def sweep(self, now: float | None = None) -> dict[str, int]:
        """One pass; returns what it did (for tests and metrics)."""
        done = {"requeued": 0, "failed_lost": 0, "stale": 0, "stuck": 0}
        for run_id, index, attempt in self.store.expired(self.store.leases_key, now):
            done[self._lease_lapsed(run_id, index, attempt)] += 1
        for run_id, index, attempt in self.store.expired(self.store.queued_key, now):
            done["stuck"] += self._stuck(run_id, index, attempt)
        for run_id, index, attempt in self._held_unserved(now):
            done["stuck"] += self._stuck(run_id, index, attempt)
        done["granted"] = self._grant_free_groups()
        done["resent"] = self._resend_unsent(now)
        done["replanned"], done["unplannable"] = self._replan(now)
        if time.monotonic() - self._unacked_checked > UNACKED_INTERVAL:
            self._unacked_checked = time.monotonic()
            done.update(recover_unacked(self.store, self.app, min_age=UNACKED_AGE))
        if time.monotonic() - self._trimmed > TRIM_INTERVAL:
            self._trimmed = time.monotonic()
            done["trimmed"] = self.store.trim_indexes(now)
        # the net under inline admission: slots freed by a cancel, or by a worker that just came
        done["admitted"] = send_jobs(self.store, self.app, self.settings, None, [])
        return done

    def _held_unserved(self, now: float | None = None) -> list[tuple[str, int, int]]:
        """Held jobs that waited longer than the queue timeout in a queue no live worker consumes
        (no worker has their tags). A job that waits for a slot of a served queue is not stuck,
        however long the farm is busy: it waits its turn, as a job in a broker queue would."""
        admission = Admission(self.store)
        found = []
        for queue in admission.held_queues():
            if not admission.live_workers(queue):  # live now (by Redis's clock), whatever ``now`` says
                found += admission.held_since(queue, (now or self.store.now()) - self.settings.queue_timeout_seconds)
        return found

    def _replan(self, now: float | None = None, age: float = 120.0) -> tuple[int, int]:
        """Runs nobody planned within ``age`` seconds (the plan message was lost with a crashed
        planner, or never published) are sent to planning again, at most once per ``age``; a
        run that ``MAX_PLAN_ATTEMPTS`` planners took without planning it ends as ``error``.
        Returns (re-sent, ended)."""
        resent = ended = 0
        for run in self.store.unplanned(age, now):
            log = logger.bind(run_id=run.run_id)
            if run.attempts >= MAX_PLAN_ATTEMPTS:
                reason = run.error or "no planner finished it (each one stopped without a word: its worker was lost?)"
                log.warning("run could not be planned after {} attempts: ending it as error", run.attempts)
                self.store.fail_run(run.run_id, f"could not be planned after {run.attempts} attempts: {reason}",
                                    status="error")
                report(self.store, self.app, run.run_id, "run_ended")
                ended += 1
                continue
            log.warning("run still queued after {}s: sending it to planning again", age)
            self.store.note_replan(run.run_id, now)
            send_to_planning(self.app, run.run_id)
            resent += 1
        return resent, ended

    def _resend_unsent(self, now: float | None = None, age: float = 15.0) -> int:
        """Jobs made ready whose message was never published (the process that ran the barrier
        died in between) are sent again; a duplicate would be dropped by fencing anyway."""
        store = self.store
        count = 0
        for run_id, index, attempt in store.expired(store.unsent_key, (now or store.now()) - age):
            store.forget(store.unsent_key, run_id, index, attempt)
            job = store.job(run_id, index)
            if job is not None and job.status == "pending" and job.attempt == attempt:
                logger.bind(run_id=run_id, job=job.name).warning("re-sending attempt {}: its message was lost", attempt)
                send_jobs(store, self.app, self.settings, run_id, [index])
                count += 1
        return count

    def _grant_free_groups(self) -> int:
        """A resource group whose holder vanished (its lease expired) goes to the next in line."""
        lines = ResourceGroups(self.store, self.settings.job_lease_seconds)
        signatures = []
        for name in lines.groups():
            if lines.holder(name) is None:
                if not lines.waiting(name):
                    self.store.r.srem(lines.groups_key, name)
                    continue
                signatures.extend(grant_next(self.store, self.app, self.settings, lines, name))
        publish(self.store, self.settings, signatures)
        return len(signatures)

    def _lease_lapsed(self, run_id: str, index: int, attempt: int) -> str:
        store = self.store
        store.forget(store.leases_key, run_id, index, attempt)
        job = store.job(run_id, index)
        if job is None or job.status != "running" or job.attempt != attempt:
            return "stale"  # finished or moved on meanwhile
        log = logger.bind(run_id=run_id, job=job.name)
        record = {"attempt": attempt, "worker": job.worker, "status": "failed",
                  "failure_reason": "runner_system_failure", "started_at": job.started_at,
                  "reason": "the worker stopped renewing its lease (host or worker lost)"}
        used = sum(a.get("retried") == "system" for a in job.attempts)
        if used < self.settings.system_failure_retries:
            new_attempt = store.requeue_job(run_id, index, attempt, {**record, "retried": "system"})
            if new_attempt is not None:
                log.warning("lease of attempt {} lapsed (worker {} lost): re-queued as attempt {}", attempt,
                            job.worker, new_attempt)
                send_jobs(store, self.app, self.settings, run_id, [index])
                return "requeued"
        transition = store.finish_job(run_id, index, attempt, "failed",
                                      fields={"reason": "runner_system_failure"}, attempt_record=record)
        log.warning("lease of attempt {} lapsed and no system retry is left: failed", attempt)
        send_jobs(store, self.app, self.settings, run_id, transition.ready)
        report_job_end(store, self.app, run_id, index, transition.run_status)
        return "failed_lost"

    def _stuck(self, run_id: str, index: int, attempt: int) -> int:
        store = self.store
        store.forget(store.queued_key, run_id, index, attempt)
        job = store.job(run_id, index)
        if job is None or job.status != "pending" or job.attempt != attempt:
            return 0
        reason = (f"no worker took this job within {self.settings.queue_timeout_seconds}s "
                  f"(queue {job.queue}; tags {job.spec.get('tags') or []}; {who_serves(job.queue or '')})")
        store.append_log(run_id, index, [{"attempt": attempt, "step": "prepare", "n": 0, "stream": "system",
                                          "ts": now_iso(),
                                          "text": f"[ci-queue] {reason}"}])
        transition = store.finish_job(run_id, index, attempt, "failed", fields={"reason": "stuck"},
                                      attempt_record={"attempt": attempt, "status": "failed",
                                                      "failure_reason": "stuck", "reason": reason})
        logger.bind(run_id=run_id, job=job.name).warning(reason)
        send_jobs(store, self.app, self.settings, run_id, transition.ready)
        report_job_end(store, self.app, run_id, index, transition.run_status)
        return 1
