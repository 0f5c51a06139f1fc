"""Normalization beyond the fixtures: bad payloads, hostile names, GitLab system hooks, generic."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ci_queue import events
from ci_queue.events import BadPayload, Event, Ignored, Pong, signatures
from ci_queue.events.model import valid_ref, valid_repo_name

SHA = "a" * 40
OLD = "b" * 40
ZERO = "0" * 40


def github_push(ref="refs/heads/main", full_name="octo/hello", after=SHA, **extra) -> bytes:
    data = {"ref": ref, "before": OLD, "after": after, "repository": {
        "full_name": full_name, "clone_url": "https://github.com/octo/hello.git", "default_branch": "main"},
        "head_commit": {"id": after, "message": "msg"}, "sender": {"login": "me"}, **extra}
    return json.dumps(data).encode()


def gitlab_push(ref="refs/heads/main", path="group/sub/project", kind="push", after=SHA) -> bytes:
    return json.dumps({"object_kind": kind, "event_name": kind, "ref": ref, "before": OLD, "after": after,
                       "checkout_sha": after, "user_username": "me", "commits": [],
                       "project": {"path_with_namespace": path, "default_branch": "main",
                                   "git_http_url": f"https://gitlab.com/{path}.git"}}).encode()


# -- bad payloads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider, headers", [
    ("github", {"X-GitHub-Event": "push"}),
    ("gitlab", {"X-Gitlab-Event": "Push Hook"}),
    ("gitea", {"X-Gitea-Event": "push"}),
    ("generic", {}),
])
@pytest.mark.parametrize("body, message", [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b'\xff\xfe{\x00}\x00', "not UTF-8"),  # UTF-16 is not guessed
    (b"[1, 2]", "JSON object"),
    (b"{}", None),
    (b'{"repository": "x", "project": 5, "ref": 1}', None),
    (b"[" * 100_000 + b"]" * 100_000, None),
], ids=["text", "binary", "utf16", "list", "empty", "wrong-types", "deep"])
def test_malformed_bodies_are_bad_payloads(provider, headers, body, message):
    with pytest.raises(BadPayload, match=message):
        events.parse(provider, headers, body)


def test_a_missing_event_header_is_a_bad_payload():
    for provider in ("github", "gitlab", "gitea"):
        with pytest.raises(BadPayload, match="header is missing"):
            events.parse(provider, {}, github_push())


def test_headers_are_case_insensitive():
    result = events.parse("github", {"x-github-event": "push", "X-GITHUB-DELIVERY": "d1"}, github_push())
    assert isinstance(result, Event) and result.delivery_id == "d1"


@pytest.mark.parametrize("body", [
    github_push(after="xyz"),
    github_push(after="A" * 39),
    json.dumps({"ref": "refs/heads/main", "before": OLD, "after": SHA, "repository": []}).encode(),
])
def test_wrong_shapes(body):
    with pytest.raises(BadPayload):
        events.parse("github", {"X-GitHub-Event": "push"}, body)


def test_github_push_details():
    result = events.parse("github", {"X-GitHub-Event": "push"}, github_push())
    assert isinstance(result, Event)
    assert (result.kind, result.branch, result.tag, result.sha, result.before) == ("push", "main", None, SHA, OLD)
    assert (result.commit_message, result.sender, result.default_branch) == ("msg", "me", "main")
    assert result.to_context(pipeline=".ci.yml") == {
        "kind": "push", "branch": "main", "tag": None, "default_branch": "main", "before_sha": OLD,
        "project_path": "octo/hello", "commit_message": "msg", "user_login": "me", "pipeline": ".ci.yml"}
    sha256 = "c" * 64  # SHA-256 repositories
    result = events.parse("github", {"X-GitHub-Event": "push"}, github_push(after=sha256.upper()))
    assert isinstance(result, Event) and result.sha == sha256


def test_github_zero_after_and_other_refs_are_ignored():
    zero = events.parse("github", {"X-GitHub-Event": "push"}, github_push(after=ZERO))
    assert zero == Ignored("branch refs/heads/main was deleted")
    deleted = events.parse("github", {"X-GitHub-Event": "push"}, github_push(deleted=True))
    assert isinstance(deleted, Ignored)
    notes = events.parse("github", {"X-GitHub-Event": "push"}, github_push(ref="refs/notes/commits"))
    assert notes == Ignored("refs/notes/commits is neither a branch nor a tag")
    other = events.parse("github", {"X-GitHub-Event": "issues"}, b"{}")
    assert other == Ignored("GitHub event 'issues' is not built")
    assert other.to_dict() == {"ignored": "GitHub event 'issues' is not built"}


def test_org_ping_has_no_repository():
    body = json.dumps({"zen": "Keep it simple.", "hook_id": 7, "organization": {"login": "octo"}}).encode()
    assert events.repo_of("github", body) is None
    assert events.parse("github", {"X-GitHub-Event": "ping"}, body) == Pong("github", "", "", "7")


# -- GitLab ------------------------------------------------------------------------------------------


def test_gitlab_system_hooks_dispatch_on_object_kind():
    push = events.parse("gitlab", {"X-Gitlab-Event": "System Hook"}, gitlab_push())
    assert isinstance(push, Event) and push.kind == "push" and push.repo == "group/sub/project"
    tag = events.parse("gitlab", {"X-Gitlab-Event": "System Hook"},
                       gitlab_push(ref="refs/tags/v1", kind="tag_push"))
    assert isinstance(tag, Event) and tag.kind == "tag" and tag.tag == "v1"
    other = events.parse("gitlab", {"X-Gitlab-Event": "System Hook"},
                         json.dumps({"event_name": "project_create", "path_with_namespace": "a/b"}).encode())
    assert other == Ignored("GitLab system hook event 'project_create' is not built")
    note = events.parse("gitlab", {"X-Gitlab-Event": "Note Hook"}, b'{"object_kind": "note"}')
    assert isinstance(note, Ignored)


def test_gitlab_header_and_body_must_agree():
    with pytest.raises(BadPayload, match="object_kind"):
        events.parse("gitlab", {"X-Gitlab-Event": "Tag Push Hook"}, gitlab_push())
    with pytest.raises(BadPayload, match="tag push"):
        events.parse("gitlab", {"X-Gitlab-Event": "Tag Push Hook"}, gitlab_push(kind="tag_push"))


def test_gitlab_annotated_tag_builds_the_commit():
    data = json.loads(gitlab_push(ref="refs/tags/v2", kind="tag_push"))
    data["checkout_sha"] = "d" * 40
    result = events.parse("gitlab", {"X-Gitlab-Event": "Tag Push Hook"}, json.dumps(data).encode())
    assert isinstance(result, Event) and result.sha == "d" * 40


def _gitlab_mr(action: str, oldrev: str | None = None) -> bytes:
    attrs = {"iid": 7, "action": action, "source_branch": "feat", "target_branch": "main", "title": "T",
             "last_commit": {"id": SHA, "message": "head message"},
             "source": {"path_with_namespace": "fork/project", "git_http_url": "https://gitlab.com/fork/project.git"},
             "target": {"path_with_namespace": "group/project"}}
    if oldrev:
        attrs["oldrev"] = oldrev
    return json.dumps({"object_kind": "merge_request", "event_type": "merge_request", "user": {"username": "u"},
                       "project": {"path_with_namespace": "group/project", "default_branch": "main"},
                       "object_attributes": attrs, "labels": [{"title": "bug"}, {"title": "ci"}]}).encode()


def test_gitlab_merge_request_update_with_new_commits_builds():
    headers = {"X-Gitlab-Event": "Merge Request Hook"}
    update = events.parse("gitlab", headers, _gitlab_mr("update", OLD))
    assert isinstance(update, Event)
    assert (update.kind, update.sha, update.before, update.mr_iid) == ("merge_request", SHA, OLD, 7)
    assert update.mr_labels == ("bug", "ci") and update.commit_message == "head message"
    assert update.is_fork and update.mr_source_clone_url == "https://gitlab.com/fork/project.git"
    mr = update.to_context()["merge_request"]
    assert mr == {"iid": 7, "source_branch": "feat", "target_branch": "main", "title": "T", "labels": ["bug", "ci"],
                  "source_project_path": "fork/project", "target_project_path": "group/project", "diff_base_sha": ""}
    assert isinstance(events.parse("gitlab", headers, _gitlab_mr("update")), Ignored)
    for action in ("close", "merge", "approved", "unapproved"):
        assert isinstance(events.parse("gitlab", headers, _gitlab_mr(action)), Ignored)


# -- Gitea / Forgejo ---------------------------------------------------------------------------------


def test_forgejo_headers():
    body = github_push()
    result = events.parse("gitea", {"X-Forgejo-Event": "push", "X-Forgejo-Delivery": "f-1"}, body)
    assert isinstance(result, Event) and result.provider == "gitea" and result.delivery_id == "f-1"


# -- generic -----------------------------------------------------------------------------------------


def generic(**fields) -> bytes:
    data = {"repo": "tools/nightly", "ref": "refs/heads/main", "sha": SHA, **fields}
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def test_generic_shape():
    body = generic(before=OLD, clone_url="https://git.example/tools/nightly.git", commit_message="m")
    headers = {**signatures.generic_headers("s", body, delivery="c-1")}
    events.verify("generic", headers, body, "s")
    result = events.parse("generic", headers, body)
    assert isinstance(result, Event)
    assert (result.provider, result.kind, result.branch, result.sha, result.before) == ("generic", "push", "main",
                                                                                        SHA, OLD)
    assert result.delivery_id == "c-1" and result.commit_message == "m"
    tag = events.parse("generic", {}, generic(ref="refs/tags/v1"))
    assert isinstance(tag, Event) and tag.kind == "tag"
    assert events.repo_of("generic", generic(repo="single")) == "single"


@pytest.mark.parametrize("body, message", [
    (generic(reff="x"), "unknown key"),
    (generic(ref="main"), "full ref"),
    (generic(event="tag"), "does not match"),
    (generic(event="merge_request"), "push or tag"),
    (generic(sha=None), "sha"),
    (generic(sha=5), "sha"),
    (generic(repo=None), "repo"),
    (generic(clone_url="file:///etc"), "clone URL"),
    (generic(clone_url="--upload-pack=touch /tmp/x"), "clone URL"),
])
def test_generic_refuses(body, message):
    with pytest.raises(BadPayload, match=message):
        events.parse("generic", {}, body)


def test_generic_zero_sha_is_a_deletion():
    assert isinstance(events.parse("generic", {}, generic(sha=ZERO)), Ignored)


# -- hostile names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a/..", "../etc", "a/../b", "a/.", "-rf/x", "a/-x", "a/b c", "a/b;rm", "a/$(x)",
                                  "a/`x`", "a", "a/b/c", "", "a//b", "/a/b", "a/b/", "a/b\n", "a\x00/b"])
def test_hostile_repository_names_are_refused(name):
    assert not valid_repo_name(name)
    with pytest.raises(BadPayload, match="not a valid repository name"):
        events.parse("github", {"X-GitHub-Event": "push"}, github_push(full_name=name))
    with pytest.raises(BadPayload):
        events.repo_of("github", github_push(full_name=name))


def test_gitlab_allows_subgroups_but_not_traversal():
    assert valid_repo_name("a/b/c/d", max_segments=21)
    with pytest.raises(BadPayload):
        events.repo_of("gitlab", gitlab_push(path="group/../other"))


@pytest.mark.parametrize("ref", ["refs/heads/a..b", "refs/heads/a b", "refs/heads/x~1", "refs/heads/a^",
                                 "refs/heads/a:b", "refs/heads/.hidden", "refs/heads/x.lock", "refs/heads/-x",
                                 "refs/heads/a\x00b", "refs/heads/a\nb", "refs/heads/", "refs/heads/a@{1}",
                                 "refs/heads/a//b"])
def test_refs_git_would_refuse_are_bad_payloads(ref):
    assert not valid_ref(ref)
    with pytest.raises(BadPayload, match="not a valid git ref"):
        events.parse("github", {"X-GitHub-Event": "push"}, github_push(ref=ref))


@pytest.mark.parametrize("provider, body", [
    ("github", lambda ref: github_push(ref=ref)),
    ("gitlab", lambda ref: gitlab_push(ref=ref)),
])
def test_a_branch_name_over_255_bytes_is_refused_without_echoing_it(provider, body):
    """GitLab's limit for branch names; a loose ref is a file, and a file name has 255 bytes."""
    headers = {"X-GitHub-Event": "push"} if provider == "github" else {"X-Gitlab-Event": "Push Hook"}
    assert isinstance(events.parse(provider, headers, body("refs/heads/" + "é" * 127 + "a")), Event)
    for ref in ("refs/heads/" + "é" * 128, "refs/tags/" + "v" * 256, "refs/heads/" + "y" * 100_000):
        assert not valid_ref(ref)
        with pytest.raises(BadPayload, match=r"`ref` is too long: \d+ bytes, a branch or tag name has at most 255")\
                as refused:
            events.parse(provider, headers, body(ref))
        assert len(str(refused.value)) < 200


def test_commit_messages_are_cut_to_64_kib_of_utf8_on_a_character_boundary():
    message = events.parse("github", {"X-GitHub-Event": "push"},
                           github_push(head_commit={"id": SHA, "message": "€" * 40_000})).commit_message
    assert len(message.encode()) <= 64 * 1024 and message == "€" * (64 * 1024 // 3)


@pytest.fixture
def no_process_may_start(monkeypatch):
    """Any attempt to start a process or a shell while parsing fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a process was started: {args!r}")

    for name in ("system", "popen", "execv", "execve", "execvp", "posix_spawn", "posix_spawnp", "fork"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)


def test_the_ref_of_the_issue_is_refused_without_running_anything(tmp_path, monkeypatch, no_process_may_start):
    """`refs/heads/$(touch x)` has a space, which git refuses in a ref: 400, and nothing ran."""
    monkeypatch.chdir(tmp_path)
    for provider, headers in (("github", {"X-GitHub-Event": "push"}), ("gitea", {"X-Gitea-Event": "push"})):
        with pytest.raises(BadPayload, match="not a valid git ref"):
            events.parse(provider, headers, github_push(ref="refs/heads/$(touch x)"))
    with pytest.raises(BadPayload, match="not a valid git ref"):
        events.parse("gitlab", {"X-Gitlab-Event": "Push Hook"}, gitlab_push(ref="refs/heads/$(touch x)"))
    with pytest.raises(BadPayload, match="not a valid git ref"):
        events.parse("generic", {}, generic(ref="refs/heads/$(touch x)"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("provider", ["github", "gitea", "gitlab", "generic"])
def test_shell_metacharacters_in_refs_and_messages_stay_data(provider, tmp_path, monkeypatch, no_process_may_start):
    """A ref git accepts may still hold `$(...)`, backquotes, `;`: it is kept verbatim, as data, and
    nothing runs (the planner and workers never put a ref on a shell command line)."""
    monkeypatch.chdir(tmp_path)
    ref = "refs/heads/$(touch${IFS}x)`touch${IFS}y`;touch${IFS}z|&<>"
    message = "$(touch m) && rm -rf / ; `id`"
    if provider == "gitlab":
        data = json.loads(gitlab_push(ref=ref))
        data["commits"] = [{"id": SHA, "message": message}]
        headers = {"X-Gitlab-Event": "Push Hook"}
    elif provider == "generic":
        data = json.loads(generic(ref=ref, commit_message=message))
        headers = {}
    else:
        data = json.loads(github_push(ref=ref))
        data["head_commit"]["message"] = message
        headers = {"X-GitHub-Event": "push", "X-Gitea-Event": "push"}
    result = events.parse(provider, headers, json.dumps(data).encode())
    assert isinstance(result, Event)
    assert result.ref == ref and result.branch == ref[len("refs/heads/"):] and result.commit_message == message
    context = json.loads(json.dumps(result.to_context()))
    assert context["branch"] == result.run_ref == ref[len("refs/heads/"):]
    assert context["commit_message"] == message
    assert list(tmp_path.iterdir()) == []


# -- from the event to the pipeline's variables ----------------------------------------------------------


def test_a_pull_request_gives_the_merge_request_variables():
    from ci_queue.pipeline.model import MergeRequest, PlanContext
    from ci_queue.pipeline.variables import predefined

    body = json.dumps({
        "action": "synchronize", "number": 12, "before": OLD, "after": SHA, "sender": {"login": "dev"},
        "repository": {"full_name": "octo/hello", "html_url": "https://github.example/octo/hello",
                       "clone_url": "https://github.example/octo/hello.git", "default_branch": "main"},
        "pull_request": {"number": 12, "title": "Fix it", "labels": [{"name": "bug"}],
                         "html_url": "https://github.example/octo/hello/pull/12",
                         "head": {"ref": "fix", "sha": SHA, "repo": {"full_name": "dev/hello",
                                                                     "clone_url": "https://github.example/dev/hello.git"}},
                         "base": {"ref": "main", "sha": "c" * 40, "repo": {"full_name": "octo/hello"}}},
    }).encode()
    event = events.parse("github", {"X-GitHub-Event": "pull_request"}, body)
    assert isinstance(event, Event) and event.is_fork
    assert event.mr_source_clone_url == "https://github.example/dev/hello.git"
    assert event.server_url == "https://github.example"
    context = json.loads(json.dumps(event.to_context()))
    mr = context.pop("merge_request")
    variables = predefined(PlanContext(**context, sha=event.sha, merge_request=MergeRequest(**mr)))
    assert variables["CI_PIPELINE_SOURCE"] == "merge_request_event"
    assert variables["CI_COMMIT_REF_NAME"] == "fix"
    assert variables["CI_COMMIT_SHA"] == SHA and variables["CI_COMMIT_BEFORE_SHA"] == ZERO
    assert variables["CI_MERGE_REQUEST_IID"] == "12"
    assert variables["CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"] == "fix"
    assert variables["CI_MERGE_REQUEST_TARGET_BRANCH_NAME"] == "main"
    assert variables["CI_MERGE_REQUEST_TITLE"] == "Fix it" and variables["CI_MERGE_REQUEST_LABELS"] == "bug"
    assert variables["CI_MERGE_REQUEST_SOURCE_PROJECT_PATH"] == "dev/hello"
    assert variables["CI_MERGE_REQUEST_PROJECT_PATH"] == "octo/hello"
    assert variables["CI_MERGE_REQUEST_DIFF_BASE_SHA"] == "c" * 40


def test_gitea_pull_request_sync_event_name_and_ping():
    body = json.dumps({"action": "synchronized", "number": 3, "repository": {"full_name": "t/w"},
                       "pull_request": {"number": 3, "head": {"ref": "f", "sha": SHA},
                                        "base": {"ref": "main", "sha": OLD}}}).encode()
    result = events.parse("gitea", {"X-Gitea-Event": "pull_request_sync"}, body)
    assert isinstance(result, Event) and result.kind == "merge_request" and result.mr_iid == 3
    assert events.parse("gitea", {"X-Gitea-Event": "ping"}, b'{"repository": {"full_name": "t/w"}}') == Pong(
        "gitea", "t/w", "")


def test_to_dict_is_json():
    result = events.parse("github", {"X-GitHub-Event": "push"}, github_push())
    assert isinstance(result, Event)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["repo"] == "octo/hello" and data["mr_labels"] == []
