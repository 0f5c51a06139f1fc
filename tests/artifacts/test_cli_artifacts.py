"""``ci-queue artifacts``: the real command against the live web app."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

from ci_queue.store.artifacts import ArtifactIndex
from tests.artifacts.conftest import LiveApp
from tests.artifacts.test_transfer import PIPELINE, tree, upload
from tests.conftest import REPO
from tests.web.conftest import TOKENS


def cli(live: LiveApp, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ci_queue.cli", "artifacts", *args, "--server", live.url,
                           "--token", TOKENS[0]], capture_output=True, text=True, cwd=cwd, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(cwd)})


def test_download_list_and_one_file(live: LiveApp, tmp_path: Path):
    build = live.running(PIPELINE, "build")
    upload(live, build, tree(tmp_path / "ws"), ["dist/"])
    out = tmp_path / "out"
    done = cli(live, build.run_id, "build", "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / "dist" / "app").read_bytes() == b"#!/bin/sh\necho app\n"
    assert (out / "dist" / "link").readlink() == Path("app")
    listing = cli(live, build.run_id, "build", "--list", cwd=tmp_path)
    assert "dist/sub/data.json" in listing.stdout and "dist/link -> app" in listing.stdout
    one = cli(live, build.run_id, "build", "dist/sub/data.json", "-o", str(tmp_path / "one"), cwd=tmp_path)
    assert one.returncode == 0 and (tmp_path / "one" / "data.json").read_text() == '{"a": 1}'
    missing = cli(live, build.run_id, "lint", cwd=tmp_path)
    assert missing.returncode == 1 and "has no artifacts" in missing.stderr


def test_a_hostile_archive_is_refused_naming_the_entry(live: LiveApp, tmp_path: Path):
    build = live.running(PIPELINE, "build")
    upload(live, build, tree(tmp_path / "ws"), ["dist/"])
    key = ArtifactIndex(live.store).artifacts(build.run_id, build.index)["key"]
    hostile = io.BytesIO()
    with tarfile.open(fileobj=hostile, mode="w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    live.objects.put(key, io.BytesIO(hostile.getvalue()))
    (tmp_path / "out").mkdir()
    done = cli(live, build.run_id, "build", "-o", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 1 and "../escaped" in done.stderr
    assert not (tmp_path / "escaped").exists()
