"""``ci-queue worker``: a Celery prefork worker for the queues of its tags, plus the sweeper."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Callable

import click

from ci_queue.farm import Heartbeat, WorkerInfo
from ci_queue.logging import configure, scrub_celery_logs
from ci_queue.routing import CONTROL_QUEUE, MAX_WORKER_TAGS, PROTECTED_ROUTES, RoutingError, route_of, worker_queues
from ci_queue.serve import check_redis, load_settings
from ci_queue.settings import get_settings
from workers.identity import NameHold, NameTaken, instance_id


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@click.command("worker")
@click.option("--tags", default="", help=f"Comma-separated tags this host serves (at most {MAX_WORKER_TAGS}).")
@click.option("--concurrency", "-c", type=click.IntRange(1, 256), default=None,
              help="Jobs run at once (default: the number of CPUs).")
@click.option("--name", default=None, help="Worker name; recorded as NAME@host on every job it runs.")
@click.option("--queues", default="", help="Extra comma-separated queues to consume.")
@click.option("--no-untagged", is_flag=True, help="Do not take untagged jobs (the default queue).")
@click.option("--no-planning", is_flag=True, help="Do not plan runs (the control queue).")
@click.option("--protected", is_flag=True,
              help="Serve only jobs of protected branches and tags of registered repositories (a deploy host "
                   "with credentials): the protected queues only; implies --no-planning (planning checks out "
                   "any run's code, forks' too). Also CIQ_WORKER_PROTECTED=1.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker_command(tags: str, concurrency: int | None, name: str | None, queues: str, no_untagged: bool,
                   no_planning: bool, protected: bool, loglevel: str) -> None:
    """Run jobs on this host: a Celery prefork worker consuming the queues of every subset of its tags."""
    settings = load_settings()
    protected = protected or settings.worker_protected
    consumed = _queues(tags, queues, untagged=not no_untagged, planning=not (no_planning or protected),
                       protected=protected)
    if protected and not settings.worker_protected:  # the jobs read it from the settings (the check
        os.environ["CIQ_WORKER_PROTECTED"] = "1"        # behind the queues): before they are read
        get_settings.cache_clear()
        settings = load_settings()
    _check_executors(settings)
    check_redis(settings)  # a wrong URL: one line and exit 1 now, not Celery retrying for minutes
    configure(settings)
    scrub_celery_logs(settings)
    # SIGTERM is Celery's warm shutdown: no new jobs are taken and the worker exits as soon as the
    # running ones end; after CIQ_SHUTDOWN_GRACE_SECONDS they are asked to hand back (below).
    from ci_queue.sweeper import Sweeper
    from workers.tasks import app, runtime

    hostname = f"{name or f'worker-{os.getpid()}'}@{socket.gethostname()}"
    rt = runtime()
    instance = instance_id()  # before the pool forks: its processes inherit it
    hold = NameHold(rt.store, hostname, instance)
    try:
        hold.take()
    except NameTaken as exc:
        click.echo(f"ci-queue worker: {exc}", err=True)
        sys.exit(1)
    _remove_leftovers(settings)
    from workers.capacity import Slots

    # the job queues' slots, for the scheduler's admission (planning is not a job queue), renewed
    # by the same beat as the farm's record
    slots = Slots(rt.store, app, settings, hostname, [q for q in consumed if q != CONTROL_QUEUE],
                  concurrency or os.cpu_count() or 1)
    beat = Heartbeat(rt.store, WorkerInfo(hostname, socket.gethostname(), tuple(_split(tags)), tuple(consumed),
                                          concurrency or os.cpu_count() or 1, protected),
                     also=slots.announce).start()
    sweeper = Sweeper(rt.store, app, settings).start()
    from workers.reaper import start_reaper

    start_reaper(rt.store)  # this host's Docker: containers a killed worker left behind
    _hand_back_after_grace(rt.store, instance, settings.shutdown_grace_seconds, beat, slots.stop)
    argv = ["worker", "--pool=prefork", f"--hostname={hostname}", f"--queues={','.join(consumed)}",
            f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    try:
        app.worker_main(argv=argv)
    finally:
        slots.stop()
        sweeper.stop()
        beat.stop()
        hold.release()
    sys.exit(0)


def _queues(tags: str, extra: str, *, untagged: bool, planning: bool, protected: bool) -> list[str]:
    """The queues the worker consumes (``ci_queue.routing``); a usage error for a combination
    that cannot work (a ``--protected`` worker given an ordinary queue by ``--queues``)."""
    try:
        consumed = worker_queues(_split(tags), untagged=untagged, protected=protected)
    except RoutingError as exc:
        raise click.UsageError(str(exc)) from None
    if planning:
        consumed.append(CONTROL_QUEUE)
    added = [q for q in _split(extra) if q not in consumed]
    if protected:
        ordinary = [q for q in added if route_of(q) not in PROTECTED_ROUTES]
        if ordinary:
            raise click.UsageError(f"a --protected worker consumes only protected queues (ciq.protected.*, "
                                   f"ciq.protected-only.*), not {', '.join(ordinary)}")
    consumed += added
    if not consumed:
        raise click.UsageError("this worker would consume no queue")
    return consumed


def _check_executors(settings) -> None:
    """Executor settings that cannot work on this host (CIQ_SHELL_USER naming nobody or root, a
    worker that is not root, a volume of the Docker socket): refuse to start, rather than take
    jobs only to fail each of them."""
    from workers.jobusers import ShellUserError, check_worker
    from workers.runners.base import InfrastructureError
    from workers.runners.container_policy import ContainerPolicy

    try:
        check_worker(settings.shell_user)
        ContainerPolicy.from_settings(settings).check()
    except (ShellUserError, InfrastructureError, ValueError) as exc:
        click.echo(f"ci-queue worker: {exc}", err=True)
        sys.exit(2)


def _remove_leftovers(settings) -> None:
    """Workspaces and step script folders of workers killed on this host (nobody holds them)."""
    from workers.leftovers import sweep
    from workers.runners.shell import SCRIPTS_PREFIX, scripts_root
    from workers.workspace import default_root

    if not settings.keep_workspaces:
        sweep(default_root(settings))
    sweep(scripts_root(), f"{SCRIPTS_PREFIX}*")


def _hand_back_after_grace(store, instance: str, grace: float, beat: Heartbeat,
                           stopping: Callable[[], None]) -> None:
    """When the worker is told to stop, give running jobs ``grace`` seconds to finish, then ask
    them (through Redis, which every pool process polls) to stop and be handed back as new
    attempts, so another worker takes them at once instead of after a lapsed lease.

    (Celery 5.5's soft shutdown waits its whole timeout even when the jobs are done and offers no
    hook, so warm shutdown plus this timer is used.) Once the worker is ready, its own SIGTERM /
    SIGINT / SIGQUIT handlers are wrapped to start the timer, and to call ``stopping`` (the
    worker's slots are no longer offered: no job is admitted for a worker that takes none).
    """
    import signal
    import threading

    from celery.signals import worker_ready

    started = threading.Event()

    def start_timer() -> None:
        if started.is_set():
            return
        started.set()
        threading.Thread(target=stopping, name="ciq-slots-stop", daemon=True).start()

        def later() -> None:
            beat.draining()  # the farm page shows it (from this thread: no Redis call in a signal handler)
            time.sleep(grace)  # a timer, not synchronization: the grace period itself
            store.request_handback(instance)

        threading.Thread(target=later, name="ciq-handback", daemon=True).start()

    def wrap(signum: int) -> None:
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: object) -> None:
            start_timer()
            if callable(previous):
                previous(sig, frame)

        signal.signal(signum, handler)

    def on_ready(**_: object) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            wrap(signum)

    worker_ready.connect(on_ready, weak=False)
