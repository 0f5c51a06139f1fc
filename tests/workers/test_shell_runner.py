"""The shell runner with real processes: deadlines, cancel, leftovers, output, memory."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.workers.conftest import assert_all_gone, read_pids, vm_rss_kib
from workers.logs import JobLog, LogLine, MemorySink
from workers.runners.base import EnvironmentTooLarge, InfrastructureError, JobEnvironment, StepSpec
from workers.runners.shell import ShellRunner

GRACE = 1.0
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

# Background processes of every kind a step can leave: a child, a grandchild whose parent exits
# (orphaned), a child that left the process group and session (setsid), and one that also
# cleared its environment and was orphaned at once. Each writes its pid to `pids`.
SPAWN_LEFTOVERS = """
sleep 300 & echo $! >> pids
(sleep 300 & echo $! >> pids; wait) &
(sleep 300 >/dev/null 2>&1 & echo $! >> pids)
setsid sleep 300 & echo $! >> pids
(env -i setsid sleep 300 >/dev/null 2>&1 & echo $! >> pids)
"""
LEFTOVERS = 5


class CountingSink:
    """Keeps nothing: counts lines and bytes (to measure memory)."""

    def __init__(self) -> None:
        self.lines = 0
        self.bytes = 0  # text of the output lines
        self.stored = 0  # bytes as the log counts them (text + line end), output lines only
        self.last: LogLine | None = None

    def write(self, line: LogLine) -> None:
        self.lines += 1
        if line.stream != "system":
            self.bytes += len(line.text)
            self.stored += len(line.text.encode()) + 1
        self.last = line

    def close(self) -> None:
        pass


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "workspace"
    path.mkdir()
    return path


@pytest.fixture
def runner(workspace: Path) -> Iterator[ShellRunner]:
    shell = ShellRunner(kill_grace_seconds=GRACE)
    shell.prepare(
        JobEnvironment(workspace, str(workspace), None, "run-1", "job", 1),
        JobLog(MemorySink(), run_id="run-1", job="job", max_bytes=1 << 20),
    )
    yield shell
    shell.cleanup()


def new_log(sink=None, **options) -> tuple[JobLog, MemorySink]:
    sink = sink if sink is not None else MemorySink()
    return JobLog(sink, run_id="run-1", job="job", **{"max_bytes": 1 << 20, **options}), sink


def step(script: str, timeout: float = 30.0, env: dict[str, str] | None = None, name: str = "script") -> StepSpec:
    return StepSpec(name=name, script=script, env=env or {}, timeout=timeout)


def never() -> bool:
    return False


def test_success_and_exit_codes(runner: ShellRunner):
    log, sink = new_log()
    outcome = runner.run(step("echo hello"), log, never)
    assert (outcome.status, outcome.exit_code) == ("success", 0)
    assert sink.texts("out") == ["hello"]
    assert ISO_UTC.match(outcome.started_at) and ISO_UTC.match(outcome.finished_at)
    assert outcome.started_at <= outcome.finished_at and outcome.duration >= 0
    outcome = runner.run(step("echo before; exit 7"), log, never)
    assert (outcome.status, outcome.exit_code) == ("failed", 7)


def test_timeout_kills_every_process_within_the_grace(runner: ShellRunner, workspace: Path):
    log, sink = new_log()
    start = time.monotonic()
    outcome = runner.run(step(SPAWN_LEFTOVERS + "sleep 300\n", timeout=2), log, never)
    elapsed = time.monotonic() - start
    assert outcome.status == "timeout" and outcome.exit_code is None
    assert 2 <= elapsed < 2 + GRACE + 1.0, elapsed
    pids = read_pids(workspace / "pids", LEFTOVERS)
    assert pids is not None
    assert_all_gone(pids)
    assert any("exceeded its timeout of 2s" in t for t in sink.texts("system"))


def test_timeout_sigkills_what_ignores_sigterm(runner: ShellRunner, workspace: Path):
    log, _ = new_log()
    script = "trap '' TERM\n" + SPAWN_LEFTOVERS + "sleep 300\n"  # SIG_IGN is inherited by every child
    start = time.monotonic()
    outcome = runner.run(step(script, timeout=1), log, never)
    elapsed = time.monotonic() - start
    assert outcome.status == "timeout"
    assert 1 + GRACE <= elapsed < 1 + GRACE + 1.5, elapsed
    assert_all_gone(read_pids(workspace / "pids", LEFTOVERS))


def test_cancel_stops_the_step_and_everything_it_started(runner: ShellRunner, workspace: Path):
    log, sink = new_log()
    canceled_at: list[float] = []

    def cancel() -> bool:  # "cancel" as soon as all the background processes exist
        if read_pids(workspace / "pids", LEFTOVERS) is None:
            return False
        canceled_at.append(time.monotonic())
        return True

    outcome = runner.run(step(SPAWN_LEFTOVERS + "sleep 300\n", timeout=60), log, cancel)
    stopped_in = time.monotonic() - canceled_at[0]
    assert outcome.status == "canceled" and outcome.exit_code is None
    assert stopped_in < 2.0, stopped_in
    assert_all_gone(read_pids(workspace / "pids", LEFTOVERS))
    assert any("canceled" in t for t in sink.texts("system"))


def test_a_successful_step_leaves_nothing_running(runner: ShellRunner, workspace: Path):
    log, sink = new_log()
    start = time.monotonic()
    outcome = runner.run(step(SPAWN_LEFTOVERS + "echo done\n"), log, never)
    assert outcome.status == "success"
    assert time.monotonic() - start < 3.0  # background children holding the pipes do not hang it
    assert "done" in sink.texts("out")
    assert_all_gone(read_pids(workspace / "pids", LEFTOVERS))
    assert any(t.startswith("[ci-queue] stopped") and "left running" in t for t in sink.texts("system"))


def test_a_step_that_closes_its_output_is_still_waited_for(runner: ShellRunner):
    log, sink = new_log()
    outcome = runner.run(step("echo visible; exec >/dev/null 2>&1; sleep 0.5; exit 3"), log, never)
    assert (outcome.status, outcome.exit_code) == ("failed", 3)
    assert outcome.duration >= 0.5
    assert sink.texts("out") == ["visible"]


def test_stdout_and_stderr_kept_apart_in_arrival_order(runner: ShellRunner):
    log, sink = new_log()
    script = "for i in 1 2 3 4 5; do echo out$i; sleep 0.05; echo err$i >&2; sleep 0.05; done; printf 'no newline'"
    outcome = runner.run(step(script), log, never)
    assert outcome.status == "success"
    expected = [("out", f"out{i}") if k == 0 else ("err", f"err{i}") for i in range(1, 6) for k in (0, 1)]
    assert [(line.stream, line.text) for line in sink.lines] == [*expected, ("out", "no newline")]
    assert [line.number for line in sink.lines] == list(range(1, 12))
    stamps = [line.timestamp for line in sink.lines]
    assert all(ISO_UTC.match(s) for s in stamps) and stamps == sorted(stamps)
    assert stamps[0] < stamps[-1]  # real arrival times, not one stamp for all


def test_environment_is_the_steps_own(runner: ShellRunner, workspace: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKER_SECRET_TOKEN", "do-not-leak")
    log, sink = new_log()
    script = 'echo "$JOB_VAR|${WORKER_SECRET_TOKEN-unset}|$PWD"; command -v sh >/dev/null && echo path-ok'
    outcome = runner.run(step(script, env={"JOB_VAR": "from job"}), log, never)
    assert outcome.status == "success"
    assert sink.texts("out") == [f"from job|unset|{workspace}", "path-ok"]


def test_an_environment_string_the_kernel_refuses_is_environment_too_large(runner: ShellRunner):
    """E2BIG from execve (a string over MAX_ARG_STRLEN) is not an infrastructure failure to retry."""
    log, _ = new_log()
    with pytest.raises(EnvironmentTooLarge, match=r"E2BIG.*variable 'HUGE' is 200006 bytes") as caught:
        runner.run(step("echo never", env={"HUGE": "h" * 200_000}), log, never)
    assert caught.value.failure_class == "environment_too_large" and "hhhh" not in str(caught.value)


def test_missing_workspace_is_an_infrastructure_error(tmp_path: Path):
    shell = ShellRunner(kill_grace_seconds=GRACE)
    with pytest.raises(InfrastructureError, match="does not exist"):
        shell.prepare(JobEnvironment(tmp_path / "nope", str(tmp_path / "nope"), None, "r", "j", 1), new_log()[0])
    shell.cleanup()


def test_capped_output_does_not_slow_the_step(runner: ShellRunner):
    produce = "head -c 20000000 /dev/zero | tr '\\0' 'x' | fold -w 100"
    uncapped_log, _ = new_log(CountingSink(), max_bytes=1 << 40)
    uncapped = runner.run(step(produce, timeout=120), uncapped_log, never)
    sink = CountingSink()
    capped_log, _ = new_log(sink, max_bytes=64 * 1024)
    capped = runner.run(step(produce, timeout=120), capped_log, never)
    assert capped.status == uncapped.status == "success"
    assert capped_log.truncated and not uncapped_log.truncated
    assert sink.stored <= 64 * 1024
    # every byte stored or counted (fold ends the last line without a newline)
    assert sink.stored + capped_log.bytes_dropped == 20_000_000 + 199_999
    assert sink.last.text.startswith("[ci-queue] log truncated at 65536 bytes")
    print(f"20 MB: capped {capped.duration:.2f}s, uncapped {uncapped.duration:.2f}s")
    assert capped.duration <= uncapped.duration * 1.2 + 0.5


@pytest.mark.parametrize(("width", "cap"), [(100, 4 * 1024 * 1024), (1000, 1 << 40)], ids=["capped", "uncapped"])
def test_200_mb_of_output_in_flat_memory(runner: ShellRunner, width: int, cap: int):
    sink = CountingSink()
    log, _ = new_log(sink, max_bytes=cap, secrets=["not-in-the-output"])
    runner.run(step("true"), log, never)  # warm up
    before = vm_rss_kib()
    start = time.monotonic()
    outcome = runner.run(step(f"head -c 200000000 /dev/zero | tr '\\0' 'x' | fold -w {width}", timeout=120), log, never)
    elapsed = time.monotonic() - start
    growth_mib = (vm_rss_kib() - before) / 1024
    print(
        f"200 MB, fold -w {width}, cap {cap}: {elapsed:.2f}s, RSS growth {growth_mib:.1f} MiB, "
        f"{sink.lines} lines stored"
    )
    assert outcome.status == "success"
    assert growth_mib < 50, growth_mib
    if cap < 200_000_000:
        assert log.truncated and log.bytes_dropped > 190_000_000
    else:
        assert sink.bytes == 200_000_000 and sink.lines == 200_000


def test_cleanup_removes_the_scripts(workspace: Path):
    shell = ShellRunner(kill_grace_seconds=GRACE)
    shell.prepare(JobEnvironment(workspace, str(workspace), None, "r", "j", 1), new_log()[0])
    scratch = shell._tmp
    assert scratch and os.path.isdir(scratch)
    shell.run(step("true"), new_log()[0], never)
    shell.cleanup()
    shell.cleanup()
    assert not os.path.exists(scratch)
