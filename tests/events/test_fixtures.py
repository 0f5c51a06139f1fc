"""Every real payload under ../shared/fixtures/webhooks: signed, verified, normalized.

Each body is read as raw bytes, signed with a test secret the way its forge signs, checked
with ``verify`` and parsed with the event header its MANIFEST gives; the result must be the
right normalized event (provider, kind, ref, sha, before, MR number / action / branches) or
the right "ignored" reason. The expected values come from the manifest and the body itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ci_queue import events
from ci_queue.events import Event, Ignored, Pong
from tests.conftest import SHARED_FIXTURES, require_shared_fixtures
from tests.events.conftest import SECRET, manifest, signed_headers

pytestmark = pytest.mark.fixtures
ZERO = "0" * 40


def _cases(provider: str) -> list:
    path = SHARED_FIXTURES / "webhooks" / provider / "MANIFEST.json"
    if not path.is_file():  # collected without the fixtures: one case that skips (or fails in CI)
        return [pytest.param(None, id="no-shared-fixtures")]
    return [pytest.param(entry, id=entry["file"]) for entry in manifest(SHARED_FIXTURES, provider)]


def _run(provider: str, entry: dict | None):
    root = require_shared_fixtures()
    assert entry is not None
    body = (root / "webhooks" / provider / entry["file"]).read_bytes()
    event = entry.get("event") or entry["event_header"]
    headers = signed_headers(provider, body, event)
    name = events.repo_of(provider, body)
    events.verify(provider, headers, body, SECRET)
    result = events.parse(provider, headers, body)
    if isinstance(result, Event):
        assert result.repo == name
        assert result.provider == provider
        assert result.delivery_id == events.delivery_id(provider, headers) != ""
        _check_context(result)
    return result, json.loads(body)


def _check_context(event: Event) -> None:
    """The run context survives JSON and becomes the planner's PlanContext (as plan_run does it)."""
    from ci_queue.store import RunRecord
    from workers.tasks import plan_context

    context = json.loads(json.dumps(event.to_context()))
    run = RunRecord(id="r", status="queued", repo=event.repo, ref=event.run_ref, sha=event.sha, event=event.kind,
                    created_at="", context=context)
    ctx = plan_context(run, event.sha, Path("/nonexistent"))
    assert ctx.kind == event.kind and ctx.sha == event.sha
    assert ctx.before_sha == (ZERO if event.kind == "merge_request" else event.before)
    assert ctx.server_url == event.server_url != ""
    assert ctx.project_path == event.repo
    if event.kind == "tag":
        assert ctx.tag == event.tag and ctx.branch is None and ctx.ref_name == event.tag
    elif event.kind == "push":
        assert ctx.branch == event.branch and ctx.tag is None
    else:
        mr = ctx.merge_request
        assert mr is not None and mr.iid == event.mr_iid
        assert (mr.source_branch, mr.target_branch) == (event.mr_source_branch, event.mr_target_branch)
        assert ctx.ref_name == event.mr_source_branch
        assert ctx.is_protected is False


@pytest.mark.parametrize("entry", _cases("github"))
def test_github(entry):
    result, data = _run("github", entry)
    event = entry["event"]
    if event == "ping":
        assert isinstance(result, Pong)
        assert result.repo == (data.get("repository") or {}).get("full_name", "")
    elif event in ("create", "delete"):
        assert isinstance(result, Ignored)
        assert f"'{event}' event ({entry['ref_type']}" in result.reason and "push event" in result.reason
    elif event == "push":
        if entry["deleted"]:
            assert isinstance(result, Ignored) and "deleted" in result.reason
            return
        assert isinstance(result, Event)
        is_tag = entry["ref"].startswith("refs/tags/")
        assert result.kind == ("tag" if is_tag else "push")
        assert (result.ref, result.sha, result.before) == (entry["ref"], data["after"], data["before"])
        assert result.created == entry["created"]
        short = entry["ref"].split("/", 2)[2]
        assert (result.tag if is_tag else result.branch) == short == result.run_ref
        assert result.clone_url == data["repository"]["clone_url"]
    else:
        assert event == "pull_request"
        if entry["action"] not in ("opened", "synchronize", "reopened"):
            assert isinstance(result, Ignored)
            assert repr(entry["action"]) in result.reason
            assert ("(merged)" in result.reason) == entry["merged"]
            return
        assert isinstance(result, Event) and result.kind == "merge_request"
        pr = data["pull_request"]
        assert result.action == entry["action"]
        assert result.mr_iid == data["number"] == pr["number"]
        assert result.sha == pr["head"]["sha"]
        assert result.ref == f"refs/pull/{data['number']}/head"
        assert (result.mr_source_branch, result.mr_target_branch) == (entry["head_ref"], entry["base_ref"])
        assert result.before == (data["before"] if entry["action"] == "synchronize" else ZERO)
        assert result.mr_source_repo == pr["head"]["repo"]["full_name"]
        assert result.is_fork == (pr["head"]["repo"]["full_name"] != pr["base"]["repo"]["full_name"])
        assert result.mr_diff_base_sha == pr["base"]["sha"]


@pytest.mark.parametrize("entry", _cases("gitlab"))
def test_gitlab(entry):
    result, data = _run("gitlab", entry)
    kind = entry["object_kind"]
    if kind in ("push", "tag_push"):
        if entry["after"] == ZERO:
            assert isinstance(result, Ignored) and "deleted" in result.reason
            return
        assert isinstance(result, Event)
        assert result.kind == ("tag" if kind == "tag_push" else "push")
        assert (result.ref, result.sha, result.before) == (entry["ref"], entry["after"], entry["before"])
        assert result.created == (entry["before"] == ZERO)
        assert result.repo == data["project"]["path_with_namespace"]
        if "subgroup" in entry["file"]:
            assert result.repo.count("/") >= 2
        return
    assert kind == "merge_request"
    action = entry["mr_action"]
    attrs = data["object_attributes"]
    if action in ("open", "reopen") or (action == "update" and attrs.get("oldrev")):
        assert isinstance(result, Event) and result.kind == "merge_request"
        assert result.action == action
        assert result.mr_iid == attrs["iid"]
        assert result.sha == attrs["last_commit"]["id"]
        assert result.ref == f"refs/merge-requests/{attrs['iid']}/head"
        assert (result.mr_source_branch, result.mr_target_branch) == (entry["source_branch"], entry["target_branch"])
    else:
        assert isinstance(result, Ignored)
        assert action in result.reason


@pytest.mark.parametrize("entry", _cases("gitea"))
def test_gitea(entry):
    result, data = _run("gitea", entry)
    event = entry["event_header"]
    if event == "push":
        assert isinstance(result, Event) and result.kind == "push"
        assert (result.ref, result.sha, result.before) == (entry["ref"], entry["after"], entry["before"])
        assert result.created == (entry["before"] == ZERO)
    elif event in ("create", "delete"):
        assert isinstance(result, Ignored)
        assert f"'{event}' event ({entry['ref_type']}" in result.reason
    else:
        assert event == "pull_request"
        if entry["action"] not in ("opened", "synchronized", "reopened"):
            assert isinstance(result, Ignored)
            assert repr(entry["action"]) in result.reason
            assert ("(merged)" in result.reason) == entry["merged"]
            return
        pr = data["pull_request"]
        assert isinstance(result, Event) and result.kind == "merge_request"
        assert result.action == entry["action"]
        assert result.mr_iid == pr["number"]
        assert result.sha == pr["head"]["sha"]
        assert (result.mr_source_branch, result.mr_target_branch) == (pr["head"]["ref"], pr["base"]["ref"])
        assert result.mr_diff_base_sha == pr["merge_base"]


def test_every_manifest_file_exists_and_every_body_is_listed(shared_fixtures: Path):
    for provider in ("github", "gitlab", "gitea"):
        folder = shared_fixtures / "webhooks" / provider
        listed = {entry["file"] for entry in manifest(shared_fixtures, provider)}
        assert listed == {p.name for p in folder.glob("*.json") if p.name != "MANIFEST.json"}


def test_a_gitea_tag_builds_once(shared_fixtures: Path):
    """Gitea sends `create` and a `push` of refs/tags/ for a new tag: exactly one becomes an Event."""
    folder = shared_fixtures / "webhooks" / "gitea"
    create = events.parse("gitea", {"X-Gitea-Event": "create"}, (folder / "create.tag.json").read_bytes())
    assert isinstance(create, Ignored)
    body = json.dumps({"ref": "refs/tags/v1.0.0", "before": ZERO, "after": "599d25c67b05717269f50ac082b34f176d085179",
                       "repository": {"full_name": "gogits/hello-world"}}).encode()
    push = events.parse("gitea", {"X-Gitea-Event": "push"}, body)
    assert isinstance(push, Event) and push.kind == "tag" and push.tag == "v1.0.0"
