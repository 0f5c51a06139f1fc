"""Chat notifications when a run ends: a Slack-compatible incoming webhook message, and when to
send one (a repository's ``notify`` policy: always | on_failure | on_change | never)."""

from __future__ import annotations

from typing import Any

import requests

from ci_queue.pipeline.model import Job
from ci_queue.reporters.status import RetryableError, StatusRejected, check_response, short
from ci_queue.store import RunRecord, Store

POLICIES = ("always", "on_failure", "on_change", "never")
DEFAULT_POLICY = "on_failure"
FAILED = frozenset({"failed", "error"})
OUTCOMES = frozenset({"success", "failed", "error"})  # what on_change compares (canceled / skipped are not outcomes)
_COLORS = {"success": "good", "failed": "danger", "error": "danger", "canceled": "warning", "skipped": "#999999"}
_ICONS = {"success": ":white_check_mark:", "failed": ":x:", "error": ":boom:", "canceled": ":no_entry_sign:",
          "skipped": ":fast_forward:"}


def previous_outcome(store: Store, run: RunRecord, pages: int = 5) -> str | None:
    """The status of the latest finished run (success / failed / error) of the same repository and
    ref created before ``run``; None if there is none."""
    seen_self = False
    cursor: float | None = None
    for _ in range(pages):
        runs, cursor = store.list_runs(repo=run.repo, ref=run.ref, cursor=cursor, limit=50)
        for other in runs:
            if other.id == run.id:
                seen_self = True
                continue
            if (seen_self or other.created_at < run.created_at) and other.status in OUTCOMES:
                return other.status
        if cursor is None:
            return None
    return None


def should_notify(policy: str, status: str, previous: str | None) -> bool:
    """Does a run that ended ``status`` deserve a message, given the previous outcome?

    ``on_change``: the outcome differs from the previous finished run of the repository and ref
    (broken, fixed; failed <-> error counts as a change); a first run notifies only if it failed.
    Canceled and skipped runs only notify under ``always``."""
    if policy == "always":
        return True
    if policy == "on_failure":
        return status in FAILED
    if policy == "on_change":
        if status not in OUTCOMES:
            return False
        return status in FAILED if previous is None else status != previous
    return False


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def build_message(run: RunRecord, target_url: str = "", previous: str | None = None) -> dict[str, Any]:
    """The webhook payload: a one-line ``text`` (the fallback every Slack-compatible server shows)
    and an attachment with repository, ref, sha, failed jobs and the link."""
    status = run.status
    failed = [job for job in run.jobs if job.status == "failed" and not _allowed(job)]
    headline = f"{_ICONS.get(status, '')} {_escape(run.repo)} {_escape(run.ref)}: pipeline {status}".strip()
    if previous and previous != status and status in OUTCOMES:
        headline += " (fixed)" if status == "success" else f" (was {previous})"
    if target_url:
        headline += f" <{target_url}|run {run.id}>"
    fields = [
        {"title": "Repository", "value": _escape(run.repo), "short": True},
        {"title": "Ref", "value": _escape(run.ref), "short": True},
        {"title": "Commit", "value": run.sha[:12] or "-", "short": True},
        {"title": "Status", "value": status, "short": True},
    ]
    if failed:
        names = ", ".join(_escape(f"{job.name} ({job.failure_reason or 'failed'})") for job in failed[:20])
        if len(failed) > 20:
            names += f" and {len(failed) - 20} more"
        fields.append({"title": "Failed jobs", "value": names, "short": False})
    if run.error:
        fields.append({"title": "Error", "value": _escape(short(run.error, 300)), "short": False})
    attachment: dict[str, Any] = {"color": _COLORS.get(status, "#999999"), "fallback": headline, "fields": fields}
    if target_url:
        attachment["title"] = f"Run {run.id}"
        attachment["title_link"] = target_url
    return {"text": headline, "attachments": [attachment]}


def _allowed(job: Any) -> bool:
    """Was this failed job allowed to fail (``allow_failure: true``, or its exit code listed)?"""
    if not job.allow_failure:
        return False
    try:
        return Job.from_dict(job.spec).failure_allowed(job.exit_code)
    except Exception:
        return job.allow_failure is True


allowed_failure = _allowed


def post_message(url: str, message: dict[str, Any], timeout: tuple[float, float] = (5.0, 10.0)) -> int:
    """Post to the incoming webhook; ``RetryableError`` on 5xx / 429, ``StatusRejected`` on 4xx."""
    response = requests.post(url, json=message, timeout=timeout, allow_redirects=False)
    return check_response(response)


__all__ = ["POLICIES", "RetryableError", "StatusRejected", "build_message", "post_message", "previous_outcome",
           "should_notify"]
