"""The issue's case, end to end: a real GitHub pull request from a fork (``head.repo`` is not
``base.repo``) of a registered repository whose jobs name a protected secret waits for approval,
is approved with ``ci-queue approve``, and still cannot read the secret; a push to ``main`` can
(the value from the worker's environment, masked in the log). Real web app over HTTP on
loopback, real ``ci-queue worker`` processes with the shell executor, real Redis, real git."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys

import pytest

from ci_queue.celery_app import make_celery
from ci_queue.repos import parse_registry
from ci_queue.settings import Settings
from ci_queue.web import create_app
from tests.artifacts.conftest import serve
from tests.conftest import REPO, require_shared_fixtures
from tests.engine.conftest import make_repo

pytestmark = pytest.mark.integration

SECRET = "webhook-secret-for-the-test"
TOKEN = "approver-token-5e1f"
DEPLOY_VALUE = "s3cr3t-deploy-value-9f2c"
TARGET = "ailisp/gcbapp-buildconfig-example"  # the base repository of pull_request.opened.6.json
PIPELINE = """
workflow:  # merge request pipelines and branch pipelines, as GitLab's documented pair of rules
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event"
    - if: $CI_COMMIT_BRANCH
deploy:
  environment: production
  secrets: [DEPLOY_TOKEN]
  script:
    - echo "token is $DEPLOY_TOKEN"
    - test "$DEPLOY_TOKEN" = "s3cr3t-deploy-value-9f2c"
    - echo "protected=$CI_COMMIT_REF_PROTECTED"
build:
  script:
    - echo "built on $CI_COMMIT_REF_NAME"
"""


def signed(body: bytes, event: str) -> dict[str, str]:
    return {"X-GitHub-Event": event, "X-GitHub-Delivery": os.urandom(8).hex(), "Content-Type": "application/json",
            "X-Hub-Signature-256": "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()}


def push_body(ref: str, sha: str) -> bytes:
    return json.dumps({"ref": ref, "before": "0" * 40, "after": sha, "created": True, "deleted": False,
                       "repository": {"full_name": TARGET, "default_branch": "main",
                                      "clone_url": f"https://github.com/{TARGET}.git"},
                       "head_commit": {"id": sha, "message": "change"}, "sender": {"login": "maintainer"}}).encode()


def whole_log(engine, run) -> str:
    return "\n".join(fields["text"] for job in run.jobs for _, fields in engine.store.read_log(run.id, job.index))


def test_a_forks_pull_request_waits_is_approved_and_still_cannot_read_the_protected_secret(engine, tmp_path,
                                                                                          monkeypatch):
    payload = (require_shared_fixtures() / "webhooks" / "github" / "pull_request.opened.6.json").read_bytes()
    pr = json.loads(payload)["pull_request"]
    assert pr["head"]["repo"]["full_name"] != pr["base"]["repo"]["full_name"] == TARGET

    repo = tmp_path / "target"
    main_sha = make_repo(repo, {".gitlab-ci.yml": PIPELINE})
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-b", pr["head"]["ref"]], check=True)
    fork_sha = make_repo(repo, {"CHANGE": "from the fork\n"})  # the pull request's head, in the target
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-b", "feature", main_sha], check=True)
    feature_sha = make_repo(repo, {"FEATURE": "x\n"})
    # the real payload, its head commit made one this repository has (bytes replaced, then signed)
    fork_body = payload.replace(pr["head"]["sha"].encode(), fork_sha.encode())

    monkeypatch.setenv("TEST_GITHUB_SECRET", SECRET)
    registry = parse_registry(f"""
repositories:
  - name: {TARGET}
    provider: github
    clone_url: file://{repo}
    secret_env: TEST_GITHUB_SECRET
    notify: never
    protected_branches: [main]
    secrets:
      - {{name: DEPLOY_TOKEN, protected: true, environments: [production]}}
""")
    settings = Settings(api_tokens=TOKEN, redis_url=engine.env["CIQ_REDIS_URL"], key_prefix=engine.store.prefix,
                        artifacts_url=(tmp_path / "objects").as_uri())
    url, server = serve(create_app(settings, store=engine.store, celery=make_celery(settings, web=True),
                                   registry=registry))
    try:
        engine.start_worker("w1", extra_env={"DEPLOY_TOKEN": DEPLOY_VALUE, "CIQ_SERVER_URL": url})
        import requests

        def hook(body: bytes, event: str) -> dict:
            response = requests.post(f"{url}/webhooks/github", data=body, headers=signed(body, event), timeout=10)
            assert response.status_code == 202, response.text
            return response.json()

        fork = hook(fork_body, "pull_request")
        assert fork["status"] == "waiting_approval"
        main = hook(push_body("refs/heads/main", main_sha), "push")
        feature = hook(push_body("refs/heads/feature", feature_sha), "push")

        # a push to main: the job reads the secret from the worker's environment; the log masks it
        done = engine.wait(main["run_id"])
        assert done.status == "success" and done.protected and not done.fork, whole_log(engine, done)
        log = whole_log(engine, done)
        assert "token is [MASKED]" in log and "protected=true" in log and DEPLOY_VALUE not in log

        # a push to an unprotected branch: refused, with the reason
        unprotected = engine.wait(feature["run_id"])
        deploy = next(job for job in unprotected.jobs if job.name == "deploy")
        assert (deploy.status, deploy.failure_reason) == ("failed", "missing_secret")
        assert "only runs of protected branches and tags get it" in deploy.attempts[-1]["reason"]
        assert DEPLOY_VALUE not in whole_log(engine, unprotected)

        # meanwhile (two runs made after it were planned and ran) the fork's run was never planned
        waiting = engine.store.get_run(fork["run_id"])
        assert (waiting.status, waiting.jobs, waiting.fork, waiting.protected) == ("waiting_approval", [], True,
                                                                                   False)
        assert engine.store.r.hget(engine.store._run(waiting.id), "plan_attempts") is None

        approve = subprocess.run([sys.executable, "-m", "ci_queue.cli", "approve", waiting.id, "--server", url,
                                  "--token", TOKEN], capture_output=True, text=True, timeout=60, cwd=REPO,
                                 env={**engine.env, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)
        assert approve.returncode == 0 and f"run {waiting.id}: queued" in approve.stdout, approve.stderr
        again = subprocess.run([sys.executable, "-m", "ci_queue.cli", "approve", waiting.id, "--server", url,
                                "--token", TOKEN], capture_output=True, text=True, timeout=60, cwd=REPO,
                               env={**engine.env, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)
        assert again.returncode == 1 and "not waiting for approval" in again.stderr

        ran = engine.wait(waiting.id)
        assert ran.status == "failed" and ran.approved_by and ran.sha == fork_sha, whole_log(engine, ran)
        jobs = {job.name: job for job in ran.jobs}
        assert (jobs["deploy"].failure_reason, jobs["build"].failure_reason) == ("missing_secret", "fork_refused")
        assert "not given to a merge request from a fork" in jobs["deploy"].attempts[-1]["reason"]
        assert "CIQ_SHELL_ALLOW_FORKS" in jobs["build"].attempts[-1]["reason"]
        assert jobs["deploy"].spec["secrets"] == [] and jobs["deploy"].spec["refused_secrets"][0]["reason"] == "fork"
        assert DEPLOY_VALUE not in whole_log(engine, ran)
        shown = requests.get(f"{url}/api/v1/runs/{ran.id}", headers={"Authorization": f"Bearer {TOKEN}"},
                             timeout=10).json()
        assert shown["fork"] is True and shown["protected"] is False and shown["approved_by"]
        refused = {job["name"]: job["refused_secrets"] for job in shown["jobs"]}
        assert refused["deploy"][0]["name"] == "DEPLOY_TOKEN" and "fork" in refused["deploy"][0]["message"]
    finally:
        server.shutdown()
