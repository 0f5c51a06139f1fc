"""Priorities of runs and jobs on a shared farm: whole numbers, higher first (within the fair
share across repositories, see ``ci_queue.store.admission``).

A run's priority comes from the API (``priority``), else its repository's ``tag_priority`` (a
tag's run) or ``priority`` in ``configs/repos.yml`` (else ``defaults:``), else 0; a job's
``CIQ_PRIORITY`` variable (from the pipeline file) replaces its run's for that job.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PRIORITY = 1000  # priorities lie in [-MAX_PRIORITY, MAX_PRIORITY]
PRIORITY_VARIABLE = "CIQ_PRIORITY"


def valid_priority(value: object) -> bool:
    """An int (not a bool) within the bounds."""
    return isinstance(value, int) and not isinstance(value, bool) and -MAX_PRIORITY <= value <= MAX_PRIORITY


def job_priority(variables: dict[str, str]) -> int | None:
    """A job's own priority from its ``CIQ_PRIORITY`` variable: None when unset; a value that is
    no whole number is ignored (None), one beyond the bounds is brought to the nearest bound."""
    raw = (variables.get(PRIORITY_VARIABLE) or "").strip()
    try:
        value = int(raw)
    except ValueError:
        return None
    return max(-MAX_PRIORITY, min(MAX_PRIORITY, value))


@dataclass(frozen=True)
class Scheduling:
    """How a run's jobs are ordered and limited on a shared farm (``ci_queue.store.admission``),
    decided by the control plane when the run is made and stored with it: its ``priority`` (a
    job's ``CIQ_PRIORITY`` replaces it) and its repository's ``max_concurrent_jobs`` (None: the
    farm's ``CIQ_MAX_JOBS_PER_REPO``)."""

    priority: int = 0
    max_jobs: int | None = None
