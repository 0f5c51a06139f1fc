"""run_job with the real shell runner: GitLab's script semantics, after_script, env, secrets."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ci_queue.pipeline.model import Job, PlanContext
from ci_queue.pipeline.planner import plan_file
from ci_queue.settings import Settings
from ci_queue.trust import Grant, RunTrust
from tests.workers.conftest import assert_all_gone, read_pids
from workers.job import JobRequest, JobResult, build_script, expand_job_variables, run_job
from workers.logs import MemorySink
from workers.runners.base import ImageMissing, JobEnvironment, StepOutcome, StepSpec
from workers.secrets import MissingSecrets, parse_secrets_file, resolve_secrets

SETTINGS = Settings(kill_grace_seconds=1.0, after_script_timeout=5, default_job_timeout=60, executor="auto")
SHA = "0123456789abcdef0123456789abcdef01234567"


def never() -> bool:
    return False


def make_request(job: Job, **overrides) -> JobRequest:
    values = dict(
        job=job,
        run_id="run-1",
        job_id="42",
        pipeline_id="7",
        attempt=2,
        sha=SHA,
        ref="main",
        project_path="group/project",
        pipeline_variables={"CI_PIPELINE_SOURCE": "push", "CI": "true"},
    )
    values.update(overrides)
    return JobRequest(**values)


def run(
    job: Job, workspace: Path, *, settings: Settings = SETTINGS, cancel=never, **overrides
) -> tuple[JobResult, MemorySink]:
    sink = MemorySink()
    result = run_job(make_request(job, **overrides), workspace, sink, cancel, settings=settings)
    assert sink.closed
    return result, sink


def out(sink: MemorySink, step: str | None = None) -> list[str]:
    return [line.text for line in sink.lines if line.stream == "out" and (step is None or line.step == step)]


def system(sink: MemorySink) -> str:
    return "\n".join(sink.texts("system"))


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    path = tmp_path / "builds" / "group" / "project"
    path.mkdir(parents=True)
    (path / "sub").mkdir()
    return path


def test_before_script_and_script_share_one_shell_session(workspace: Path):
    job = Job(
        name="build",
        stage="build",
        before_script=["cd sub", "export FROM_BEFORE=yes"],
        script=["pwd", 'echo "exported: $FROM_BEFORE"', "echo multi\necho line"],
    )
    result, sink = run(job, workspace)
    assert (result.status, result.failure_class, result.exit_code) == ("success", None, None)
    assert out(sink) == [
        "$ cd sub",
        "$ export FROM_BEFORE=yes",
        "$ pwd",
        str(workspace / "sub"),
        '$ echo "exported: $FROM_BEFORE"',
        "exported: yes",
        "$ echo multi # collapsed multi-line command",
        "multi",
        "line",
    ]
    assert [s.name for s in result.steps] == ["script"]
    step = result.steps[0]
    assert (step.status, step.exit_code) == ("success", 0) and step.started_at <= step.finished_at
    assert result.started_at <= result.finished_at and result.duration >= step.duration
    json.dumps(result.to_dict())


def test_a_failing_command_stops_the_script_and_pipefail_holds(workspace: Path):
    job = Job(name="test", stage="test", script=["echo one", "exit 4", "echo never"])
    result, sink = run(job, workspace)
    assert (result.status, result.failure_class, result.exit_code) == ("failed", "script_failure", 4)
    assert "never" not in out(sink)
    assert "ERROR: Job failed: exit code 4" in system(sink)

    result, sink = run(Job(name="pipe", stage="test", script=["false | true", "echo never"]), workspace)
    assert (result.status, result.exit_code) == ("failed", 1)
    assert "never" not in out(sink)


def test_after_script_runs_in_a_fresh_shell_after_a_failure(workspace: Path):
    job = Job(
        name="test",
        stage="test",
        script=["cd sub", "export ONLY_IN_SCRIPT=1", "exit 3"],
        after_script=['echo "pwd=$PWD var=${ONLY_IN_SCRIPT-unset} status=$CI_JOB_STATUS"', "exit 9"],
    )
    result, sink = run(job, workspace)
    assert (result.status, result.failure_class, result.exit_code) == ("failed", "script_failure", 3)
    assert [(s.name, s.status, s.exit_code) for s in result.steps] == [
        ("script", "failed", 3),
        ("after_script", "failed", 9),
    ]
    assert out(sink, "after_script")[1] == f"pwd={workspace} var=unset status=failed"
    assert "after_script failed with exit code 9; the job's status does not change" in system(sink)


def test_after_script_failure_does_not_fail_a_successful_job(workspace: Path):
    job = Job(name="ok", stage="test", script=["true"], after_script=["exit 1"])
    result, _ = run(job, workspace)
    assert (result.status, result.failure_class) == ("success", None)
    assert result.steps[1].status == "failed"


def test_timeout_then_after_script_and_no_survivor(workspace: Path):
    job = Job(
        name="slow",
        stage="test",
        timeout=2,
        script=["sleep 300 & echo $! >> pids", "setsid sleep 300 & echo $! >> pids", "sleep 300"],
        after_script=['echo "after: $CI_JOB_STATUS"'],
    )
    start = time.monotonic()
    result, sink = run(job, workspace)
    assert time.monotonic() - start < 2 + SETTINGS.kill_grace_seconds + 2
    assert (result.status, result.failure_class, result.exit_code) == ("failed", "timeout", None)
    assert [(s.name, s.status) for s in result.steps] == [("script", "timeout"), ("after_script", "success")]
    assert "after: failed" in out(sink, "after_script")
    assert "the job exceeded its timeout of 2s" in system(sink)
    assert_all_gone(read_pids(workspace / "pids", 2))


def test_after_script_has_its_own_timeout(workspace: Path):
    settings = Settings(kill_grace_seconds=1.0, after_script_timeout=1, default_job_timeout=60)
    job = Job(name="t", stage="test", script=["echo fine"], after_script=["sleep 300"])
    result, sink = run(job, workspace, settings=settings)
    assert (result.status, result.failure_class) == ("success", None)
    assert result.steps[1].status == "timeout"
    assert "after_script timed out after 1s" in system(sink)


def test_cancel_stops_the_job_and_skips_after_script(workspace: Path):
    job = Job(
        name="c",
        stage="test",
        script=["sleep 300 & echo $! >> pids", "sleep 300"],
        after_script=["echo should-not-run"],
    )
    canceled_at: list[float] = []

    def cancel() -> bool:
        if read_pids(workspace / "pids", 1) is None:
            return False
        canceled_at.append(time.monotonic())
        return True

    result, sink = run(job, workspace, cancel=cancel)
    assert time.monotonic() - canceled_at[0] < 2.0
    assert (result.status, result.failure_class) == ("canceled", "canceled")
    assert [s.name for s in result.steps] == ["script"]
    assert "should-not-run" not in "\n".join(sink.texts())
    assert_all_gone(read_pids(workspace / "pids", 1))


def test_canceled_before_it_starts(workspace: Path):
    result, _ = run(Job(name="c", stage="test", script=["touch ran"]), workspace, cancel=lambda: True)
    assert (result.status, result.failure_class, result.steps) == ("canceled", "canceled", [])
    assert not (workspace / "ran").exists()


def test_environment_precedence_and_predefined_variables(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKER_ONLY", "leak")
    monkeypatch.setenv("DEPLOY_TOKEN", "tok-123456")
    job = Job(
        name="deploy 2/3",
        stage="deploy",
        node_index=2,
        node_total=3,
        secrets=["DEPLOY_TOKEN"],
        variables={
            "FROM_PIPELINE": "job wins",
            "GREETING": "hi $CI_JOB_NAME",
            "URL": "https://$HOST/x",
            "HOST": "example.org",
            "RAW": "keep $HOST",
            "COST": "$$5",
            "UNKNOWN": "[$NOT_DEFINED]",
            "DEPLOY_TOKEN": "overridden by the secret",
            "CI_COMMIT_REF_NAME": "job var wins",
        },
        raw_variables=["RAW"],
        script=[
            "for v in FROM_PIPELINE GREETING URL RAW COST UNKNOWN CI CI_JOB_NAME CI_JOB_STAGE CI_JOB_ID "
            "CI_JOB_ATTEMPT CI_JOB_TIMEOUT CI_PIPELINE_ID CI_COMMIT_SHA CI_COMMIT_SHORT_SHA "
            "CI_COMMIT_REF_NAME CI_PROJECT_DIR CI_PROJECT_PATH CI_BUILDS_DIR CI_NODE_INDEX CI_NODE_TOTAL "
            'CI_PIPELINE_SOURCE CI_JOB_STATUS WORKER_ONLY; do eval "echo $v=\\${$v-unset}"; done',
            'test "$DEPLOY_TOKEN" = tok-123456 && echo secret-ok',
        ],
    )
    result, sink = run(
        job,
        workspace,
        pipeline_variables={
            "FROM_PIPELINE": "pipeline",
            "CI": "true",
            "CI_PIPELINE_SOURCE": "push",
            "CI_COMMIT_SHA": "f" * 40,
        },
    )
    assert result.status == "success", system(sink)
    values = dict(line.split("=", 1) for line in out(sink) if "=" in line and not line.startswith("$"))
    assert values == {
        "FROM_PIPELINE": "job wins",
        "GREETING": "hi deploy 2/3",
        "URL": "https://example.org/x",
        "RAW": "keep $HOST",
        "COST": "$5",
        "UNKNOWN": "[]",
        "CI": "true",
        "CI_JOB_NAME": "deploy 2/3",
        "CI_JOB_STAGE": "deploy",
        "CI_JOB_ID": "42",
        "CI_JOB_ATTEMPT": "2",
        "CI_JOB_TIMEOUT": "60",
        "CI_PIPELINE_ID": "7",
        "CI_COMMIT_SHA": SHA,
        "CI_COMMIT_SHORT_SHA": SHA[:8],
        "CI_COMMIT_REF_NAME": "job var wins",
        "CI_PROJECT_DIR": str(workspace),
        "CI_PROJECT_PATH": "group/project",
        "CI_BUILDS_DIR": str(workspace.parent),
        "CI_NODE_INDEX": "2",
        "CI_NODE_TOTAL": "3",
        "CI_PIPELINE_SOURCE": "push",
        "CI_JOB_STATUS": "running",
        "WORKER_ONLY": "unset",
    }
    assert "secret-ok" in out(sink)


def test_planned_job_gets_the_plans_variables(workspace: Path, tmp_path: Path):
    pipeline = tmp_path / ".gitlab-ci.yml"
    pipeline.write_text(
        "variables:\n  GLOBAL: g-$CI_COMMIT_REF_NAME\n"
        'job:\n  variables:\n    LOCAL: l-$GLOBAL\n  script:\n    - echo "$GLOBAL $LOCAL"\n'
    )
    plan = plan_file(pipeline, PlanContext(branch="main", repo_dir=str(tmp_path)), tmp_path)
    result, sink = run(plan.job("job"), workspace, pipeline_variables=plan.variables)
    assert result.status == "success"
    assert out(sink)[-1] == "g-main l-g-main"


def test_secrets_are_masked_and_never_in_the_result(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text("# comment\n\nexport FILE_SECRET='from-the-file-1234'\nOTHER = x\n")
    monkeypatch.delenv("FILE_SECRET", raising=False)
    monkeypatch.setenv("ENV_SECRET", "env-secret-value")
    settings = Settings(kill_grace_seconds=1.0, secrets_file=str(secrets_file))
    job = Job(
        name="s",
        stage="test",
        secrets=["FILE_SECRET", "ENV_SECRET"],
        script=['echo "file=$FILE_SECRET env=$ENV_SECRET"', 'echo "$ENV_SECRET" >&2', "exit 1"],
    )
    result, sink = run(job, workspace, settings=settings)
    assert result.failure_class == "script_failure"
    assert "file=[MASKED] env=[MASKED]" in out(sink)
    everything = json.dumps([line.to_dict() for line in sink.lines]) + json.dumps(result.to_dict())
    assert "from-the-file-1234" not in everything and "env-secret-value" not in everything
    assert "[MASKED]" in sink.texts("err")


def test_a_missing_secret_fails_the_job_before_it_runs(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOWHERE_TOKEN", raising=False)
    job = Job(name="s", stage="test", secrets=["NOWHERE_TOKEN"], script=["touch ran"])
    result, sink = run(job, workspace)
    assert (result.status, result.failure_class, result.steps) == ("failed", "missing_secret", [])
    assert "NOWHERE_TOKEN" in system(sink) and "NOWHERE_TOKEN" in (result.reason or "")
    assert not (workspace / "ran").exists()


def test_resolve_secrets_env_first_then_file(tmp_path: Path):
    path = tmp_path / "s"
    path.write_text('A=from-file\nB="quoted value"\n# C=no\n')
    assert resolve_secrets(["A", "B"], environ={"A": "from-env"}, secrets_file=path) == {
        "A": "from-env",
        "B": "quoted value",
    }
    with pytest.raises(MissingSecrets) as missing:
        resolve_secrets(["A", "C"], environ={}, secrets_file=path)
    assert missing.value.names == ["C"]
    with pytest.raises(MissingSecrets, match="cannot read the secrets file"):
        resolve_secrets(["A"], environ={}, secrets_file=tmp_path / "absent")
    path.write_text("not a pair\n")
    with pytest.raises(Exception, match=":1: not a KEY=VALUE line"):
        parse_secrets_file(path)


def test_trigger_jobs_are_not_runnable(workspace: Path):
    result, sink = run(Job(name="t", stage="test", trigger={"project": "a/b"}), workspace)
    assert (result.status, result.failure_class) == ("failed", "not_runnable")
    assert "downstream pipeline" in system(sink)


def test_shell_executor_ignores_the_image_and_services_with_a_warning(workspace: Path):
    settings = Settings(kill_grace_seconds=1.0, executor="shell")
    job = Job(
        name="i",
        stage="test",
        image={"name": "python:3.12"},
        services=[{"name": "postgres:16"}],
        script=["echo ran here"],
    )
    result, sink = run(job, workspace, settings=settings)
    assert result.status == "success"
    assert "image `python:3.12` is ignored" in system(sink)
    assert "`services:` (postgres:16) are not supported by the shell executor and are ignored" in system(sink)
    assert "ran here" in out(sink)


@pytest.mark.parametrize(("variables", "named", "limit"), [
    ({"BIG": "x" * 200_000}, "variable 'BIG' is 200005 bytes as NAME=value", "(MAX_ARG_STRLEN)"),
    ({f"PART_{i}": "y" * 100_000 for i in range(40)}, "the environment is", "(ARG_MAX)"),
], ids=["one-over-MAX_ARG_STRLEN", "all-over-ARG_MAX"])
def test_an_environment_the_kernel_would_refuse_fails_the_job_before_any_step(workspace: Path, variables, named,
                                                                              limit):
    """E2BIG on every host: a permanent failure of its own class (never runner_system_failure,
    which the engine retries), naming the variable and never showing its value."""
    job = Job(name="huge", stage="test", script=["echo never"], variables=variables)
    result, sink = run(job, workspace)
    assert (result.status, result.failure_class, result.steps) == ("failed", "environment_too_large", [])
    assert named in result.reason and limit in result.reason
    assert "x" * 100 not in result.reason and "y" * 100 not in system(sink)
    assert out(sink) == []


def test_a_variable_just_under_the_limit_reaches_the_step(workspace: Path):
    value = "z" * (131_072 - len("NEAR=") - 1)
    result, sink = run(Job(name="near", stage="test", script=['echo "${#NEAR}"'], variables={"NEAR": value}),
                       workspace)
    assert result.status == "success" and out(sink)[-1] == str(len(value))


class FailingRunner:
    """A StepRunner whose prepare fails like a missing image (no Docker needed)."""

    def __init__(self) -> None:
        self.cleaned = False

    def prepare(self, env: JobEnvironment, log) -> None:
        raise ImageMissing(f"image {env.image or 'none'} not found")

    def run(self, step: StepSpec, log, cancel) -> StepOutcome:
        raise AssertionError("never called")

    def cleanup(self) -> None:
        self.cleaned = True


def test_an_infrastructure_error_fails_the_job_with_its_class_and_cleans_up(workspace: Path):
    failing = FailingRunner()
    sink = MemorySink()
    job = Job(name="d", stage="test", image={"name": "nope:1"}, script=["true"])
    result = run_job(make_request(job), workspace, sink, never, settings=SETTINGS, runner=failing)
    assert (result.status, result.failure_class, result.steps) == ("failed", "image_missing", [])
    assert failing.cleaned
    assert "image nope:1 not found" in system(sink)


def test_build_script_and_expansion_units():
    script = build_script(["echo 'quoted'", "", "a\nb"])
    assert "printf '%s\\n' '$ echo '\"'\"'quoted'\"'\"''" in script
    assert "$ a # collapsed multi-line command" in script
    # a reference cycle ends, leaving the reference that closes it as written
    assert expand_job_variables({"A": "$B-$C", "B": "b", "C": "${A}"}, {}) == {"A": "b-${A}", "B": "b", "C": "${A}"}
    assert expand_job_variables({"X": "$$HOME ${Y}"}, {"Y": "y"}) == {"X": "$HOME y"}
    assert os.environ.get("CI_QUEUE_STEP_TOKEN") is None


# -- trust: grants decided again at the worker, the trusted CI_COMMIT_REF_PROTECTED, forks on shell ----------

GRANTS = (Grant("PLAIN_TOKEN"), Grant("DEPLOY_TOKEN", protected=True, environments=("production",)))


def test_only_granted_secrets_are_resolved_whatever_the_spec_says(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PLAIN_TOKEN", "plain-value-123")
    monkeypatch.setenv("DEPLOY_TOKEN", "deploy-value-456")
    # a spec that lists a protected secret as granted (an older plan, a hand-edited key): the
    # worker asks the run's facts again, and the job fails before anything ran, saying why
    job = Job(name="deploy", stage="deploy", secrets=["PLAIN_TOKEN", "DEPLOY_TOKEN"], script=["touch ran"],
              environment={"name": "production"})
    result, sink = run(job, workspace, trust=RunTrust(registered=True, grants=GRANTS))
    assert (result.status, result.failure_class, result.steps) == ("failed", "missing_secret", [])
    assert "secret DEPLOY_TOKEN is protected" in result.reason and "this ref is not protected" in result.reason
    assert not (workspace / "ran").exists()
    everything = "\n".join(line.text for line in sink.lines) + json.dumps(result.to_dict())
    assert "deploy-value-456" not in everything and "plain-value-123" not in everything

    # a fork: nothing, with the reason; a name only in `refused_secrets` is asked about too
    job = Job(name="t", stage="test", secrets=[], refused_secrets=[{"name": "PLAIN_TOKEN", "reason": "x",
                                                                    "message": "x"}], script=["touch ran"])
    result, _ = run(job, workspace, trust=RunTrust(fork=True, registered=True, grants=GRANTS))
    assert result.failure_class == "missing_secret" and "forks get no secrets" in result.reason

    # out of its environment scope, and not granted at all
    job = Job(name="t", stage="test", secrets=["DEPLOY_TOKEN", "OTHER"], script=["touch ran"],
              environment={"name": "staging"})
    result, _ = run(job, workspace, trust=RunTrust(protected=True, registered=True, grants=GRANTS))
    assert "scoped to the environments production; this job has environment `staging`" in result.reason
    assert "secret OTHER is not granted to group/project" in result.reason

    # granted: the value is there, masked in the log
    job = Job(name="deploy", stage="deploy", secrets=["PLAIN_TOKEN", "DEPLOY_TOKEN"],
              script=['test "$DEPLOY_TOKEN" = deploy-value-456 && echo "got $DEPLOY_TOKEN"'],
              environment={"name": "production"})
    result, sink = run(job, workspace, trust=RunTrust(protected=True, registered=True, grants=GRANTS))
    assert result.status == "success", system(sink)
    assert "got [MASKED]" in out(sink) and "deploy-value-456" not in "\n".join(line.text for line in sink.lines)


def test_ci_commit_ref_protected_is_the_runs_fact(workspace: Path, tmp_path: Path):
    job = Job(name="t", stage="test", variables={"CI_COMMIT_REF_PROTECTED": "true"},
              script=['echo "protected=$CI_COMMIT_REF_PROTECTED"'])
    for trust, shown in ((RunTrust(), "false"), (RunTrust(protected=True, registered=True), "true")):
        result, sink = run(job, workspace, trust=trust, trigger_variables=frozenset({"CI_COMMIT_REF_PROTECTED"}),
                           pipeline_variables={"CI_COMMIT_REF_PROTECTED": "true"})
        assert result.status == "success" and f"protected={shown}" in out(sink)
    # without a control plane (`ci-queue exec`) the plan's value stands
    result, sink = run(job, workspace)
    assert "protected=true" in out(sink)


def test_the_shell_executor_refuses_forks_unless_told(workspace: Path):
    job = Job(name="t", stage="test", script=["touch ran"])
    fork = RunTrust(fork=True, registered=True)
    result, sink = run(job, workspace, trust=fork)
    assert (result.status, result.failure_class, result.steps) == ("failed", "fork_refused", [])
    assert "does not run merge requests from forks" in result.reason and "CIQ_SHELL_ALLOW_FORKS=1" in result.reason
    assert "ERROR: Job failed: the shell executor does not run merge requests from forks" in system(sink)
    assert not (workspace / "ran").exists()
    allowed = Settings(**{**SETTINGS.__dict__, "shell_allow_forks": True})
    result, _ = run(job, workspace, trust=fork, settings=allowed)
    assert result.status == "success" and (workspace / "ran").exists()
    result, _ = run(Job(name="u", stage="test", script=["true"]), workspace, trust=RunTrust(registered=True))
    assert result.status == "success"  # not a fork: the shell executor runs it
