"""Helpers of the worker tests: real processes, polled with deadlines (never slept on)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> T:
    """Poll ``probe`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_pids(path: Path, count: int) -> list[int] | None:
    """The pids a script wrote to ``path``, once it holds ``count`` of them."""
    try:
        pids = [int(word) for word in path.read_text().split()]
    except (OSError, ValueError):
        return None
    return pids if len(pids) >= count else None


def process_exists(pid: int) -> bool:
    """True while ``pid`` exists at all (a zombie counts: it must have been reaped too)."""
    return os.path.exists(f"/proc/{pid}")


def assert_all_gone(pids: list[int]) -> None:
    alive = []
    for pid in pids:
        if process_exists(pid):
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            alive.append(f"{pid} ({state})")
    assert not alive, f"processes of the step survived it: {', '.join(alive)}"


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")
