"""Runs into Celery messages: triggering, dispatching waves of ready jobs, retry decisions.

No chords: each wave of jobs that became ready goes out as a Celery group, each job routed to
the queue of its tags with time limits from its timeout. What makes the next wave ready is the
store's barrier, called by the worker at the end of each job (``Store.finish_job``), which
returns the jobs it made ready exactly once; the worker then calls ``send_jobs`` for them. (The
design first had a separate ``advance`` task linked to each job; running the barrier at the end
of the job itself saves a broker round trip per job and has the same failure story: if the
worker dies between the barrier and the send, the sweeper re-sends pending jobs whose message
is gone, and attempt fencing drops any duplicate.)

Jobs that became ready are not published at once: they are held in Redis and admitted to the
free slots of the workers that serve their queue, in fair-share order (``send_jobs``,
``ci_queue.store.admission``); what is admitted goes out as one group.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, group
from kombu.entity import PERSISTENT_DELIVERY_MODE
from kombu.utils.uuid import uuid
from loguru import logger

from ci_queue.celery_app import PLAN_RUN, RUN_JOB
from ci_queue.pipeline.model import Job
from ci_queue.priority import Scheduling
from ci_queue.resource_groups import ResourceGroups
from ci_queue.routing import CONTROL_QUEUE, job_queue
from ci_queue.settings import Settings
from ci_queue.store import Created, Once, Store
from ci_queue.store.admission import ToSend, admission_of
from ci_queue.store.core import TERMINAL_RUN
from ci_queue.trust import RunTrust

# GitLab's failure reasons that `retry:when` names, for each of our failure classes.
RETRY_REASONS = {
    "script_failure": "script_failure",
    "timeout": "job_execution_timeout",
    "stuck": "stuck_or_timeout_failure",
    "runner_system_failure": "runner_system_failure",
    "image_missing": "runner_system_failure",
    "missing_secret": "unknown_failure",
    "fork_refused": "runner_unsupported",
    "missing_dependency": "missing_dependency_failure",
    "invalid_artifacts": "data_integrity_failure",
}

# Failures that no attempt can change, not even under `retry: when: always`.
NEVER_RETRIED = frozenset({None, "canceled", "environment_too_large", "checkout_failed"})


def trigger_run(store: Store, app: Celery, *, repo: str, ref: str, sha: str = "", event: str = "push",
                clone_url: str | None = None, variables: dict[str, str] | None = None,
                context: dict[str, Any] | None = None, run_id: str | None = None,
                trust: RunTrust | None = None, status: str = "queued", scheduling: Scheduling | None = None) -> str:
    """Record a run as ``queued`` and ask any worker to plan it; returns the run id. ``trust``:
    its trusted facts (``ci_queue.trust``; None: untrusted); ``scheduling``: its priority and its
    repository's limit (None: priority 0, the farm's limit). A run made ``waiting_approval`` is
    only recorded: ``approve`` sends it to planning.

    This is all a webhook or an API call does synchronously: cloning and planning happen on a
    worker, so the request answers in milliseconds whatever the repository.
    """
    run_id = store.create_run(repo=repo, ref=ref, sha=sha, event=event, clone_url=clone_url,
                              variables=variables, context=context, run_id=run_id, trust=trust, status=status,
                              scheduling=scheduling)
    _started(app, run_id, status, repo, ref)
    return run_id


def _started(app: Celery, run_id: str, status: str, repo: str | None, ref: str | None) -> None:
    if status == "waiting_approval":
        logger.bind(run_id=run_id).info("run of {} {} waits for approval (a merge request from a fork)", repo, ref)
        return
    send_to_planning(app, run_id)
    logger.bind(run_id=run_id).info("run queued for {} {}", repo, ref)


def trigger_run_once(store: Store, app: Celery, once: Once | None, **run: Any) -> Created:
    """``trigger_run`` unless ``once.key`` exists (``Store.create_run_once``: the key, the run and
    its ``alongside`` writes in one atomic write). A repeat starts nothing and gets the key's first
    value back."""
    created = store.create_run_once(once, **run)
    if created.new and created.run_id:
        _started(app, created.run_id, run.get("status", "queued"), run.get("repo"), run.get("ref"))
    return created


def send_to_planning(app: Celery, run_id: str) -> None:
    """Ask any worker to plan the run. A failure is only logged: the run stays queued and the
    sweeper sends it to planning again; a duplicate message is harmless (the planner's claim)."""
    try:
        publish_plan(app, run_id)
    except Exception as exc:
        logger.bind(run_id=run_id).warning("could not send the run to planning now ({}); the sweeper will", exc)


def publish_plan(app: Celery, run_id: str) -> None:
    """The message ``app.send_task(PLAN_RUN, args=[run_id], queue=CONTROL_QUEUE)`` sends, at about
    half its cost in the web process (where it was a quarter of a webhook's time). Celery builds
    it (``amqp.as_task_v2``: the headers and body a worker reads, ``argsrepr`` given instead of
    made by ``saferepr``; the same message, ids aside, which a test checks) and a producer of the
    app's pool publishes it as ``send_task`` does: to the anonymous exchange with the queue as
    routing key (Celery's way for a direct queue; with Redis, a push onto the queue's list),
    persistent, under the app's publish retry policy. Left out: ``send_task``'s per-call routing
    and result object, and declaring the queue, which with Redis only records an exchange binding
    that the anonymous exchange never reads (the workers declare the queues they consume)."""
    message = app.amqp.as_task_v2(uuid(), PLAN_RUN, args=[run_id], argsrepr=repr([run_id]), kwargsrepr="{}",
                                  ignore_result=None, reply_to=app.thread_oid)
    with app.producer_pool.acquire(block=True) as producer:
        producer.publish(message.body, exchange="", routing_key=CONTROL_QUEUE, serializer="json",
                         headers=message.headers, delivery_mode=PERSISTENT_DELIVERY_MODE, retry=True,
                         retry_policy=app.conf.task_publish_retry_policy, **message.properties)


def report(store: Store, app: Celery, run_id: str, event: str, job: int | None = None) -> None:
    """Tell the forge and the chat (``ci_queue.reporters``); never raises, never blocks long."""
    from ci_queue.reporters.tasks import report_run

    report_run(store, app, run_id, event, job=job)


def report_job_end(store: Store, app: Celery, run_id: str, index: int, run_status: str | None) -> None:
    """Report a job that ended, and the run when that ended it too."""
    report(store, app, run_id, "job_ended", index)
    if run_status in TERMINAL_RUN:
        report(store, app, run_id, "run_ended")


def time_limits(job_timeout: int | None, settings: Settings) -> tuple[int, int]:
    """Celery's ``soft_time_limit`` / ``time_limit`` for a job of ``timeout:`` ``job_timeout``: the
    backstop behind the runner's own deadline (timeout + after_script + kill grace), plus margins."""
    timeout = min(job_timeout or settings.default_job_timeout, settings.max_job_timeout)
    soft = timeout + settings.after_script_timeout + int(settings.kill_grace_seconds) * 2 + 120
    return soft, soft + 60


def job_signature(app: Celery, settings: Settings, run_id: str, index: int, attempt: int, job: Job) -> Any:
    """The Celery signature of one attempt of a job, routed by its tags and its trust class."""
    signature = attempt_signature(app, settings, run_id, index, attempt, job_queue(job.tags, job.route), job.timeout)
    if job.when == "delayed" and job.start_in and attempt == 1:
        signature.set(countdown=job.start_in)
    return signature


def attempt_signature(app: Celery, settings: Settings, run_id: str, index: int, attempt: int, queue: str,
                      timeout: int | None) -> Any:
    """The Celery signature of an attempt admitted to ``queue`` (what the scheduler knows of it)."""
    soft, hard = time_limits(timeout, settings)
    return app.signature(RUN_JOB, args=[run_id, index, attempt], queue=queue, soft_time_limit=soft,
                         time_limit=hard)


def publish(store: Store, settings: Settings, signatures: list[Any]) -> None:
    """Record the wave as queued (one round trip), then send it as one Celery group; a wave that
    could not be sent is noted as unsent again (the sweeper re-sends it) and the error raised."""
    if not signatures:
        return
    attempts = [(*sig.args, sig.options["queue"]) for sig in signatures]
    store.mark_queued(attempts, settings.queue_timeout_seconds)
    try:
        group(signatures).apply_async()
    except Exception:  # the broker is away: unsent again, so the sweeper sends them in seconds
        store.mark_unsent(attempts)
        raise


def send_jobs(store: Store, app: Celery, settings: Settings, run_id: str | None, indexes: list[int],
              freed_groups: tuple[str, ...] = ()) -> int:
    """Hold the jobs of ``run_id`` that became ready, admit held jobs (of any run) to the slots
    that are free, and publish what was admitted as one Celery group (``ci_queue.store.admission``:
    one script). Called wherever jobs become ready and wherever a slot frees up (a job's end),
    and by the sweeper with no jobs, as a net.

    A job of a ``resource_group`` joins its group's line instead and is sent when the group is
    granted to it; ``freed_groups`` are groups a finished job just released. Returns the number
    of messages published.
    """
    to_send = admission_of(store).hold_and_admit(run_id, indexes, settings.max_jobs_per_repo)
    signatures = [attempt_signature(app, settings, s.run_id, s.index, s.attempt, s.queue, s.timeout)
                  for s in to_send if s.kind in ("admit", "again")]
    others = [s for s in to_send if s.kind in ("direct", "group")]
    lines = ResourceGroups(store, settings.job_lease_seconds)
    to_grant = set(freed_groups)
    for sent, state in zip(others, _states(store, others), strict=True):
        if state is None or state.status != "pending" or state.attempt != sent.attempt:
            continue
        job = Job.from_dict(state.spec)
        if job.resource_group:
            lines.enqueue(job.resource_group, sent.run_id, sent.index, sent.attempt)
            store.waiting_for_a_group(sent.run_id, sent.index, sent.attempt)
            to_grant.add(job.resource_group)
            continue
        signatures.append(job_signature(app, settings, sent.run_id, sent.index, sent.attempt, job))
    for name in sorted(to_grant):
        signatures.extend(grant_next(store, app, settings, lines, name))
    publish(store, settings, signatures)
    return len(signatures)


def _states(store: Store, sends: list[ToSend]) -> list[Any]:
    """The job states of the attempts that are not held (rare: their specs say how they wait)."""
    return [store.job(s.run_id, s.index) for s in sends]


def grant_next(store: Store, app: Celery, settings: Settings, lines: ResourceGroups, name: str) -> list[Any]:
    """The signature of the job the resource group ``name`` was just granted to, if any."""
    granted = lines.grant(name)
    if granted is None:
        return []
    run_id, index, attempt = granted
    state = store.job(run_id, index)
    if state is None:
        lines.release(name, run_id, index, attempt)
        return []
    logger.bind(run_id=run_id, job=state.name).info("resource group {} granted", name)
    return [job_signature(app, settings, run_id, index, attempt, Job.from_dict(state.spec))]


def retry_wanted(job: Job, failure_class: str | None, exit_code: int | None, yaml_retries_used: int) -> bool:
    """Does the job's ``retry:`` ask for another attempt after this failure? (GitLab's rules:
    at most ``max`` retries, for a failure reason in ``when`` or an exit code in ``exit_codes``.)"""
    if failure_class in NEVER_RETRIED or yaml_retries_used >= job.retry.max:
        return False
    reason = RETRY_REASONS.get(failure_class, "unknown_failure")
    when = job.retry.when
    return ("always" in when or reason in when
            or (exit_code is not None and exit_code in job.retry.exit_codes))
