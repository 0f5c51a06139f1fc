"""The API end to end: a run of a real git repository triggered, followed, retried and read through
the API (Flask's test client), executed by a real ``ci-queue worker`` process."""

from __future__ import annotations

import dataclasses
import json
import time
from urllib.parse import quote

import pytest

from ci_queue.web import create_app
from tests.engine.conftest import make_repo
from tests.web.test_api import ISO_UTC, sse_events

pytestmark = pytest.mark.integration

PIPELINE = """
stages: [build, test]
"build: [a, b]":
  stage: build
  script:
    - echo "hello from build"
    - if [ ! -e "{marker}" ]; then touch "{marker}"; echo "first attempt fails"; exit 7; fi
    - echo "second attempt passes"
fedora/test:
  stage: test
  script: echo "tested on $CI_COMMIT_REF_NAME"
"""


def test_a_run_triggered_followed_retried_and_read_through_the_api(engine, tmp_path):
    repo = tmp_path / "repo"
    sha = make_repo(repo, {".ci-queue.yml": PIPELINE.format(marker=tmp_path / "marker")})
    settings = dataclasses.replace(engine.settings, api_tokens="e2e-token")
    app = create_app(settings, store=engine.store, celery=engine.celery)
    client = app.test_client()
    auth = {"Authorization": "Bearer e2e-token"}
    engine.start_worker("w1")

    def wait(run_id: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = client.get(f"/api/v1/runs/{run_id}", headers=auth).get_json()
            if run["status"] in ("success", "failed", "canceled", "error"):
                return run
            if time.monotonic() > deadline:
                logs = "\n".join(engine.worker_log(name) for name in engine.worker_names())
                raise AssertionError(f"run {run_id} still {run['status']}: {run}\n{logs}")
            time.sleep(0.1)

    response = client.post("/api/v1/runs", headers=auth,
                           json={"repo": "team/app", "clone_url": f"file://{repo}", "ref": "main"})
    assert response.status_code == 202, response.get_json()
    run_id = response.get_json()["run_id"]

    run = wait(run_id)
    jobs = {job["name"]: job for job in run["jobs"]}
    assert (run["status"], run["sha"], run["repo"]) == ("failed", sha, "team/app")
    build = jobs["build: [a, b]"]
    assert (build["status"], build["exit_code"], build["failure_reason"]) == ("failed", 7, "script_failure")
    assert build["worker"].startswith("w1@") and jobs["fedora/test"]["status"] == "skipped"
    assert all(ISO_UTC.match(run[k]) for k in ("created_at", "started_at", "finished_at"))
    assert all(ISO_UTC.match(build[k]) for k in ("started_at", "finished_at"))
    build_url = f"/api/v1/runs/{run_id}/jobs/{quote('build: [a, b]', safe='')}"
    log = client.get(f"{build_url}/log", headers=auth)
    assert "hello from build" in log.get_data(as_text=True)
    assert "first attempt fails" in log.get_data(as_text=True).splitlines()

    response = client.post(f"/api/v1/runs/{run_id}/retry", headers=auth)
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["retried"] == ["build: [a, b]"]
    run = wait(run_id)
    jobs = {job["name"]: job for job in run["jobs"]}
    assert run["status"] == "success", run
    build = jobs["build: [a, b]"]
    assert (build["status"], build["attempt"]) == ("success", 2)
    assert [(a["attempt"], a["status"]) for a in build["attempts"]] == [(1, "failed"), (2, "success")]
    assert jobs["fedora/test"]["status"] == "success" and jobs["fedora/test"]["attempt"] == 1

    # read on from where the first read stopped: the second attempt's lines
    more = client.get(f"{build_url}/log?offset={log.headers['X-Next-Offset']}", headers=auth)
    assert "second attempt passes" in more.get_data(as_text=True).splitlines()
    assert "first attempt fails" not in more.get_data(as_text=True).splitlines()
    assert more.headers["X-Next-Offset"] > log.headers["X-Next-Offset"]
    # the log of the second attempt only; every attempt's without ?attempt=
    second = client.get(f"{build_url}/log?attempt=2", headers=auth).get_data(as_text=True)
    lines = second.splitlines()
    assert "second attempt passes" in lines and "first attempt fails" not in lines
    assert "first attempt fails" in client.get(f"{build_url}/log", headers=auth).get_data(as_text=True).splitlines()
    test_url = f"/api/v1/runs/{run_id}/jobs/fedora/test/log"
    text = client.get(test_url, headers=auth).get_data(as_text=True)
    assert "tested on main" in text
    events = sse_events(client.get(f"{test_url}/stream", headers=auth, buffered=False))
    assert events[-1][0] == "end" and json.loads(events[-1][2]) == {"status": "success"}
    assert any("tested on main" in json.loads(data)["text"] for event, _, data in events if event == "line")
    listed = client.get("/api/v1/runs?repo=team/app&status=success", headers=auth).get_json()["runs"]
    assert [r["id"] for r in listed] == [run_id]
