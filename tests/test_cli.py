"""The ``ci-queue`` command line as a user runs it: a real process, exit codes, stdout/stderr."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pipeline.conftest import serve

REPO = Path(__file__).resolve().parents[1]
POSITION = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): ")


def ci_queue(*args: str, cwd: Path | None = None, timeout: float = 60,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ci_queue.cli", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, timeout=timeout, env=env)


def write(tmp_path: Path, text: str, name: str = ".gitlab-ci.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


def test_validate_accepts_the_examples():
    examples = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs" / "pipelines").glob("*.yml"))
    assert examples
    result = ci_queue("validate", *examples)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": valid") == len(examples)


def test_validate_reports_every_problem_with_its_position(tmp_path):
    path = write(tmp_path, "build:\n  stage: biuld\n  script: make\n  artefacts: {}\n")
    result = ci_queue("validate", str(path))
    assert result.returncode == 1
    assert_no_traceback(result)
    problems = [line for line in result.stderr.splitlines() if not line.startswith("    hint:")]
    assert [POSITION.match(line).group("line", "col") for line in problems] == [("2", "10"), ("4", "3")]
    assert "stage `biuld` is not defined" in problems[0]
    assert "unknown key `artefacts`" in problems[1]
    assert "did you mean `artifacts`?" in result.stderr
    assert "did you mean `build`?" in result.stderr


def test_validate_prints_warnings_and_still_succeeds(tmp_path):
    path = write(tmp_path, "job:\n  script: a\n  script: b\n")
    result = ci_queue("validate", str(path))
    assert result.returncode == 0
    assert re.search(r":3:3: warning: duplicate key 'script'.*line 2", result.stderr)
    assert "valid (1 warning)" in result.stdout


def test_validate_several_files_fails_if_one_is_invalid(tmp_path):
    good = write(tmp_path, "job:\n  script: make\n", "good.yml")
    bad = write(tmp_path, "job:\n  script: [make\n", "bad.yml")
    result = ci_queue("validate", str(good), str(bad))
    assert result.returncode == 1
    assert f"{good}: valid" in result.stdout
    assert POSITION.match(result.stderr.splitlines()[0]).group("file") == str(bad)


@pytest.mark.parametrize("args", [(), ("validate",), ("validate", "/does/not/exist.yml"),
                                  ("plan", "x.yml", "--event", "nope"), ("frobnicate",)])
def test_usage_errors_exit_2(args, tmp_path):
    result = ci_queue(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert_no_traceback(result)


def test_plan_json_has_the_documented_shape(tmp_path):
    path = write(tmp_path, """
stages: [build, test]
variables: {GLOBAL: g}
build:
  stage: build
  image: alpine:3
  script: make
  timeout: 1h 30m
  retry: {max: 2, when: runner_system_failure}
test:
  needs: [build]
  tags: [linux]
  before_script: [setup]
  script: [make test]
  after_script: cleanup
  variables: {LOCAL: l}
  allow_failure: {exit_codes: [3]}
""")
    result = ci_queue("plan", str(path), "--format", "json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["stages"] == ["build", "test"]
    assert plan["warnings"] == []
    build, test = plan["jobs"]
    for key in ("name", "stage", "when", "allow_failure", "needs", "tags", "image", "timeout", "retry",
                "script", "before_script", "after_script", "variables"):
        assert key in build and key in test
    assert build["needs"] is None and build["timeout"] == 5400 and build["image"] == {"name": "alpine:3"}
    assert build["retry"] == {"max": 2, "when": ["runner_system_failure"], "exit_codes": []}
    assert test["needs"] == [{"job": "build", "artifacts": True, "optional": False}]
    assert test["allow_failure"] == {"exit_codes": [3]}
    assert test["variables"] == {"GLOBAL": "g", "LOCAL": "l"}
    assert (test["before_script"], test["script"], test["after_script"]) == (["setup"], ["make test"], ["cleanup"])


def test_plan_for_tag_branch_and_variables(tmp_path):
    path = write(tmp_path, """
release:
  script: publish
  rules:
    - if: $CI_COMMIT_TAG =~ /^v/
nightly:
  script: long
  rules:
    - if: $NIGHTLY == "1"
always:
  script: "true"
""")
    def names(*args: str) -> list[str]:
        result = ci_queue("plan", str(path), "--format", "json", *args)
        assert result.returncode == 0, result.stderr
        return [j["name"] for j in json.loads(result.stdout)["jobs"]]

    assert names() == ["always"]
    assert names("--tag", "v1.0") == ["release", "always"]
    assert names("--var", "NIGHTLY=1") == ["nightly", "always"]
    assert names("--event", "merge_request", "--branch", "feature") == []


def test_plan_text_is_a_table_by_stage():
    result = ci_queue("plan", "configs/pipelines/example.yml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Pipeline for push to main:")
    assert "build" in lines and "test" in lines
    assert any(line.strip().startswith("unit: [3.11]") for line in lines)


def test_plan_of_an_invalid_file_fails_with_positions(tmp_path):
    path = write(tmp_path, "job:\n  script: x\n  needs: [nope]\n")
    result = ci_queue("plan", str(path))
    assert result.returncode == 1
    assert POSITION.match(result.stderr).group("line", "col") == ("3", "11")


def test_plan_says_when_no_pipeline_is_created(tmp_path):
    path = write(tmp_path, "release:\n  script: publish\n  rules: [{if: $CI_COMMIT_TAG}]\n")
    result = ci_queue("plan", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "No pipeline for push to main: No stages / jobs for this pipeline."
    result = ci_queue("plan", str(path), "--format", "json")
    assert json.loads(result.stdout)["skipped_reason"] == "No stages / jobs for this pipeline."


def test_plan_and_validate_with_inputs_and_project_dirs_offline(tmp_path):
    """A file with `spec:inputs` and `include: project:` checked without any server: --input and
    --project-dir (the project's own `local:` includes are its files)."""
    templates = tmp_path / "templates"
    (templates / "ci").mkdir(parents=True)
    (templates / "ci" / "build.yml").write_text("include: ci/common.yml\nbuild: {extends: .common, script: make}\n")
    (templates / "ci" / "common.yml").write_text(".common: {tags: [shared]}\n")
    path = write(tmp_path, "spec:\n  inputs:\n    copies: {type: number}\n---\n"
                           "include: {project: group/templates, file: ci/build.yml}\n"
                           "test: {script: x, parallel: '$[[ inputs.copies ]]'}\n")
    project = f"--project-dir=group/templates={templates}"
    result = ci_queue("plan", str(path), "--format", "json", "--input", "copies=2", project)
    assert result.returncode == 0, result.stderr
    assert [(j["name"], j["tags"]) for j in json.loads(result.stdout)["jobs"]] == [
        ("build", ["shared"]), ("test 1/2", []), ("test 2/2", [])]
    assert ci_queue("validate", str(path), "--input", "copies=2", project).returncode == 0
    missing = ci_queue("validate", str(path), project)
    assert missing.returncode == 1 and POSITION.match(missing.stderr).group("line", "col") == ("3", "5")
    assert "`copies` input: required value has not been provided" in missing.stderr
    offline = ci_queue("plan", str(path), "--input", "copies=2")
    assert offline.returncode == 1
    assert "--project-dir NAME=PATH" in offline.stderr
    bad = ci_queue("plan", str(path), "--input", "copies")
    assert bad.returncode == 2 and "expected NAME=VALUE" in bad.stderr
    assert_no_traceback(bad)


def test_plan_fetches_remote_includes_from_the_allowed_hosts_only(tmp_path):
    with serve() as served:
        served.pages["/lint.yml"] = (200, b"lint: {script: ruff}\n", {})
        path = write(tmp_path, f"include: {served.url('/lint.yml')}\njob: {{script: x}}\n")
        allowed = {"CIQ_INCLUDE_REMOTE_HOSTS": "127.0.0.1", "CIQ_CLONE_ALLOW_HOSTS": "127.0.0.1"}
        result = ci_queue("plan", str(path), "--format", "json", env=allowed)
        assert result.returncode == 0, result.stderr
        assert [j["name"] for j in json.loads(result.stdout)["jobs"]] == ["lint", "job"]
        refused = ci_queue("plan", str(path), env={"CIQ_INCLUDE_REMOTE_HOSTS": ""})
        assert refused.returncode == 1 and "remote includes are not allowed here" in refused.stderr
        assert "CIQ_INCLUDE_REMOTE_HOSTS" in refused.stderr
        assert len(served.requests) == 1


HOSTILE = {
    "alias bomb": lambda: "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)),
    "deep nesting": lambda: "job: " + "[" * 50_000 + "]" * 50_000 + "\n",
    "huge file": lambda: "job:\n  script:\n" + "    - echo 0123456789abcdef0123456789abcdef\n" * 150_000,
}


@pytest.mark.parametrize("name", [*HOSTILE, "binary"])
def test_hostile_input_is_refused_fast_without_traceback(name, tmp_path):
    path = tmp_path / "hostile.yml"
    path.write_bytes(HOSTILE[name]().encode() if name in HOSTILE else b"\x00\x01\x02\xff")
    started = time.monotonic()
    result = ci_queue("validate", str(path))
    elapsed = time.monotonic() - started
    assert result.returncode == 1, (name, result.stdout, result.stderr)
    assert_no_traceback(result)
    assert POSITION.match(result.stderr), result.stderr
    assert elapsed < 10, f"{name} took {elapsed:.1f}s"
