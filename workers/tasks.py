"""The Celery tasks a build host executes: plan a run, run one attempt of a job.

Both are idempotent under redelivery: ``plan_run`` only plans a ``queued`` run, and
``run_job`` starts only the attempt the store says is current and pending (fencing), so a
message delivered twice never runs or records twice.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery
from kombu.exceptions import OperationalError
from loguru import logger

import ci_queue.reporters.tasks  # noqa: F401  (registers the reporting tasks in worker processes)
from ci_queue import metrics
from ci_queue.celery_app import PLAN_RUN, RUN_JOB, get_celery
from ci_queue.clock import now_iso
from ci_queue.clone_policy import for_run
from ci_queue.dispatch import report, report_job_end, retry_wanted, send_jobs
from ci_queue.pipeline.errors import PipelineError
from ci_queue.pipeline.model import Job, MergeRequest, PlanContext
from ci_queue.pipeline.planner import PIPELINE_FILES, plan_file
from ci_queue.resource_groups import ResourceGroups
from ci_queue.routing import job_queue
from ci_queue.settings import Settings, get_settings
from ci_queue.store import RunRecord, Store, store_from_settings
from ci_queue.trust import CONTROL_PLANE_VARIABLES, ROUTE_ANY, apply_to_plan
from workers import guard
from workers.checkout import CheckoutError, checkout, mirror_name, parse_clone_url, resolve_ref
from workers.git_options import GitOptions
from workers.identity import instance_id
from workers.job import JobRequest, JobResult, run_job
from workers.logs import LogLine
from workers.planning import PlanningClaim, attempts_text, pipeline_alone, retry_delay
from workers.project_files import include_sources
from workers.runners.base import InfrastructureError
from workers.transfer import JobChannel
from workers.workspace import Workspace

INFRASTRUCTURE_FAILURES = frozenset({"runner_system_failure", "image_missing"})
MAX_BUFFERED = 50_000  # log lines a job keeps while Redis is away
STATE_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError,
                redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError, OperationalError)


@dataclass
class _Runtime:
    """What a worker process needs, built once per process (after the prefork fork)."""

    settings: Settings

    @cached_property
    def store(self) -> Store:
        return store_from_settings(self.settings)

    @cached_property
    def celery(self) -> Celery:
        return get_celery()


_runtime: _Runtime | None = None


def runtime() -> _Runtime:
    global _runtime
    if _runtime is None:
        _runtime = _Runtime(get_settings())
    return _runtime


app = get_celery()


class RedisLogSink:
    """Job log lines to the run's log stream, batched: one round trip per 100 ms or 500 lines."""

    def __init__(self, store: Store, run_id: str, index: int, attempt: int, maxlen: int,
                 interval: float = 0.1, batch: int = 500) -> None:
        self.store, self.run_id, self.index, self.attempt = store, run_id, index, attempt
        self.maxlen, self.interval, self.batch = maxlen, interval, batch
        self._buffer: list[dict[str, Any]] = []
        self._failing = False
        self._lost = 0  # lines dropped while Redis was away (beyond MAX_BUFFERED)
        self._marker: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="log-flush", daemon=True)
        self._flusher.start()

    def write(self, line: LogLine) -> None:
        entry = {"attempt": self.attempt, "step": line.step, "n": line.number, "stream": line.stream,
                 "ts": line.timestamp, "text": line.text}
        with self._lock:
            self._buffer.append(entry)
            full = len(self._buffer) >= self.batch
        if full:
            self.flush()

    def flush(self) -> None:
        """Store what is buffered. While Redis is away the lines stay buffered (up to
        ``MAX_BUFFERED``) and go out with the next flush that works; beyond that the oldest are
        dropped and a line says how many, where they were."""
        with self._lock:
            lines, self._buffer = self._buffer, []
        if not lines:
            return
        try:
            self.store.append_log(self.run_id, self.index, lines, self.maxlen)
        except Exception as exc:  # a log write must never kill the job; keep the lines for later
            with self._lock:
                self._buffer = self._bounded(lines + self._buffer)
            if not self._failing:
                logger.bind(run_id=self.run_id).warning("could not store {} log lines, keeping them: {}",
                                                        len(lines), exc)
            self._failing = True
        else:
            self._failing = False
            self._lost, self._marker = 0, None

    def _bounded(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """At most ``MAX_BUFFERED`` lines: the oldest go, and a marker line takes their place."""
        if len(lines) <= MAX_BUFFERED:
            return lines
        if lines[0] is self._marker:
            lines = lines[1:]
        over = len(lines) - (MAX_BUFFERED - 1)
        self._lost += over
        kept = lines[over:]
        self._marker = {"attempt": self.attempt, "step": kept[0]["step"], "n": kept[0]["n"], "stream": "system",
                        "ts": kept[0]["ts"],
                        "text": f"[ci-queue] {self._lost} log lines were lost here while Redis was unreachable"}
        return [self._marker, *kept]

    def drain(self) -> None:
        """Store everything buffered; raises ``ConnectionError`` while lines are still waiting."""
        self.flush()
        with self._lock:
            waiting = len(self._buffer)
        if waiting:
            raise redis.ConnectionError(f"{waiting} log lines are not stored yet")

    def _flush_loop(self) -> None:
        while not self._closed.wait(self.interval):
            self.flush()

    def close(self) -> None:
        self._closed.set()
        self._flusher.join(timeout=5)
        self.flush()


class LeaseKeeper:
    """Renews a running attempt's lease (and its resource group's claim); notices when the
    attempt was taken away; tells this process's step guard (``workers.guard``) until when the
    lease is confirmed, so that the job's steps are frozen before the lease can lapse and killed
    when the attempt was taken over."""

    def __init__(self, store: Store, run_id: str, index: int, attempt: int, lease_seconds: float,
                 resource_group: str | None = None, guard_key: str | None = None,
                 kill_after: float = 600.0) -> None:
        self.store, self.run_id, self.index, self.attempt = store, run_id, index, attempt
        self.lease = lease_seconds
        self.margin = fence_margin(lease_seconds)
        self.group = resource_group
        self.lines = ResourceGroups(store, lease_seconds) if resource_group else None
        self.guard_key = guard_key or ""
        self.guard = guard.client(kill_after) if guard_key else None
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        if self.guard:
            guard.set_guarded(self.guard_key, True)
            self.guard.lease(self.guard_key, time.monotonic() + self.lease - self.margin)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.guard:
            guard.set_guarded(self.guard_key, False)
            self.guard.done(self.guard_key)

    def _loop(self) -> None:
        while not self._stop.wait(max(1.0, self.lease / 3)):
            sent = time.monotonic()  # the lease is confirmed from before the request went out
            try:
                if not self.store.renew_lease(self.run_id, self.index, self.attempt, self.lease):
                    self.lost = True
                    if self.guard:
                        self.guard.kill(self.guard_key)
                    return
                if self.guard:
                    self.guard.lease(self.guard_key, sent + self.lease - self.margin)
                if self.lines and self.group:
                    self.lines.renew(self.group, self.run_id, self.index, self.attempt)
            except Exception as exc:  # Redis away: the guard freezes the steps if it lasts
                logger.warning("lease renewal failed: {}", exc)


def fence_margin(lease_seconds: float) -> float:
    """How long before its lease can lapse a worker that could not renew freezes its steps (see
    docs/DESIGN.md, "Self-fencing"): a fifth of the lease, at least 2 s."""
    return max(2.0, lease_seconds / 5)


class CancelWatch:
    """The stop check a runner polls (Redis is read at most twice a second): the run or the job
    was canceled, the lease was lost, or this worker process (``instance``) is shutting down and
    hands its jobs back."""

    def __init__(self, store: Store, run_id: str, index: int, lease: LeaseKeeper, instance: str) -> None:
        self.store, self.run_id, self.index, self.lease, self.instance = store, run_id, index, lease, instance
        self.handing_back = False
        self._checked = 0.0
        self._canceled = False

    def __call__(self) -> bool:
        if self._canceled or self.handing_back or self.lease.lost:
            return True
        now = time.monotonic()
        if now - self._checked >= 0.5:
            self._checked = now
            try:
                self._canceled, self.handing_back = self.store.stop_requested(self.run_id, self.index, self.instance)
            except Exception:
                return False
        return self._canceled or self.handing_back


def plan_context(run: RunRecord, sha: str, repo_dir: Path) -> PlanContext:
    """The planner's view of the event that triggered ``run``. ``CI_COMMIT_REF_PROTECTED`` is the
    run's trusted fact; a trigger variable of that name (an older run's) is dropped."""
    context = dict(run.context)
    mr = context.pop("merge_request", None)
    fields = {k: v for k, v in context.items() if k in PlanContext.__dataclass_fields__}
    if "changed_files" in fields and fields["changed_files"] is not None:
        fields["changed_files"] = tuple(fields["changed_files"])
    fields.setdefault("kind", run.event or "push")
    fields.setdefault("project_path", run.repo)
    if fields["kind"] != "tag":
        fields.setdefault("branch", run.ref)
    else:
        fields.setdefault("tag", run.ref)
    fields["protected"] = run.protected
    variables = {k: v for k, v in run.variables.items() if k not in CONTROL_PLANE_VARIABLES}
    return PlanContext(**fields, sha=sha, variables=variables, repo_dir=str(repo_dir),
                       merge_request=MergeRequest(**mr) if mr else None)


@app.task(name=PLAN_RUN, bind=True, acks_late=True, max_retries=None)
def plan_run(self: Any, run_id: str, first_attempt_at: float | None = None) -> None:
    """Check out the pipeline file at the run's commit, plan it, persist it, send the first wave.

    Under the run's planning claim, owned by this task (a retry re-enters it, see
    ``workers.planning``). A checkout that cannot succeed ends the run as ``error`` at once; one
    that may succeed later is retried a bounded number of times, then ends it the same way.
    """
    rt = runtime()
    store = rt.store
    run = store.get_run(run_id, with_jobs=False)
    if run is None or run.status != "queued" or store.is_canceling(run_id):
        return  # already planned (redelivery), canceled, or expired
    owner = self.request.id or f"{self.request.hostname or 'worker'}:{uuid.uuid4().hex}"
    with PlanningClaim(store, run_id, owner) as claim:
        if not claim.held:
            return  # another planner is planning it right now
        if store.note_plan_attempt(run_id) == 1:
            # "queued" goes to the forge from here, not from the webhook request: that keeps the
            # request to a few Redis writes and one publish
            report(store, rt.celery, run_id, "run_queued")
        first_attempt_at = first_attempt_at or store.now()  # one clock whichever worker retries
        try:
            _plan(rt, run, claim)
        except CheckoutError as exc:
            delay = retry_delay(self.request.retries, first_attempt_at, store.now()) if exc.retryable else None
            if delay is not None:
                store.note_plan_error(run_id, f"checkout failed: {exc}")
                logger.bind(run_id=run_id).info("checkout failed, trying again in {:.1f}s: {}", delay, exc)
                raise self.retry(exc=exc, countdown=delay,
                                 kwargs={"first_attempt_at": first_attempt_at}) from None
            tried = f" after {attempts_text(self.request.retries + 1)}" if exc.retryable else ""
            _end_unplanned(store, rt.celery, run_id, f"checkout failed{tried}: {exc}", "error")
        except Exception as exc:  # a bug, Redis away...: noted; the sweeper re-plans it a bounded number of times
            store.note_plan_error(run_id, f"planning failed: {type(exc).__name__}: {exc}")
            raise


def _plan(rt: _Runtime, run: RunRecord, claim: PlanningClaim) -> None:
    """Check out, plan and persist ``run``; ends it itself when the pipeline gives no jobs.
    Raises ``CheckoutError``."""
    store, run_id, log = rt.store, run.id, logger.bind(run_id=run.id)
    policy = for_run(run.context, rt.settings)  # checked again right before each fetch
    sha = run.sha or resolve_ref(run.clone_url or "", run.ref, policy=policy)
    alone = pipeline_alone(run.clone_url or "", sha, run.context.get("pipeline"), policy)
    try:
        with Workspace(run_id, "plan", 1, settings=rt.settings, reuse=None if alone else project_key(run)) as workspace:
            if alone:  # the pipeline file is all the planner reads
                (workspace.builds_dir / alone[0]).parent.mkdir(parents=True, exist_ok=True)
                (workspace.builds_dir / alone[0]).write_text(alone[1], "utf-8")
            else:
                checkout(run.clone_url or "", sha, workspace.builds_dir, ref=run.ref, policy=policy,
                         options=GitOptions(strategy="fetch"))
            path = _pipeline_path(workspace.builds_dir, run.context.get("pipeline"))
            if path is None:
                reason = f"no pipeline file ({' or '.join(PIPELINE_FILES)}) in {run.repo} at {sha[:12]}"
                _end_unplanned(store, rt.celery, run_id, reason, "failed")
                return
            ctx = plan_context(run, sha, workspace.builds_dir)
            plan = plan_file(path, ctx, workspace.builds_dir, display_name=path.name,
                             sources=include_sources(rt.settings))
    except PipelineError as exc:
        log.info("pipeline file invalid: {}", exc)
        _end_unplanned(store, rt.celery, run_id, str(exc), "failed")
        return
    if plan.skipped_reason:
        _end_unplanned(store, rt.celery, run_id, f"no pipeline: {plan.skipped_reason}", "skipped")
        return
    if not claim.still_held():
        log.warning("another planner took this run over; leaving it to that one")
        return
    apply_to_plan(plan, run.trust, run.repo)  # the grants: what each job may have, where it may run
    ready = store.set_plan(run_id, plan, sha)
    log.info("planned {} jobs in {} stages", len(plan.jobs), len(plan.stages))
    send_jobs(store, rt.celery, rt.settings, run_id, ready)
    report(store, rt.celery, run_id, "run_planned")
    if rt.settings.auto_cancel:
        cancel_superseded(store, run_id)


def _end_unplanned(store: Store, celery: Celery, run_id: str, reason: str, status: str) -> None:
    """End a run that gets no jobs (``failed``, ``skipped`` or ``error``) and report it."""
    logger.bind(run_id=run_id).info("run ended as {} before planning: {}", status, reason)
    store.fail_run(run_id, reason, status=status)
    report(store, celery, run_id, "run_ended")


def cancel_superseded(store: Store, run_id: str) -> None:
    """A newer run of a ref makes the ``interruptible`` jobs of the older, still running runs of
    that ref pointless: cancel them (GitLab's auto-cancel of redundant pipelines)."""
    for older in store.superseded(run_id):
        record = store.get_run(older)
        if record is None:
            continue
        interruptible = [job.index for job in record.jobs if job.spec.get("interruptible")
                         and job.status in ("created", "pending", "running", "manual")]
        if interruptible:
            _, running = store.cancel_jobs(older, interruptible)
            logger.bind(run_id=older).info("superseded by run {}: canceled {} interruptible jobs ({} running)",
                                           run_id, len(interruptible), len(running))


def _pipeline_path(repo_dir: Path, configured: str | None) -> Path | None:
    if configured:
        candidate = (repo_dir / configured).resolve()
        return candidate if candidate.is_relative_to(repo_dir.resolve()) and candidate.is_file() else None
    return next((repo_dir / name for name in PIPELINE_FILES if (repo_dir / name).is_file()), None)


@app.task(name=RUN_JOB, bind=True, acks_late=True)
def run_job_task(self: Any, run_id: str, index: int, attempt: int) -> None:
    """Run one attempt of job ``index`` of ``run_id``, then record it and send what became ready.

    Redis may go away at any point (a restart, a failover, out of memory): every write here is
    retried until it is stored (``until_stored``), so a job that ended during an outage has its
    end recorded once Redis is back, and is not run again, as long as its attempt is still the
    current one (its lease is kept through the outage, see ``Sweeper.forgive_outage``).
    """
    rt = runtime()
    store, settings = rt.store, rt.settings
    worker = self.request.hostname or "worker"
    token = uuid.uuid4().hex
    begun = until_stored(settings, lambda: store.begin_job(run_id, index, attempt, worker,
                                                           settings.job_lease_seconds, token))
    if begun.status == "canceled":
        report_job_end(store, rt.celery, run_id, index, begun.run_status)
    if begun.status != "ok":
        return  # stale message (redelivered, or an older attempt) or the run was canceled
    report(store, rt.celery, run_id, "job_started", index)
    state, run, variables = until_stored(settings, lambda: store.job_start(run_id, index))
    if state is None or run is None:
        return
    job = Job.from_dict(state.spec)
    log = logger.bind(run_id=run_id, job=job.name)
    started = now_iso()
    sink = RedisLogSink(store, run_id, index, attempt, settings.log_stream_maxlen)
    with LeaseKeeper(store, run_id, index, attempt, settings.job_lease_seconds, job.resource_group,
                     guard.job_key(run_id, job.name, attempt), settings.state_outage_seconds) as lease:
        watch = CancelWatch(store, run_id, index, lease, instance_id())
        try:
            result = _execute(settings, run, variables, job, index, attempt, sink, watch, token)
        finally:
            sink.close()
        if watch.handing_back and result.status != "success":
            log.warning("the worker is shutting down: attempt {} is handed back", attempt)
            result = replace(result, status="failed", failure_class="runner_system_failure",
                             reason="the worker shut down while the job ran; handed back")
        concluded = False
        if not lease.lost:
            until_stored(settings, sink.drain, lease)
        if not lease.lost:
            concluded = bool(until_stored(settings, lambda: _conclude(rt, run_id, index, attempt, job, worker,
                                                                      started, result), lease))
    if not concluded:
        log.warning("attempt {} was taken over (lease lapsed); its result is dropped", attempt)


T = TypeVar("T")


def until_stored(settings: Settings, write: Callable[[], T], lease: LeaseKeeper | None = None) -> T | None:
    """``write()``, retried while Redis (or the broker) is unreachable, read-only or out of memory,
    for at most ``CIQ_STATE_OUTAGE_SECONDS``; gives up (None) once ``lease`` says the attempt was
    taken over. Safe because every write is fenced by the attempt: one that was applied but whose
    answer was lost is refused as stale when repeated."""
    deadline = time.monotonic() + settings.state_outage_seconds
    delay = 0.2
    while True:
        try:
            return write()
        except STATE_ERRORS as exc:
            if lease is not None and lease.lost:
                return None
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("Redis is unavailable ({}: {}); trying again in {:.1f}s", type(exc).__name__, exc, delay)
            time.sleep(delay)  # backoff between tries, not synchronization
            delay = min(delay * 2, 5.0)


def _execute(settings: Settings, run: RunRecord, pipeline_variables: dict[str, str], job: Job, index: int,
             attempt: int, sink: RedisLogSink, cancel: CancelWatch, token: str) -> JobResult:
    """Check out and run the job; touches Redis only through ``sink`` and ``cancel``, which
    outlive an outage. Artifacts and caches go through the web app with the attempt's token."""
    refusal = protected_worker_refusal(settings, run)
    if refusal is not None:
        return _infrastructure_result(InfrastructureError(refusal), sink, run.id, job.name)
    try:
        options = GitOptions.from_variables({**pipeline_variables, **job.variables, **run.variables})
    except ValueError as exc:
        return _infrastructure_result(CheckoutError(str(exc), retryable=False), sink, run.id, job.name)
    channel = JobChannel(settings.server_url, run.id, index, attempt, token)
    request = JobRequest(job=job, run_id=run.id, job_id=f"{run.id}-{index}", pipeline_id=run.id, attempt=attempt,
                         sha=run.sha, ref=run.ref, project_path=run.repo,
                         pipeline_variables=pipeline_variables, clone_url=run.clone_url,
                         trigger_variables=frozenset(run.variables), channel=channel,
                         fetch_artifacts=run.uses_artifacts, trust=run.trust)
    reuse = project_key(run) if run.clone_url and options.reuses else None
    with channel, Workspace(run.id, job.name, attempt, settings=settings, reuse=reuse) as workspace:
        try:
            if run.clone_url:
                checkout(run.clone_url, run.sha, workspace.builds_dir, ref=run.ref,
                         policy=for_run(run.context, settings), options=options)
            else:
                workspace.builds_dir.mkdir(parents=True, exist_ok=True)
        except InfrastructureError as exc:
            return _infrastructure_result(exc, sink, run.id, job.name)
        return run_job(request, workspace.builds_dir, sink, cancel, settings=settings)


def project_key(run: RunRecord) -> str | None:
    """The pool of reused project directories a run's jobs share on a host (``Workspace``'s
    ``reuse``): its repository and its trust, so that only jobs the same people could change meet
    what another left. None: no reuse (no clone URL, or one that is refused anyway)."""
    try:
        clean = parse_clone_url(run.clone_url).clean
    except CheckoutError:
        return None
    trust = run.trust
    return f"{mirror_name(clean)}-{'protected' if trust.protected else 'unprotected'}{'-fork' if trust.fork else ''}"


def protected_worker_refusal(settings: Settings, run: RunRecord) -> str | None:
    """Why a ``--protected`` worker does not run a job of ``run`` (None: it may). The queues keep
    other work away from it (``ci_queue.routing``); this is the check behind them, from the run's
    trusted facts, for a message that reached it anyway (an operator's extra ``--queues``)."""
    if not settings.worker_protected or run.trust.route != ROUTE_ANY:  # protected work, as routed
        return None
    return ("this worker (`ci-queue worker --protected`) runs only jobs of protected branches and tags of "
            "registered repositories; this run is not one (the job reached it through a queue it should not "
            "consume), so it is handed back")


def _infrastructure_result(exc: InfrastructureError, sink: RedisLogSink, run_id: str, job: str) -> JobResult:
    now = now_iso()
    sink.write(LogLine(run_id=run_id, job=job, step="prepare", number=1, stream="system", text=f"[ci-queue] {exc}",
                       timestamp=now))
    return JobResult(status="failed", failure_class=exc.failure_class, exit_code=None, steps=[], started_at=now,
                     finished_at=now, duration=0.0, log_truncated=False, reason=str(exc))


def _conclude(rt: _Runtime, run_id: str, index: int, attempt: int, job: Job, worker: str, started: str,
              result: JobResult) -> bool:
    """Record the attempt: finished, or retried as a new attempt; then dispatch what became ready.
    True once done (the attempt's end is recorded, or it was already)."""
    store, settings = rt.store, rt.settings
    freed: tuple[str, ...] = ()
    if job.resource_group and ResourceGroups(store, settings.job_lease_seconds).release(
            job.resource_group, run_id, index, attempt):
        freed = (job.resource_group,)
    record = {"attempt": attempt, "worker": worker, "status": result.status, "failure_reason": result.failure_class,
              "exit_code": result.exit_code, "started_at": result.started_at or started,
              "finished_at": result.finished_at, "duration": result.duration,
              "steps": [vars(step) for step in result.steps], "reason": result.reason}
    if result.status == "failed":
        previous = store.job(run_id, index)
        attempts = previous.attempts if previous else []
        retry_kind = None
        if (result.failure_class in INFRASTRUCTURE_FAILURES
                and sum(a.get("retried") == "system" for a in attempts) < settings.system_failure_retries):
            retry_kind = "system"
        elif retry_wanted(job, result.failure_class, result.exit_code,
                          sum(a.get("retried") == "yaml" for a in attempts)):
            retry_kind = "yaml"
        if retry_kind:
            new_attempt = store.requeue_job(run_id, index, attempt, {**record, "retried": retry_kind})
            if new_attempt is not None:
                logger.bind(run_id=run_id, job=job.name).info("retrying ({}) as attempt {}", retry_kind, new_attempt)
                send_jobs(store, rt.celery, settings, run_id, [index], freed)
                report(store, rt.celery, run_id, "job_ended", index)
                return True
    fields = {"exit": result.exit_code, "reason": result.failure_class}
    transition = store.finish_job(run_id, index, attempt, result.status,
                                  allowed=result.status == "failed" and job.failure_allowed(result.exit_code),
                                  fields=fields, attempt_record=record)
    send_jobs(store, rt.celery, settings, run_id, transition.ready, freed)
    if transition.status == "ok":
        metrics.record_job_end(store, status=result.status, queue=job_queue(job.tags, job.route),
                               duration=result.duration)
        report_job_end(store, rt.celery, run_id, index, transition.run_status)
    return True
