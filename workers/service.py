"""``ci-queue worker``: a Celery prefork worker for the queues of its tags, plus the sweeper."""

from __future__ import annotations

import os
import socket
import sys

import click

from ci_queue.logging import configure
from ci_queue.routing import CONTROL_QUEUE, MAX_WORKER_TAGS, RoutingError, worker_queues
from ci_queue.settings import get_settings


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
@click.option("--loglevel", default="INFO", show_default=True)
def worker_command(tags: str, concurrency: int | None, name: str | None, queues: str, no_untagged: bool,
                   no_planning: bool, loglevel: str) -> None:
    """Run jobs on this host: a Celery prefork worker consuming the queues of every subset of its tags."""
    try:
        consumed = worker_queues(_split(tags), untagged=not no_untagged)
    except RoutingError as exc:
        raise click.UsageError(str(exc)) from None
    if not no_planning:
        consumed.append(CONTROL_QUEUE)
    consumed += [q for q in _split(queues) if q not in consumed]
    if not consumed:
        raise click.UsageError("this worker would consume no queue")
    settings = get_settings()
    configure(settings)
    # SIGTERM starts Celery's soft shutdown: running jobs get CIQ_SHUTDOWN_GRACE_SECONDS to finish,
    # new ones are not taken; what is still running after that is handed back (lease / redelivery).
    os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT")
    from ci_queue.sweeper import Sweeper
    from workers.tasks import app, runtime

    hostname = f"{name or f'worker-{os.getpid()}'}@{socket.gethostname()}"
    rt = runtime()
    sweeper = Sweeper(rt.store, app, settings).start()
    argv = ["worker", "--pool=prefork", f"--hostname={hostname}", f"--queues={','.join(consumed)}",
            f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    try:
        app.worker_main(argv=argv)
    finally:
        sweeper.stop()
    sys.exit(0)
