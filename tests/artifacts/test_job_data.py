"""Jobs with artifacts, reports and caches: real shell steps (``workers.job.run_job``) in their own
workspaces, talking to a live web app with their job token, as attempts on different hosts do
(each job its own workspace and its own local cache directory: no path is shared)."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import pytest

from ci_queue.pipeline.model import Job
from ci_queue.settings import Settings
from ci_queue.store.artifacts import ArtifactIndex
from ci_queue.trust import RunTrust
from tests.artifacts.conftest import LiveApp
from tests.engine.test_store import make_plan
from workers.job import JobRequest, JobResult, run_job
from workers.logs import MemorySink
from workers.transfer import JobChannel, TransferError

SHA = "a" * 40


def never() -> bool:
    return False


def run(live: LiveApp, run_id: str, name: str, tmp_path: Path, *, host: str = "host-a",
        settings: Settings | None = None, attempt: int = 1) -> tuple[JobResult, MemorySink, Path]:
    """Run job ``name`` of the run as a worker on ``host`` would: begin its attempt, run it in a
    fresh workspace with that host's local cache directory and the run's trusted facts, record
    its end."""
    index = live.store.job_index(run_id, name)
    state = live.store.job(run_id, index)
    job = Job.from_dict(state.spec)
    token = live.begin(run_id, index, attempt)
    workspace = tmp_path / host / "ws" / f"{run_id}-{name}-{attempt}"
    workspace.mkdir(parents=True)
    config = settings or live.settings
    config = dataclasses.replace(config, cache_dir=str(tmp_path / host / "cache"))
    channel = JobChannel(live.url, run_id, index, attempt, token)
    request = JobRequest(job=job, run_id=run_id, job_id=f"{run_id}-{index}", pipeline_id=run_id, attempt=attempt,
                         sha=SHA, ref="main", project_path="group/project",
                         pipeline_variables={"CI_COMMIT_REF_NAME": "main"},
                         channel=channel, fetch_artifacts=True, trust=live.store.get_run(run_id).trust)
    sink = MemorySink()
    with channel:
        result = run_job(request, workspace, sink, never, settings=config)
    live.finish(run_id, index, attempt, "success" if result.status == "success" else "failed")
    return result, sink, workspace


def log(sink: MemorySink) -> str:
    return "\n".join(sink.texts())


def planned(live: LiveApp, text: str, **create) -> str:
    run_id, _, _ = live.plan_run(text, **create)
    return run_id


BUILD_TEST_LINT = """
stages: [build, test]
build:
  stage: build
  script:
    - mkdir -p dist/bin && printf 'app %s\\n' 42 > dist/app && echo tool > dist/bin/tool
    - echo 'BUILD_VERSION=1.2.3' > build.env
    - echo 'not kept' > notes.txt
  artifacts:
    name: "app-$CI_COMMIT_REF_NAME"
    paths: [dist/]
    exclude: [dist/bin/**]
    reports: {dotenv: build.env}
test:
  stage: test
  script:
    - cat dist/app
    - test "$BUILD_VERSION" = 1.2.3
    - test ! -e dist/bin/tool && test ! -e notes.txt
lint:
  stage: test
  dependencies: []
  script:
    - test ! -e dist/app
    - test -z "$BUILD_VERSION"
"""


def test_a_later_job_gets_the_files_and_dotenv_variables_and_dependencies_none_gets_nothing(live, tmp_path):
    run_id = planned(live, BUILD_TEST_LINT)
    build, build_log, _ = run(live, run_id, "build", tmp_path, host="host-a")
    assert build.status == "success", log(build_log)
    assert "Uploaded 1 files" in log(build_log) and "reports:dotenv: 1 variables" in log(build_log)
    record = ArtifactIndex(live.store).artifacts(run_id, live.store.job_index(run_id, "build"))
    assert record["name"] == "app-main"
    test, test_log, workspace = run(live, run_id, "test", tmp_path, host="host-b")
    assert test.status == "success", log(test_log)
    assert "app 42" in test_log.texts("out")
    assert (workspace / "dist" / "app").read_text() == "app 42\n"
    lint, lint_log, _ = run(live, run_id, "lint", tmp_path, host="host-c")
    assert lint.status == "success", log(lint_log)
    assert "Downloading artifacts" not in log(lint_log)


@pytest.mark.parametrize(("when", "script", "kept"), [
    ("on_success", "true", True), ("on_success", "false", False),
    ("on_failure", "true", False), ("on_failure", "false", True),
    ("always", "false", True),
])
def test_artifacts_when(live, tmp_path, when, script, kept):
    run_id = planned(live, f"""
job:
  script: [echo x > out.txt, "{script}"]
  artifacts: {{paths: [out.txt], when: {when}}}
""")
    result, sink, _ = run(live, run_id, "job", tmp_path)
    assert result.status == ("success" if script == "true" else "failed"), log(sink)
    assert (ArtifactIndex(live.store).artifacts(run_id, 0) is not None) is kept, log(sink)


def test_no_matching_files_is_a_warning_not_a_failure(live, tmp_path):
    run_id = planned(live, "job:\n  script: ['true']\n  artifacts: {paths: [nothing/]}\n")
    result, sink, _ = run(live, run_id, "job", tmp_path)
    assert result.status == "success"
    assert "WARNING: no files matched `artifacts:paths` (nothing/)" in log(sink)
    assert ArtifactIndex(live.store).artifacts(run_id, 0) is None


def test_artifacts_over_the_limit_fail_the_job_saying_how_much(live, tmp_path):
    run_id = planned(live, "job:\n  script: [head -c 3000 /dev/zero > big.bin]\n  artifacts: {paths: [big.bin]}\n")
    settings = dataclasses.replace(live.settings, max_artifact_bytes=2048)
    result, sink, _ = run(live, run_id, "job", tmp_path, settings=settings)
    assert (result.status, result.failure_class) == ("failed", "artifacts_too_large"), log(sink)
    assert "2.9 KiB" in result.reason or "3000" in result.reason, result.reason


def test_a_symlink_out_of_the_workspace_is_not_followed(live, tmp_path):
    secret = tmp_path / "outside-secret"
    secret.write_text("do not upload")
    run_id = planned(live, f"""
job:
  script: [mkdir -p out, ln -s {secret} out/leak, ln -s ../ok.txt out/fine, echo ok > ok.txt, echo hi > out/a]
  artifacts: {{paths: [out/, ok.txt]}}
""")
    result, sink, _ = run(live, run_id, "job", tmp_path)
    assert result.status == "success", log(sink)
    assert "out/leak" in log(sink)  # the refusal names it
    record = ArtifactIndex(live.store).artifacts(run_id, 0)
    with live.objects.open(record["key"]) as reader:
        data = b"".join(reader.iter_chunks(1 << 20))
    assert b"do not upload" not in data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert "out/leak" not in names and names["out/fine"].issym() and names["out/a"].isfile()


def test_untracked_files_are_collected(live, tmp_path):
    run_id = planned(live, "job:\n  script: [echo new > fresh.txt]\n  artifacts: {untracked: true}\n")
    result, sink, _ = run(live, run_id, "job", tmp_path)
    assert result.status == "success", log(sink)
    assert ArtifactIndex(live.store).artifacts(run_id, 0)["files"] == 1


def test_expired_dependency_fails_the_job_with_missing_dependency(live, tmp_path):
    from ci_queue.artifacts.janitor import ObjectJanitor

    run_id = planned(live, """
stages: [build, test]
build: {stage: build, script: [echo x > a], artifacts: {paths: [a], expire_in: 1 hour}}
test: {stage: test, script: [cat a]}
""")
    assert run(live, run_id, "build", tmp_path)[0].status == "success"
    ObjectJanitor(live.store, live.objects, live.settings).sweep(now=live.store.now() + 7200)
    result, _, _ = run(live, run_id, "test", tmp_path, host="host-b")
    assert (result.status, result.failure_class) == ("failed", "missing_dependency")
    assert "`build`" in result.reason and "expired" in result.reason


def test_an_invalid_dotenv_fails_the_job(live, tmp_path):
    run_id = planned(live, "job:\n  script: [echo 'bad line' > b.env]\n  artifacts: {reports: {dotenv: b.env}}\n")
    result, sink, _ = run(live, run_id, "job", tmp_path)
    assert (result.status, result.failure_class) == ("failed", "invalid_report"), log(sink)


def test_a_hostile_archive_of_a_dependency_is_refused_naming_the_entry(live, tmp_path):
    run_id = planned(live, """
stages: [build, test]
build: {stage: build, script: [echo x > a], artifacts: {paths: [a]}}
test: {stage: test, script: [echo should not run]}
""")
    assert run(live, run_id, "build", tmp_path)[0].status == "success"
    record = ArtifactIndex(live.store).artifacts(run_id, 0)
    hostile = io.BytesIO()
    with tarfile.open(fileobj=hostile, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    stored = live.objects.put(record["key"], io.BytesIO(hostile.getvalue()))
    live.store.r.hset(live.store._state(run_id), "n0.artifacts",
                      json.dumps({**record, "sha256": stored.sha256, "size": stored.size}))
    result, sink, workspace = run(live, run_id, "test", tmp_path, host="host-b")
    assert (result.status, result.failure_class) == ("failed", "invalid_artifacts"), log(sink)
    assert "../../escaped.txt" in result.reason
    assert not (workspace.parent.parent / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert "should not run" not in sink.texts("out")


CACHE = """
stages: [one, two]
default:
  cache: {key: deps, paths: [vendor/]}
one:
  stage: one
  script: [mkdir -p vendor, echo v1 > vendor/lib]
two:
  stage: two
  needs: []  # ready at once: a run of its own can start here
  script: [cat vendor/lib]
"""


def test_a_cache_pushed_on_one_host_is_pulled_on_another_then_from_the_local_copy(live, tmp_path):
    run_id = planned(live, CACHE)
    one, one_log, _ = run(live, run_id, "one", tmp_path, host="host-a")
    assert one.status == "success" and "Created cache deps-protected" in log(one_log), log(one_log)
    two, two_log, _ = run(live, run_id, "two", tmp_path, host="host-b")
    assert two.status == "success", log(two_log)
    assert "v1" in two_log.texts("out") and "downloaded" in log(two_log)
    again = planned(live, CACHE)
    _, again_log, _ = run(live, again, "two", tmp_path, host="host-b")
    assert "v1" in again_log.texts("out") and "local copy" in log(again_log)


def test_protected_and_unprotected_refs_never_share_a_cache(live, tmp_path):
    run_id = planned(live, CACHE)
    assert run(live, run_id, "one", tmp_path, host="host-a")[0].status == "success"
    for trust in (RunTrust(registered=True), RunTrust(fork=True, registered=True)):  # a branch; a fork's MR
        pr_run = planned(live, CACHE, ref="feature", trust=trust)
        forks_allowed = dataclasses.replace(live.settings, shell_allow_forks=True)  # this test's shell runs them
        result, sink, _ = run(live, pr_run, "two", tmp_path, host="host-b", settings=forks_allowed)
        assert result.status == "failed"  # no cache for deps-non_protected: vendor/lib is not there
        assert "No cache for deps-non_protected" in log(sink)
        # and a job of it that asks for the protected key itself (it has the job token) is refused
        index = live.store.job_index(pr_run, "one")
        with JobChannel(live.url, pr_run, index, 1, live.begin(pr_run, index)) as channel:
            with pytest.raises(TransferError, match="cannot read or write the caches of protected refs"):
                channel.upload_cache("deps-protected", lambda: iter([b"poison"]))
            with pytest.raises(TransferError, match="FORBIDDEN"):  # a HEAD: no body, the status says it
                channel.cache_checksum("deps-protected")


def test_a_cache_miss_or_an_unreachable_web_app_is_never_a_failure_for_caches(live, tmp_path):
    run_id = planned(live, "job:\n  cache: {key: nothing-yet, paths: [x/]}\n  script: ['true']\n")
    result, sink, _ = run(live, run_id, "job", tmp_path)
    assert result.status == "success", log(sink)
    assert "No cache for nothing-yet" in log(sink) and "no files to cache" in log(sink)


def test_exec_without_a_web_app_says_artifacts_are_ignored(tmp_path):
    plan = make_plan(tmp_path, "job:\n  script: ['true']\n  artifacts: {paths: [x]}\n")
    request = JobRequest(job=plan.jobs[0], run_id="r", job_id="1", pipeline_id="r", sha=SHA, ref="main",
                         project_path="g/p")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    sink = MemorySink()
    assert run_job(request, workspace, sink, never, settings=Settings()).status == "success"
    assert "need the web app" in log(sink)
