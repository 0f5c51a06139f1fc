"""The runs API with Flask's test client on a real store and a real Celery app (no worker)."""

from __future__ import annotations

import json
import re
import threading
import time
from urllib.parse import quote

import pytest

from ci_queue.routing import CONTROL_QUEUE, DEFAULT_QUEUE
from ci_queue.web.openapi import OPEN_ENDPOINTS
from tests.web.conftest import TOKENS, make_api

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")
RUN_KEYS = ["id", "status", "repo", "ref", "sha", "event", "created_at", "started_at", "finished_at", "error",
            "protected", "fork", "approved_by", "approved_at", "jobs"]
JOB_KEYS = ["name", "stage", "status", "when", "allow_failure", "attempt", "worker", "exit_code", "failure_reason",
            "queue", "started_at", "finished_at", "attempts", "steps", "artifacts", "test_summary", "secrets",
            "refused_secrets"]

ODD_NAMES = """
stages: [build, test, deploy]
"build: [a, b]": {stage: build, script: x}
fedora/test: {stage: test, script: x}
deploy/log: {stage: deploy, script: x, when: manual, allow_failure: false}
"""

TWO_STAGES = """
stages: [build, test]
build: {stage: build, script: x}
unit: {stage: test, script: x}
"""


def job_url(run_id: str, name: str, tail: str = "") -> str:
    return f"/api/v1/runs/{run_id}/jobs/{quote(name, safe='')}{tail}"


def finish(api, run_id, index, status="success", attempt=1, lines=(), **fields):
    """Do what a worker does: begin, write log lines, finish with an attempt record."""
    assert api.store.begin_job(run_id, index, attempt, "w1@host", 60).status == "ok"
    api.store.append_log(run_id, index, [{"attempt": attempt, "step": "script", "n": n, "stream": "out",
                                          "ts": "2024-01-01T00:00:00.000Z", "text": text}
                                         for n, text in enumerate(lines, 1)])
    record = {"attempt": attempt, "worker": "w1@host", "status": status, "failure_reason": fields.get("reason"),
              "exit_code": fields.get("exit"), "started_at": "2024-01-01T00:00:00.000Z",
              "finished_at": "2024-01-01T00:00:01.000Z", "duration": 1.0,
              "steps": [{"name": "script", "status": status, "exit_code": fields.get("exit", 0)}]}
    return api.store.finish_job(run_id, index, attempt, status, fields=fields, attempt_record=record)


# -- auth --------------------------------------------------------------------------------------------


def api_routes(app):
    """Every (method, url) of the API that takes a bearer token, with made-up values for the URL's
    variables. (The workers' routes, ``jobs.*``, take a job token instead: tests/artifacts.)"""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1") or rule.endpoint in OPEN_ENDPOINTS or rule.endpoint.startswith("jobs."):
            continue
        values = {arg: "0123456789abcdef" if arg == "run_id" else "some/job: [x]" for arg in rule.arguments}
        with app.test_request_context():
            from flask import url_for

            url = url_for(rule.endpoint, **values)
        routes += [(method, url) for method in sorted(rule.methods)]
    return routes


BAD_AUTH = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "bearer wrong-token"},
    {"Authorization": f"Bearer {TOKENS[0]}x"},
    {"Authorization": f"Bearer {TOKENS[0][:-1]}"},
    {"Authorization": f"Token {TOKENS[0]}"},
    {"Authorization": f"Basic {TOKENS[0]}"},
    {"Authorization": TOKENS[0]},
    {"Authorization": f"Bearer {TOKENS[0]},{TOKENS[1]}"},
    {"Authorization": "Bearer ,"},
    {"X-Api-Token": TOKENS[0]},
]


def test_every_api_route_refuses_a_missing_wrong_or_malformed_token(api):
    routes = api_routes(api.app)
    # the enumeration works: at least the routes of the API as built (a new route is covered by itself)
    assert {(m, u.split("/api/v1")[1].split("/")[-1]) for m, u in routes} >= {
        ("POST", "runs"), ("GET", "runs"), ("GET", "0123456789abcdef"), ("POST", "cancel"), ("POST", "retry"),
        ("POST", "play"), ("GET", "log"), ("GET", "stream")}
    for method, url in routes:
        for headers in BAD_AUTH:
            response = api.client.open(url, method=method, headers=headers, json={"clone_url": "x", "ref": "y"})
            assert response.status_code == 401, (method, url, headers, response.status_code)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            if method != "HEAD":
                assert response.is_json and "token" in response.get_json()["error"], (method, url)
    assert api.store.list_runs()[0] == [], "a refused request stored a run"
    # both configured tokens (comma-separated, blanks around them) pass; the id is unknown: 404
    for token in TOKENS:
        response = api.client.get("/api/v1/runs/0123456789abcdef", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 404 and response.get_json() == {"error": "no run 0123456789abcdef"}
    assert api.client.get("/api/v1/runs", headers={"Authorization": f"bearer  {TOKENS[1]} "}).status_code == 200


def test_no_configured_token_refuses_everything_and_healthz_is_open(store, broker_url, tmp_path):
    api = make_api(store, broker_url, tmp_path, api_tokens=" , ")
    for method, url in api_routes(api.app):
        assert api.client.open(url, method=method, headers={"Authorization": "Bearer "}).status_code == 401
        assert api.client.open(url, method=method, headers={"Authorization": "Bearer ,"}).status_code == 401
    response = api.client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


# -- trigger ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    ("clone_url=x&ref=main", "JSON object"),
    ('{"clone_url": "x",', "JSON object"),
    ([{"clone_url": "x", "ref": "main"}], "JSON object"),
    ("null", "JSON object"),
    ({"ref": "main"}, "`clone_url`"),
    ({"clone_url": "", "ref": "main"}, "`clone_url`"),
    ({"clone_url": "file:///r", "ref": ""}, "`ref`"),
    ({"clone_url": "file:///r"}, "`ref`"),
    ({"clone_url": 5, "ref": "main"}, "`clone_url`"),
    ({"clone_url": "file:///r", "ref": ["main"]}, "`ref`"),
    ({"clone_url": "file:///r", "ref": "main", "repo": {"a": 1}}, "`repo`"),
    ({"clone_url": "file:///r", "ref": "main", "sha": "abc123"}, "`sha`"),
    ({"clone_url": "file:///r", "ref": "main", "sha": "g" * 40}, "`sha`"),
    ({"clone_url": "file:///r", "ref": "main", "sha": 1234}, "`sha`"),
    ({"clone_url": "file:///r", "ref": "main", "event": "nope"}, "`event`"),
    ({"clone_url": "file:///r", "ref": "main", "event": 1}, "`event`"),
    ({"clone_url": "file:///r", "ref": "main", "variables": ["A=1"]}, "`variables`"),
    ({"clone_url": "file:///r", "ref": "main", "variables": []}, "`variables`"),
    ({"clone_url": "file:///r", "ref": "main", "variables": "A=1"}, "`variables`"),
    ({"clone_url": "file:///r", "ref": "main", "variables": {"A": 1}}, "`variables`"),
    ({"clone_url": "file:///r", "ref": "main", "pipeline": ["x.yml"]}, "`pipeline`"),
    # lengths: Git's and the forges' limits (ci_queue.limits)
    ({"clone_url": "file:///r", "ref": "a" * 256}, "`ref` is too long: 256 bytes, at most 255"),
    ({"clone_url": "file:///r", "ref": "é" * 128}, "`ref` is too long: 256 bytes, at most 255"),
    ({"clone_url": "file:///r", "ref": "refs/heads/" + "a" * 256}, "`ref` is too long: 256 bytes"),
    ({"clone_url": "file:///r", "ref": "a..b"}, "`ref` is not a valid git ref name"),
    ({"clone_url": "file:///r", "ref": "-x"}, "`ref` is not a valid git ref name"),
    ({"clone_url": "file:///r", "ref": "main", "default_branch": "b" * 300}, "`default_branch` is too long"),
    ({"clone_url": "file:///" + "r" * 5000, "ref": "main"}, "`clone_url` is too long: 5008 characters"),
    ({"clone_url": "file:///r", "ref": "main", "repo": "o/" + "r" * 600}, "`repo` is too long"),
    ({"clone_url": "file:///r", "ref": "main", "pipeline": "p/" * 128 + "x.yml"}, "`pipeline` is too long"),
    ({"clone_url": "file:///r", "ref": "main", "commit_message": "m" * 70_000}, "`commit_message` is too long"),
    ({"clone_url": "file:///r", "ref": "main", "variables": {"V" * 256: "1"}}, "is too long: 256 bytes, at most 255"),
    ({"clone_url": "file:///r", "ref": "main", "variables": {"A=B": "1"}}, "is not a variable name"),
    ({"clone_url": "file:///r", "ref": "main", "variables": {"": "1"}}, "is not a variable name"),
    ({"clone_url": "file:///r", "ref": "main", "variables": {"BIG": "x" * 131_068}},
     "'BIG' is 131073 bytes as NAME=value; a job's environment string has at most 131072"),
    ({"clone_url": "file:///r", "ref": "main", "variables": {f"V{i}": "x" * 120_000 for i in range(5)}},
     "`variables` are 600060 bytes together, at most 524288"),
])
def test_trigger_validation_errors_are_400_with_a_message_and_store_nothing(api, body, message):
    if isinstance(body, str):
        response = api.post("/api/v1/runs", data=body, content_type="application/json")
    else:
        response = api.post("/api/v1/runs", json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.is_json and message in response.get_json()["error"]
    assert api.store.list_runs()[0] == []
    # nothing but the refusal's audit record
    assert api.store.r.keys(f"{api.store.prefix}*") == [f"{api.store.prefix}audit"]
    assert api.store.r.xrevrange(f"{api.store.prefix}audit", count=1)[0][1]["status"] == "400"


def test_a_huge_ref_is_refused_with_a_short_message_that_does_not_echo_it(api):
    response = api.post("/api/v1/runs", json={"clone_url": "file:///r", "ref": "a" * 100_000})
    assert response.status_code == 400 and response.is_json
    assert len(response.get_data()) < 300, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error.startswith("`ref` is too long: 100000 bytes, at most 255: 'aaaa") and "(100000 characters)" in error
    assert api.store.list_runs()[0] == []


@pytest.mark.parametrize("ref", ["a" * 255, "é" * 127 + "a", "refs/heads/" + "a" * 255, "refs/tags/" + "v" * 255])
def test_refs_at_the_limit_are_accepted(api, ref):
    variables = {"V" * 255: "x" * (131_072 - 255 - 2), **{f"W{i}": "y" * 100_000 for i in range(3)}}
    response = api.post("/api/v1/runs", json={"clone_url": "file:///r", "ref": ref, "variables": variables,
                                              "pipeline": "p" * 255, "commit_message": "m" * 65_536})
    assert response.status_code == 202, response.get_json()
    assert api.store.get_run(response.get_json()["run_id"]).ref == ref


def test_a_body_too_large_is_refused(api):
    response = api.post("/api/v1/runs", json={"clone_url": "file:///r", "ref": "main", "x": "y" * 2_000_000})
    assert response.status_code == 413 and response.is_json
    assert api.store.list_runs()[0] == []


def test_trigger_queues_a_run_and_asks_a_worker_to_plan_it(api):
    sha = "0123456789abcdef0123456789abcdef01234567"
    response = api.post("/api/v1/runs", json={"repo": "o/r", "clone_url": "file:///srv/r.git", "ref": "v1.0",
                                              "sha": sha.upper(), "event": "tag", "variables": {"A": "1"}})
    assert response.status_code == 202
    body = response.get_json()
    run_id = body["run_id"]
    assert body == {"id": run_id, "run_id": run_id, "status": "queued",
                    "status_url": f"http://localhost/api/v1/runs/{run_id}", "web_url": f"http://localhost/runs/{run_id}"}
    shown = api.get(body["status_url"].removeprefix("http://localhost")).get_json()
    assert {k: shown[k] for k in ("status", "repo", "ref", "sha", "event", "started_at", "jobs")} == {
        "status": "queued", "repo": "o/r", "ref": "v1.0", "sha": sha, "event": "tag", "started_at": None, "jobs": []}
    run = api.store.get_run(run_id)
    assert run.variables == {"A": "1"} and run.context == {"kind": "tag", "tag": "v1.0"}
    assert run.clone_url == "file:///srv/r.git"
    assert api.messages(CONTROL_QUEUE, run_id) == [("ciq.plan_run", [run_id])]
    # no repo given: named after the clone URL
    response = api.post("/api/v1/runs", json={"clone_url": "https://example.com/g/proj.git/", "ref": "main"})
    assert api.store.get_run(response.get_json()["run_id"]).repo == "proj"


def test_the_status_url_uses_the_public_url(store, broker_url, tmp_path):
    api = make_api(store, broker_url, tmp_path, public_url="https://ci.example.com/")
    response = api.post("/api/v1/runs", json={"clone_url": "file:///r", "ref": "main"})
    run_id = response.get_json()["run_id"]
    assert response.get_json()["status_url"] == f"https://ci.example.com/api/v1/runs/{run_id}"
    assert response.get_json()["web_url"] == f"https://ci.example.com/runs/{run_id}"  # the run's page


# -- list and show ------------------------------------------------------------------------------------


def test_list_filters_by_repo_ref_and_status_and_pages_with_a_cursor(api):
    ids = [api.store.create_run(repo=repo, ref=ref) for repo, ref in
           [("o/a", "main"), ("o/b", "main"), ("o/a", "dev"), ("o/a", "main"), ("o/b", "dev"), ("o/a", "main")]]
    api.store.fail_run(ids[3], "x.yml:1:1: nope")

    def listed(query: str) -> list[str]:
        response = api.get(f"/api/v1/runs{query}")
        assert response.status_code == 200, response.get_json()
        return [run["id"] for run in response.get_json()["runs"]]

    assert listed("") == ids[::-1]
    assert listed("?repo=o/a") == [ids[5], ids[3], ids[2], ids[0]]
    assert listed("?repo=o/a&ref=main") == [ids[5], ids[3], ids[0]]
    assert listed("?ref=dev") == [ids[4], ids[2]]
    assert listed("?status=failed") == [ids[3]]
    assert listed("?status=queued&repo=o/b") == [ids[4], ids[1]]
    assert listed("?repo=o/zzz") == []
    first = api.get("/api/v1/runs").get_json()["runs"][0]
    assert "jobs" not in first and first["status"] == "queued" and ISO_UTC.match(first["created_at"])

    seen, cursor, pages = [], None, 0
    while True:
        body = api.get("/api/v1/runs?limit=4" + (f"&cursor={cursor}" if cursor is not None else "")).get_json()
        seen += [run["id"] for run in body["runs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1] and pages == 2
    body = api.get("/api/v1/runs?repo=o/a&ref=main&limit=2").get_json()
    assert [r["id"] for r in body["runs"]] == [ids[5], ids[3]]
    body = api.get(f"/api/v1/runs?repo=o/a&ref=main&limit=2&cursor={body['next_cursor']}").get_json()
    assert [r["id"] for r in body["runs"]] == [ids[0]] and body["next_cursor"] is None

    for query in ("?status=nope", "?limit=x", "?cursor=abc", "?cursor=nan", "?cursor=inf", "?limit=1e3"):
        response = api.get(f"/api/v1/runs{query}")
        assert response.status_code == 400 and response.is_json
    assert len(api.get("/api/v1/runs?limit=0").get_json()["runs"]) == 1  # clamped to 1..100


def test_show_run_has_the_documented_shape(api):
    run_id, index, ready = api.planned_run(ODD_NAMES)
    build = index["build: [a, b]"]
    assert ready == [build]
    finish(api, run_id, build, "success", lines=["compiling"], exit=0)
    test = index["fedora/test"]
    api.store.mark_queued([(run_id, test, 1, DEFAULT_QUEUE)], 3600)
    api.store.begin_job(run_id, test, 1, "w2@host", 60)
    response = api.get(f"/api/v1/runs/{run_id}")
    assert response.status_code == 200
    run = response.get_json()
    assert list(run) == RUN_KEYS
    assert (run["id"], run["status"], run["repo"], run["ref"], run["sha"], run["event"], run["error"]) == (
        run_id, "running", "o/r", "main", "a" * 40, "push", None)
    assert ISO_UTC.match(run["created_at"]) and ISO_UTC.match(run["started_at"]) and run["finished_at"] is None
    jobs = {job["name"]: job for job in run["jobs"]}
    assert list(jobs) == ["build: [a, b]", "fedora/test", "deploy/log"]
    for job in jobs.values():
        assert list(job) == JOB_KEYS
    done = jobs["build: [a, b]"]
    assert {k: done[k] for k in ("stage", "status", "when", "allow_failure", "attempt", "worker", "exit_code",
                                 "failure_reason")} == {
        "stage": "build", "status": "success", "when": "on_success", "allow_failure": False, "attempt": 1,
        "worker": "w1@host", "exit_code": 0, "failure_reason": None}
    assert ISO_UTC.match(done["started_at"]) and ISO_UTC.match(done["finished_at"])
    assert done["started_at"] <= done["finished_at"]
    assert [a["attempt"] for a in done["attempts"]] == [1] and done["steps"] == done["attempts"][0]["steps"]
    assert all(ISO_UTC.match(a[k]) for a in done["attempts"] for k in ("started_at", "finished_at"))
    running = jobs["fedora/test"]
    assert (running["status"], running["worker"], running["queue"], running["finished_at"], running["steps"]) == (
        "running", "w2@host", DEFAULT_QUEUE, None, [])
    manual = jobs["deploy/log"]
    assert (manual["status"], manual["when"], manual["worker"], manual["started_at"]) == (
        "created", "manual", None, None)


def test_unknown_runs_and_jobs_are_404_json(api):
    run_id, *_ = api.planned_run(TWO_STAGES)
    for method, url in [
        ("GET", "/api/v1/runs/ffffffffffffffff"),
        ("POST", "/api/v1/runs/ffffffffffffffff/cancel"),
        ("POST", "/api/v1/runs/ffffffffffffffff/retry"),
        ("GET", "/api/v1/runs/ffffffffffffffff/jobs/build/log"),
        ("GET", "/api/v1/runs/ffffffffffffffff/jobs/build/log/stream"),
        ("POST", "/api/v1/runs/ffffffffffffffff/jobs/build/play"),
        ("GET", f"/api/v1/runs/{run_id}/jobs/nope/log"),
        ("GET", f"/api/v1/runs/{run_id}/jobs/nope/log/stream"),
        ("POST", f"/api/v1/runs/{run_id}/jobs/nope/play"),
        ("GET", f"/api/v1/runs/{run_id}/jobs/build%20/log"),
        # an id that would name another key of the run (its state hash, its names)
        ("GET", f"/api/v1/runs/{run_id}:state"),
        ("GET", f"/api/v1/runs/{run_id}%3Anames"),
        ("POST", f"/api/v1/runs/{run_id}:state/cancel"),
        ("GET", "/api/v1/runs/a b"),
        ("GET", "/api/v1/nothing-here"),
    ]:
        response = api.client.open(url, method=method, headers=api.auth)
        assert response.status_code == 404, (method, url, response.status_code)
        assert response.is_json and response.get_json()["error"], (method, url)
    assert api.store.get_run(run_id).status == "running"


def test_wrong_methods_are_json_errors(api):
    response = api.client.delete("/api/v1/runs", headers=api.auth)
    assert response.status_code == 405 and response.is_json


# -- logs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["build: [a, b]", "fedora/test", "deploy/log"])
def test_logs_of_jobs_with_odd_names_read_incrementally(api, name):
    run_id, index, _ = api.planned_run(ODD_NAMES)
    i = index[name]
    for raw_url in (job_url(run_id, name, "/log"), f"/api/v1/runs/{run_id}/jobs/{name}/log"):
        response = api.get(raw_url)
        assert response.status_code == 200, (raw_url, response.get_json())
        assert response.get_data(as_text=True) == "" and response.headers["X-Next-Offset"] == "-"
    api.store.append_log(run_id, i, [{"attempt": 1, "n": 1, "text": "one"}, {"attempt": 1, "n": 2, "text": "two"}])
    first = api.get(job_url(run_id, name, "/log"))
    assert first.mimetype == "text/plain" and first.get_data(as_text=True) == "one\ntwo\n"
    offset = first.headers["X-Next-Offset"]
    same = api.get(job_url(run_id, name, f"/log?offset={offset}"))
    assert same.get_data(as_text=True) == "" and same.headers["X-Next-Offset"] == offset
    api.store.append_log(run_id, i, [{"attempt": 2, "n": 1, "text": "three: ünïcode"}])
    more = api.get(job_url(run_id, name, f"/log?offset={offset}"))
    assert more.get_data(as_text=True) == "three: ünïcode\n" and more.headers["X-Next-Offset"] > offset
    assert api.get(job_url(run_id, name, "/log?attempt=2")).get_data(as_text=True) == "three: ünïcode\n"
    as_json = api.get(job_url(run_id, name, "/log?format=json")).get_json()
    assert [line["text"] for line in as_json["lines"]] == ["one", "two", "three: ünïcode"]
    assert as_json["next_offset"] == more.headers["X-Next-Offset"] and as_json["lines"][0]["n"] == "1"
    for bad in ("abc", "1-x", "-1", "1-2-3"):
        response = api.get(job_url(run_id, name, f"/log?offset={bad}"))
        assert response.status_code == 400 and response.is_json, bad
    assert api.get(job_url(run_id, name, "/log?attempt=x")).status_code == 400


def sse_events(response, limit: float = 10.0) -> list[tuple[str, str | None, str]]:
    """Parse a Server-Sent Events body into (event, id, data), until the stream ends."""
    events, buffer, deadline = [], "", time.monotonic() + limit
    for chunk in response.response:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
            if fields:
                events.append((fields.get("event", "message"), fields.get("id"), fields.get("data", "")))
        assert time.monotonic() < deadline, "the stream did not end"
    response.close()
    return events


def test_the_live_log_streams_lines_and_ends_when_the_job_ends(api):
    run_id, index, _ = api.planned_run(ODD_NAMES)
    i = index["build: [a, b]"]
    api.store.begin_job(run_id, i, 1, "w", 60)
    api.store.append_log(run_id, i, [{"attempt": 1, "n": 1, "stream": "out", "text": "early"}])

    def worker() -> None:
        time.sleep(0.5)
        api.store.append_log(run_id, i, [{"attempt": 1, "n": n, "stream": "out", "text": f"line {n}"}
                                         for n in range(2, 6)])
        # the last lines and the end together: the stream must not lose them
        api.store.append_log(run_id, i, [{"attempt": 1, "n": 6, "stream": "out", "text": "last"}])
        api.store.finish_job(run_id, i, 1, "failed", fields={"exit": 2})

    thread = threading.Thread(target=worker)
    thread.start()
    response = api.get(job_url(run_id, "build: [a, b]", "/log/stream"), buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    events = sse_events(response)
    thread.join()
    assert [e[0] for e in events] == ["line"] * 6 + ["end"]
    assert [json.loads(data)["text"] for _, _, data in events[:-1]] == ["early", "line 2", "line 3", "line 4",
                                                                         "line 5", "last"]
    assert json.loads(events[-1][2]) == {"status": "failed"}
    # resuming after the second line (Last-Event-ID, as a browser's EventSource does)
    resumed = sse_events(api.get(job_url(run_id, "build: [a, b]", "/log/stream"),
                                 headers={"Last-Event-ID": events[1][1]}, buffered=False))
    assert [json.loads(d)["text"] for e, _, d in resumed if e == "line"] == ["line 3", "line 4", "line 5", "last"]
    resumed = sse_events(api.get(job_url(run_id, "build: [a, b]", f"/log/stream?offset={events[4][1]}"),
                                 buffered=False))
    assert [e for e, _, _ in resumed] == ["line", "end"]
    assert api.get(job_url(run_id, "build: [a, b]", "/log/stream?offset=nope")).status_code == 400
    assert api.get(job_url(run_id, "build: [a, b]", "/log/stream"),
                   headers={"Last-Event-ID": "x"}).status_code == 400


def test_the_live_log_of_a_skipped_job_ends_at_once(api):
    run_id, index, _ = api.planned_run(TWO_STAGES)
    finish(api, run_id, index["build"], "failed", exit=1)
    events = sse_events(api.get(job_url(run_id, "unit", "/log/stream"), buffered=False), limit=3)
    assert events == [("end", None, json.dumps({"status": "skipped"}))]


# -- cancel, play, retry ------------------------------------------------------------------------------


def test_cancel(api):
    run_id, index, _ = api.planned_run(TWO_STAGES)
    api.store.begin_job(run_id, index["build"], 1, "w", 60)
    response = api.post(f"/api/v1/runs/{run_id}/cancel")
    assert response.status_code == 200
    assert response.get_json() == {"id": run_id, "status": "running", "stopping": 1}
    assert api.store.is_canceling(run_id)
    api.store.finish_job(run_id, index["build"], 1, "canceled")
    shown = api.get(f"/api/v1/runs/{run_id}").get_json()
    assert shown["status"] == "canceled" and [j["status"] for j in shown["jobs"]] == ["canceled", "canceled"]
    assert ISO_UTC.match(shown["finished_at"])
    # a run not planned yet is canceled at once; a finished run stays as it was
    queued = api.store.create_run(repo="o/r", ref="main")
    assert api.post(f"/api/v1/runs/{queued}/cancel").get_json()["status"] == "canceled"
    assert api.post(f"/api/v1/runs/{run_id}/cancel").get_json()["status"] == "canceled"


def test_play_a_manual_job_and_not_another(api):
    run_id, index, _ = api.planned_run(ODD_NAMES)
    finish(api, run_id, index["build: [a, b]"])
    finish(api, run_id, index["fedora/test"])
    assert api.get(f"/api/v1/runs/{run_id}").get_json()["status"] == "running"  # the blocking manual job
    response = api.post(job_url(run_id, "fedora/test", "/play"))
    assert response.status_code == 409 and "not manual" in response.get_json()["error"]
    response = api.post(job_url(run_id, "deploy/log", "/play"))
    assert response.status_code == 202
    assert response.get_json() == {"id": run_id, "job": "deploy/log", "attempt": 1, "status": "pending"}
    assert api.messages(DEFAULT_QUEUE, run_id) == [("ciq.run_job", [run_id, index["deploy/log"], 1])]
    assert api.post(job_url(run_id, "deploy/log", "/play")).status_code == 409  # pending now
    finish(api, run_id, index["deploy/log"])
    assert api.get(f"/api/v1/runs/{run_id}").get_json()["status"] == "success"


def test_retry_runs_the_failed_jobs_again_through_the_broker(api):
    run_id, index, _ = api.planned_run(TWO_STAGES)
    response = api.post(f"/api/v1/runs/{run_id}/retry")
    assert response.status_code == 409 and response.is_json  # running, nothing failed yet
    finish(api, run_id, index["build"], "failed", exit=3, reason="script_failure", lines=["boom"])
    assert api.get(f"/api/v1/runs/{run_id}").get_json()["status"] == "failed"

    response = api.post(f"/api/v1/runs/{run_id}/retry")
    assert response.status_code == 202
    assert response.get_json() == {"id": run_id, "status": "running", "retried": ["build"], "ready": ["build"]}
    assert api.messages(DEFAULT_QUEUE, run_id)[-1] == ("ciq.run_job", [run_id, index["build"], 2])
    shown = api.get(f"/api/v1/runs/{run_id}").get_json()
    assert (shown["status"], shown["finished_at"]) == ("running", None)
    build, unit = shown["jobs"]
    assert (build["status"], build["attempt"], build["exit_code"], build["failure_reason"]) == (
        "pending", 2, None, None)
    assert [(a["attempt"], a["status"], a["retried"]) for a in build["attempts"]] == [(1, "failed", "manual")]
    assert unit["status"] == "created"
    assert api.get("/api/v1/runs?status=running").get_json()["runs"][0]["id"] == run_id

    unit_ready = finish(api, run_id, index["build"], "success", attempt=2, lines=["fine"]).ready
    assert unit_ready == [index["unit"]]
    finish(api, run_id, index["unit"])
    assert api.get(f"/api/v1/runs/{run_id}").get_json()["status"] == "success"
    assert api.get(job_url(run_id, "build", "/log")).get_data(as_text=True) == "boom\nfine\n"
    assert api.get(job_url(run_id, "build", "/log?attempt=2")).get_data(as_text=True) == "fine\n"
    response = api.post(f"/api/v1/runs/{run_id}/retry")
    assert response.status_code == 409 and "no failed or canceled job" in response.get_json()["error"]


def test_retry_refuses_queued_runs_and_runs_still_being_canceled(api):
    queued = api.store.create_run(repo="o/r", ref="main")
    response = api.post(f"/api/v1/runs/{queued}/retry")
    assert response.status_code == 409 and "not been planned" in response.get_json()["error"]
    run_id, index, _ = api.planned_run(TWO_STAGES)
    api.store.begin_job(run_id, index["build"], 1, "w", 60)
    api.post(f"/api/v1/runs/{run_id}/cancel")
    response = api.post(f"/api/v1/runs/{run_id}/retry")
    assert response.status_code == 409 and "being canceled" in response.get_json()["error"]
    api.store.finish_job(run_id, index["build"], 1, "canceled")
    response = api.post(f"/api/v1/runs/{run_id}/retry")
    assert response.status_code == 202 and response.get_json()["retried"] == ["build", "unit"]
