"""`include: project:` on a worker (workers/project_files.py): files of registered repositories
read from the host's git mirror cache with `git cat-file`, at a branch, a tag or a commit; real
git repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ci_queue.pipeline.sources import IncludeSourceError
from ci_queue.repos import parse_registry
from ci_queue.settings import Settings
from tests.engine.conftest import make_repo
from workers.project_files import ProjectFiles, include_sources


@pytest.fixture
def templates(tmp_path: Path) -> tuple[Path, str, str]:
    """A repository with `ci.yml` at v1 (tagged) and changed on `main` since; (path, v1 sha, main sha)."""
    repo = tmp_path / "templates"
    first = make_repo(repo, {"ci.yml": "job: {script: v1}\n"})
    subprocess.run(["git", "-C", str(repo), "tag", "v1"], check=True)
    second = make_repo(repo, {"ci.yml": "job: {script: v2}\n", "other/x.yml": "x: {script: x}\n"})
    return repo, first, second


def reader(tmp_path: Path, repo: Path, default_branch: str = "") -> ProjectFiles:
    extra = f"    default_branch: {default_branch}\n" if default_branch else ""
    registry = parse_registry(f"repositories:\n  - name: Group/Templates\n    provider: gitlab\n"
                              f"    clone_url: file://{repo}\n    notify: never\n{extra}")
    return ProjectFiles(registry, Settings(), cache_dir=tmp_path / "git-cache")


def test_a_file_is_read_at_the_default_branch_a_tag_or_a_commit(tmp_path, templates):
    repo, first, second = templates
    files = reader(tmp_path, repo)
    assert files("group/templates", None, "ci.yml") == b"job: {script: v2}\n"  # names match as GitLab's: any case
    assert files("Group/Templates", "v1", "ci.yml") == b"job: {script: v1}\n"
    assert files("group/templates", first, "ci.yml") == b"job: {script: v1}\n"
    assert files("group/templates", second, "other/x.yml") == b"x: {script: x}\n"
    assert list((tmp_path / "git-cache").glob("*.git")), "read through the mirror cache"


def test_what_cannot_be_read_is_an_error_for_the_user(tmp_path, templates):
    repo, first, _ = templates
    files = reader(tmp_path, repo)
    with pytest.raises(IncludeSourceError, match=r"project 'group/other' is not a registered repository"):
        files("group/other", None, "ci.yml")
    with pytest.raises(IncludeSourceError, match=r"file 'other/x.yml' does not exist at " + first[:12]):
        files("group/templates", first, "other/x.yml")
    with pytest.raises(IncludeSourceError, match=r"project Group/Templates at nope: ref 'nope' not found"):
        files("group/templates", "nope", "ci.yml")
    with pytest.raises(IncludeSourceError, match=r"project Group/Templates at main: cannot reach .* does not appear "
                                                 r"to be a git repository"):
        reader(tmp_path, repo / "missing")("group/templates", None, "ci.yml")


def test_the_default_ref_is_the_registrys_default_branch(tmp_path, templates):
    repo, _, _ = templates
    subprocess.run(["git", "-C", str(repo), "branch", "stable", "v1"], check=True)
    assert reader(tmp_path, repo, default_branch="stable")("group/templates", None, "ci.yml") == b"job: {script: v1}\n"


def test_a_registry_that_cannot_be_read_is_said_at_the_include(tmp_path):
    bad = tmp_path / "repos.yml"
    bad.write_text("repositories: 3\n")
    sources = include_sources(Settings(repos_file=str(bad)))
    with pytest.raises(IncludeSourceError, match="the repository registry cannot be read"):
        sources.project("group/x", None, "ci.yml")
