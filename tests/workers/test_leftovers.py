"""Leftover directories: removed once the process that held them is gone, never while held, and
never in the instant between a directory's birth and its lock."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import REPO
from workers.leftovers import made_held, release, sweep

HOLDER = """
import sys, time
from pathlib import Path
from workers.leftovers import made_held
path, fd = made_held(Path(sys.argv[1]), "job-")
print(path, flush=True)
if sys.argv[2] == "stay":
    sys.stdin.read()  # hold until the test closes our stdin
"""


def _holder(root: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), mode], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(REPO)})
    return proc, Path(proc.stdout.readline().strip())


def test_a_dead_processs_directory_goes_and_a_live_ones_stays(tmp_path: Path):
    dead, dead_dir = _holder(tmp_path, "exit")
    dead.wait(timeout=30)
    live, live_dir = _holder(tmp_path, "stay")
    try:
        assert sweep(tmp_path, "job-*") == [dead_dir]
        assert not dead_dir.exists() and live_dir.is_dir()
    finally:
        live.stdin.close()
        live.wait(timeout=30)
    assert sweep(tmp_path, "job-*") == [live_dir]


def test_a_sweep_never_takes_a_directory_being_made(tmp_path: Path):
    made: list[tuple[Path, int | None]] = []
    stop = threading.Event()

    def sweeping() -> None:
        while not stop.is_set():
            sweep(tmp_path, "job-*")

    sweeper = threading.Thread(target=sweeping)
    sweeper.start()
    try:
        for _ in range(300):
            made.append(made_held(tmp_path, "job-"))
    finally:
        stop.set()
        sweeper.join(timeout=30)
    assert all(path.is_dir() for path, _ in made), "a sweep removed a directory in use"
    for _, fd in made:
        release(fd)
