"""Scoped API tokens on the real app: scopes, repository limits, the tokens file as
``ci-queue token create`` writes it (picked up at once), and the constant-time lookup's answers."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from ci_queue.tokens import (
    TokenFileError,
    TokenTable,
    create_token,
    hash_token,
    load_token_file,
    parse_token_file,
    revoke_token,
)
from tests.conftest import REPO
from tests.web.conftest import TOKENS, make_api, scoped_api
from tests.web.test_api import ODD_NAMES, TWO_STAGES, finish, job_url

REGISTRY = """
repositories:
  - name: octo/app
    provider: github
    clone_url: https://git.example.org/octo/app.git
  - name: other/lib
    provider: github
    clone_url: https://git.example.org/other/lib.git
"""


@pytest.fixture
def scoped(store, broker_url, tmp_path):
    """The app with a tokens file: ``reader`` (read), ``bot`` (read, trigger), ``operator``
    (read, operate), ``octo`` (read, trigger, operate; only ``octo/*``)."""
    api = scoped_api(store, broker_url, tmp_path, {"reader": ("read",), "bot": ("read", "trigger"),
                                                   "operator": ("read", "operate"),
                                                   "octo": (("read", "trigger", "operate"), ("octo/*",))}, REGISTRY)
    api.path = tmp_path / "tokens.yml"
    return api


def call(api, method: str, url: str, token: str, **kwargs):
    return api.client.open(url, method=method, headers={"Authorization": f"Bearer {token}"}, **kwargs)


def test_a_read_token_cannot_cancel_and_is_told_the_missing_scope(scoped):
    run_id, _, _ = scoped.planned_run(TWO_STAGES)
    response = call(scoped, "POST", f"/api/v1/runs/{run_id}/cancel", scoped.tokens["reader"])
    assert response.status_code == 403
    body = response.get_json()
    assert body["missing_scope"] == "operate" and "`operate`" in body["error"] and "'reader'" in body["error"]
    assert scoped.store.get_run(run_id).status == "running" and not scoped.store.is_canceling(run_id)
    # it reads; the operator cancels; neither triggers
    assert call(scoped, "GET", f"/api/v1/runs/{run_id}", scoped.tokens["reader"]).status_code == 200
    assert call(scoped, "POST", f"/api/v1/runs/{run_id}/cancel", scoped.tokens["operator"]).status_code == 200
    assert scoped.store.is_canceling(run_id)
    trigger = {"repo": "octo/app", "ref": "main"}
    for name in ("reader", "operator"):
        response = call(scoped, "POST", "/api/v1/runs", scoped.tokens[name], json=trigger)
        assert response.status_code == 403 and response.get_json()["missing_scope"] == "trigger"


def test_scopes_of_retry_play_and_the_audit_log(scoped):
    failed, findex, _ = scoped.planned_run(TWO_STAGES)
    finish(scoped, failed, findex["build"], "failed", exit=1, reason="script_failure")
    manual, mindex, _ = scoped.planned_run(ODD_NAMES)
    finish(scoped, manual, mindex["build: [a, b]"])
    finish(scoped, manual, mindex["fedora/test"])
    for name in ("reader", "bot"):
        assert call(scoped, "POST", f"/api/v1/runs/{failed}/retry", scoped.tokens[name]).status_code == 403
        assert call(scoped, "POST", job_url(manual, "deploy/log", "/play"), scoped.tokens[name]).status_code == 403
        response = call(scoped, "GET", "/api/v1/audit", scoped.tokens[name])
        assert response.status_code == 403 and response.get_json()["missing_scope"] == "admin"
    assert call(scoped, "POST", f"/api/v1/runs/{failed}/retry", scoped.tokens["operator"]).status_code == 202
    assert call(scoped, "POST", job_url(manual, "deploy/log", "/play"), scoped.tokens["operator"]).status_code == 202
    assert call(scoped, "GET", "/api/v1/audit", scoped.tokens["operator"]).status_code == 403
    assert scoped.get("/api/v1/audit").status_code == 200  # CIQ_API_TOKENS: every scope


def test_a_repository_limited_token_cannot_see_or_touch_another_repositorys_runs(scoped):
    token = scoped.tokens["octo"]
    mine, _, _ = scoped.planned_run(TWO_STAGES, repo="octo/app")
    theirs, tindex, _ = scoped.planned_run(TWO_STAGES, repo="other/lib")
    finish(scoped, theirs, tindex["build"], lines=["secret output"])
    for method, url in (("GET", f"/api/v1/runs/{theirs}"), ("POST", f"/api/v1/runs/{theirs}/cancel"),
                        ("POST", f"/api/v1/runs/{theirs}/retry"), ("GET", job_url(theirs, "build", "/log")),
                        ("GET", job_url(theirs, "build")), ("GET", job_url(theirs, "build", "/artifacts.json")),
                        ("POST", job_url(theirs, "unit", "/play"))):
        response = call(scoped, method, url, token)
        # exactly what a run that does not exist answers: nothing tells the two apart
        assert response.status_code == 404, (method, url, response.get_json())
        assert response.get_json() == {"error": f"no run {theirs}"}
    assert not scoped.store.is_canceling(theirs)
    assert call(scoped, "GET", f"/api/v1/runs/{mine}", token).status_code == 200
    listed = call(scoped, "GET", "/api/v1/runs?limit=100", token).get_json()["runs"]
    assert {run["id"] for run in listed} == {mine}
    assert call(scoped, "GET", "/api/v1/runs?repo=other/lib", token).get_json() == {"runs": [], "next_cursor": None}
    # an unlimited reader sees both
    listed = call(scoped, "GET", "/api/v1/runs?limit=100", scoped.tokens["reader"]).get_json()["runs"]
    assert {run["id"] for run in listed} == {mine, theirs}
    # triggering: its repositories only, and it learns nothing about others (not even if registered)
    assert call(scoped, "POST", "/api/v1/runs", token, json={"repo": "octo/app", "ref": "main"}).status_code == 202
    for body in ({"repo": "other/lib", "ref": "main"}, {"repo": "nobody/x", "ref": "main"},
                 {"clone_url": "https://git.example.org/other/lib.git", "ref": "main"}):
        response = call(scoped, "POST", "/api/v1/runs", token, json=body)
        assert response.status_code == 403 and "limited to the repositories octo/*" in response.get_json()["error"]


def test_a_limited_tokens_listing_pages_past_runs_of_other_repositories(scoped):
    """Many newer runs of another repository before the token's own: its page still finds them."""
    mine = scoped.store.create_run(repo="octo/app", ref="main")
    for _ in range(25):
        scoped.store.create_run(repo="other/lib", ref="main")
    page = call(scoped, "GET", "/api/v1/runs?limit=5", scoped.tokens["octo"]).get_json()
    assert [run["id"] for run in page["runs"]] == [mine]


def test_token_create_stores_only_a_hash_and_the_token_works_at_once(scoped, tmp_path):
    result = subprocess.run([sys.executable, "-m", "ci_queue.cli", "token", "create", "late-bot", "--scopes",
                             "read,operate", "--repos", "octo/*", "--file", str(scoped.path)],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("ciq_") and len(token) > 40 and "only time" in result.stderr
    text = scoped.path.read_text()
    assert token not in text and hash_token(token) in text
    assert (scoped.path.stat().st_mode & 0o777) == 0o600
    entry = next(e for e in load_token_file(scoped.path) if e.name == "late-bot")
    assert (entry.scopes, entry.repos) == (("read", "operate"), ("octo/*",))
    # the running app takes it at its next request, no restart
    mine, _, _ = scoped.planned_run(TWO_STAGES, repo="octo/app")
    assert call(scoped, "GET", f"/api/v1/runs/{mine}", token).status_code == 200
    response = call(scoped, "POST", "/api/v1/runs", token, json={"repo": "octo/app", "ref": "main"})
    assert response.get_json()["missing_scope"] == "trigger"
    # a second token of that name is refused, the file unchanged
    again = subprocess.run([sys.executable, "-m", "ci_queue.cli", "token", "create", "late-bot", "--scopes", "read",
                            "--file", str(scoped.path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert again.returncode == 1 and "exists" in again.stderr and again.stdout == ""
    assert scoped.path.read_text() == text
    # revoked: refused at the next request
    assert revoke_token(scoped.path, "late-bot")
    assert call(scoped, "GET", f"/api/v1/runs/{mine}", token).status_code == 401


def test_a_tokens_file_that_becomes_invalid_keeps_the_last_valid_tokens(scoped):
    token = scoped.tokens["reader"]
    assert call(scoped, "GET", "/api/v1/runs", token).status_code == 200
    scoped.path.write_text("tokens: [{name: broken}]\n")
    assert call(scoped, "GET", "/api/v1/runs", token).status_code == 200
    scoped.path.write_text("tokens: []\n")
    assert call(scoped, "GET", "/api/v1/runs", token).status_code == 401
    assert call(scoped, "GET", "/api/v1/runs", TOKENS[0]).status_code == 200  # CIQ_API_TOKENS stay


def test_an_invalid_tokens_file_stops_the_app_at_start(store, broker_url, tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"name": "x", "sha256": "0" * 64, "scopes": ["root"]}]}))
    with pytest.raises(TokenFileError, match=r"token #1 \('x'\): scopes must be one or more of .*not 'root'"):
        make_api(store, broker_url, tmp_path, tokens_file=str(path))


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "a mapping with one key"),
    ("tokens: [{name: a, sha256: xyz, scopes: [read]}]", "sha256 must be"),
    ("tokens: [{name: 'a b', sha256: '" + "a" * 64 + "', scopes: [read]}]", "the name 'a b'"),
    ("tokens: [{name: a, sha256: '" + "a" * 64 + "', scopes: [admin], repos: ['x/*']}]", "cannot be limited"),
    ("tokens: [{name: a, sha256: '" + "a" * 64 + "', scopes: [read], secret: x}]", "unknown key(s) secret"),
    ("tokens: [{name: a, sha256: '" + "a" * 64 + "', scopes: [read]}, {name: a, sha256: '" + "b" * 64
     + "', scopes: [read]}]", "name is listed twice"),
    ("tokens: [{name: a, sha256: '" + "a" * 64 + "', scopes: [read]}, {name: b, sha256: '" + "A" * 64
     + "', scopes: [read]}]", "token is listed twice"),
])
def test_invalid_token_files_are_refused_naming_the_entry(text, message):
    with pytest.raises(TokenFileError) as caught:
        parse_token_file(text, "t.yml")
    assert message in str(caught.value) and str(caught.value).startswith("t.yml:")


def test_a_json_tokens_file_round_trips_and_admin_cannot_be_limited(tmp_path):
    path = tmp_path / "tokens.json"
    token = create_token(path, "ops", ("admin",))
    assert json.loads(path.read_text())["tokens"][0]["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    with pytest.raises(ValueError, match="admin token cannot be limited"):
        create_token(path, "ops2", ("admin",), ("octo/*",))
    table = TokenTable([], str(path))
    identity = table.identify(token)
    assert identity is not None and identity.name == "ops" and identity.allows("operate") and identity.sees("a/b")
    assert table.identify(token + "x") is None and table.identify("") is None


def test_environment_tokens_are_named_and_full_power_and_globs_are_case_insensitive(tmp_path):
    table = TokenTable(["t-one", "t-two"], "")
    second = table.identify("t-two")
    assert second.name == "CIQ_API_TOKENS#2" and all(second.allows(s) for s in ("read", "trigger", "operate"))
    path = tmp_path / "t.yml"
    token = create_token(path, "sub", ("read",), ("Platform/*",))
    identity = TokenTable([], str(path)).identify(token)
    assert identity.sees("platform/backend/api") and not identity.sees("platformx/a") and not identity.allows("admin")
