"""GitHub webhooks (``X-GitHub-Event``) into normalized events.

- ``push``: a branch (``refs/heads/``) -> ``push``; a tag (``refs/tags/``) -> ``tag``; deleted
  refs and all-zero ``after`` are ignored. A new branch or tag (``created``) is built.
- ``pull_request``: ``opened``, ``synchronize``, ``reopened`` -> ``merge_request`` on the head
  sha, with the PR's number, branches, title, labels, head and base repositories; every other
  action (closed, labeled, edited, assigned...) is ignored.
- ``create`` / ``delete``: ignored. GitHub sends a ``push`` for the same ref as well (a created
  tag or branch is a push with ``created: true``, a deletion one with ``deleted: true``), so
  building on ``create`` too would start every tag / new-branch pipeline twice.
- ``ping`` -> Pong. Anything else is ignored as "not built".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ci_queue.events.model import (
    ZERO_SHA,
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

PROVIDER = "github"
EVENT_HEADER = "X-GitHub-Event"
PR_BUILD_ACTIONS = frozenset({"opened", "synchronize", "reopened"})


def repo_of(body: bytes) -> str | None:
    """The full name of the repository a delivery is about (None for organisation pings), to find
    the registry entry and its secret before the signature is checked. Raises BadPayload."""
    repository = load_json(body).get("repository")
    if repository is None:
        return None
    if not isinstance(repository, dict):
        raise BadPayload("`repository` must be an object")
    return repo_name(repository.get("full_name"), "repository.full_name", PROVIDER)


def parse(headers: Mapping[str, str], body: bytes) -> Result:
    """Normalize one GitHub delivery (call after the signature was checked)."""
    event = header(headers, EVENT_HEADER)
    if not event:
        raise BadPayload(f"the {EVENT_HEADER} header is missing")
    data = load_json(body)
    delivery = delivery_id(PROVIDER, headers)
    if event == "ping":
        repository = opt_obj(data, "repository")
        full = repository.get("full_name")
        hook_id = data.get("hook_id")
        return Pong(PROVIDER, repo_name(full, "repository.full_name", PROVIDER) if full else "", delivery,
                    str(hook_id) if isinstance(hook_id, int) else "")
    if event == "push":
        return _push(data, delivery)
    if event == "pull_request":
        return _pull_request(data, delivery)
    if event in ("create", "delete"):
        ref_type = data.get("ref_type") if isinstance(data.get("ref_type"), str) else "ref"
        verb = "created" if event == "create" else "deleted"
        return Ignored(f"GitHub '{event}' event ({ref_type} {verb}): the push event of the same ref "
                       "is what starts (or, for a deletion, does not start) a run")
    return Ignored(f"GitHub event {event[:64]!r} is not built")


def _repository(data: Mapping[str, Any]) -> tuple[str, str, str | None, str]:
    repository = obj(data, "repository")
    full = repo_name(repository.get("full_name"), "repository.full_name", PROVIDER)
    url = clone_url(repository.get("clone_url"), "repository.clone_url")
    default = repository.get("default_branch") or repository.get("master_branch")
    default = ref_name(default, "repository.default_branch") if default else None
    web = repository.get("html_url") if isinstance(repository.get("html_url"), str) else ""
    return full, url, default, web


def _sender(data: Mapping[str, Any]) -> str:
    sender = opt_obj(data, "sender")
    login = sender.get("login")
    if isinstance(login, str):
        return login
    pusher = opt_obj(data, "pusher")
    name = pusher.get("name")
    return name if isinstance(name, str) else ""


def _push(data: dict[str, Any], delivery: str) -> Event | Ignored:
    full, url, default, web = _repository(data)
    ref = ref_name(text(data, "ref"), "ref")
    after = text(data, "after")
    before = data.get("before") if isinstance(data.get("before"), str) else ""
    return push_result(PROVIDER, repo=full, ref=ref, before=before, after=after, clone=url, default_branch=default,
                       message=head_message(data, after), sender=_sender(data), delivery=delivery,
                       deleted=data.get("deleted") is True, web_url=web)


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
    base_sha = sha(base.get("sha"), "pull_request.base.sha") if base.get("sha") else ""
    head_repo = opt_obj(head, "repo")  # null when the fork was deleted
    source = head_repo.get("full_name")
    source = repo_name(source, "pull_request.head.repo.full_name", PROVIDER) if source else full
    base_repo = opt_obj(base, "repo")
    target = base_repo.get("full_name")
    target = repo_name(target, "pull_request.base.repo.full_name", PROVIDER) if target else full
    before = data.get("before") if action == "synchronize" else None
    return Event(
        provider=PROVIDER, repo=full, kind="merge_request", ref=f"refs/pull/{iid}/head", sha=head_sha,
        clone_url=url, before=sha(before, "before") if isinstance(before, str) and before else ZERO_SHA,
        branch=source_branch, default_branch=default,  # the payload has no head commit message
        sender=_sender(data), delivery_id=delivery, action=action, mr_iid=iid, mr_source_branch=source_branch,
        mr_target_branch=target_branch, mr_title=message_of(pr.get("title"), 4096),
        mr_labels=labels_of(pr.get("labels")),
        mr_source_repo=source, mr_target_repo=target, mr_diff_base_sha=base_sha, mr_cross_project=not head_repo,
        mr_source_clone_url=clone_url(head_repo.get("clone_url"), "pull_request.head.repo.clone_url")
        if source.lower() != full.lower() else "",
        web_url=pr.get("html_url") if isinstance(pr.get("html_url"), str) else web, server_url=server_of(web, full),
    )
