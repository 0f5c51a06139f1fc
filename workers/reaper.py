"""Removes the job containers that no running attempt owns any more (a killed worker's leftovers).

Each build host reaps its own Docker daemon: a container labelled ``ci-queue.managed=1`` whose
run / job / attempt labels do not name an attempt the store still records as running is
removed. A runner removes its containers itself; this is only for what a SIGKILLed worker or a
lost host left behind.
"""

from __future__ import annotations

import threading

from loguru import logger

from ci_queue.store import Store
from workers.runners.docker import LABEL_ATTEMPT, LABEL_JOB, LABEL_MANAGED, LABEL_RUN


def owned(store: Store, labels: dict[str, str]) -> bool:
    """Does a running attempt own the container with these labels?"""
    run_id, job, attempt = labels.get(LABEL_RUN), labels.get(LABEL_JOB), labels.get(LABEL_ATTEMPT)
    if not run_id or job is None or not (attempt or "").isdigit():
        return False
    index = store.job_index(run_id, job)
    state = store.job(run_id, index) if index is not None else None
    return state is not None and state.status == "running" and state.attempt == int(attempt)


def reap_orphans(store: Store, client: object) -> int:
    """Remove this daemon's ci-queue containers that no running attempt owns; returns how many."""
    removed = 0
    for summary in client.api.containers(all=True, filters={"label": [f"{LABEL_MANAGED}=1"]}):
        if owned(store, summary.get("Labels") or {}):
            continue
        try:
            client.api.remove_container(summary["Id"], force=True, v=True)
            removed += 1
        except Exception as exc:  # vanished meanwhile, or the daemon is busy: next round
            logger.debug("could not remove container {}: {}", summary["Id"][:12], exc)
    if removed:
        logger.warning("removed {} job containers left behind by lost workers", removed)
    return removed


def start_reaper(store: Store, interval: float = 60.0) -> threading.Event | None:
    """Reap every ``interval`` seconds in a thread while the worker runs; None without Docker."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
    except Exception:
        return None  # no Docker on this host: nothing to reap
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                reap_orphans(store, client)
            except Exception as exc:
                logger.warning("reaping job containers failed: {}", exc)

    threading.Thread(target=loop, name="ciq-reaper", daemon=True).start()
    return stop
