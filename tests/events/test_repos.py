"""The repository registry: defaults, lookups, secrets from the environment, errors with positions."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_queue.repos import (
    DEFAULT_SECRET_ENV,
    DEFAULT_STATUS_TOKEN_ENV,
    Registry,
    RegistryError,
    load_registry,
    parse_registry,
)
from ci_queue.trust import RunTrust

REPO_ROOT = Path(__file__).resolve().parents[2]


def errors(text: str) -> list[str]:
    with pytest.raises(RegistryError) as info:
        parse_registry(text, "repos.yml")
    return str(info.value).splitlines()


def test_the_example_file_is_valid():
    registry = load_registry(REPO_ROOT / "configs" / "repos.yml", environ={})
    names = {(r.provider, r.name) for r in registry}
    assert names >= {("github", "octo-org/hello"), ("gitlab", "platform/backend/api")}


def test_defaults_per_provider():
    registry = parse_registry("""
repositories:
  - {name: a/b, provider: github}
  - {name: g/sub/p, provider: gitlab}
  - {name: t/w, provider: gitea}
  - {name: x, provider: generic}
""")
    for repo in registry:
        assert repo.secret_env == DEFAULT_SECRET_ENV[repo.provider]
        assert repo.status_token_env == DEFAULT_STATUS_TOKEN_ENV[repo.provider]
        assert repo.notify == "on_failure" and repo.pipeline is None and repo.clone_url is None
    assert registry.lookup("gitlab", "g/sub/p").status_token_env == "CIQ_GITLAB_API_TOKEN"
    assert registry.lookup("generic", "x").status_token() is None


def test_lookup_is_per_provider_and_case_insensitive():
    registry = parse_registry("repositories:\n  - name: Octo-Org/Hello\n    provider: github\n")
    assert registry.lookup("github", "octo-org/hello").name == "Octo-Org/Hello"
    assert registry.lookup("github", "OCTO-ORG/HELLO") is not None
    assert registry.lookup("gitea", "octo-org/hello") is None
    assert registry.lookup("github", "octo-org/other") is None
    assert registry.lookup("github", None) is None


def test_secrets_are_read_from_the_environment_when_asked():
    registry = parse_registry("""
repositories:
  - name: a/b
    provider: github
    secret_env: HOOK_SECRET_AB
    status_token_env: STATUS_AB
    clone_url: file:///srv/git/ab.git
    pipeline: ci/pipeline.yml
    notify: on_change
""")
    repo = registry.lookup("github", "a/b")
    assert repo.secret({}) is None and repo.secret({"HOOK_SECRET_AB": ""}) is None  # none: refuse
    assert repo.secret({"HOOK_SECRET_AB": "s1"}) == "s1"
    assert repo.status_token({"STATUS_AB": "t"}) == "t"
    assert repo.clone_url_for("https://github.com/a/b.git") == "file:///srv/git/ab.git"
    assert (repo.pipeline, repo.notify) == ("ci/pipeline.yml", "on_change")


def test_errors_have_positions_and_hints():
    lines = errors("""repositories:
  - name: a/../b
    provider: githubb
    notfy: always
  - name: x/y
    provider: gitea
    notify: sometimes
    secret_env: "abc def"
  - name: X/Y
    provider: gitea
  - name: x/y
    provider: gitea
  - name: "a/$(touch x)"
    provider: github
  - name: ok/ok
    provider: github
    pipeline: ../../etc/passwd
  - name: ok/two
    provider: github
    clone_url: "--upload-pack=touch /tmp/x"
  - provider: github
  - just-a-string
repos: 1
""")
    assert lines == [
        "repos.yml:2:11: invalid repository name 'a/../b': expected group/.../project, each part made of letters, "
        "digits, `.`, `_`, `-`, not starting with `-`, never `.` or `..`",
        "repos.yml:3:15: unknown provider `githubb`; one of github, gitlab, gitea, generic (did you mean `github`?)",
        "repos.yml:4:5: unknown key `notfy`; did you mean `notify`?",
        "repos.yml:7:13: `notify` must be one of always, on_failure, on_change, never, not 'sometimes'",
        "repos.yml:8:17: `secret_env` must name an environment variable, not 'abc def'",
        "repos.yml:11:11: gitea repository `x/y` is listed twice (first at line 9)",
        "repos.yml:13:11: invalid repository name 'a/$(touch x)': expected owner/repo, each part made of letters, "
        "digits, `.`, `_`, `-`, not starting with `-`, never `.` or `..`",
        "repos.yml:17:15: invalid pipeline path '../../etc/passwd'",
        "repos.yml:20:16: invalid clone_url '--upload-pack=touch /tmp/x'",
        "repos.yml:21:5: `name` is required",
        "repos.yml:22:5: each repository must be a mapping with at least `name` and `provider`",
        "repos.yml:23:1: unknown key `repos`",
    ]


@pytest.mark.parametrize("name", ["..", "a/..", "../a", "a/./b", "-a/b", "a;b/c", "a/b c", "a/`id`", "a|b/c",
                                  "a/b\\c", "/a/b", "a//b"])
def test_hostile_names_are_refused(name):
    lines = errors(f"repositories:\n  - name: '{name}'\n    provider: gitlab\n")
    assert lines[0].startswith("repos.yml:2:11: invalid repository name")


@pytest.mark.parametrize("text, message", [
    ("- a\n", "repos.yml:1:1: the file must be a mapping with a `repositories:` list"),
    ("repositories: 5\n", "repos.yml:1:15: `repositories` must be a list of repositories"),
    ("repositories:\n  - name: [a]\n    provider: github\n", "repos.yml:2:11: `name` must be a non-empty string"),
    ("repositories:\n  - name: a/b\n    provider: github\n    secret_env: 12\n",
     "repos.yml:4:17: `secret_env` must be a non-empty string"),
    ("repositories: [\n", "repos.yml:2:1"),
    ("repositories:\n  - name: a/b\n    provider: github\n    default_branch: 'a..b'\n",
     "repos.yml:4:21: invalid branch name 'a..b'"),
    ("repositories:\n  - name: a/b\n    provider: !!python/object:os.system x\n", "repos.yml:3:15: unknown tag"),
])
def test_shapes(text, message):
    assert errors(text)[0].startswith(message)


def test_empty_file_and_missing_default(tmp_path, monkeypatch):
    assert len(parse_registry("")) == 0
    monkeypatch.chdir(tmp_path)
    assert load_registry(environ={}) == Registry(file="configs/repos.yml")
    with pytest.raises(RegistryError, match="cannot read"):
        load_registry(environ={"CIQ_REPOS_FILE": str(tmp_path / "missing.yml")})
    path = tmp_path / "r.yml"
    path.write_text("repositories:\n  - {name: a/b, provider: gitea}\n")
    assert load_registry(environ={"CIQ_REPOS_FILE": str(path)}).lookup("gitea", "A/B") is not None
    path.write_text("repositories:\n  - {name: a/b, provider: gitea, bad: 1}\n")
    with pytest.raises(RegistryError, match=r"r\.yml:2:34: unknown key `bad`"):
        load_registry(path)


def test_run_arguments_for_trigger_run():
    import inspect
    import json

    from ci_queue import events
    from ci_queue.dispatch import trigger_run
    from ci_queue.priority import Scheduling

    registry = parse_registry("""
repositories:
  - {name: Octo/Hello, provider: github, clone_url: "file:///srv/git/hello.git", pipeline: ci.yml}
  - {name: octo/other, provider: github, default_branch: trunk, status_api_url: "https://ghe.example/api/v3"}
""")
    body = json.dumps({"ref": "refs/tags/v1", "before": "0" * 40, "after": "a" * 40,
                       "repository": {"full_name": "octo/hello", "clone_url": "https://github.com/octo/hello.git"}})
    event = events.parse("github", {"X-GitHub-Event": "push"}, body.encode())
    repo = registry.lookup("github", events.repo_of("github", body.encode()))
    arguments = repo.run_arguments(event, default_branch="main")
    assert arguments == {
        "repo": "Octo/Hello", "ref": "v1", "sha": "a" * 40, "event": "tag", "clone_url": "file:///srv/git/hello.git",
        "context": {"kind": "tag", "branch": None, "tag": "v1", "default_branch": "main", "before_sha": "0" * 40,
                    "project_path": "octo/hello", "commit_message": "", "pipeline": "ci.yml",
                    "provider": "github", "notify": "on_failure", "status_token_env": "CIQ_GITHUB_TOKEN"},
        "trust": RunTrust(protected=False, fork=False, registered=True),  # a tag; no protected_tags
        "scheduling": Scheduling()}
    assert set(arguments) <= set(inspect.signature(trigger_run).parameters)
    other = registry.lookup("github", "octo/other")
    assert other.run_arguments(event)["clone_url"] == "https://github.com/octo/hello.git"
    assert other.run_arguments(event)["context"]["default_branch"] == "trunk"
    assert other.run_arguments(event)["context"]["status_api_url"] == "https://ghe.example/api/v3"
    with pytest.raises(RegistryError, match="invalid status_api_url"):
        parse_registry("repositories:\n  - {name: a/b, provider: github, status_api_url: 'file:///x'}\n")


def test_priorities_and_limits_of_repositories_with_their_defaults():
    from ci_queue.priority import Scheduling

    registry = parse_registry("""
defaults: {priority: 1, max_concurrent_jobs: 8}
repositories:
  - {name: o/plain, provider: github}
  - {name: o/release, provider: github, priority: 5, tag_priority: 50, max_concurrent_jobs: 0}
""")
    plain, release = registry.lookup("github", "o/plain"), registry.lookup("github", "o/release")
    assert plain.scheduling("push") == plain.scheduling("tag") == Scheduling(priority=1, max_jobs=8)
    assert release.scheduling("push") == Scheduling(priority=5, max_jobs=0)
    assert release.scheduling("tag") == Scheduling(priority=50, max_jobs=0)


def test_bad_priorities_and_limits_are_reported_at_their_positions():
    with pytest.raises(RegistryError) as caught:
        parse_registry("""repositories:
  - name: o/a
    provider: github
    priority: high
    tag_priority: 5000
    max_concurrent_jobs: -1
""")
    lines = str(caught.value).splitlines()
    assert any(line.startswith("repos.yml:4:15: `priority` must be a whole number") for line in lines), lines
    assert any(line.startswith("repos.yml:5:19: `tag_priority` must be a whole number") for line in lines), lines
    assert any(line.startswith("repos.yml:6:26: `max_concurrent_jobs` must be") for line in lines), lines
