"""Reporting back: commit statuses to GitHub / GitLab / Gitea and chat notifications.

- ``status``: each provider's status request and states;
- ``ordering``: per-commit sequence numbers and lock, so an older update never lands after a newer one;
- ``chat``: the Slack-compatible message and the per-repository policy (always / on_failure / on_change);
- ``tasks``: the Celery tasks ``ciq.report_status`` / ``ciq.notify`` (retried with backoff, bounded) and
  the engine's hook ``report_run(store, app, run_id, event, job=...)``.

Importing ``ci_queue.reporters.tasks`` registers the tasks on ``get_celery()``; a worker must import it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EVENTS", "ReportTarget", "report_run"]


def __getattr__(name: str) -> Any:  # lazy: importing the package does not build the Celery app
    if name in __all__:
        from ci_queue.reporters import tasks

        return getattr(tasks, name)
    raise AttributeError(name)
