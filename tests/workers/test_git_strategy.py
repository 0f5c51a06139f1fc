"""GitLab's GIT_STRATEGY, GIT_CLEAN_FLAGS, GIT_CHECKOUT, GIT_DEPTH and GIT_SUBMODULE_STRATEGY, with
real git repositories and the worker's reused project directories (``Workspace(reuse=...)``); and
the planner reading its pipeline file from the mirror (``workers.planning.pipeline_alone``)."""
# ruff: noqa: F811  (the fixtures `origin` and `git_env` are test_checkout's, imported)

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ci_queue.clone_policy import ClonePolicy
from tests.workers.test_checkout import Origin, assert_clean_detached, git, git_env, origin  # noqa: F401  (fixtures)
from workers.checkout import CheckoutError, checkout
from workers.git_options import GitOptions
from workers.planning import pipeline_alone
from workers.workspace import POOL_SIZE, Workspace, pool_root


@contextlib.contextmanager
def job(origin: Origin, sha: str, tmp_path: Path, variables: dict[str, str] | None = None,
        key: str = "repo-unprotected") -> Iterator[Path]:
    """One job's project directory on a host whose workspaces and git cache live in tmp_path, as
    ``workers.tasks`` prepares it: the options from the job's variables, a reused directory when
    they say so."""
    options = GitOptions.from_variables(variables or {})
    with Workspace("run", "job", 1, root=tmp_path / "ws", keep=False,
                   reuse=key if options.reuses else None) as workspace:
        checkout(origin.url, sha, workspace.builds_dir, cache_dir=tmp_path / "cache", env=origin.env,
                 options=options)
        yield workspace.builds_dir


def test_the_variables_have_gitlabs_defaults_and_refuse_what_gitlab_would_not() -> None:
    assert GitOptions.from_variables({}) == GitOptions(strategy="fetch", checkout=True, clean_flags=("-ffdx",),
                                                       depth=0, submodules="none")
    assert GitOptions.from_variables({"GIT_STRATEGY": "clone", "GIT_CHECKOUT": "false", "GIT_DEPTH": "3",
                                      "GIT_CLEAN_FLAGS": "-ffdx -e keep/", "GIT_SUBMODULE_STRATEGY": "recursive"}) \
        == GitOptions(strategy="clone", checkout=False, clean_flags=("-ffdx", "-e", "keep/"), depth=3,
                      submodules="recursive")
    assert GitOptions.from_variables({"GIT_CLEAN_FLAGS": "none"}).clean_flags == ()
    for name, value in (("GIT_STRATEGY", "rsync"), ("GIT_DEPTH", "-1"), ("GIT_DEPTH", "ten"),
                        ("GIT_CHECKOUT", "maybe"), ("GIT_SUBMODULE_STRATEGY", "all")):
        with pytest.raises(ValueError, match=name):
            GitOptions.from_variables({name: value})


def test_fetch_reuses_the_directory_and_leaves_nothing_of_the_earlier_job(origin: Origin, tmp_path: Path) -> None:
    first = origin.commit({"a.txt": "one\n", ".gitignore": "ignored/\n"})
    with job(origin, first, tmp_path) as build:
        inode = os.stat(build / ".git").st_ino
        (build / "a.txt").write_text("changed by the job\n")
        (build / "left.txt").write_text("untracked\n")
        (build / "ignored").mkdir()
        (build / "ignored" / "build.o").write_text("ignored\n")
        git("branch", "job-branch", cwd=build, env=origin.env)
        git("config", "core.fsmonitor", "touch /tmp/should-never-run", cwd=build, env=origin.env)
        (build / ".git" / "hooks").mkdir(exist_ok=True)
        (build / ".git" / "hooks" / "post-checkout").write_text("#!/bin/sh\ntouch hooked\n")
        (build / ".git" / "hooks" / "post-checkout").chmod(0o755)
    second = origin.commit({"b.txt": "two\n"})
    with job(origin, second, tmp_path) as build:
        assert os.stat(build / ".git").st_ino == inode, "the same project directory, reused"
        assert_clean_detached(build, second, origin.env)
        assert (build / "a.txt").read_text() == "one\n"
        assert not any((build / name).exists() for name in ("left.txt", "ignored", "hooked"))
        assert "core.fsmonitor" not in (build / ".git" / "config").read_text()
        assert git("for-each-ref", "--format=%(refname)", "refs/heads/", cwd=build, env=origin.env) == ""
        assert git("rev-parse", "origin/main", cwd=build, env=origin.env) == second  # refs as a clone has them
    with job(origin, first, tmp_path) as build:  # an older commit, already in the reused repository
        assert_clean_detached(build, first, origin.env)
        assert not (build / "b.txt").exists()


def test_a_forged_index_does_not_keep_a_changed_file(origin: Origin, tmp_path: Path) -> None:
    """The job changes tracked files and tells the index not to look at them (assume-unchanged,
    skip-worktree): the next job must still get the commit's content."""
    sha = origin.commit({"a.txt": "original\n", "b.txt": "original\n"})
    with job(origin, sha, tmp_path) as build:
        for name, flag in (("a.txt", "--assume-unchanged"), ("b.txt", "--skip-worktree")):
            (build / name).write_text("FORGED\n")
            git("update-index", flag, name, cwd=build, env=origin.env)
        assert git("status", "--porcelain", cwd=build, env=origin.env) == "", "git no longer sees the change"
    with job(origin, sha, tmp_path) as build:
        assert (build / "a.txt").read_text() == (build / "b.txt").read_text() == "original\n"


def test_a_symlink_left_in_git_never_sends_the_workers_writes_elsewhere(origin: Origin, tmp_path: Path) -> None:
    """A job points .git/objects/pack at another directory; the next job needs a new commit
    (a fetch): git, run as the worker, must not write the pack there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = origin.commit({"a.txt": "one\n"})
    with job(origin, first, tmp_path) as build:
        pack = build / ".git" / "objects" / "pack"
        for entry in pack.iterdir():
            entry.rename(elsewhere / entry.name)
        pack.rmdir()
        pack.symlink_to(elsewhere)
        before = sorted(p.name for p in elsewhere.iterdir())
    second = origin.commit({"b.txt": "two\n"})
    with job(origin, second, tmp_path) as build:
        assert_clean_detached(build, second, origin.env)
        assert not (build / ".git" / "objects" / "pack").is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_clean_flags_decide_what_stays(origin: Origin, tmp_path: Path) -> None:
    sha = origin.commit({"a.txt": "one\n", ".gitignore": "cache/\n"})
    with job(origin, sha, tmp_path) as build:
        (build / "cache").mkdir()
        (build / "cache" / "dep").write_text("kept by -ffd\n")
        (build / "stray.txt").write_text("x\n")
    with job(origin, sha, tmp_path, {"GIT_CLEAN_FLAGS": "-ffd"}) as build:
        assert (build / "cache" / "dep").exists() and not (build / "stray.txt").exists()
        (build / "stray.txt").write_text("x\n")
    with job(origin, sha, tmp_path, {"GIT_CLEAN_FLAGS": "none"}) as build:
        assert (build / "stray.txt").exists() and (build / "cache" / "dep").exists()


def test_none_uses_the_directory_as_it_is_without_git(origin: Origin, tmp_path: Path) -> None:
    sha = origin.commit({"a.txt": "one\n"})
    with job(origin, sha, tmp_path, {"GIT_STRATEGY": "none"}) as build:
        assert list(build.iterdir()) == [], "nothing reused yet: an empty project directory"
        assert not (tmp_path / "cache").exists(), "no git at all: not even the mirror"
    with job(origin, sha, tmp_path) as build:
        (build / "a.txt").write_text("changed\n")
        (build / "left.txt").write_text("left\n")
    with job(origin, sha, tmp_path, {"GIT_STRATEGY": "none"}) as build:
        assert (build / "a.txt").read_text() == "changed\n" and (build / "left.txt").exists()


def test_clone_is_fresh_every_time(origin: Origin, tmp_path: Path) -> None:
    sha = origin.commit({"a.txt": "one\n"})
    with job(origin, sha, tmp_path) as build:  # a fetch job leaves its directory in the pool
        (build / "left.txt").write_text("left\n")
    with job(origin, sha, tmp_path, {"GIT_STRATEGY": "clone"}) as build:
        assert_clean_detached(build, sha, origin.env)
        assert not (build / "left.txt").exists()
    with job(origin, sha, tmp_path, {"GIT_STRATEGY": "none"}) as build:
        assert (build / "left.txt").exists(), "the clone job took nothing from the pool"


def test_checkout_false_fetches_without_checking_out(origin: Origin, tmp_path: Path) -> None:
    sha = origin.commit({"a.txt": "one\n"})
    for strategy in ("clone", "fetch"):
        with job(origin, sha, tmp_path, {"GIT_STRATEGY": strategy, "GIT_CHECKOUT": "false"}) as build:
            assert [p.name for p in build.iterdir()] == [".git"], strategy
            assert git("cat-file", "-t", sha, cwd=build, env=origin.env) == "commit"


def test_depth_gives_a_shallow_history_and_a_full_one_comes_back(origin: Origin, tmp_path: Path) -> None:
    for n in range(5):
        sha = origin.commit({"n.txt": f"{n}\n"})
    for strategy in ("clone", "fetch"):
        with job(origin, sha, tmp_path, {"GIT_STRATEGY": strategy, "GIT_DEPTH": "2"}) as build:
            assert git("rev-list", "--count", "HEAD", cwd=build, env=origin.env) == "2"
            assert_clean_detached(build, sha, origin.env)
    with job(origin, sha, tmp_path) as build:  # the shallow directory is not reused for a full history
        assert git("rev-list", "--count", "HEAD", cwd=build, env=origin.env) == "5"
        assert not (build / ".git" / "shallow").exists()


def make_repo(path: Path, env: dict[str, str], files: dict[str, str]) -> Origin:
    path.mkdir()
    git("init", "-q", "-b", "main", cwd=path, env=env)
    repo = Origin(path, env)
    repo.commit(files)
    return repo


def add_submodule(parent: Origin, child: Origin, path: str, url: str) -> str:
    git("-c", "protocol.file.allow=always", "submodule", "add", "-q", url, path, cwd=parent.path, env=parent.env)
    return parent.commit({}, f"add {path}")


def test_submodule_strategies(origin: Origin, tmp_path: Path, git_env: dict[str, str]) -> None:
    # origin's path is "<tmp>/origin repo"; the submodules sit beside it, named by relative URLs
    nested = make_repo(tmp_path / "nested", git_env, {"deep.txt": "deep\n"})
    sub = make_repo(tmp_path / "sub", git_env, {"sub.txt": "sub\n"})
    add_submodule(sub, nested, "nested", nested.url)
    origin.commit({"top.txt": "top\n"})
    sha = add_submodule(origin, sub, "sub", "../sub")
    with job(origin, sha, tmp_path, {"GIT_STRATEGY": "clone"}) as build:
        assert (build / "sub").is_dir() and list((build / "sub").iterdir()) == []
    with job(origin, sha, tmp_path, {"GIT_STRATEGY": "clone", "GIT_SUBMODULE_STRATEGY": "normal"}) as build:
        assert (build / "sub" / "sub.txt").read_text() == "sub\n"
        assert list((build / "sub" / "nested").iterdir()) == []
    for strategy in ("clone", "fetch", "fetch"):  # the second fetch reuses a directory with submodules
        with job(origin, sha, tmp_path, {"GIT_STRATEGY": strategy, "GIT_SUBMODULE_STRATEGY": "recursive"}) as build:
            assert (build / "sub" / "nested" / "deep.txt").read_text() == "deep\n"
            assert not (build / "sub" / "stray").exists(), "a submodule's leftovers are gone too"
            assert git("status", "--porcelain", "--untracked-files=all", cwd=build, env=origin.env) == ""
            (build / "sub" / "stray").write_text("x\n")


def test_a_submodule_url_the_clone_policy_refuses_is_never_fetched(tmp_path: Path, git_env: dict[str, str]) -> None:
    """A private address in .gitmodules (resolved nowhere, contacted never): refused before git runs."""
    origin = make_repo(tmp_path / "plain", git_env, {"a.txt": "a\n"})  # a path the clone policy takes
    (origin.path / ".gitmodules").write_text('[submodule "inner"]\n\tpath = inner\n\turl = https://10.0.0.7/x.git\n')
    git("update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},inner", cwd=origin.path, env=origin.env)
    sha = origin.commit({}, "a submodule on a private network")
    options = GitOptions.from_variables({"GIT_STRATEGY": "clone", "GIT_SUBMODULE_STRATEGY": "normal"})
    with pytest.raises(CheckoutError, match=re.escape("refused clone URL 'https://10.0.0.7/x.git'")) as refused:
        checkout(origin.url, sha, tmp_path / "build", cache_dir=tmp_path / "cache", env=origin.env, options=options,
                 policy=ClonePolicy(allow_local=True))
    assert not refused.value.retryable
    assert not (tmp_path / "build").exists() or list((tmp_path / "build").iterdir()) == []


def test_trust_domains_never_share_a_directory(origin: Origin, tmp_path: Path) -> None:
    sha = origin.commit({"a.txt": "one\n"})
    with job(origin, sha, tmp_path, key="repo-unprotected") as build:
        (build / "mark").write_text("unprotected\n")
    with job(origin, sha, tmp_path, {"GIT_STRATEGY": "none"}, key="repo-protected") as build:
        assert not (build / "mark").exists()


def test_the_pool_is_bounded(origin: Origin, tmp_path: Path) -> None:
    sha = origin.commit({"a.txt": "one\n"})
    with contextlib.ExitStack() as stack:
        for _ in range(POOL_SIZE + 2):  # as many jobs at once: each gets a directory of its own
            stack.enter_context(job(origin, sha, tmp_path))
    pool = next(pool_root(tmp_path / "ws").iterdir())
    assert len(list(pool.iterdir())) == POOL_SIZE


def test_a_bad_clean_flag_fails_the_checkout_with_gits_reason(origin: Origin, tmp_path: Path) -> None:
    sha = origin.commit({"a.txt": "one\n"})
    with job(origin, sha, tmp_path):
        pass
    with pytest.raises(CheckoutError, match="git clean --no-such-flag failed") as failure, \
            job(origin, sha, tmp_path, {"GIT_CLEAN_FLAGS": "--no-such-flag"}):
        pass
    assert not failure.value.retryable


def test_the_planner_reads_a_plain_pipeline_file_from_the_mirror(origin: Origin, tmp_path: Path) -> None:
    def alone(sha: str, configured: str | None = None) -> tuple[str, str] | None:
        return pipeline_alone(origin.url, sha, configured, None, cache_dir=tmp_path / "cache", env=origin.env)

    plain = origin.commit({".gitlab-ci.yml": "job:\n  script: echo hi\n"})
    assert alone(plain) == (".gitlab-ci.yml", "job:\n  script: echo hi\n")
    assert not (tmp_path / "ws").exists(), "no workspace, no checkout"
    assert alone(plain, "ci/other.yml") is None  # no such file: the checkout path says so in its words
    nested = origin.commit({"ci/main.yml": "job: {script: x}\n"})
    assert alone(nested, "ci/main.yml") == ("ci/main.yml", "job: {script: x}\n")
    assert alone(nested, "../ci/main.yml") is None
    for text in ("include: [{local: a.yml}]\njob: {script: x}\n", "job:\n  script: x\n  rules: [{exists: [a]}]\n",
                 '"incl\\x75de": a.yml\n'):
        assert alone(origin.commit({".gitlab-ci.yml": text})) is None, text
    (origin.path / ".gitlab-ci.yml").unlink()
    os.symlink("ci/main.yml", origin.path / ".gitlab-ci.yml")
    assert alone(origin.commit({})) == (".gitlab-ci.yml", "job: {script: x}\n"), "followed, as open() would"
    (origin.path / ".gitlab-ci.yml").unlink()
    os.symlink("../../etc/hostname", origin.path / ".gitlab-ci.yml")
    assert alone(origin.commit({})) is None, "a symlink out of the repository: the checkout's rules decide"
    (origin.path / ".gitlab-ci.yml").unlink()
    (origin.path / ".gitlab-ci.yml").write_bytes(b"job: {script: '\xff'}\n")
    assert alone(origin.commit({})) is None, "not UTF-8: the loader says so, from the checkout"
    with pytest.raises(CheckoutError, match="not found"):
        alone("0" * 40)
