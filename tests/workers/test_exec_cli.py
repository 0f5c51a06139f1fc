"""``ci-queue exec`` end to end, as a user runs it: a real process, exit codes, output, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.workers.conftest import assert_all_gone, read_pids, wait_for

REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (?P<step>\S+) +(?P<mark>[|!*]) (?P<text>.*)$")

# The `exec` command comes from the `ci_queue.commands` entry point once the project is installed
# (`pip install -e .`, as `make test` does); from a bare checkout, register it the same way.
_INSTALLED = any(
    e.name == "exec" and e.value == "workers.cli:exec_command" for e in entry_points(group="ci_queue.commands")
)
_BOOT = (
    "import sys; from ci_queue import cli; from workers.cli import exec_command; "
    "cli.cli.add_command(exec_command, 'exec'); cli.main()"
)

PIPELINE = """\
stages: [build, test]
variables:
  GREETING: hello
build:
  stage: build
  before_script:
    - cd sub
  script:
    - echo "$GREETING from $(basename $PWD) with $EXTRA"
    - echo to-stderr >&2
  after_script:
    - echo "after $CI_JOB_STATUS"
broken:
  stage: test
  script:
    - echo about to fail
    - exit 3
release:
  stage: test
  rules:
    - if: $CI_COMMIT_TAG
  script:
    - echo release
shards:
  stage: test
  parallel: 2
  script:
    - echo "shard $CI_NODE_INDEX/$CI_NODE_TOTAL"
long:
  stage: test
  script:
    - sleep 300 & echo $! >> pids
    - setsid sleep 300 & echo $! >> pids
    - sleep 300
  after_script:
    - touch after-ran
"""


def exec_argv(*args: str) -> list[str]:
    if _INSTALLED:
        return [sys.executable, "-m", "ci_queue.cli", "exec", *args]
    return [sys.executable, "-c", _BOOT, "exec", *args]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIQ_")}
    return {**env, "PYTHONPATH": str(REPO), "CIQ_KILL_GRACE_SECONDS": "2"}


def ci_queue_exec(project: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        exec_argv(str(project / ".gitlab-ci.yml"), *args, "--workdir", str(project)),
        capture_output=True,
        text=True,
        cwd=project,
        env=environment(),
        timeout=timeout,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".gitlab-ci.yml").write_text(PIPELINE)
    return tmp_path


def log_lines(stdout: str) -> list[tuple[str, str, str]]:
    return [(m["step"], m["mark"], m["text"]) for m in map(LINE.match, stdout.splitlines()) if m]


def test_the_entry_point_is_declared():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["ci_queue.commands"]
    assert declared["exec"] == "workers.cli:exec_command"


def test_success_streams_the_log_and_exits_0(project: Path):
    result = ci_queue_exec(project, "build", "--var", "EXTRA=cli-var")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = log_lines(result.stdout)
    assert ("script", "|", "$ cd sub") in lines
    assert ("script", "|", "hello from sub with cli-var") in lines
    assert ("script", "!", "to-stderr") in lines
    assert ("after_script", "|", "after success") in lines
    summary = result.stdout.splitlines()[-1]
    assert summary.startswith("Job `build` succeeded in ")
    assert "script: success" in summary and "after_script: success" in summary


def test_a_failing_script_exits_1(project: Path):
    result = ci_queue_exec(project, "broken")
    assert result.returncode == 1
    assert ("script", "|", "about to fail") in log_lines(result.stdout)
    assert "Job `broken` failed (script_failure, exit code 3)" in result.stdout.splitlines()[-1]


def test_unknown_job_exits_2_with_a_suggestion(project: Path):
    result = ci_queue_exec(project, "biuld")
    assert result.returncode == 2
    assert "no job `biuld`" in result.stderr and "did you mean `build`?" in result.stderr
    assert "build" in result.stderr.splitlines()[-1] and "long" in result.stderr.splitlines()[-1]


def test_a_job_not_planned_for_the_event_exits_1(project: Path):
    result = ci_queue_exec(project, "release")
    assert result.returncode == 1
    assert "job `release` is not in the pipeline for a push to main" in result.stderr
    tagged = ci_queue_exec(project, "release", "--tag", "v1.0")
    assert tagged.returncode == 0, tagged.stderr
    assert ("script", "|", "release") in log_lines(tagged.stdout)


def test_parallel_jobs_are_named_by_instance(project: Path):
    ambiguous = ci_queue_exec(project, "shards")
    assert ambiguous.returncode == 2
    assert "shards 1/2" in ambiguous.stderr
    one = ci_queue_exec(project, "shards 2/2")
    assert one.returncode == 0
    assert ("script", "|", "shard 2/2") in log_lines(one.stdout)


def test_an_invalid_pipeline_shows_positions_and_exits_1(project: Path):
    (project / ".gitlab-ci.yml").write_text("build:\n  script:\n    - echo ok\n  when: sometimes\n")
    result = ci_queue_exec(project, "build")
    assert result.returncode == 1
    assert re.search(r"\.gitlab-ci\.yml:4:\d+: ", result.stderr), result.stderr


def test_ctrl_c_cancels_the_job_and_leaves_nothing(project: Path):
    proc = subprocess.Popen(
        exec_argv(str(project / ".gitlab-ci.yml"), "long", "--workdir", str(project)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=project,
        env=environment(),
    )
    try:
        pids = wait_for(lambda: read_pids(project / "pids", 2), timeout=20, what="the job's background processes")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert "canceling the job" in stderr
    assert "Job `long` canceled" in stdout.splitlines()[-1]
    assert not (project / "after-ran").exists()
    assert_all_gone(pids)
