"""Commit statuses on GitHub, GitLab and Gitea: the request of each provider, and its states.

A status is described provider-neutrally (``StatusUpdate``: context, one of ``STATES``,
description, target URL); ``build_request`` turns it into the provider's HTTP request and
``post_status`` sends it, classifying the answer: 2xx sent, 5xx / 429 ``RetryableError`` (the
Celery task retries it), other 4xx ``StatusRejected`` (retrying would not help). Nothing from a
payload reaches a URL unchecked: the sha must be hex, the repository a plain path, and every
path segment is quoted.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import quote

import requests

PROVIDERS = ("github", "gitlab", "gitea")
# Provider-neutral states: what happened. Each provider gets its own word for it below.
STATES = ("pending", "running", "success", "failure", "error", "canceled", "skipped")
DEFAULT_TOKEN_ENV = {"github": "CIQ_GITHUB_TOKEN", "gitlab": "CIQ_GITLAB_API_TOKEN", "gitea": "CIQ_GITEA_TOKEN"}
MAX_DESCRIPTION = 139  # GitHub refuses descriptions of 140 characters and more

# GitHub and Gitea know pending / success / failure / error; "running" is pending with a
# description, a canceled run is an error, a skipped job is a success that says "skipped".
_GITHUB_STATES = {"pending": "pending", "running": "pending", "success": "success", "failure": "failure",
                  "error": "error", "canceled": "error", "skipped": "success"}
# GitLab: pending, running, success, failed, canceled, skipped.
_GITLAB_STATES = {"pending": "pending", "running": "running", "success": "success", "failure": "failed",
                  "error": "failed", "canceled": "canceled", "skipped": "skipped"}
_SHA = re.compile(r"^[0-9a-fA-F]{7,64}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")


class StatusError(Exception):
    """A status that cannot be sent at all (bad target, unknown provider, missing API URL)."""


class _HttpAnswer(Exception):
    """An HTTP answer worth an exception: its code and what the server said."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (Celery carries the exception of a retry)
        return (type(self), (self.status_code, self.detail))


class StatusRejected(_HttpAnswer, StatusError):
    """The provider answered 4xx (bad token, unknown repository or sha, invalid transition)."""


class RetryableError(_HttpAnswer):
    """The provider answered 5xx or 429: worth trying again later."""


@dataclass(frozen=True)
class StatusTarget:
    """Where statuses of a repository go. ``token_env`` names the variable holding the token (the
    repository's ``status_token_env``); the token itself never travels in a message."""

    provider: str
    repo: str
    api_url: str
    token_env: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StatusUpdate:
    """One commit status, provider-neutral."""

    context: str
    state: str
    description: str = ""
    target_url: str = ""
    ref: str = ""  # GitLab attaches the status to this ref's pipeline

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def short(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """One line of at most ``limit`` characters (an ellipsis marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def provider_state(provider: str, state: str) -> str:
    if state not in STATES:
        raise StatusError(f"unknown status state {state!r}")
    return (_GITLAB_STATES if provider == "gitlab" else _GITHUB_STATES)[state]


def check_target(target: StatusTarget, sha: str) -> None:
    if target.provider not in PROVIDERS:
        raise StatusError(f"no commit statuses for provider {target.provider!r}")
    if not target.api_url:
        raise StatusError(f"no API URL for {target.provider} (CIQ_{target.provider.upper()}_API_URL)")
    if not _SHA.match(sha or ""):
        raise StatusError(f"not a commit sha: {sha!r}")
    parts = target.repo.split("/")
    if len(parts) < 2 or (target.provider != "gitlab" and len(parts) != 2) or not all(
            _SEGMENT.match(p) and p not in (".", "..") for p in parts):
        raise StatusError(f"not a {target.provider} repository path: {target.repo!r}")


def build_request(target: StatusTarget, sha: str, update: StatusUpdate,
                  token: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL, headers and JSON body of a status for ``sha``."""
    check_target(target, sha)
    base = target.api_url.rstrip("/")
    state = provider_state(target.provider, update.state)
    description = short(update.description)
    headers = {"Accept": "application/json", "User-Agent": "ci-queue"}
    if target.provider == "gitlab":
        url = f"{base}/projects/{quote(target.repo, safe='')}/statuses/{sha}"
        headers["PRIVATE-TOKEN"] = token
        body: dict[str, Any] = {"state": state, "name": update.context, "description": description}
        if update.ref:
            body["ref"] = update.ref
    else:
        owner, repo = (quote(p, safe="") for p in target.repo.split("/"))
        url = f"{base}/repos/{owner}/{repo}/statuses/{sha}"
        if target.provider == "github":
            headers["Accept"] = "application/vnd.github+json"
            headers["X-GitHub-Api-Version"] = "2022-11-28"
            headers["Authorization"] = f"Bearer {token}"
        else:
            headers["Authorization"] = f"token {token}"
        body = {"state": state, "context": update.context, "description": description}
    if update.target_url:
        body["target_url"] = update.target_url
    return url, headers, body


def post_status(target: StatusTarget, sha: str, update: StatusUpdate, token: str,
                timeout: tuple[float, float] = (5.0, 10.0), session: Any = None) -> int:
    """Send one status; returns the HTTP status code of a 2xx answer.

    Raises ``RetryableError`` (5xx, 429), ``StatusRejected`` (other non-2xx),
    ``requests.ConnectionError`` / ``requests.Timeout`` (the caller retries those too)."""
    url, headers, body = build_request(target, sha, update, token)
    response = (session or requests).post(url, json=body, headers=headers, timeout=timeout, allow_redirects=False)
    return check_response(response)


def check_response(response: requests.Response) -> int:
    code = response.status_code
    if 200 <= code < 300:
        return code
    detail = short(response.text or response.reason or "", 200)
    if code >= 500 or code == 429:
        raise RetryableError(code, detail)
    raise StatusRejected(code, detail)
