"""Choosing the files of ``artifacts:`` / ``cache:``: GitLab runner's globs, exclude, untracked,
and the trust boundary (nothing outside the project directory is ever collected)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from ci_queue.artifacts.selection import SelectionTooLarge, UntrackedError, human_bytes, select, untracked
from ci_queue.pipeline.globs import compile_glob, compile_path_glob, expand_braces

# -- doublestar globs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.txt", "a.txt", True),
        ("*.txt", "d/a.txt", False),  # `*` stays inside one component
        ("**/*.o", "x.o", True),  # `**/` may be zero directories
        ("**/*.o", "a/b/x.o", True),
        ("**/*.o", "a/b/x.c", False),
        ("a/**", "a", True),  # a trailing `/**` takes the directory itself too
        ("a/**", "a/b/c", True),
        ("a/**", "ab", False),
        ("a**", "abc", True),  # `**` inside a component is `*`
        ("a**", "ab/c", False),
        ("**", "a/b", True),
        ("{a,b}/x", "b/x", True),
        ("{a,b}/x", "c/x", False),
        ("dist/**/*.js", "dist/app.js", True),
        ("dist/**/*.js", "dist/x/y/app.js", True),
        ("?.md", "a.md", True),
        ("?.md", "ab.md", False),
        ("[ab].c", "b.c", True),
        ("[!ab].c", "b.c", False),
        (".*", ".hidden", True),
    ],
)
def test_path_glob_matches_like_doublestar(pattern: str, path: str, expected: bool) -> None:
    assert (compile_path_glob(pattern).match(path) is not None) is expected


def test_changes_globs_keep_their_ruby_semantics() -> None:
    # `changes:` globs are Ruby's: `a**` crosses directories there; the artifact variant is separate
    assert compile_glob("a**").match("ab/c")
    assert not compile_path_glob("a**").match("ab/c")


def test_expand_braces() -> None:
    assert sorted(expand_braces("{a,b{c,d}}/x{1,2}")) == ["a/x1", "a/x2", "bc/x1", "bc/x2", "bd/x1", "bd/x2"]
    assert expand_braces("{a/x") == ["{a/x"]  # unbalanced: literal
    assert sorted(expand_braces("a{,b}")) == ["a", "ab"]
    with pytest.raises(ValueError, match="more than"):
        expand_braces("{a,b}" * 12)


# -- helpers ---------------------------------------------------------------------------------------


def make_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    """Files (bytes: content; str starting with "->": a symlink to the rest) under ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content.startswith("->"):
            path.symlink_to(content[2:].strip())
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "project", {
        "dist/app.js": b"js" * 10,
        "dist/app.js.map": b"map",
        "dist/sub/b.bin": b"b" * 100,
        "dist/sub/c.map": b"cc",
        "notes.txt": b"notes",
        "docs/deep.txt": b"deep",
        "src/a.o": b"oa",
        "src/a.c": b"ca",
        "src/lib/x/y.o": b"oy",
        "a/x": b"ax",
        "b/x": b"bx",
        "c/x": b"cx",
        "x": b"x",
    })


def entries_of(root: Path, *args: object, **kwargs: object) -> list[str]:
    return select(root, *args, **kwargs).entries  # type: ignore[arg-type]


# -- paths -----------------------------------------------------------------------------------------


def test_a_directory_is_taken_with_everything_below_it(project: Path) -> None:
    selection = select(project, ["dist/"])
    assert selection.entries == ["dist", "dist/app.js", "dist/app.js.map", "dist/sub", "dist/sub/b.bin",
                                 "dist/sub/c.map"]
    assert selection.total_bytes == 20 + 3 + 100 + 2
    assert selection.warnings == []
    assert not selection.matched_nothing


def test_star_stays_in_the_top_directory(project: Path) -> None:
    assert entries_of(project, ["*.txt"]) == ["notes.txt"]


def test_double_star_reaches_any_depth(project: Path) -> None:
    assert entries_of(project, ["**/*.o"]) == ["src/a.o", "src/lib/x/y.o"]


def test_braces_alternate(project: Path) -> None:
    assert entries_of(project, ["{a,b}/x"]) == ["a/x", "b/x"]


def test_a_leading_dot_slash_is_allowed(project: Path) -> None:
    assert entries_of(project, ["./x", "./src//a.c"]) == ["src/a.c", "x"]


def test_entries_are_sorted_parents_first_and_unique(project: Path) -> None:
    entries = entries_of(project, ["dist/sub/", "dist/", "dist/**/*.map", "x", "x"])
    assert entries == sorted(set(entries))
    for entry in entries:
        parent = entry.rpartition("/")[0]
        if parent in entries:
            assert entries.index(parent) < entries.index(entry)


def test_exclude_removes_matched_files(project: Path) -> None:
    selection = select(project, ["dist/"], exclude=["dist/**/*.map", "./dist/app.js.map"])
    assert selection.entries == ["dist", "dist/app.js", "dist/sub", "dist/sub/b.bin"]
    assert selection.total_bytes == 120


def test_exclude_is_not_recursive_as_in_gitlab(project: Path) -> None:
    # GitLab: "exclude paths are not recursive ... to exclude all of the contents of a directory,
    # match them explicitly" (`dist/sub/**`)
    assert entries_of(project, ["dist/"], exclude=["dist/sub"]) == [
        "dist", "dist/app.js", "dist/app.js.map", "dist/sub/b.bin", "dist/sub/c.map"]
    assert entries_of(project, ["dist/"], exclude=["dist/sub/**"]) == ["dist", "dist/app.js", "dist/app.js.map"]


def test_a_pattern_that_matches_nothing_is_a_warning(project: Path) -> None:
    selection = select(project, ["missing/", "*.nothing"])
    assert selection.matched_nothing
    assert selection.entries == [] and selection.total_bytes == 0
    assert len(selection.warnings) == 2
    assert "`missing/`: no matching files" in selection.warnings[0]


def test_everything_excluded_is_matched_nothing(project: Path) -> None:
    assert select(project, ["x"], exclude=["x"]).matched_nothing


@pytest.mark.parametrize("pattern", ["../outside", "/etc/passwd", "a/../../outside", "{..,a}/x", "dist/../.."])
def test_patterns_leaving_the_project_are_refused(tmp_path: Path, project: Path, pattern: str) -> None:
    make_tree(tmp_path, {"outside": b"secret"})
    selection = select(project, [pattern])
    assert all(".." not in entry and not entry.startswith("/") for entry in selection.entries)
    assert any("refused" in warning for warning in selection.warnings)


def test_the_whole_project(project: Path) -> None:
    everything = entries_of(project, ["."])
    assert "dist/sub/b.bin" in everything and "x" in everything and "" not in everything
    assert entries_of(project, ["**"]) == everything


# -- symlinks and special files --------------------------------------------------------------------


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    outside = make_tree(tmp_path / "outside", {"secret": b"secret", "dir/secret": b"secret"})
    return make_tree(tmp_path / "project", {
        "real/file": b"data",
        "real/sub/deep": b"deep",
        "in_file": "-> real/file",
        "in_dir": "-> real",
        "in_abs": f"-> {tmp_path / 'project' / 'real' / 'file'}",
        "dangling_in": "-> real/not-yet",
        "out_abs": f"-> {outside / 'secret'}",
        "out_rel": "-> ../outside/secret",
        "out_dir": f"-> {outside / 'dir'}",
        "dangling_out": "-> ../../nowhere",
        "chain": "-> in_dir/../../outside/secret",
    })


def test_symlinks_inside_are_kept_as_links_and_outside_refused(linked: Path) -> None:
    selection = select(linked, ["*"])
    assert selection.entries == ["dangling_in", "in_abs", "in_dir", "in_file", "real", "real/file", "real/sub",
                                 "real/sub/deep"]
    assert selection.total_bytes == len(b"data") + len(b"deep")  # links count for nothing
    refused = {name for name in ("out_abs", "out_rel", "out_dir", "dangling_out", "chain")
               if any(f"symlink `{name}`" in warning and "not collected" in warning for warning in selection.warnings)}
    assert refused == {"out_abs", "out_rel", "out_dir", "dangling_out", "chain"}


def test_a_symlinked_directory_is_not_walked_into(linked: Path) -> None:
    assert entries_of(linked, ["in_dir/"]) == []  # `dir/` asks for a directory; a link is not one
    assert entries_of(linked, ["in_dir"]) == ["in_dir"]
    assert entries_of(linked, ["**/deep"]) == ["real/sub/deep"]  # not also in_dir/sub/deep


def test_a_path_through_a_symlink_is_refused(linked: Path) -> None:
    selection = select(linked, ["out_dir/secret", "in_dir/file"])
    assert selection.entries == []
    assert any("`out_dir` is a symlink" in warning for warning in selection.warnings)
    assert any("`in_dir` is a symlink" in warning for warning in selection.warnings)


def test_untracked_paths_get_the_same_checks(linked: Path) -> None:
    selection = select(linked, [], untracked_files=["out_dir/secret", "../outside/secret", "/etc/passwd",
                                                    "out_abs", "real/file", "missing"])
    assert selection.entries == ["real/file"]
    assert len(selection.warnings) == 4


def test_a_symlink_chain_longer_than_the_kernel_follows_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"f")
    previous = "f"
    for i in range(60):
        os.symlink(previous, tmp_path / f"l{i:02}")
        previous = f"l{i:02}"
    selection = select(tmp_path, ["l*"])
    assert selection.entries == [f"l{i:02}" for i in range(40)]
    assert len(selection.warnings) == 20 and "more than 40 symlinks" in selection.warnings[0]


def test_special_files_are_skipped_with_a_warning(project: Path) -> None:
    os.mkfifo(project / "dist" / "pipe")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(project / "dist" / "sock"))
    try:
        selection = select(project, ["dist/"])
    finally:
        server.close()
    assert "dist/pipe" not in selection.entries and "dist/sock" not in selection.entries
    assert any("`dist/pipe`" in w and "a fifo" in w for w in selection.warnings)
    assert any("`dist/sock`" in w and "a socket" in w for w in selection.warnings)


def test_hostile_names_cannot_forge_log_lines(project: Path) -> None:
    (project / "evil\nJob succeeded").write_bytes(b"x")
    os.mkfifo(project / "evil\nJob succeeded2")
    selection = select(project, ["evil*"])
    assert "evil\nJob succeeded" in selection.entries
    assert selection.warnings and all("\n" not in warning for warning in selection.warnings)


# -- the limit -------------------------------------------------------------------------------------


def test_over_the_limit_stops_the_walk(tmp_path: Path) -> None:
    root = make_tree(tmp_path, {f"big/{i:02}": b"x" * 1000 for i in range(50)})
    with pytest.raises(SelectionTooLarge) as caught:
        select(root, ["big/"], limit=2500)
    assert caught.value.limit == 2500
    assert caught.value.found == 3000  # stopped at the first file over the limit, not after all 50
    assert "at least 2.9 KiB, over the limit of 2.4 KiB (CIQ_MAX_ARTIFACT_BYTES)" in str(caught.value)
    assert select(root, ["big/"], limit=50_000).total_bytes == 50_000  # at the limit is fine


def test_the_limit_message_shows_bytes_when_rounding_hides_them() -> None:
    message = str(SelectionTooLarge(1024**3 + 1, 1024**3))
    assert "1073741825 bytes" in message and "1073741824 bytes" in message


@pytest.mark.parametrize(("n", "text"), [(0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (1024, "1 KiB"),
                                         (1536, "1.5 KiB"), (1024**2 - 1, "1 MiB"), (1288490189, "1.2 GiB"),
                                         (1024**3, "1 GiB"), (3 * 1024**5, "3 PiB"), (2048 * 1024**5, "2048 PiB")])
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


# -- untracked -------------------------------------------------------------------------------------


def git(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", *args], cwd=root,
                          capture_output=True, text=True, check=False, env=env)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = make_tree(tmp_path / "repo", {
        "tracked.txt": b"t",
        "src/tracked.c": b"c",
        ".gitignore": b"build/\n*.log\n",
    })
    assert git(root, "init", "-q", ".").returncode == 0
    assert git(root, "add", ".").returncode == 0
    assert git(root, "commit", "-qm", "init").returncode == 0
    make_tree(root, {"new.txt": b"n", "build/out.bin": b"o", "src/debug.log": b"l", "odd name\tç": b"odd"})
    return root


def test_untracked_lists_new_and_ignored_files(repo: Path) -> None:
    assert sorted(untracked(repo)) == ["build/out.bin", "new.txt", "odd name\tç", "src/debug.log"]
    selection = select(repo, [], untracked_files=untracked(repo))
    assert selection.entries == ["build/out.bin", "new.txt", "odd name\tç", "src/debug.log"]
    assert select(repo, [], exclude=["**/*.log"], untracked_files=untracked(repo)).entries == [
        "build/out.bin", "new.txt", "odd name\tç"]


def test_untracked_outside_a_git_work_tree_is_every_file(project: Path) -> None:
    os.symlink("x", project / "link")
    expected = sorted(str(p.relative_to(project)) for p in project.rglob("*") if not p.is_dir() or p.is_symlink())
    assert untracked(project) == expected


def test_untracked_runs_no_command_from_the_jobs_git_config(repo: Path, tmp_path: Path) -> None:
    marker = tmp_path / "fsmonitor-ran"
    assert git(repo, "config", "core.fsmonitor", f"touch {marker}; echo").returncode == 0
    assert git(repo, "ls-files", "-o").returncode == 0
    assert marker.exists(), "precondition: plain `git ls-files -o` runs core.fsmonitor"
    marker.unlink()
    assert "new.txt" in untracked(repo)
    assert not marker.exists()


def test_untracked_accepts_a_work_tree_owned_by_another_user(repo: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # git refuses a repository its user does not own ("dubious ownership"); the workspace belongs
    # to the job's user. GIT_TEST_ASSUME_DIFFERENT_OWNER makes git see it so, through a wrapper
    # (untracked() passes no GIT_* variable of its own environment on).
    real_git = shutil.which("git")
    assert real_git
    wrapper = tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nGIT_TEST_ASSUME_DIFFERENT_OWNER=1 exec {real_git} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    refused = subprocess.run(["git", "ls-files", "-o"], cwd=repo, capture_output=True, text=True, check=False)
    assert "dubious ownership" in refused.stderr, "precondition: the wrapper makes git distrust the repository"
    assert "new.txt" in untracked(repo)


def test_untracked_fails_loudly_when_git_fails(repo: Path) -> None:
    (repo / ".git" / "HEAD").write_text("garbage\n")
    with pytest.raises(UntrackedError, match="git ls-files -o"):
        untracked(repo)
