"""Trust from the registry: protected branches and tags, forks, secret grants (``ci_queue.trust``),
decided from ``configs/repos.yml`` and real forge payloads."""

from __future__ import annotations

import json

import pytest

from ci_queue import events
from ci_queue.repos import RegistryError, parse_registry
from ci_queue.trust import (
    ENVIRONMENT_OUT_OF_SCOPE,
    FORK,
    NOT_GRANTED,
    REF_NOT_PROTECTED,
    ROUTE_ANY,
    ROUTE_PROTECTED,
    ROUTE_PROTECTED_ONLY,
    Grant,
    RunTrust,
    apply_to_plan,
    ref_is_protected,
    wildcard_match,
)

REGISTRY = """
defaults:
  secrets: [SHARED_TOKEN, {name: FARM_DEPLOY, protected: true}]
repositories:
  - name: ailisp/gcbapp-buildconfig-example      # the target of a real fork pull request fixture
    provider: github
    protected_branches: [main, "release/*"]
    protected_tags: ["v*"]
    secrets:
      - LINT_TOKEN
      - {name: DEPLOY_TOKEN, protected: true, environments: [production, "review/*"]}
      - {name: SHARED_TOKEN, protected: true}      # overrides the default's grant of the same name
  - name: example/example
    provider: gitea
    fork_pull_requests: never
  - name: Codertocat/Hello-World
    provider: github
    fork_pull_requests: run
    protected_workers_only: true
    clone_url: https://git.example/codertocat/hello-world.git
"""


def errors(text: str) -> list[str]:
    with pytest.raises(RegistryError) as info:
        parse_registry(text, "repos.yml")
    return str(info.value).splitlines()


def test_wildcards_are_gitlabs():
    assert wildcard_match("release/*", "release/1.2/hotfix")  # `*` crosses `/`, as GitLab's
    assert wildcard_match("*-stable", "13-stable") and not wildcard_match("*-stable", "13-stable-x")
    assert wildcard_match("main", "main") and not wildcard_match("main", "main2")
    assert wildcard_match("v1.?", "v1.?") and not wildcard_match("v1.?", "v1.2")  # only `*` is special
    assert ref_is_protected("push", "refs/heads/main", branches=["main"], tags=[])
    assert ref_is_protected("tag", "v2", branches=["*"], tags=["v*"])
    assert not ref_is_protected("tag", "main", branches=["main"], tags=[])  # a tag named like a branch
    assert not ref_is_protected("merge_request", "main", branches=["*"], tags=["*"])


def test_trust_keys_defaults_and_merging():
    registry = parse_registry(REGISTRY)
    repo = registry.lookup("github", "ailisp/gcbapp-buildconfig-example")
    assert repo.fork_pull_requests == "approve" and repo.protected_workers_only is False  # the defaults
    assert [g.name for g in repo.secrets] == ["FARM_DEPLOY", "LINT_TOKEN", "DEPLOY_TOKEN", "SHARED_TOKEN"]
    assert repo.secrets[-1] == Grant("SHARED_TOKEN", protected=True)
    assert repo.protects("push", "main", "main") and repo.protects("push", "release/2.0", "main")
    assert repo.protects("tag", "v1.0", "main") and not repo.protects("push", "feature", "main")
    plain = registry.lookup("gitea", "example/example")
    assert plain.protected_branches is None and plain.protected_tags == ()
    assert plain.protects("push", "trunk", "trunk") and not plain.protects("push", "main", "trunk")
    assert not plain.protects("tag", "v1", "trunk")  # tags: none by default
    assert registry.default_secrets == (Grant("SHARED_TOKEN"), Grant("FARM_DEPLOY", protected=True))
    # an API run is a registered repository's only through the registry's own clone URL
    url_repo = registered_by_url(registry, "https://git.example/codertocat/hello-world/")
    assert url_repo is not None and url_repo.protected_workers_only
    assert registered_by_url(registry, "https://git.example/codertocat/hello-world.git.evil") is None
    assert registered_by_url(registry, "https://github.com/ailisp/gcbapp-buildconfig-example.git") is None
    assert registry.unregistered_trust() == RunTrust(grants=registry.default_secrets)


def registered_by_url(registry, url):
    from ci_queue.web.run_source import _registered

    return _registered(registry, "", url)


def test_trust_key_errors_have_positions():
    assert errors("""
defaults:
  secret: [X]
  fork_pull_requests: sometimes
repositories:
  - name: a/b
    provider: github
    fork_pull_requests: aprove
    protected_workers_only: "yes"
    protected_branches: [1]
    secrets:
      - CI_JOB_TOKEN
      - {name: Y, protected: maybe, environment: [x]}
      - {name: Z, environments: []}
      - 9LIVES
      - W
      - W
    protected_tags: v*
""") == [
        "repos.yml:3:3: unknown key `secret` in `defaults`; did you mean `secrets`?",
        "repos.yml:4:23: `fork_pull_requests` must be one of run, approve, never, not 'sometimes'",
        "repos.yml:8:25: `fork_pull_requests` must be one of run, approve, never, not 'aprove' "
        "(did you mean `approve`?)",
        "repos.yml:9:29: `protected_workers_only` must be true or false",
        "repos.yml:10:25: `protected_branches` must be a list of non-empty names or patterns (`*`: any characters)",
        "repos.yml:12:9: secret name 'CI_JOB_TOKEN' is reserved",
        "repos.yml:13:30: `protected` must be true or false",
        "repos.yml:13:37: unknown key `environment` of a secret; did you mean `environments`?",
        "repos.yml:14:33: `environments` must name at least one environment scope",
        "repos.yml:15:9: invalid secret name '9LIVES'",
        "repos.yml:17:9: secret `W` is listed twice",
    ]
    # a single pattern is a list of one
    assert parse_registry("repositories:\n  - {name: a/b, provider: github, protected_tags: 'v*'}\n"
                          ).lookup("github", "a/b").protected_tags == ("v*",)


def test_secret_decisions_say_why():
    grants = (Grant("PLAIN"), Grant("PROD", protected=True, environments=("production", "review/*")))
    trusted = RunTrust(protected=True, registered=True, grants=grants)
    assert trusted.sort_secrets(["PLAIN", "PROD", "PLAIN"], "review/feature-1") == (["PLAIN", "PROD"], [])
    granted, refused = trusted.sort_secrets(["PROD", "NOPE"], "staging", repo="a/b")
    assert granted == []
    assert [(r.name, r.reason) for r in refused] == [("PROD", ENVIRONMENT_OUT_OF_SCOPE), ("NOPE", NOT_GRANTED)]
    assert "scoped to the environments production, review/*; this job has environment `staging`" in refused[0].message
    assert "not granted to a/b" in refused[1].message
    assert trusted.refusal("PROD", None).reason == ENVIRONMENT_OUT_OF_SCOPE  # a scoped grant needs an environment
    unprotected = RunTrust(registered=True, grants=grants)
    assert unprotected.refusal("PROD", "production").reason == REF_NOT_PROTECTED
    assert unprotected.refusal("PLAIN", None) is None
    fork = RunTrust(fork=True, registered=True, grants=grants)
    assert fork.sort_secrets(["PLAIN", "PROD"], "production")[0] == []
    assert {r.reason for r in fork.sort_secrets(["PLAIN", "PROD"], "production")[1]} == {FORK}
    assert (RunTrust().route, unprotected.route, trusted.route) == (ROUTE_ANY, ROUTE_ANY, ROUTE_PROTECTED)
    assert RunTrust(protected=True, registered=True, protected_workers_only=True).route == ROUTE_PROTECTED_ONLY
    assert RunTrust(protected=True, registered=False).route == ROUTE_ANY


def test_the_planner_keeps_only_granted_names(tmp_path):
    from tests.engine.test_store import make_plan

    plan = make_plan(tmp_path, """
deploy: {script: [x], secrets: [PLAIN, PROD], environment: production}
review: {script: [x], secrets: {PROD: {vault: a/b}}, environment: "review/$CI_COMMIT_REF_SLUG"}
""")
    grants = (Grant("PLAIN"), Grant("PROD", protected=True, environments=("production",)))
    apply_to_plan(plan, RunTrust(protected=True, registered=True, grants=grants), "a/b")
    deploy, review = plan.job("deploy"), plan.job("review")
    assert (deploy.secrets, deploy.refused_secrets, deploy.route) == (["PLAIN", "PROD"], [], "protected")
    assert review.secrets == [] and review.refused_secrets[0]["reason"] == ENVIRONMENT_OUT_OF_SCOPE
    assert "this job has environment `review/main`" in review.refused_secrets[0]["message"]
    # the same plan for a fork: nothing granted, the refusals say why; planning again is stable
    apply_to_plan(plan, RunTrust(fork=True, registered=True, grants=grants), "a/b")
    apply_to_plan(plan, RunTrust(fork=True, registered=True, grants=grants), "a/b")
    assert plan.job("deploy").secrets == [] and plan.job("deploy").route == ""
    assert [r["name"] for r in plan.job("deploy").refused_secrets] == ["PLAIN", "PROD"]


def fixture_event(shared: str, provider: str, name: str, header: str):
    body = (shared / "webhooks" / provider / name).read_bytes()
    manifest = json.loads((shared / "webhooks" / provider / "MANIFEST.json").read_text())
    entry = manifest[name] if isinstance(manifest, dict) else next(e for e in manifest if e.get("file") == name)
    event_name = entry.get("event_header") or entry.get("event")
    return events.parse(provider, {header: event_name}, body), events.repo_of(provider, body)


def test_real_fork_pull_requests_get_no_trust(shared_fixtures):
    registry = parse_registry(REGISTRY)
    for provider, name, header in (("github", "pull_request.opened.6.json", "X-GitHub-Event"),
                                   ("github", "pull_request.synchronize.3.json", "X-GitHub-Event"),
                                   ("gitea", "pull_request.opened.2.json", "X-Gitea-Event")):
        event, repo_name = fixture_event(shared_fixtures, provider, name, header)
        assert event.kind == "merge_request" and event.is_fork, name
        repo = registry.lookup(provider, repo_name)
        arguments = repo.run_arguments(event)
        trust = arguments["trust"]
        assert (trust.fork, trust.protected, trust.registered, trust.route) == (True, False, True, ""), name
        if provider == "github":
            assert repo.fork_waits(event) and repo.fork_refused(event) is None
        else:  # example/example: fork_pull_requests: never
            assert not repo.fork_waits(event) and "fork_pull_requests: never" in repo.fork_refused(event)
    # a pull request inside one repository is no fork, and never protected either (GitLab's MR refs)
    event, repo_name = fixture_event(shared_fixtures, "github", "pull_request.opened.1.json", "X-GitHub-Event")
    repo = registry.lookup("github", repo_name)
    assert not event.is_fork and not repo.fork_waits(event) and repo.fork_refused(event) is None
    trust = repo.run_arguments(event)["trust"]
    assert (trust.fork, trust.protected, trust.protected_workers_only) == (False, False, True)


def test_a_pull_request_whose_head_repository_is_gone_is_a_forks(shared_fixtures):
    """GitHub sends `head.repo: null` once the fork is deleted: nothing says it was this repository."""
    data = json.loads((shared_fixtures / "webhooks" / "github" / "pull_request.opened.1.json").read_bytes())
    data["pull_request"]["head"]["repo"] = None
    event = events.parse("github", {"X-GitHub-Event": "pull_request"}, json.dumps(data).encode())
    assert event.is_fork


def test_gitlab_project_ids_show_a_fork_the_names_hide():
    body = {"object_kind": "merge_request", "event_type": "merge_request",
            "project": {"path_with_namespace": "g/p", "git_http_url": "https://gitlab.example/g/p.git",
                        "web_url": "https://gitlab.example/g/p"},
            "object_attributes": {"iid": 3, "action": "open", "source_branch": "f", "target_branch": "main",
                                  "source_project_id": 7, "target_project_id": 1,
                                  "last_commit": {"id": "a" * 40, "message": "m"}}}
    event = events.parse("gitlab", {"X-Gitlab-Event": "Merge Request Hook"}, json.dumps(body).encode())
    assert event.is_fork
    body["object_attributes"]["source_project_id"] = 1
    assert not events.parse("gitlab", {"X-Gitlab-Event": "Merge Request Hook"}, json.dumps(body).encode()).is_fork


def test_push_and_tag_trust_from_the_payload():
    registry = parse_registry(REGISTRY)
    repo = registry.lookup("github", "ailisp/gcbapp-buildconfig-example")

    def push(ref: str):
        body = json.dumps({"ref": ref, "before": "b" * 40, "after": "a" * 40,
                           "repository": {"full_name": repo.name, "default_branch": "main",
                                          "clone_url": "https://github.com/x/y.git"}}).encode()
        return repo.run_arguments(events.parse("github", {"X-GitHub-Event": "push"}, body))["trust"]

    assert push("refs/heads/main").protected and push("refs/heads/release/1").protected
    assert push("refs/tags/v1.0").protected and not push("refs/tags/nightly").protected
    assert not push("refs/heads/feature").protected
    assert push("refs/heads/main").route == ROUTE_PROTECTED


def test_the_planner_sees_the_runs_protection_not_a_variables():
    from pathlib import Path

    from ci_queue.pipeline.variables import predefined
    from ci_queue.store import RunRecord
    from workers.tasks import plan_context

    def ctx(protected: bool, **variables: str):
        run = RunRecord(id="r", status="queued", repo="o/r", ref="feature", sha="a" * 40, event="push", created_at="",
                        context={"kind": "push", "branch": "feature", "default_branch": "feature"},
                        variables=variables, protected=protected)
        return plan_context(run, "a" * 40, Path("/nonexistent"))

    forged = ctx(False, CI_COMMIT_REF_PROTECTED="true", OTHER="kept")  # an older run's trigger variable
    assert "CI_COMMIT_REF_PROTECTED" not in forged.variables and forged.variables["OTHER"] == "kept"
    # the context's default_branch is the branch, and still the run's fact decides
    assert predefined(forged)["CI_COMMIT_REF_PROTECTED"] == "false"
    assert predefined(ctx(True))["CI_COMMIT_REF_PROTECTED"] == "true"


def test_the_status_table_says_a_run_waits_for_approval():
    from ci_queue.cli import run_table

    waiting = {"id": "abc", "status": "waiting_approval", "repo": "o/r", "ref": "f", "sha": "", "event":
               "merge_request", "created_at": "2026-01-01T00:00:00.000Z", "fork": True, "protected": False,
               "approved_by": None, "jobs": []}
    table = run_table(waiting)
    assert "a merge request from a fork: no secrets" in table and "`ci-queue approve abc`" in table
    approved = run_table({**waiting, "status": "queued", "approved_by": "ops", "approved_at": "2026-01-01T00:01Z"})
    assert "approved by ops" in approved and "yet (planning)" in approved
