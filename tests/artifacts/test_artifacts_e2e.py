"""Artifacts, dotenv and caches across hosts, end to end: real ``ci-queue worker`` processes with
their own workspace and cache directories (no path shared: what one job leaves reaches the next
only through the web app and its object store), the real web app over HTTP on loopback, real
Redis, real git."""

from __future__ import annotations

import pytest

from ci_queue.objects import open_store
from tests.artifacts.conftest import PROTECTED, live_app
from tests.engine.conftest import make_repo

pytestmark = pytest.mark.integration

PIPELINE = """
stages: [build, test]
default:
  cache: {key: vendor-$CI_COMMIT_REF_SLUG, paths: [vendor/]}
build:
  stage: build
  tags: [host-a]
  script:
    - mkdir -p dist vendor
    - echo "app built by $CI_JOB_NAME $CI_JOB_ID" > dist/app
    - echo 'BUILD_VERSION=1.2.3' > build.env
    - echo 'vendored once' > vendor/lib
  artifacts:
    paths: [dist/]
    reports: {dotenv: build.env}
test:
  stage: test
  tags: [host-b]
  cache: {key: vendor-$CI_COMMIT_REF_SLUG, paths: [vendor/], policy: pull}
  script:
    - cat dist/app
    - test "$BUILD_VERSION" = 1.2.3
    - cat vendor/lib
lint:
  stage: test
  tags: [host-b]
  dependencies: []
  script:
    - test ! -e dist/app
    - test -z "$BUILD_VERSION"
"""


def test_build_on_one_host_test_and_lint_on_another(engine, tmp_path, broker_url):
    objects = open_store((tmp_path / "objects").as_uri())
    app, server = live_app(engine.store, engine.env["CIQ_REDIS_URL"], tmp_path, objects)
    try:
        for host in ("a", "b"):
            engine.start_worker(f"w-{host}", tags=f"host-{host}", untagged=False, concurrency=1, extra_env={
                "CIQ_SERVER_URL": app.url,
                "CIQ_WORKSPACE_DIR": str(tmp_path / f"host-{host}" / "workspaces"),
                "CIQ_CACHE_DIR": str(tmp_path / f"host-{host}" / "cache"),
                "CIQ_GIT_CACHE_DIR": str(tmp_path / f"host-{host}" / "git")})
        repo = tmp_path / "repo"
        make_repo(repo, {".gitlab-ci.yml": PIPELINE})
        run_id = engine.trigger(repo, trust=PROTECTED)  # main of a registered repository: protected caches
        run = engine.wait(run_id, timeout=120)
        jobs = {job.name: job for job in run.jobs}
        logs = {name: "\n".join(e["text"] for _, e in engine.store.read_log(run_id, job.index)) for name, job in
                jobs.items()}
        assert {n: j.status for n, j in jobs.items()} == {"build": "success", "test": "success",
                                                         "lint": "success"}, logs
        assert jobs["build"].worker.startswith("w-a@") and jobs["test"].worker.startswith("w-b@")
        assert f"app built by build {run_id}-{jobs['build'].index}" in logs["test"]
        assert "vendored once" in logs["test"] and "Successfully extracted cache vendor-main-protected" in logs["test"]
        assert "Downloading artifacts" not in logs["lint"]
        # each host keeps its own copy of the cache: one pushed it, the other downloaded it from the store
        assert len(list((tmp_path / "host-a" / "cache").glob("*.tar"))) == 1
        assert len(list((tmp_path / "host-b" / "cache").glob("*.tar"))) == 1
    finally:
        server.shutdown()
