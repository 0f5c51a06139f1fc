"""Includes that leave the repository (issue #13): `include: project:` through a project reader
(here: `--project-dir` directories), `include: remote:` through ci_queue.remote_includes against a
real HTTP server on 127.0.0.1 started by the test, and GitLab's limits (cycles, 150 files)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from ci_queue.clone_policy import ClonePolicy
from ci_queue.pipeline.errors import PipelineError
from ci_queue.pipeline.model import PlanContext
from ci_queue.pipeline.planner import plan_file, validate_file
from ci_queue.pipeline.sources import IncludeSources, directory_projects
from ci_queue.remote_includes import RemoteIncludes
from tests.pipeline.conftest import serve, write
from tests.secure_redis import make_tls_files

LOOPBACK = ClonePolicy(allow_networks=(ipaddress.ip_network("127.0.0.1/32"),))  # as CIQ_CLONE_ALLOW_HOSTS=127.0.0.1


def plan(repo: Path, text: str, sources: IncludeSources, **ctx_fields):
    path = write(repo, ".gitlab-ci.yml", text)
    ctx = PlanContext(**{"kind": "push", "branch": "main", **ctx_fields})
    return plan_file(path, ctx, repo, display_name=".gitlab-ci.yml", sources=sources)


def plan_errors(repo: Path, text: str, sources: IncludeSources) -> list[tuple[str, str | None]]:
    with pytest.raises(PipelineError) as info:
        plan(repo, text, sources)
    return [(d.format(), d.hint) for d in info.value.errors]


# -- include: project ---------------------------------------------------------------------------------


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """Another project's tree: its files include each other with `local:`."""
    root = tmp_path / "templates"
    write(root, "ci/build.yml", "include: {local: ci/common.yml}\nbuild: {extends: .common, script: make}\n")
    write(root, "ci/common.yml", ".common: {tags: [from-templates]}\n")
    write(root, "ci/loop.yml", "include: {local: ci/loop2.yml}\n")
    write(root, "ci/loop2.yml", "include: {local: /ci/loop.yml}\n")
    return root


def test_a_project_file_is_read_and_its_local_includes_are_files_of_that_project(repo, templates):
    write(repo, "ci/common.yml", ".common: {tags: [from-main-repo]}\n")  # must not be the one used
    result = plan(repo, "include:\n  - project: group/templates\n    file: /ci/build.yml\n",
                  IncludeSources(project=directory_projects({"group/templates": templates})))
    assert [(j.name, j.tags, j.script) for j in result.jobs] == [("build", ["from-templates"], ["make"])]


def test_the_ref_and_every_file_of_a_project_include_go_to_the_reader(repo):
    calls: list[tuple[str, str | None, str]] = []

    def reader(project: str, ref: str | None, path: str) -> bytes:
        calls.append((project, ref, path))
        return f"{path.split('.')[0]}: {{script: x}}\n".encode()

    text = "include:\n  - {project: g/p, ref: v1.2, file: [a.yml, b.yml]}\n  - {project: g/p, file: c.yml}\n"
    result = plan(repo, text, IncludeSources(project=reader))
    assert calls == [("g/p", "v1.2", "a.yml"), ("g/p", "v1.2", "b.yml"), ("g/p", None, "c.yml")]
    assert [j.name for j in result.jobs] == ["a", "b", "c"]


def test_an_unknown_project_is_an_error_naming_it_at_the_include(repo, templates):
    sources = IncludeSources(project=directory_projects({"group/templates": templates}))
    assert plan_errors(repo, "job: {script: x}\ninclude:\n  - {project: group/other, file: ci.yml}\n", sources) == [
        (".gitlab-ci.yml:3:5: project 'group/other' is not one of the --project-dir projects (group/templates)",
         "add `--project-dir group/other=PATH`")]


def test_a_cycle_through_project_files_is_an_error(repo, templates):
    sources = IncludeSources(project=directory_projects({"group/templates": templates}))
    [(message, _)] = plan_errors(repo, "include: {project: group/templates, file: ci/loop.yml}\n", sources)
    assert message == ("group/templates:ci/loop2.yml:1:10: include loop: .gitlab-ci.yml -> "
                       "group/templates:ci/loop.yml -> group/templates:ci/loop2.yml -> group/templates:ci/loop.yml")


def test_more_than_150_included_files_is_gitlabs_limit(repo):
    for i in range(151):
        write(repo, f"parts/p{i:03}.yml", f"job{i}: {{script: x}}\n")
    with pytest.raises(PipelineError) as info:
        plan(repo, "include: 'parts/*.yml'\n", IncludeSources())
    assert [d.format() for d in info.value.errors] == [
        ".gitlab-ci.yml:1:10: more than 150 included files (GitLab's limit)"]
    (repo / "parts/p150.yml").unlink()
    assert len(plan(repo, "include: 'parts/*.yml'\n", IncludeSources()).jobs) == 150


def test_validate_reads_project_dirs_too(repo, templates):
    path = write(repo, ".gitlab-ci.yml", "include: {project: group/templates, file: ci/build.yml}\n")
    sources = IncludeSources(project=directory_projects({"group/templates": templates}))
    assert validate_file(path, repo, ".gitlab-ci.yml", sources=sources) == []
    assert [d.message for d in validate_file(path, repo, ".gitlab-ci.yml")] == [
        "cannot include 'ci/build.yml' of project 'group/templates': no other repository can be read here"]


# -- include: remote ----------------------------------------------------------------------------------


def remote(**fields) -> RemoteIncludes:
    return RemoteIncludes(**{"allow_hosts": ("127.0.0.1",), "policy": LOOPBACK, "timeout": 5, **fields})


def test_a_remote_file_is_fetched_and_merged(repo, served):
    served.pages["/ci/lint.yml"] = (200, b"lint: {script: ruff}\n", {})
    result = plan(repo, f"include:\n  - remote: {served.url('/ci/lint.yml')}\njob: {{script: x}}\n",
                  IncludeSources(remote=remote()))
    assert [j.name for j in result.jobs] == ["lint", "job"]
    assert served.requests == [("/ci/lint.yml", f"127.0.0.1:{served.port}")]


def test_a_remote_file_is_cached_by_url_for_a_short_time(repo, served):
    served.pages["/cached.yml"] = (200, b"a: {script: x}\n", {})
    now = [1000.0]
    reader = remote(cache_seconds=60, clock=lambda: now[0])
    url = served.url("/cached.yml")
    assert reader(url) == reader(url) == b"a: {script: x}\n"
    assert len(served.requests) == 1
    now[0] += 61
    assert reader(url) == b"a: {script: x}\n"
    assert len(served.requests) == 2


def test_without_an_allow_list_remote_includes_are_refused_saying_how_to_allow_them(repo, served):
    url = served.url("/x.yml")
    assert plan_errors(repo, f"include: {url}\n", IncludeSources(remote=remote(allow_hosts=()))) == [
        (f".gitlab-ci.yml:1:10: remote includes are not allowed here ({url!r})",
         "list the host in CIQ_INCLUDE_REMOTE_HOSTS (comma list of names, `*.` globs, addresses) where pipelines "
         "are planned (the workers; the shell running `ci-queue plan`)")]
    assert served.requests == []


def test_credentials_in_a_remote_url_are_refused_without_showing_them():
    refused = r"a remote include URL with credentials is refused \(host ci.example\)"
    with pytest.raises(Exception, match=refused) as info:
        remote(allow_hosts=("ci.example",))("https://user:s3cret@ci.example/x.yml")
    assert "s3cret" not in str(info.value)


def test_a_host_off_the_allow_list_is_refused(served):
    with pytest.raises(Exception, match=r"remote include host 127.0.0.1 is not in CIQ_INCLUDE_REMOTE_HOSTS "
                                        r"\(ci.example.com\)"):
        remote(allow_hosts=("ci.example.com",))(served.url("/x.yml"))
    assert served.requests == []


@pytest.mark.parametrize(("scheme", "reason"), [
    ("http", "plain http:// is refused for 127.0.0.1"),
    ("https", "https clone URL host 127.0.0.1 is not a public address (loopback)"),
])
def test_the_clone_policys_address_rule_applies(served, scheme, reason):
    """A listed host is still held to the private-address rule unless CIQ_CLONE_ALLOW_HOSTS admits it."""
    with pytest.raises(Exception, match=re.escape("refused: " + reason)):
        remote(policy=ClonePolicy())(f"{scheme}://127.0.0.1:{served.port}/x.yml")
    assert served.requests == []


def test_a_name_is_checked_at_the_address_it_resolves_to_and_fetched_from_that_address(served):
    served.pages["/n.yml"] = (200, b"n: {script: x}\n", {})
    resolved = ClonePolicy(resolver=lambda host, port: ["127.0.0.1"])
    with pytest.raises(Exception, match=r"ci.internal \(127.0.0.1\) .*loopback|plain http:// is refused"):
        remote(allow_hosts=("*.internal",), policy=resolved)(served.url("/n.yml", "ci.internal"))
    admitted = ClonePolicy(resolver=lambda host, port: ["127.0.0.1"],
                           allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    assert remote(allow_hosts=("*.internal",), policy=admitted)(served.url("/n.yml", "ci.internal")) == \
        b"n: {script: x}\n"
    assert served.requests == [("/n.yml", f"ci.internal:{served.port}")]  # no DNS: the checked address


@pytest.mark.parametrize(("page", "message"), [
    ((404, b"no", {}), "HTTP 404 Not Found"),
    ((302, b"", {"Location": "http://127.0.0.1:1/elsewhere.yml"}),
     "HTTP 302 Found (to http://127.0.0.1:1/elsewhere.yml)"),
    ((200, b"x" * 2048, {}), "is larger than 1024 bytes"),
])
def test_failures_of_the_fetch_are_errors_at_the_include(repo, served, page, message):
    served.pages["/f.yml"] = page
    [(text, _)] = plan_errors(repo, f"include:\n  - remote: {served.url('/f.yml')}\n",
                              IncludeSources(remote=remote(max_bytes=1024)))
    assert text.startswith(".gitlab-ci.yml:2:5: remote include ") and message in text


def test_a_server_that_does_not_answer_times_out(repo, served):
    [(text, _)] = plan_errors(repo, f"include: {served.url('/slow.yml')}\n",
                              IncludeSources(remote=remote(timeout=0.5)))
    assert text.endswith("no answer within 0.5s")


def test_https_is_verified_against_the_name_and_the_trusted_authorities(tmp_path, monkeypatch):
    """A server whose certificate no trusted authority signed is refused; trusting its authority
    (as a host's CA bundle would) lets the same fetch through, TLS checked for 127.0.0.1."""
    tls = make_tls_files(tmp_path / "tls")
    with serve((tls.server_cert, tls.server_key)) as https:
        https.pages["/tls.yml"] = (200, b"tls: {script: x}\n", {})
        with pytest.raises(Exception, match="certificate verify failed"):
            remote(cache_seconds=0)(https.url("/tls.yml"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca))
        assert remote(cache_seconds=0)(https.url("/tls.yml")) == b"tls: {script: x}\n"


def test_errors_in_a_remote_file_are_placed_in_it(repo, served):
    served.pages["/bad.yml"] = (200, b"job:\n  script: x\n  stage: nope\n", {})
    url = served.url("/bad.yml")
    [(text, _)] = plan_errors(repo, f"include: {url}\n", IncludeSources(remote=remote()))
    assert text.startswith(f"{url}:3:10: ")
