"""Gitea (and Forgejo, Gogs) webhooks into normalized events.

The event name comes from ``X-Gitea-Event`` (else ``X-Forgejo-Event``, ``X-Gogs-Event``, then the
GitHub-compatible ``X-GitHub-Event`` copy that Gitea also sends).

- ``push``: like GitHub's (``refs/heads/`` -> push, ``refs/tags/`` -> tag, all-zero ``after``
  ignored).
- ``create`` / ``delete``: ignored. Gitea announces a new tag (or branch) twice, as a ``create``
  event *and* a ``push`` of ``refs/tags/...``; the push is the one built (it has ``before`` /
  ``after`` and the commits, and it is what every provider sends), so the tag pipeline runs once.
- ``pull_request``: ``opened``, ``synchronized`` (GitHub's ``synchronize`` is accepted too),
  ``reopened`` -> ``merge_request`` on the head sha, with ``merge_base`` as the diff base; other
  actions (closed, edited, label_updated...) ignored.
- ``ping`` -> Pong (Forgejo / GitHub-compatible test deliveries).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ci_queue.events.model import (
    BadPayload,
    Event,
    Ignored,
    Pong,
    Result,
    clone_url,
    head_message,
    header,
    labels_of,
    load_json,
    message_of,
    number,
    obj,
    opt_obj,
    push_result,
    ref_name,
    repo_name,
    server_of,
    sha,
    text,
)
from ci_queue.events.signatures import delivery_id

PROVIDER = "gitea"
EVENT_HEADERS = ("X-Gitea-Event", "X-Forgejo-Event", "X-Gogs-Event", "X-GitHub-Event")
PR_BUILD_ACTIONS = frozenset({"opened", "synchronized", "synchronize", "reopened"})


def event_name(headers: Mapping[str, str]) -> str:
    for name in EVENT_HEADERS:
        value = header(headers, name)
        if value:
            return value
    return ""


def repo_of(body: bytes) -> str | None:
    """The full name of the repository a delivery is about (to find its registry entry)."""
    repository = load_json(body).get("repository")
    if repository is None:
        return None
    if not isinstance(repository, dict):
        raise BadPayload("`repository` must be an object")
    return repo_name(repository.get("full_name"), "repository.full_name", PROVIDER)


def parse(headers: Mapping[str, str], body: bytes) -> Result:
    """Normalize one Gitea / Forgejo delivery (call after the signature was checked)."""
    event = event_name(headers)
    if not event:
        raise BadPayload("the X-Gitea-Event header is missing")
    data = load_json(body)
    delivery = delivery_id(PROVIDER, headers)
    if event == "push":
        return _push(data, delivery)
    if event in ("pull_request", "pull_request_sync"):
        return _pull_request(data, delivery)
    if event in ("create", "delete"):
        ref_type = data.get("ref_type") if isinstance(data.get("ref_type"), str) else "ref"
        if event == "create":
            return Ignored(f"Gitea 'create' event ({ref_type}): the push event of the same ref starts the run "
                           "(building both would run the pipeline twice)")
        return Ignored(f"Gitea 'delete' event ({ref_type} deleted) does not start a run")
    if event == "ping":
        full = opt_obj(data, "repository").get("full_name")
        return Pong(PROVIDER, repo_name(full, "repository.full_name", PROVIDER) if full else "", delivery)
    return Ignored(f"Gitea event {event[:64]!r} is not built")


def _repository(data: Mapping[str, Any]) -> tuple[str, str, str | None, str]:
    repository = obj(data, "repository")
    full = repo_name(repository.get("full_name"), "repository.full_name", PROVIDER)
    url = clone_url(repository.get("clone_url"), "repository.clone_url")
    default = repository.get("default_branch")
    default = ref_name(default, "repository.default_branch") if default else None
    web = repository.get("html_url") if isinstance(repository.get("html_url"), str) else ""
    return full, url, default, web


def _login(data: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        user = opt_obj(data, key)
        for field in ("login", "username"):
            if isinstance(user.get(field), str) and user[field]:
                return user[field]
    return ""


def _push(data: dict[str, Any], delivery: str) -> Event | Ignored:
    full, url, default, web = _repository(data)
    ref = ref_name(text(data, "ref"), "ref")
    after = text(data, "after")
    before = data.get("before") if isinstance(data.get("before"), str) else ""
    return push_result(PROVIDER, repo=full, ref=ref, before=before, after=after, clone=url, default_branch=default,
                       message=head_message(data, after), sender=_login(data, "pusher", "sender"),
                       delivery=delivery, web_url=web)


def _pull_request(data: dict[str, Any], delivery: str) -> Event | Ignored:
    action = text(data, "action")
    pr = obj(data, "pull_request")
    if action not in PR_BUILD_ACTIONS:
        merged = " (merged)" if action == "closed" and pr.get("merged") is True else ""
        return Ignored(f"pull request action {action[:64]!r}{merged} does not start a run")
    full, url, default, web = _repository(data)
    iid = number(pr, "number", "pull_request.") if "number" in pr else number(data, "number")
    head, base = obj(pr, "head", "pull_request."), obj(pr, "base", "pull_request.")
    source_branch = ref_name(text(head, "ref", "pull_request.head."), "pull_request.head.ref")
    target_branch = ref_name(text(base, "ref", "pull_request.base."), "pull_request.base.ref")
    head_sha = sha(head.get("sha"), "pull_request.head.sha", allow_zero=False)
    merge_base = pr.get("merge_base")
    diff_base = sha(merge_base, "pull_request.merge_base") if merge_base else ""
    head_repo = opt_obj(head, "repo")
    source = head_repo.get("full_name")
    source = repo_name(source, "pull_request.head.repo.full_name", PROVIDER) if source else full
    target = opt_obj(base, "repo").get("full_name")
    target = repo_name(target, "pull_request.base.repo.full_name", PROVIDER) if target else full
    return Event(
        provider=PROVIDER, repo=full, kind="merge_request", ref=f"refs/pull/{iid}/head", sha=head_sha, clone_url=url,
        branch=source_branch, default_branch=default, sender=_login(data, "sender"), delivery_id=delivery,
        action=action, mr_iid=iid, mr_source_branch=source_branch, mr_target_branch=target_branch,
        mr_title=message_of(pr.get("title"), 4096), mr_labels=labels_of(pr.get("labels")), mr_source_repo=source,
        mr_target_repo=target, mr_diff_base_sha=diff_base, mr_cross_project=not head_repo,
        mr_source_clone_url=clone_url(head_repo.get("clone_url"), "pull_request.head.repo.clone_url")
        if source.lower() != full.lower() else "",
        web_url=pr.get("html_url") if isinstance(pr.get("html_url"), str) else web, server_url=server_of(web, full),
    )
