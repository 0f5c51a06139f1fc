"""GitLab webhooks (``X-Gitlab-Event``) into normalized events.

- ``Push Hook`` (``object_kind: push``) -> ``push``; ``Tag Push Hook`` (``tag_push``) -> ``tag``;
  an all-zero ``after`` is a deletion and is ignored. The commit built is ``checkout_sha`` when
  given (for an annotated tag, ``after`` is the tag object, ``checkout_sha`` its commit).
- ``Merge Request Hook``: ``open``, ``reopen``, and ``update`` that brought new commits
  (``object_attributes.oldrev`` present) -> ``merge_request`` on ``last_commit.id``, with the
  previous head as ``before``; other updates (title, labels, draft...), ``close``, ``merge``,
  ``approved``... are ignored, as GitLab itself starts no MR pipeline for them.
- ``System Hook``: the body's ``object_kind`` (or ``event_name``) says which of the above it is;
  the other system events (project_create, user_add_to_team...) are ignored.

The repository is ``project.path_with_namespace``, any depth of subgroups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ci_queue.events.model import (
    ZERO_SHA,
    BadPayload,
    Event,
    Ignored,
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

PROVIDER = "gitlab"
EVENT_HEADER = "X-Gitlab-Event"
HOOK_KINDS = {"Push Hook": "push", "Tag Push Hook": "tag_push", "Merge Request Hook": "merge_request"}
MR_BUILD_ACTIONS = frozenset({"open", "reopen"})


def repo_of(body: bytes) -> str | None:
    """The project path a delivery is about (to find the registry entry and its token)."""
    data = load_json(body)
    project = data.get("project")
    if isinstance(project, dict) and project.get("path_with_namespace") is not None:
        return repo_name(project.get("path_with_namespace"), "project.path_with_namespace", PROVIDER)
    if project is None and data.get("path_with_namespace") is not None:  # system hooks about projects
        return repo_name(data.get("path_with_namespace"), "path_with_namespace", PROVIDER)
    return None


def parse(headers: Mapping[str, str], body: bytes) -> Result:
    """Normalize one GitLab delivery (call after the token was checked)."""
    event = header(headers, EVENT_HEADER)
    if not event:
        raise BadPayload(f"the {EVENT_HEADER} header is missing")
    data = load_json(body)
    kind = data.get("object_kind")
    if event == "System Hook":
        if kind is None:
            kind = data.get("event_name")
        if kind not in ("push", "tag_push", "merge_request"):
            shown = kind[:64] if isinstance(kind, str) else None
            return Ignored(f"GitLab system hook event {shown!r} is not built")
    elif event in HOOK_KINDS:
        if kind != HOOK_KINDS[event]:
            raise BadPayload(f"{EVENT_HEADER} is {event!r} but object_kind is {str(kind)[:64]!r}")
    else:
        return Ignored(f"GitLab event {event[:64]!r} is not built")
    delivery = delivery_id(PROVIDER, headers)
    if kind == "merge_request":
        return _merge_request(data, delivery)
    return _push(data, delivery, tag=kind == "tag_push")


def _project(project: Mapping[str, Any], where: str) -> tuple[str, str, str | None, str]:
    path = repo_name(project.get("path_with_namespace"), f"{where}path_with_namespace", PROVIDER)
    url = clone_url(project.get("git_http_url") or project.get("http_url"), f"{where}git_http_url")
    default = project.get("default_branch")
    default = ref_name(default, f"{where}default_branch") if default else None
    web = project.get("web_url") if isinstance(project.get("web_url"), str) else ""
    return path, url, default, web


def _push(data: dict[str, Any], delivery: str, *, tag: bool) -> Event | Ignored:
    project = obj(data, "project")
    path, url, default, web = _project(project, "project.")
    if not url:
        url = clone_url(opt_obj(data, "repository").get("git_http_url"), "repository.git_http_url")
    ref = ref_name(text(data, "ref"), "ref")
    if tag != ref.startswith("refs/tags/"):
        raise BadPayload(f"a {'tag push' if tag else 'push'} event for {ref[:100]!r}")
    after = text(data, "after")
    checkout = data.get("checkout_sha")
    target = checkout if isinstance(checkout, str) and checkout and not set(checkout) <= {"0"} else after
    before = data.get("before") if isinstance(data.get("before"), str) else ""
    sender = data.get("user_username") if isinstance(data.get("user_username"), str) else ""
    result = push_result(PROVIDER, repo=path, ref=ref, before=before, after=after, clone=url, default_branch=default,
                         message=head_message(data, after), sender=sender, delivery=delivery, web_url=web)
    if isinstance(result, Event) and target != after:
        result = replace(result, sha=sha(target, "checkout_sha", allow_zero=False))
    return result


def _merge_request(data: dict[str, Any], delivery: str) -> Event | Ignored:
    attrs = obj(data, "object_attributes")
    action = attrs.get("action")
    if action is None and data.get("event_type") is None:
        action = "open"  # very old payloads (and some docs examples) carry no action: a new MR
    if not isinstance(action, str):
        raise BadPayload("`object_attributes.action` must be a string")
    oldrev = attrs.get("oldrev")
    if action == "update" and not oldrev:
        return Ignored("merge request update without new commits (no oldrev) does not start a run")
    if action not in MR_BUILD_ACTIONS and action != "update":
        return Ignored(f"merge request action {action[:64]!r} does not start a run")
    project = obj(data, "project")
    path, url, default, web = _project(project, "project.")
    target_project = opt_obj(attrs, "target")
    source_project = opt_obj(attrs, "source")
    target = _project(target_project, "object_attributes.target.")[0] if target_project else path
    source, source_url = target, ""
    if source_project:
        source, source_url, _, _ = _project(source_project, "object_attributes.source.")
    iid = number(attrs, "iid", "object_attributes.")
    last = obj(attrs, "last_commit", "object_attributes.")
    head_sha = sha(last.get("id"), "object_attributes.last_commit.id", allow_zero=False)
    source_branch = ref_name(text(attrs, "source_branch", "object_attributes."), "object_attributes.source_branch")
    target_branch = ref_name(text(attrs, "target_branch", "object_attributes."), "object_attributes.target_branch")
    labels = labels_of(data.get("labels")) or labels_of(attrs.get("labels"))
    user = opt_obj(data, "user")
    source_id, target_id = attrs.get("source_project_id"), attrs.get("target_project_id")
    cross_project = isinstance(source_id, int) and isinstance(target_id, int) and source_id != target_id
    return Event(
        provider=PROVIDER, repo=path, kind="merge_request", ref=f"refs/merge-requests/{iid}/head", sha=head_sha,
        clone_url=url, before=sha(oldrev, "object_attributes.oldrev") if oldrev else ZERO_SHA, branch=source_branch,
        default_branch=default, commit_message=message_of(last.get("message")),
        sender=user.get("username") if isinstance(user.get("username"), str) else "", delivery_id=delivery,
        action=action, mr_iid=iid, mr_source_branch=source_branch, mr_target_branch=target_branch,
        mr_title=message_of(attrs.get("title"), 4096), mr_labels=labels, mr_source_repo=source,
        mr_target_repo=target, mr_source_clone_url=source_url if source.lower() != path.lower() else "",
        mr_cross_project=cross_project,
        web_url=attrs.get("url") if isinstance(attrs.get("url"), str) else web, server_url=server_of(web, path),
    )
