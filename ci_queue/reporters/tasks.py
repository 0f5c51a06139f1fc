"""The reporting Celery tasks (``ciq.report_status``, ``ciq.notify``) and the engine's hook,
``report_run``.

The engine calls ``report_run(store, app, run_id, event)`` at each step of a run; it reads the
run from the store, decides which statuses (and whether a chat message) to send, numbers each
status update of the commit (``ordering``), and sends the tasks by name to the control queue.
It never raises: reporting must not fail a run.

The tasks retry what may pass later (connection errors, timeouts, 5xx and 429, a busy commit
lock) with ``autoretry_for``: exponential backoff with full jitter, capped, and a bounded number
of retries (``RetryPolicy.worst_case_seconds``: about 10 minutes), after which they give up with
an error log line saying what was lost and why. Tokens and the chat webhook URL are read on the
worker from its environment / settings, never put in a broker message.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis
import requests
from celery import Celery, Task
from loguru import logger

from ci_queue.celery_app import get_celery
from ci_queue.reporters.chat import (
    DEFAULT_POLICY,
    allowed_failure,
    build_message,
    post_message,
    previous_outcome,
    should_notify,
)
from ci_queue.reporters.ordering import OrderBusy, StatusOrder
from ci_queue.reporters.status import (
    DEFAULT_TOKEN_ENV,
    PROVIDERS,
    RetryableError,
    StatusError,
    StatusTarget,
    StatusUpdate,
    post_status,
    short,
)
from ci_queue.routing import CONTROL_QUEUE
from ci_queue.settings import Settings, get_settings
from ci_queue.store import JobState, RunRecord, Store, store_from_settings
from ci_queue.store.core import TERMINAL_JOB, TERMINAL_RUN

REPORT_STATUS = "ciq.report_status"
NOTIFY = "ciq.notify"
EVENTS = ("run_queued", "run_planned", "job_started", "job_ended", "run_ended")
RETRYABLE = (requests.ConnectionError, requests.Timeout, RetryableError, OrderBusy, redis.ConnectionError,
             redis.TimeoutError)

_RUN_STATES = {"queued": "pending", "running": "running", "success": "success", "failed": "failure",
               "error": "error", "canceled": "canceled", "skipped": "skipped"}
_RUN_WORDS = {"queued": "Queued", "running": "Running", "success": "Pipeline passed", "failed": "Pipeline failed",
              "error": "Pipeline errored", "canceled": "Pipeline canceled", "skipped": "No pipeline"}


@dataclass(frozen=True)
class RetryPolicy:
    """How hard the tasks try. Defaults: 1 + 8 attempts, waits of at most 2, 4, ... 120 s (full
    jitter: a random part of each), 5 s to connect and 10 s to read: at most ~10 minutes."""

    backoff: int = 2  # seconds, doubled per retry (Celery's retry_backoff: whole seconds, >= 1)
    backoff_max: int = 120
    max_retries: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    lock_wait: float = 10.0  # how long a status waits for its commit's turn before retrying
    jitter: bool = True  # full jitter: each wait is random in [0, backoff * 2^n]

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout, self.read_timeout)

    def worst_case_seconds(self) -> float:
        """The longest time from the first attempt to giving up."""
        waits = sum(min(self.backoff_max, self.backoff * 2 ** i) for i in range(self.max_retries))
        return waits + (self.max_retries + 1) * (self.connect_timeout + self.read_timeout + self.lock_wait)


DEFAULT_RETRY = RetryPolicy()


def _describe(task: Task, args: tuple | list) -> str:
    message = args[0] if args and isinstance(args[0], dict) else {}
    if task.name.endswith(REPORT_STATUS.split(".")[-1]) and "target" in message:
        target, update = message["target"], message.get("update", {})
        return (f"status {update.get('context')}={update.get('state')} for {target.get('repo')}@"
                f"{str(message.get('sha', ''))[:12]} ({target.get('provider')})")
    return f"chat notification of run {args[1] if len(args) > 1 else '?'}"


class ReporterTask(Task):
    """Logs every retry, and why it gave up."""

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        logger.warning("{}: attempt {} failed ({}: {}); retrying", _describe(self, args),
                       self.request.retries + 1, type(exc).__name__, exc)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        attempts = (self.request.retries or 0) + 1
        if isinstance(exc, RETRYABLE):
            logger.error("giving up on {} after {} attempts: {}: {}", _describe(self, args), attempts,
                         type(exc).__name__, exc)
        else:
            logger.error("{} failed and is not retried: {}: {}", _describe(self, args), type(exc).__name__, exc)


@dataclass
class _Deps:
    """What the tasks need, built lazily in the worker process."""

    policy: RetryPolicy
    given_settings: Settings | None = None
    given_store: Store | None = None

    @cached_property
    def settings(self) -> Settings:
        return self.given_settings or get_settings()

    @cached_property
    def store(self) -> Store:
        return self.given_store or store_from_settings(self.settings)

    @cached_property
    def order(self) -> StatusOrder:
        return order_for(self.store, self.policy)

    def send_status(self, message: dict[str, Any]) -> str:
        target = StatusTarget(**message["target"])
        update = StatusUpdate(**message["update"])
        sha, seq = message["sha"], int(message["seq"])
        log = logger.bind(run_id=message.get("run_id"))
        what = f"{update.context}={update.state} for {target.repo}@{sha[:12]}"
        token = os.environ.get(target.token_env, "") if target.token_env else ""
        if not token:
            log.error("status {} not sent: no token in ${}", what, target.token_env or "(no status_token_env)")
            return "no_token"
        key = self.order.key(target.provider, target.repo, sha)
        with self.order.turn(key):
            if self.order.superseded(key, update.context, seq):
                log.info("status {} (#{}) dropped: a newer update of {} was sent", what, seq, update.context)
                return "superseded"
            try:
                post_status(target, sha, update, token, timeout=self.policy.timeout)
            except StatusError as exc:  # 4xx or a bad target: retrying would not help
                log.warning("status {} rejected by {}: {}", what, target.provider, exc)
                result = "rejected"
            else:
                result = "sent"
            self.order.mark_sent(key, update.context, seq)  # a rejected update still supersedes older ones
        return result

    def send_chat(self, message: dict[str, Any], run_id: str) -> str:
        url = self.settings.slack_webhook_url
        if not url:
            return "disabled"
        try:
            post_message(url, message, timeout=self.policy.timeout)
        except StatusError as exc:
            logger.bind(run_id=run_id).warning("chat notification rejected: {}", exc)
            return "rejected"
        return "sent"


@dataclass
class Reporters:
    """The registered tasks of one Celery app."""

    report_status: Any
    notify: Any
    deps: _Deps = field(repr=False)


def order_for(store: Store, policy: RetryPolicy = DEFAULT_RETRY) -> StatusOrder:
    # The lock outlives one HTTP exchange (connect + read timeouts) with margin.
    return StatusOrder(store.r, store.prefix, store.retention,
                       lock_seconds=policy.connect_timeout + policy.read_timeout + 5, wait_seconds=policy.lock_wait)


def register(app: Celery, *, policy: RetryPolicy = DEFAULT_RETRY, settings: Settings | None = None,
             store: Store | None = None) -> Reporters:
    """Define ``ciq.report_status`` and ``ciq.notify`` on ``app`` (tests pass a fast policy and
    their own settings and store)."""
    deps = _Deps(policy, settings, store)
    options: dict[str, Any] = {
        "base": ReporterTask, "bind": True, "shared": False, "acks_late": True, "ignore_result": True,
        "autoretry_for": RETRYABLE, "retry_backoff": policy.backoff, "retry_backoff_max": policy.backoff_max,
        "retry_jitter": policy.jitter, "max_retries": policy.max_retries,
    }

    @app.task(name=REPORT_STATUS, **options)
    def report_status(self: Task, message: dict[str, Any]) -> str:
        """Send one commit status (``message``: target, sha, update, seq, run_id), in order."""
        return deps.send_status(message)

    @app.task(name=NOTIFY, **options)
    def notify(self: Task, message: dict[str, Any], run_id: str = "") -> str:
        """Post a chat message to ``CIQ_SLACK_WEBHOOK_URL``."""
        return deps.send_chat(message, run_id)

    return Reporters(report_status, notify, deps)


# -- the engine's hook ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportTarget:
    """Where a repository's results go: its provider, API, token variable and chat policy."""

    provider: str
    repo: str
    api_url: str = ""
    token_env: str = ""
    notify: str = DEFAULT_POLICY

    @classmethod
    def for_repository(cls, provider: str, repo: str, settings: Settings, *, token_env: str | None = None,
                       api_url: str | None = None, notify: str | None = None) -> ReportTarget:
        """Defaults from the settings: the provider's API URL and token variable."""
        urls = {"github": settings.github_api_url, "gitlab": settings.gitlab_api_url, "gitea": settings.gitea_api_url}
        return cls(provider=provider, repo=repo, api_url=api_url or urls.get(provider, ""),
                   token_env=token_env or DEFAULT_TOKEN_ENV.get(provider, ""), notify=notify or DEFAULT_POLICY)

    @property
    def status(self) -> StatusTarget | None:
        if self.provider not in PROVIDERS or not self.api_url:
            return None
        return StatusTarget(self.provider, self.repo, self.api_url, self.token_env)


def target_for_run(run: RunRecord, settings: Settings) -> ReportTarget:
    """The run's target from what the event stored in its context (``provider``,
    ``status_token_env``, ``status_api_url``, ``notify``), with the settings' defaults."""
    ctx = run.context or {}
    return ReportTarget.for_repository(str(ctx.get("provider") or ""), run.repo, settings,
                                       token_env=ctx.get("status_token_env"), api_url=ctx.get("status_api_url"),
                                       notify=ctx.get("notify"))


def run_url(settings: Settings, run_id: str) -> str:
    """The run's page (``ci_queue.web.ui``) for people following a status or chat link."""
    base = settings.public_url.rstrip("/")
    return f"{base}/runs/{run_id}" if base else ""


def job_update(job: JobState, context_prefix: str, target_url: str, ref: str) -> StatusUpdate | None:
    """The status of a job as the store has it now (None: nothing to show, e.g. a manual job)."""
    context = f"{context_prefix}/{job.name}"
    status = job.status
    if status in ("created", "pending"):
        state, text = "pending", "Queued" if job.attempt <= 1 else f"Queued again (attempt {job.attempt})"
    elif status == "running":
        state, text = "running", "Running" + (f" on {job.worker.split('@')[0]}" if job.worker else "")
    elif status == "success":
        state, text = "success", "Passed"
    elif status == "failed":
        detail = ", ".join(x for x in (job.failure_reason, f"exit {job.exit_code}" if job.exit_code is not None
                                       else None) if x)
        if allowed_failure(job):
            state, text = "success", "Failed, allowed to fail" + (f" ({detail})" if detail else "")
        else:
            state, text = "failure", "Failed" + (f" ({detail})" if detail else "")
    elif status == "canceled":
        state, text = "canceled", "Canceled"
    elif status == "skipped":
        state, text = "skipped", "Skipped"
    else:
        return None
    return StatusUpdate(context, state, short(text), target_url, ref)


def _open_key(store: Store, run_id: str) -> str:
    return f"{store.prefix}status:run:{run_id}:open"


# Runs found to report nothing at all (no commit-status target, no chat) by this process, so that
# their later events cost no read: what decides it (the run's context, the settings) never changes.
_SILENT: OrderedDict[tuple[Settings, str, str], None] = OrderedDict()
SILENT_REMEMBERED = 4096


def report_run(store: Store, app: Celery, run_id: str, event: str, *, job: int | str | None = None,
               target: ReportTarget | None = None, settings: Settings | None = None) -> None:
    """Report ``event`` of run ``run_id``: ``run_queued``, ``run_planned`` (jobs pending),
    ``job_started`` / ``job_ended`` (``job``: index or name), ``run_ended`` (final statuses and the
    chat message). ``target``: the repository's (default: from the run's context). Never raises."""
    settings = settings or get_settings()
    if target is None and (settings, store.prefix, run_id) in _SILENT:
        return
    try:
        _report(store, app, run_id, event, job, target, settings)
    except Exception as exc:
        logger.bind(run_id=run_id).warning("could not report {}: {}: {}", event, type(exc).__name__, exc)


def _report(store: Store, app: Celery, run_id: str, event: str, job: int | str | None,
            target: ReportTarget | None, settings: Settings) -> None:
    if event not in EVENTS:
        raise ValueError(f"unknown report event {event!r}; one of {', '.join(EVENTS)}")
    run = store.get_run(run_id, with_jobs=False)
    if run is None:
        return
    derived, target = target is None, target or target_for_run(run, settings)
    if target.status is None and target.provider not in PROVIDERS:
        # no commit statuses for this repository (nothing to warn about either): one read, and the
        # chat at the end; what every job of a farm without a forge would otherwise pay for
        if not settings.slack_webhook_url or target.notify == "never":
            if derived:
                _SILENT[(settings, store.prefix, run_id)] = None
                if len(_SILENT) > SILENT_REMEMBERED:
                    _SILENT.popitem(last=False)
            return
        ended = event == "run_ended" or (event == "run_planned" and run.status in TERMINAL_RUN)
        if ended:
            _maybe_notify(store, app, store.get_run(run_id) or run, target, settings, run_url(settings, run_id))
        return
    if event in ("run_planned", "run_ended"):
        run = store.get_run(run_id) or run
    url = run_url(settings, run_id)
    prefix = settings.status_context_prefix
    pipeline = f"{prefix}/pipeline"
    open_key = _open_key(store, run_id)
    updates: list[StatusUpdate] = []
    if event == "run_queued":
        updates.append(StatusUpdate(pipeline, "pending", "Queued", url, run.ref))
    elif event == "run_planned":
        if run.status in TERMINAL_RUN:  # nothing to run (e.g. only manual jobs): the end says it all
            return _report(store, app, run_id, "run_ended", None, target, settings)
        updates.append(StatusUpdate(pipeline, "running", short(f"Running {len(run.jobs)} jobs"), url, run.ref))
        waiting = [j for j in run.jobs if j.status in ("created", "pending", "running")]
        for j in waiting:
            update = job_update(j, prefix, url, run.ref)
            if update:
                updates.append(update)
        if waiting:
            store.r.sadd(open_key, *[j.index for j in waiting])
            store.r.expire(open_key, store.retention)
    elif event in ("job_started", "job_ended"):
        index = job if isinstance(job, int) else store.job_index(run_id, str(job))
        state = store.job(run_id, index) if index is not None else None
        if state is None:
            return
        update = job_update(state, prefix, url, run.ref)
        if update:
            updates.append(update)
        if state.status in TERMINAL_JOB:
            store.r.srem(open_key, index)
        else:
            store.r.sadd(open_key, index)
            store.r.expire(open_key, store.retention)
    else:  # run_ended
        still_open = {int(i) for i in store.r.smembers(open_key)}
        for j in run.jobs:
            if j.index in still_open:
                update = job_update(j, prefix, url, run.ref)
                if update and update.state not in ("pending", "running"):
                    updates.append(update)
                elif update:  # never finished: the run ended around it
                    updates.append(StatusUpdate(update.context, "canceled", "Not run: the pipeline ended", url,
                                                run.ref))
        store.r.delete(open_key)
        text = _RUN_WORDS.get(run.status, run.status)
        if run.error and run.status != "success":
            text += ": " + run.error
        updates.append(StatusUpdate(pipeline, _RUN_STATES.get(run.status, "error"), short(text), url, run.ref))
        _maybe_notify(store, app, run, target, settings, url)
    _send_statuses(store, app, run, target, updates)


def _send_statuses(store: Store, app: Celery, run: RunRecord, target: ReportTarget,
                   updates: list[StatusUpdate]) -> None:
    status_target = target.status
    if updates and status_target is None and target.provider in PROVIDERS:
        logger.bind(run_id=run.id).warning("no commit statuses for {}: CIQ_{}_API_URL is not set", run.repo,
                                           target.provider.upper())
    if not updates or status_target is None:
        return
    if not run.sha:  # not resolved yet (a push by ref): the statuses start once the run is planned
        return
    order = order_for(store)
    key = order.key(status_target.provider, status_target.repo, run.sha)
    for update in updates:
        message = {"target": status_target.to_dict(), "sha": run.sha, "update": update.to_dict(),
                   "seq": order.next_seq(key), "run_id": run.id}
        app.send_task(REPORT_STATUS, args=[message], queue=CONTROL_QUEUE)


def _maybe_notify(store: Store, app: Celery, run: RunRecord, target: ReportTarget, settings: Settings,
                  url: str) -> None:
    if not settings.slack_webhook_url or target.notify == "never":
        return
    previous = previous_outcome(store, run) if target.notify == "on_change" or run.status == "success" else None
    if not should_notify(target.notify, run.status, previous):
        return
    app.send_task(NOTIFY, args=[build_message(run, url, previous), run.id], queue=CONTROL_QUEUE)
    logger.bind(run_id=run.id).info("chat notification queued ({}, {})", target.notify, run.status)


# The process-wide app's tasks: a worker imports this module to run them (workers/tasks.py).
tasks = register(get_celery())
report_status = tasks.report_status
notify = tasks.notify
