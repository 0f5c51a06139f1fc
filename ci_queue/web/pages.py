"""What the pages show of a run and its jobs: plain values for the templates (``ci_queue.web.ui``).

Everything here is data; the templates escape it (Jinja's autoescape), so a job named
``<script>`` is shown as those characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flask import url_for

from ci_queue.store.core import TERMINAL_RUN, JobState, RunRecord

# status -> its icon: a character DejaVu Sans (Debian's default font) has, coloured by the
# status's CSS class
ICONS = {
    "success": "✓", "failed": "✗", "error": "✗", "canceled": "⊘", "skipped": "»", "running": "◔",
    "pending": "◷", "created": "○", "queued": "◷", "manual": "‖", "waiting_approval": "‖",
}
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


def icon(status: str) -> str:
    return ICONS.get(status, "?")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def duration(start: str | None, end: str | None) -> str:
    """``1m 05s`` from two ISO times; a running thing counts until now; ``""`` before it started."""
    begun = parse_time(start)
    if begun is None:
        return ""
    ended = parse_time(end) or datetime.now(UTC)
    seconds = max(0, int((ended - begun).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def commit_title(run: RunRecord) -> str:
    """The first line of the commit message, else a merge request's title, else nothing."""
    context = run.context or {}
    message = context.get("commit_message") or ""
    if not message and isinstance(context.get("merge_request"), dict):
        message = context["merge_request"].get("title") or ""
    return str(message).strip().splitlines()[0][:200] if str(message).strip() else ""


def safe_filename(name: str) -> str:
    return _UNSAFE_FILENAME.sub("_", name)[:200] or "log"


@dataclass
class RunRow:
    """One run as the runs list (and the header of its pages) shows it."""

    id: str
    status: str
    repo: str
    ref: str
    sha: str
    short_sha: str
    title: str
    event: str
    created_at: str
    duration: str
    error: str | None
    terminal: bool


def run_row(run: RunRecord) -> RunRow:
    return RunRow(id=run.id, status=run.status, repo=run.repo, ref=run.ref, sha=run.sha, short_sha=run.sha[:8],
                  title=commit_title(run), event=run.event, created_at=run.created_at,
                  duration=duration(run.started_at, run.finished_at if run.status in TERMINAL_RUN else None),
                  error=run.error, terminal=run.status in TERMINAL_RUN)


@dataclass
class JobView:
    """One job's box in the graph, and the header of its log page."""

    index: int
    name: str
    stage: str
    status: str
    attempt: int
    worker: str | None
    duration: str
    failure_reason: str | None
    exit_code: int | None
    allow_failure: bool
    manual: bool
    needs: list[str]
    test_summary: dict[str, Any] | None
    artifacts: dict[str, Any] | None
    url: str


def job_view(run_id: str, job: JobState) -> JobView:
    needs = job.spec.get("needs")
    names = [need.get("job", "") if isinstance(need, dict) else str(need) for need in needs or []]
    finished = job.finished_at if job.status in ("success", "failed", "canceled", "skipped") else None
    return JobView(index=job.index, name=job.name, stage=job.stage, status=job.status, attempt=job.attempt,
                   worker=job.worker, duration=duration(job.started_at, finished),
                   failure_reason=job.failure_reason, exit_code=job.exit_code,
                   allow_failure=bool(job.allow_failure), manual=job.status == "manual", needs=names,
                   test_summary=job.test_summary,
                   artifacts=job.artifacts if job.artifacts and not job.artifacts.get("expired") else None,
                   url=url_for("ui.job_log", run_id=run_id, name=job.name))


@dataclass
class RunView:
    """A run's page: its row, its stages as columns of jobs, and what can be done to it."""

    row: RunRow
    stages: list[tuple[str, list[JobView]]] = field(default_factory=list)
    can_cancel: bool = False
    can_retry: bool = False
    approved_by: str | None = None


def run_view(run: RunRecord, stage_order: list[str]) -> RunView:
    """Stages in the plan's order (a stage without jobs is left out), jobs in file order."""
    jobs = [job_view(run.id, job) for job in run.jobs]
    order = [stage for stage in stage_order if any(job.stage == stage for job in jobs)]
    for job in jobs:
        if job.stage not in order:
            order.append(job.stage)
    stages = [(stage, [job for job in jobs if job.stage == stage]) for stage in order]
    retryable = any(job.status in ("failed", "canceled") for job in jobs)
    return RunView(row=run_row(run), stages=stages, can_cancel=run.status not in TERMINAL_RUN,
                   can_retry=retryable and run.status in TERMINAL_RUN, approved_by=run.approved_by)
