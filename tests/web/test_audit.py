"""The audit log on a real app served over HTTP on loopback, read back through the API and
``ci-queue audit``; and what happens when the record cannot be written (a real Redis killed
between the action and its record)."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import quote

import pytest
import requests
from loguru import logger

from ci_queue.audit import audit_key
from ci_queue.store import Store
from tests.artifacts.conftest import serve
from tests.conftest import REPO
from tests.web.conftest import TOKENS, make_api, scoped_api
from tests.web.test_api import ODD_NAMES, TWO_STAGES, finish
from tests.web.test_run_sources import REGISTRY
from tests.web.test_webhooks import SECRET, github_headers, github_push


@pytest.fixture
def live(store, broker_url, tmp_path, monkeypatch):
    """The app on a real HTTP server of 127.0.0.1, with scoped tokens and one registered repository."""
    monkeypatch.setenv("TEST_GITHUB_SECRET", SECRET)
    api = scoped_api(store, broker_url, tmp_path, {"bot": ("read", "trigger"), "operator": ("read", "operate")},
                     REGISTRY)
    api.url, server = serve(api.app)
    try:
        yield api
    finally:
        server.shutdown()


def post(live, path: str, token: str, **kwargs) -> requests.Response:
    return requests.post(f"{live.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10, **kwargs)


def test_the_audit_stream_holds_every_action_with_the_tokens_name(live):
    bot, operator = live.tokens["bot"], live.tokens["operator"]
    triggered = post(live, "/api/v1/runs", bot, json={"repo": "octo/app", "ref": "main"}).json()["run_id"]
    failed, findex, _ = live.planned_run(TWO_STAGES, repo="octo/app")
    finish(live, failed, findex["build"], "failed", exit=1, reason="script_failure")
    manual, mindex, _ = live.planned_run(ODD_NAMES, repo="octo/app")
    finish(live, manual, mindex["build: [a, b]"])
    finish(live, manual, mindex["fedora/test"])
    assert post(live, f"/api/v1/runs/{triggered}/cancel", bot).status_code == 403  # refused: audited too
    assert post(live, f"/api/v1/runs/{triggered}/cancel", operator).status_code == 200
    assert post(live, f"/api/v1/runs/{failed}/retry", operator).status_code == 202
    assert post(live, f"/api/v1/runs/{manual}/jobs/{quote('deploy/log', safe='')}/play", operator).status_code == 202
    body = github_push("octo/app")
    hooked = requests.post(f"{live.url}/webhooks/github", data=body, headers=github_headers(body), timeout=10)
    assert hooked.status_code == 202
    webhook_run = hooked.json()["run_id"]
    assert post(live, f"/api/v1/runs/{failed}/cancel", "not-a-token").status_code == 401  # the log only
    assert requests.get(f"{live.url}/api/v1/runs", headers={"Authorization": f"Bearer {bot}"}).status_code == 200

    page = requests.get(f"{live.url}/api/v1/audit", headers={"Authorization": f"Bearer {TOKENS[0]}"},
                        timeout=10).json()
    assert page["next"] is None
    seen = [(e["action"], e["token"], e["run_id"], e["repo"], e["status"], e["source"]) for e in page["entries"]]
    assert seen == [  # newest first; reads and the 401 are not there
        ("webhook_run", "webhook:github", webhook_run, "octo/app", "202", "127.0.0.1"),
        ("play_job", "operator", manual, "octo/app", "202", "127.0.0.1"),
        ("retry_run", "operator", failed, "octo/app", "202", "127.0.0.1"),
        ("cancel_run", "operator", triggered, "octo/app", "200", "127.0.0.1"),
        ("cancel_run", "bot", triggered, "", "403", "127.0.0.1"),
        ("create_run", "bot", triggered, "octo/app", "202", "127.0.0.1"),
    ]
    play = page["entries"][1]
    assert (play["method"], play["job"], play["path"]) == ("POST", "deploy/log",
                                                          f"/api/v1/runs/{manual}/jobs/deploy/log/play")
    assert all(e["time"].endswith("Z") for e in page["entries"])
    assert live.store.r.xlen(audit_key(live.store.prefix)) == 6

    admin = {"Authorization": f"Bearer {TOKENS[0]}"}

    def audit(**params):
        return requests.get(f"{live.url}/api/v1/audit", headers=admin, params=params, timeout=10).json()

    assert [e["run_id"] for e in audit(action="cancel_run")["entries"]] == [triggered, triggered]
    assert {e["action"] for e in audit(token="operator")["entries"]} == {"play_job", "retry_run", "cancel_run"}
    assert [e["action"] for e in audit(run_id=failed)["entries"]] == ["retry_run"]
    first = audit(limit=4)
    assert len(first["entries"]) == 4 and first["next"] == first["entries"][-1]["id"]
    rest = audit(limit=4, before=first["next"])
    assert [e["action"] for e in rest["entries"]] == ["cancel_run", "create_run"] and rest["next"] is None
    assert audit(since="2999-01-01T00:00:00Z")["entries"] == []

    # the command line reads the same, oldest first
    command = [sys.executable, "-m", "ci_queue.cli", "audit", "--server", live.url, "--token", TOKENS[0]]
    result = subprocess.run([*command, "--since", "1h", "--format", "json"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [r["action"] for r in json.loads(result.stdout)] == [s[0] for s in reversed(seen)]
    result = subprocess.run([*command, "--by", "operator", "--limit", "2"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 2, result.stderr
    assert "retry_run" in lines[0] and "play_job" in lines[1] and "by operator from 127.0.0.1" in lines[1]
    refused = subprocess.run([sys.executable, "-m", "ci_queue.cli", "audit", "--server", live.url, "--token", bot],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
    assert refused.returncode == 1 and "`admin`" in refused.stderr


def test_an_action_whose_record_cannot_be_written_is_not_answered_as_a_success(own_redis, tmp_path):
    """Redis dies between the cancel and its audit record: the answer is 503 saying the cancel was
    carried out, and the service log has the record; once Redis is back the cancel is there."""
    store = Store(own_redis.client(), "ciq-audit-down:", retention_seconds=3600)
    api = make_api(store, own_redis.url, tmp_path)
    run_id, _, _ = api.planned_run(TWO_STAGES)

    @api.app.after_request
    def redis_dies(response):  # runs before the app's audit_request (after_request runs in reverse)
        own_redis.kill()
        return response

    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR", serialize=True)
    try:
        response = api.post(f"/api/v1/runs/{run_id}/cancel")
    finally:
        logger.remove(sink)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "carried out (200)" in response.get_json()["error"]
    [line] = [json.loads(text) for text in lines if "audit" in json.loads(text)["record"]["extra"]]
    record = line["record"]["extra"]["audit"]
    assert (record["action"], record["run_id"], record["status"], record["token"]) == (
        "cancel_run", run_id, "200", "CIQ_API_TOKENS#1")
    assert line["record"]["extra"]["streamed"] is False
    own_redis.start()
    assert store.get_run(run_id).status in ("canceled", "running") and store.is_canceling(run_id)
    assert store.r.xlen(audit_key(store.prefix)) == 0
