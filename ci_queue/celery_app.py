"""The Celery application: broker settings that keep jobs from being lost or run twice.

The control plane (web app, planner) sends tasks by name; the tasks themselves live in
``workers.tasks`` and are registered only in worker processes, so ``ci_queue`` needs no
executor code.

Why each setting (see docs/DESIGN.md, "Celery settings that matter"):
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a job's message is acknowledged only
  when its task returns, so a worker killed mid-job gives the message back;
- ``worker_prefetch_multiplier=1``: a busy worker does not hoard queued jobs;
- ``task_ignore_result``: all state lives in our store, no result backend;
- ``visibility_timeout`` above the longest job plus queueing: the Redis transport re-delivers an
  unacknowledged message after it, so it must not fire while a job legitimately runs (a lost
  worker is handled much sooner by the lease sweeper, as a new attempt);
- ``worker_cancel_long_running_tasks_on_connection_loss=False``: a broker restart or failover
  must cost no more than the outage, so running jobs go on; whether a job may still run is
  decided by its lease in the state store (``workers.tasks.LeaseKeeper``), not by the broker
  connection, and a redelivered copy of its message is dropped by fencing;
- the transport is ``ci_queue.broker``'s: kombu's Redis transport whose acknowledgements and
  give-backs never raise into the consumer when Redis is away (the worker lives on);
- shutdown: SIGTERM is Celery's warm shutdown (no new jobs; exit when the running ones end);
  after ``CIQ_SHUTDOWN_GRACE_SECONDS`` the running jobs are handed back (``workers.service``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from ci_queue import broker, redis_urls
from ci_queue.routing import CONTROL_QUEUE, DEFAULT_QUEUE
from ci_queue.settings import Settings, get_settings

broker.register()

PLAN_RUN = "ciq.plan_run"
RUN_JOB = "ciq.run_job"


def visibility_timeout(settings: Settings) -> int:
    """Longest job + time in the queue + an hour of margin."""
    return settings.max_job_timeout + settings.queue_timeout_seconds + 3600


def make_celery(settings: Settings | None = None, broker_url: str | None = None, *, web: bool = False) -> Celery:
    """A configured Celery app (one per process; see ``get_celery``). ``web``: the web app's, which
    only sends: its socket operations give up after ``CIQ_REDIS_SOCKET_TIMEOUT`` (kombu's default is
    to wait forever, so a publish to a frozen broker would hold a request thread for good) and a
    publish is retried once."""
    settings = settings or get_settings()
    access = redis_urls.Access.from_settings(settings)
    # rediss://: the TLS settings go into the URL, which kombu reads as redis-py does
    broker = redis_urls.resolve(broker_url or settings.redis_url or "redis://127.0.0.1:6379/0", access)
    app = Celery("ci_queue", broker=broker, set_as_current=False)
    transport: dict[str, Any] = {"visibility_timeout": visibility_timeout(settings)}
    # sentinel://: kombu asks the Sentinels for this primary (again after a failover)
    transport.update(redis_urls.broker_transport_options(broker, access, settings.redis_socket_timeout))
    if web:
        transport.update(socket_timeout=settings.redis_socket_timeout,
                         socket_connect_timeout=settings.redis_socket_timeout)
        # one reconnect (a pooled connection the broker's restart closed), not Celery's three: a
        # broker away costs a request about two socket timeouts; the sweeper sends what was not sent
        app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                              "interval_max": 0.2}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_default_queue=DEFAULT_QUEUE,
        task_routes={PLAN_RUN: {"queue": CONTROL_QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


_app: Celery | None = None


def get_celery() -> Celery:
    """The process-wide Celery app."""
    global _app
    if _app is None:
        _app = make_celery()
    return _app
