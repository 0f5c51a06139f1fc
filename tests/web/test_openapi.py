"""The OpenAPI description against the app: every ``/api/v1`` rule is described and every
described path is a rule; every response the real API gives (Flask's test client, a real store
and broker) is declared, and its JSON body validates against the declared schema."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from jsonschema import Draft202012Validator

from ci_queue.farm import Heartbeat, WorkerInfo
from ci_queue.store import Store
from ci_queue.trust import RunTrust
from ci_queue.web.auth import ENDPOINT_SCOPES
from ci_queue.web.openapi import OPEN_ENDPOINTS, SPEC
from tests.objects.test_object_store import aws_env, make_s3_backend, moto_server  # noqa: F401 (fixtures)
from tests.web.conftest import make_api, write_tokens
from tests.web.test_api import ODD_NAMES, TWO_STAGES, finish, job_url, sse_events
from tests.web.test_health import closed_port

RULE_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>]+)>")
METHODS = {"get", "post", "put", "patch", "delete"}


def template(rule: str) -> str:
    """A Flask rule as an OpenAPI path: ``<path:name>`` -> ``{name}``."""
    return RULE_VARIABLE.sub(r"{\1}", rule)


def app_operations(app, prefix: str) -> set[tuple[str, str]]:
    return {(template(rule.rule), method.lower()) for rule in app.url_map.iter_rules()
            if rule.rule.startswith(prefix) for method in rule.methods if method.lower() in METHODS}


def spec_operations(spec, prefix: str) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() if path.startswith(prefix)
            for method in item if method in METHODS}


def validator(schema: dict) -> Draft202012Validator:
    """A validator of ``schema`` whose ``#/components/...`` references resolve in the spec."""
    return Draft202012Validator({**schema, "components": SPEC["components"]})


class Checker:
    """Checks responses against the spec and remembers which (path, method, status) were seen."""

    def __init__(self, api) -> None:
        self.api = api
        self.seen: set[tuple[str, str, str]] = set()

    def __call__(self, response, method: str, path: str):
        operation = SPEC["paths"][path][method.lower()]
        code = str(response.status_code)
        assert code in operation["responses"], (method, path, code, response.get_data(as_text=True)[:300])
        declared = operation["responses"][code]
        content = declared.get("content", {})
        assert code.startswith("3") or response.mimetype in content, (method, path, code, response.mimetype)
        if response.mimetype == "application/json":
            body = response.get_json()
            errors = sorted(validator(content["application/json"]["schema"]).iter_errors(body), key=str)
            assert not errors, (method, path, code, [e.message for e in errors], body)
        if response.mimetype == "text/plain" or code in ("401", "503"):
            for header in declared.get("headers", {}):
                assert header in response.headers, (method, path, code, header)
        self.seen.add((path, method.lower(), code))
        return response

    def get(self, url: str, path: str, **kwargs):
        return self(self.api.get(url, **kwargs), "GET", path)

    def post(self, url: str, path: str, **kwargs):
        return self(self.api.post(url, **kwargs), "POST", path)


def test_the_description_is_served_without_a_token_and_is_valid(api):
    response = api.client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.get_json() == json.loads(json.dumps(SPEC))
    spec = response.get_json()
    assert spec["openapi"].startswith("3.1")
    for schema in spec["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (path, method)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert "{" + parameter["name"] + "}" in path and parameter["required"]
            for variable in re.findall(r"{([^}]+)}", path):
                assert any(p["in"] == "path" and p["name"] == variable for p in operation["parameters"]), path
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    # the open endpoints are exactly those described with `security: []` under /api/v1
    open_rules = {template(rule.rule) for rule in api.app.url_map.iter_rules() if rule.endpoint in OPEN_ENDPOINTS}
    assert open_rules == {path for path, item in spec["paths"].items() if path.startswith("/api/v1")
                          and any(op.get("security") == [] for op in item.values())} == {"/api/v1/openapi.json"}
    assert api.client.get("/api/v1/openapi.json", headers={"Authorization": "Bearer wrong"}).status_code == 200


def test_every_bearer_operation_names_the_scope_its_endpoint_needs(api):
    """The ``security`` of each operation is the scope ``ENDPOINT_SCOPES`` gives its endpoint, and
    every bearer endpoint of the app is in that table (a route left out would need ``admin``)."""
    adapter = api.app.url_map.bind("localhost")
    for path, method in spec_operations(SPEC, "/api/v1"):
        security = SPEC["paths"][path][method].get("security")
        if security == [] or "jobToken" in (security or [{}])[0]:
            continue
        rule, _ = adapter.match(concrete(path, "0123456789abcdef"), method=method.upper(), return_rule=True)
        assert security == [{"bearerAuth": [ENDPOINT_SCOPES[rule.endpoint]]}], (path, method)
    bearer = {rule.endpoint for rule in api.app.url_map.iter_rules() if rule.rule.startswith("/api/v1")
              and not rule.rule.startswith("/api/v1/jobs") and rule.endpoint not in OPEN_ENDPOINTS}
    assert bearer <= set(ENDPOINT_SCOPES), bearer - set(ENDPOINT_SCOPES)


def test_every_api_route_is_described_and_every_description_is_a_route(api):
    assert app_operations(api.app, "/api/v1") == spec_operations(SPEC, "/api/v1")
    # the webhook receivers: one path per provider here, whatever rule the app uses for them
    # (`/webhooks/<provider>`): every described path reaches the webhooks blueprint, every rule is described
    described = spec_operations(SPEC, "/webhooks")
    assert described == {(f"/webhooks/{p}", "post") for p in ("github", "gitlab", "gitea", "generic")}
    adapter = api.app.url_map.bind("localhost")
    reached = set()
    for path, method in described:
        rule, _ = adapter.match(path, method=method.upper(), return_rule=True)
        assert rule.endpoint.startswith("webhooks."), path
        reached.add(rule.rule)
    assert reached == {rule.rule for rule in api.app.url_map.iter_rules() if rule.rule.startswith("/webhooks")}


def test_refused_webhooks_match_the_description(api):
    """What the receivers answer before any secret is involved: malformed, unregistered, too large."""
    check = Checker(api)
    body = json.dumps({"repository": {"full_name": f"nobody/n{uuid.uuid4().hex[:8]}"}, "ref": "refs/heads/main"})
    for provider in ("github", "gitlab", "gitea", "generic"):
        path = f"/webhooks/{provider}"
        assert check(api.client.post(path, data="{not json", content_type="application/json"),
                     "POST", path).status_code == 400
        assert check(api.client.post(path, data=body, content_type="application/json"),
                     "POST", path).status_code in (400, 404)
    big = b"x" * (api.app.config["CIQ_SETTINGS"].max_webhook_bytes + 10)
    response = api.client.post("/webhooks/github", data=big, content_type="application/json")
    assert check(response, "POST", "/webhooks/github").status_code == 413
    assert api.store.list_runs()[0] == []


def test_webhook_runs_and_clone_policy_refusals_match_the_description(api, monkeypatch):
    """A signed delivery whose payload clone URL is a private address (403), then an accepted one (202)."""
    from ci_queue.repos import parse_registry
    from tests.web.test_webhooks import SECRET, github_headers, github_push

    monkeypatch.setenv("TEST_GITHUB_SECRET", SECRET)
    api.app.config["CIQ_REGISTRY"] = parse_registry(
        "repositories:\n  - name: octo/hello\n    provider: github\n    secret_env: TEST_GITHUB_SECRET\n")
    check = Checker(api)
    for clone_url, status in (("https://10.0.0.5/octo/hello.git", 403), ("https://github.com/octo/hello.git", 202)):
        payload = json.loads(github_push())
        payload["repository"]["clone_url"] = clone_url
        body = json.dumps(payload).encode()
        response = api.client.post("/webhooks/github", data=body, headers=github_headers(body))
        assert check(response, "POST", "/webhooks/github").status_code == status, response.get_json()


ARTIFACTS = """
stages: [build, test]
build: {stage: build, script: [make], artifacts: {paths: [dist/]}}
test: {stage: test, script: [test]}
"""


def small_tar(tmp_path) -> bytes:
    """A real artifacts archive of one file, ``dist/app``, and its manifest."""
    from ci_queue.artifacts.archive import TarWriter

    root = tmp_path / "artifact-tree"
    (root / "dist").mkdir(parents=True)
    (root / "dist" / "app").write_bytes(b"binary")
    writer = TarWriter(root, ["dist", "dist/app"])
    data = b"".join(writer.chunks())
    return data, [entry.to_dict() for entry in writer.manifest]


def check_artifact_routes(check: Checker, api, s3api, tmp_path) -> None:
    """Every declared answer of the artifacts API and of the workers' routes (job token)."""
    import hashlib

    def jp(suffix: str) -> str:
        return "/api/v1/jobs/{run_id}/{index}/{attempt}" + suffix

    run_id, index, _ = api.planned_run(ARTIFACTS, trust=RunTrust(protected=True, registered=True))
    build, test = index["build"], index["test"]
    token = uuid.uuid4().hex
    assert api.store.begin_job(run_id, build, 1, "w1@host", 60, token).status == "ok"
    base, auth = f"/api/v1/jobs/{run_id}/{build}/1", {"Job-Token": token}
    data, manifest = small_tar(tmp_path)
    put = api.client.put
    check(put(f"{base}/artifacts.tar", data=data, headers=auth), "PUT", jp("/artifacts.tar"))
    check(put(f"{base}/artifacts.tar", data=data, headers={"Job-Token": "wrong"}), "PUT", jp("/artifacts.tar"))
    check(put(f"{base}/artifacts.tar", data=data), "PUT", jp("/artifacts.tar"))
    listing = json.dumps(manifest).encode()
    check(put(f"{base}/manifest.json", data=listing, headers=auth), "PUT", jp("/manifest.json"))
    commit = {"name": "dist", "expire_in": "1 day", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
              "files": 1, "manifest_size": len(listing)}
    check(api.client.post(f"{base}/artifacts", json={**commit, "size": 1}, headers=auth), "POST", jp("/artifacts"))
    check(api.client.post(f"{base}/artifacts", json={**commit, "manifest_size": 1}, headers=auth), "POST",
          jp("/artifacts"))
    check(api.client.post(f"{base}/artifacts", json={**commit, "files": -1}, headers=auth), "POST", jp("/artifacts"))
    check(api.client.post(f"{base}/artifacts", json={**commit, "expire_in": "soon"}, headers=auth), "POST",
          jp("/artifacts"))
    check(api.client.post(f"{base}/artifacts", json=commit, headers=auth), "POST", jp("/artifacts"))
    junit = b'<testsuite name="s"><testcase classname="c" name="t"/></testsuite>'
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("report.xml")
        info.size = len(junit)
        tar.addfile(info, io.BytesIO(junit))
    check(put(f"{base}/reports/junit", data=buffer.getvalue(), headers=auth), "PUT", jp("/reports/junit"))
    check(put(f"{base}/reports/dotenv", data=b"A=1\n", headers=auth), "PUT", jp("/reports/dotenv"))
    check(put(f"{base}/reports/dotenv", data=b"not a line\n", headers=auth), "PUT", jp("/reports/dotenv"))
    check(api.client.get(f"{base}/caches?key=k-protected", headers=auth), "GET", jp("/caches"))
    check(put(f"{base}/caches?key=k-protected", data=data, headers=auth), "PUT", jp("/caches"))
    check(api.client.get(f"{base}/caches?key=k-protected", headers=auth), "GET", jp("/caches"))
    # a run of an unprotected ref: the caches of protected refs are out of its reach (403), its own are not
    plain_run, plain_index, _ = api.planned_run(ARTIFACTS)
    plain_token = uuid.uuid4().hex
    assert api.store.begin_job(plain_run, plain_index["build"], 1, "w2@host", 60, plain_token).status == "ok"
    plain, plain_auth = f"/api/v1/jobs/{plain_run}/{plain_index['build']}/1", {"Job-Token": plain_token}
    for method in ("GET", "PUT"):
        refused = check(api.client.open(f"{plain}/caches?key=k-protected", method=method, data=data,
                                        headers=plain_auth), method, jp("/caches"))
        assert refused.status_code == 403 and "protected" in refused.get_json()["error"]
    assert check(put(f"{plain}/caches?key=k-non_protected", data=data, headers=plain_auth), "PUT",
                 jp("/caches")).status_code == 200
    check(api.client.get(f"{base}/dependencies", headers=auth), "GET", jp("/dependencies"))
    check(api.client.get(f"{base}/dependencies/{build}/artifacts.tar", headers=auth), "GET",
          jp("/dependencies/{source}/artifacts.tar"))
    check(api.client.get(f"{base}/dependencies/{test}/artifacts.tar", headers=auth), "GET",
          jp("/dependencies/{source}/artifacts.tar"))
    # over the limit: 413 (the archive limit is the file limit plus what tar adds)
    small = make_api(api.store, api.app.config["CIQ_SETTINGS"].redis_url, tmp_path, max_artifact_bytes=1)
    big = b"\0" * (64 * 1024 * 1024 + 2)
    check(small.client.put(f"{base}/artifacts.tar", data=big, headers=auth), "PUT", jp("/artifacts.tar"))
    check(small.client.put(f"{base}/caches?key=big", data=big, headers=auth), "PUT", jp("/caches"))
    from unittest.mock import patch

    import ci_queue.web.transfer as transfer

    with patch.object(transfer, "MAX_MANIFEST_BYTES", len(listing) - 1):  # the real limit is 256 MiB
        check(put(f"{base}/manifest.json", data=listing, headers=auth), "PUT", jp("/manifest.json"))

    # a token that is not the running attempt's: 403 on every workers' route
    for path, method in spec_operations(SPEC, "/api/v1/jobs"):
        check(api.client.open(concrete(path, run_id), method=method.upper(), headers={"Job-Token": "wrong"}),
              method.upper(), path)

    # the artifacts API
    job, art = "/api/v1/runs/{run_id}/jobs/{name}", "/api/v1/runs/{run_id}/jobs/{name}/artifacts"
    check.get(f"/api/v1/runs/{run_id}/jobs/build", job)
    check.get(f"/api/v1/runs/{run_id}/jobs/nope", job)
    for suffix, path in (("/artifacts", art), ("/artifacts.json", art + ".json"),
                         ("/artifacts/dist/app", art + "/{path}")):
        check.get(f"/api/v1/runs/{run_id}/jobs/build{suffix}", path)
        check.get(f"/api/v1/runs/{run_id}/jobs/test{suffix}", path)

    # an S3 store: downloads are redirects to presigned URLs
    s3_run, s3_index, _ = s3api.planned_run(ARTIFACTS)
    token = uuid.uuid4().hex
    assert s3api.store.begin_job(s3_run, s3_index["build"], 1, "w1@host", 60, token).status == "ok"
    base, auth = f"/api/v1/jobs/{s3_run}/{s3_index['build']}/1", {"Job-Token": token}
    s3api.client.put(f"{base}/artifacts.tar", data=data, headers=auth)
    s3api.client.put(f"{base}/manifest.json", data=listing, headers=auth)
    assert s3api.client.post(f"{base}/artifacts", json=commit, headers=auth).status_code == 200
    s3api.client.put(f"{base}/caches?key=k", data=data, headers=auth)
    check(s3api.client.get(f"{base}/caches?key=k", headers=auth), "GET", jp("/caches"))
    check(s3api.client.get(f"{base}/dependencies/{s3_index['build']}/artifacts.tar", headers=auth), "GET",
          jp("/dependencies/{source}/artifacts.tar"))
    check(s3api.get(f"/api/v1/runs/{s3_run}/jobs/build/artifacts"), "GET", art)


def concrete(path: str, run_id: str) -> str:
    """A described path with values for its variables."""
    return (path.replace("{run_id}", run_id).replace("{name}", "build").replace("{index}", "0")
            .replace("{attempt}", "1").replace("{source}", "0").replace("{path}", "dist/app"))


def test_real_responses_of_every_route_match_the_description(api, broker_url, tmp_path, request):
    check = Checker(api)
    runs, run, cancel, retry = ("/api/v1/runs", "/api/v1/runs/{run_id}", "/api/v1/runs/{run_id}/cancel",
                                "/api/v1/runs/{run_id}/retry")
    play, log, stream = ("/api/v1/runs/{run_id}/jobs/{name}/play", "/api/v1/runs/{run_id}/jobs/{name}/log",
                         "/api/v1/runs/{run_id}/jobs/{name}/log/stream")
    unknown = "ffffffffffffffff"
    check(api.client.get("/api/v1/openapi.json"), "GET", "/api/v1/openapi.json")

    # trigger
    body = check.post(runs, runs, json={"repo": "o/r", "clone_url": "file:///r", "ref": "main",
                                        "sha": "a" * 40, "variables": {"A": "1"}}).get_json()
    queued = body["run_id"]
    check.post(runs, runs, json={"clone_url": "file:///r"})
    check.post(runs, runs, json={"clone_url": "file:///r", "ref": "main", "x": "y" * 2_000_000})
    # a run that ran: a job with attempts and steps, a failed one, a manual one
    run_id, index, _ = api.planned_run(ODD_NAMES)
    finish(api, run_id, index["build: [a, b]"], "success", lines=["compiling", "done"], exit=0)
    finish(api, run_id, index["fedora/test"], "failed", exit=2, reason="script_failure")
    failed, findex, _ = api.planned_run(TWO_STAGES)
    finish(api, failed, findex["build"], "failed", exit=1, reason="script_failure", lines=["boom"])

    # list and show
    assert check.get(runs, runs).get_json()["runs"]
    page = check.get(f"{runs}?limit=1&repo=o/r", runs).get_json()
    assert page["next_cursor"] is not None
    check.get(f"{runs}?limit=1&cursor={page['next_cursor']}&status=failed", runs)
    check.get(f"{runs}?status=nope", runs)
    for rid in (queued, run_id, failed):
        check.get(f"{runs}/{rid}", run)
    shown = api.get(f"{runs}/{run_id}").get_json()
    assert shown["jobs"][0]["attempts"] and shown["jobs"][0]["steps"]
    check.get(f"{runs}/{unknown}", run)

    # logs: text, JSON, bad offset, unknown job; the live stream of a finished job
    response = check.get(job_url(run_id, "build: [a, b]", "/log"), log)
    assert response.get_data(as_text=True) == "compiling\ndone\n"
    assert check.get(job_url(run_id, "build: [a, b]", "/log?format=json"), log).get_json()["lines"]
    check.get(job_url(run_id, "build: [a, b]", "/log?offset=nope"), log)
    check.get(job_url(run_id, "nope", "/log"), log)
    response = check.get(job_url(run_id, "build: [a, b]", "/log/stream"), stream, buffered=False)
    assert [event for event, _, _ in sse_events(response)] == ["line", "line", "end"]
    check.get(job_url(run_id, "build: [a, b]", "/log/stream?offset=x"), stream)
    check.get(job_url(unknown, "build", "/log/stream"), stream)

    # play: not manual (409), the manual one (202), unknown (404)
    check.post(job_url(run_id, "fedora/test", "/play"), play)
    other, oindex, _ = api.planned_run(ODD_NAMES)
    finish(api, other, oindex["build: [a, b]"])
    finish(api, other, oindex["fedora/test"])
    assert check.post(job_url(other, "deploy/log", "/play"), play).status_code == 202
    check.post(job_url(unknown, "deploy/log", "/play"), play)

    # approve: a fork's run waiting (202, then 409: not waiting any more), unknown (404); listed by status
    waiting = api.store.create_run(repo="o/r", ref="fork-branch", event="merge_request", status="waiting_approval",
                                   trust=RunTrust(fork=True, registered=True))
    check.get(f"{runs}/{waiting}", run)
    assert [r["id"] for r in check.get(f"{runs}?status=waiting_approval&repo=o/r", runs).get_json()["runs"]] \
        == [waiting]
    approve = "/api/v1/runs/{run_id}/approve"
    approved = check.post(f"{runs}/{waiting}/approve", approve).get_json()
    assert approved["status"] == "queued" and approved["approved_by"] == "CIQ_API_TOKENS#1"
    assert check.post(f"{runs}/{waiting}/approve", approve).status_code == 409
    check.post(f"{runs}/{unknown}/approve", approve)
    assert api.get(f"{runs}/{waiting}").get_json()["fork"] is True

    # retry: a failed run (202), a queued run (409), unknown (404)
    assert check.post(f"{runs}/{failed}/retry", retry).status_code == 202
    check.post(f"{runs}/{queued}/retry", retry)
    check.post(f"{runs}/{unknown}/retry", retry)

    # cancel: a running run, unknown
    assert check.post(f"{runs}/{failed}/cancel", cancel).get_json()["status"] == "canceled"
    check.post(f"{runs}/{unknown}/cancel", cancel)

    # an Idempotency-Key: a repeat answers the first run (200), another request with it is refused (422)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    trigger = {"repo": "o/r", "clone_url": "file:///r", "ref": "main"}
    first = check.post(runs, runs, json=trigger, headers=key)
    assert check.post(runs, runs, json=trigger, headers=key).get_json()["id"] == first.get_json()["id"]
    assert check.post(runs, runs, json={**trigger, "ref": "dev"}, headers=key).status_code == 422

    request.getfixturevalue("aws_env")
    s3 = make_s3_backend(request.getfixturevalue("moto_server")).store
    (tmp_path / "s3").mkdir()
    check_artifact_routes(check, api, make_api(api.store, broker_url, tmp_path / "s3", objects=s3), tmp_path)

    # Redis away (state and broker): 503 with Retry-After on every operation
    port = closed_port()
    down_url = f"redis://127.0.0.1:{port}/0"
    down = make_api(Store.from_url(down_url, api.store.prefix), down_url, api.tmp_path)
    for path, method in spec_operations(SPEC, "/api/v1"):
        if SPEC["paths"][path][method].get("security") == []:
            continue
        response = check(down.client.open(concrete(path, run_id), method=method.upper(),
                                          headers={**down.auth, "Job-Token": "any"}, json=trigger),
                         method.upper(), path)
        assert response.status_code == 503, (method, path, response.get_json())

    # no token: 401 on every operation that needs one
    for path, method in spec_operations(SPEC, "/api/v1"):
        operation = SPEC["paths"][path][method]
        if operation.get("security") == []:
            continue
        check(api.client.open(concrete(path, run_id), method=method.upper()), method.upper(), path)

    # a token without the operation's scope: 403 naming the scope, on every bearer operation
    tokens = write_tokens(tmp_path / "tokens.yml", {"reader": ("read",), "trigger": ("trigger",)})
    scoped = make_api(api.store, broker_url, tmp_path / "scoped", tokens_file=str(tmp_path / "tokens.yml"))
    for path, method in spec_operations(SPEC, "/api/v1"):
        security = SPEC["paths"][path][method].get("security")
        if security == [] or "jobToken" in security[0]:
            continue
        [needed] = security[0]["bearerAuth"]
        token = tokens["trigger" if needed == "read" else "reader"]
        response = check(scoped.client.open(concrete(path, run_id), method=method.upper(), json=trigger,
                                            headers={"Authorization": f"Bearer {token}"}), method.upper(), path)
        assert response.status_code == 403 and response.get_json()["missing_scope"] == needed, (path, method)

    # the farm: a worker's heartbeat and the job it runs
    beat = Heartbeat(api.store, WorkerInfo("w1@h", "h", ("linux",), ("ciq.default",), 2)).start()
    try:
        [worker] = check.get("/api/v1/workers", "/api/v1/workers").get_json()["workers"]
        assert worker["name"] == "w1@h"
    finally:
        beat.stop()

    # the audit log: a page, the next one, a bad cursor
    audit = "/api/v1/audit"
    page = check.get(f"{audit}?limit=2", audit).get_json()
    assert len(page["entries"]) == 2 and page["next"]
    check.get(f"{audit}?before={page['next']}&action=cancel_run", audit)
    check.get(f"{audit}?before=yesterday", audit)

    declared = {(path, method, code) for path, method in spec_operations(SPEC, "/api/v1")
                for code in SPEC["paths"][path][method]["responses"]}
    assert declared - check.seen == set(), "declared responses never seen"
    assert check.seen - declared == set()


@pytest.mark.parametrize("path", sorted(SPEC["components"]["schemas"]))
def test_the_schemas_refuse_what_they_should(path):
    """The schemas are not vacuous: an empty object or a wrong type is refused where fields are required."""
    schema = SPEC["components"]["schemas"][path]
    if "required" in schema or "allOf" in schema:
        assert list(validator({"$ref": f"#/components/schemas/{path}"}).iter_errors({}))
    assert list(validator({"$ref": f"#/components/schemas/{path}"}).iter_errors([uuid.uuid4().hex]))
