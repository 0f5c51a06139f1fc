"""workers.workspace: safe names from hostile job names, robust removal, CIQ_KEEP_WORKSPACES."""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from ci_queue.settings import Settings
from workers.workspace import Workspace, default_root, remove_tree, slug

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
HOSTILE_NAMES = [
    "build: [a, b]",
    "../x",
    "../../../../etc/passwd",
    "..",
    ".",
    "",
    "/absolute/path",
    "a/b\\c",
    "-rf",
    "--help",
    ".hidden",
    "~user",
    "$(touch pwned)",
    "`id`; rm -rf /",
    "nul\x00byte",
    "new\nline\ttab",
    "ünïcødé 🚀 ジョブ",
    "\u202eevil",
    "x" * 10_000,
    "é" * 300,
    "CON",
    "a" * 47 + "/" + "b" * 50,
]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(workspace_dir=str(tmp_path / "workspaces"))


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
def test_hostile_job_names_give_one_safe_component_inside_the_root(name: str, settings: Settings):
    root = Path(settings.workspace_dir)
    with Workspace(name, name, 3, settings=settings) as ws:
        path = ws.path
        assert path.parent == root.resolve()
        assert path.is_dir() and not path.is_symlink()
        assert SAFE_NAME.fullmatch(path.name), path.name
        assert len(path.name.encode()) <= 160
        assert "-a3-" in path.name
        assert ws.builds_dir.is_dir() and ws.builds_dir.parent == path
        assert ws.tmp_dir.is_dir() and ws.tmp_dir.parent == path
        assert sorted(p.name for p in root.iterdir()) == [path.name]
    assert not path.exists()
    assert list(root.iterdir()) == []


def test_slugs_keep_simple_names_and_tell_changed_ones_apart():
    assert slug("build") == "build"
    assert slug("test-1.2_x") == "test-1.2_x"
    assert slug("build: [a, b]").startswith("build_a_b_")
    assert slug("a/b") != slug("a:b") != slug("a b")
    assert slug("x" * 10_000) != slug("x" * 9_999)
    assert len(slug("x" * 10_000)) <= 48
    assert SAFE_NAME.fullmatch(slug("..")) and SAFE_NAME.fullmatch(slug(""))


def test_every_workspace_is_unique(settings: Settings):
    with Workspace("run", "job", settings=settings) as one, Workspace("run", "job", settings=settings) as two:
        assert one.path != two.path
        assert one.path.name.startswith("run-job-a1-")
        assert stat.S_IMODE(one.path.stat().st_mode) == 0o700


def test_default_root_is_under_the_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert default_root(Settings()) == tmp_path / "ci-queue" / "workspaces"
    with Workspace("r1", "job", settings=Settings()) as ws:
        assert ws.path.parent == (tmp_path / "ci-queue" / "workspaces").resolve()
    assert default_root(Settings(workspace_dir="/srv/ws")) == Path("/srv/ws")


def test_path_is_only_there_while_the_workspace_exists(settings: Settings):
    ws = Workspace("r", "j", settings=settings)
    with pytest.raises(RuntimeError):
        _ = ws.path
    with ws:
        created = ws.path
    with pytest.raises(RuntimeError):
        _ = ws.path
    assert not created.exists()


def test_removed_when_the_job_raises(settings: Settings):
    with pytest.raises(ValueError, match="boom"), Workspace("r", "j", settings=settings) as ws:
        path = ws.path
        (ws.builds_dir / "file").write_text("x")
        raise ValueError("boom")
    assert not path.exists()


def _read_only_tree(top: Path) -> None:
    """What a job may leave: read-only files, read-only and unreadable directories, odd entries."""
    (top / "ro-dir" / "deep").mkdir(parents=True)
    (top / "ro-dir" / "deep" / "file").write_text("x")
    (top / "ro-dir" / "file").write_text("x")
    (top / "ro-file").write_text("x")
    (top / "locked").mkdir()
    (top / "locked" / "inside").write_text("x")
    (top / "node_modules" / ".bin").mkdir(parents=True)
    os.symlink("/etc", top / "link-to-etc")
    os.symlink(top / "ro-dir", top / "link-to-dir")
    os.mkfifo(top / "fifo")
    os.chmod(top / "ro-file", 0o444)
    os.chmod(top / "ro-dir" / "deep" / "file", 0o400)
    os.chmod(top / "ro-dir" / "deep", 0o500)
    os.chmod(top / "ro-dir", 0o555)
    os.chmod(top / "locked", 0o000)
    os.chmod(top / "node_modules", 0o555)


def test_read_only_trees_are_removed(settings: Settings):
    with Workspace("r", "j", settings=settings) as ws:
        path = ws.path
        _read_only_tree(ws.builds_dir)
        os.chmod(ws.builds_dir, 0o555)
    assert not path.exists()
    assert Path("/etc/hostname").exists() or Path("/etc").is_dir()  # the symlink's target was not touched


@pytest.mark.skipif(not hasattr(os, "fork") or os.geteuid() != 0, reason="needs root to become another user")
def test_read_only_trees_are_removed_without_root_privileges():
    """As root every permission is ignored; a child that becomes ``nobody`` shows the chmod pass works."""
    nobody = 65534
    top = Path(tempfile.mkdtemp(prefix="ciq-ro-test-"))
    try:
        os.chown(top, nobody, nobody)
        pid = os.fork()
        if pid == 0:  # the child: build the tree as nobody, then remove it as nobody
            code = 1
            try:
                os.setgid(nobody)
                os.setuid(nobody)
                tree = top / "ws"
                tree.mkdir()
                _read_only_tree(tree)
                os.chmod(tree, 0o555)
                remove_tree(tree)
                code = 0 if not tree.exists() else 2
            except BaseException:
                code = 3
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise AssertionError("the removal did not finish")
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not (top / "ws").exists()
    finally:
        remove_tree(top)


def test_a_symlink_out_of_the_workspace_is_not_followed(settings: Settings, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    os.chmod(outside, 0o555)
    with Workspace("r", "j", settings=settings) as ws:
        os.symlink(outside, ws.builds_dir / "escape")
        os.symlink(outside / "precious", ws.builds_dir / "escape-file")
    assert (outside / "precious").read_text() == "keep me"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o555  # not chmod-ed through the link either
    os.chmod(outside, 0o755)


def test_keep_workspaces_keeps_it_and_logs_the_path(tmp_path: Path, log_lines: list[str]):
    settings = Settings.from_env({"CIQ_WORKSPACE_DIR": str(tmp_path / "ws"), "CIQ_KEEP_WORKSPACES": "1"})
    with Workspace("run-7", "build: [a, b]", 2, settings=settings) as ws:
        (ws.builds_dir / "artifact").write_text("x")
        path = ws.path
    assert (path / "build" / "artifact").read_text() == "x"
    assert any(str(path) in line and "keeping workspace" in line for line in log_lines)
    remove_tree(path)


def test_remove_tree_of_nothing_or_a_file(tmp_path: Path):
    remove_tree(tmp_path / "absent")
    file = tmp_path / "f"
    file.write_text("x")
    os.chmod(file, 0o400)
    remove_tree(file)
    assert not file.exists()
