"""The web pages' access (login, session cookie, CSRF, public read), their security headers and
escaping, the raw log download and the farm API, on the real app with real Redis (the browser
tests, tests/web/browser, drive the same pages through Chromium)."""

from __future__ import annotations

import os
import re
from urllib.parse import quote

import pytest

from ci_queue.farm import Heartbeat, WorkerInfo, list_workers
from tests.web.conftest import TOKENS, make_api, scoped_api, serve_app
from tests.web.test_api import finish

HOSTILE = 'evil <script>alert(1)</script> "><img src=x onerror=alert(2)>'
PIPELINE = f"""
stages: [build, test]
build: {{stage: build, script: x}}
'{HOSTILE}': {{stage: test, script: x, needs: [build]}}
"""
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def start_tags(html: str) -> list[tuple[str, dict[str, str | None]]]:
    """Every element of a page with its attributes, as a browser's parser sees them."""
    from html.parser import HTMLParser

    found: list[tuple[str, dict[str, str | None]]] = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Collect().feed(html)
    return found


def login(api, token: str = TOKENS[0]):
    """Log the test client in through the login form; returns the page's CSRF token."""
    page = api.client.get("/login")
    csrf = CSRF_META.search(page.get_data(as_text=True)).group(1)
    answer = api.client.post("/login", data={"token": token, "csrf_token": csrf, "next": "/"})
    assert answer.status_code == 302 and answer.headers["Location"] == "/", answer.get_data(as_text=True)
    return CSRF_META.search(api.client.get("/").get_data(as_text=True)).group(1)


def test_pages_send_a_visitor_without_a_session_to_the_login(api):
    for path in ("/", "/workers", "/runs/abc", "/runs/abc/jobs/x"):
        answer = api.client.get(path)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/login?next="), path
    assert api.client.get("/api/v1/runs").status_code == 401  # the API stays bearer-or-session


def test_login_sets_a_strict_httponly_cookie_keeping_no_token_and_logout_clears_it(api):
    page = api.client.get("/login")
    csrf = CSRF_META.search(page.get_data(as_text=True)).group(1)
    refused = api.client.post("/login", data={"token": "wrong", "csrf_token": csrf})
    assert refused.status_code == 401 and "not valid" in refused.get_data(as_text=True)
    answer = api.client.post("/login", data={"token": TOKENS[0], "csrf_token": csrf, "next": "//evil.example/x"})
    assert answer.headers["Location"] == "/"  # never to another site
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    assert TOKENS[0] not in cookie
    assert api.client.get("/").status_code == 200
    assert api.client.get("/api/v1/runs").status_code == 200  # the pages' scripts call the API with it
    csrf = CSRF_META.search(api.client.get("/").get_data(as_text=True)).group(1)
    assert api.client.post("/logout", data={"csrf_token": csrf}).status_code == 302
    assert api.client.get("/").status_code == 302


def test_only_a_request_with_the_cookie_builds_the_session_serializer(api, monkeypatch):
    """``CookieSessions``: a call without the cookie (a webhook, the API, a worker) gets an empty
    session for nothing; one with it is read and checked as Flask does (a forged cookie is no login)."""
    interface = api.app.session_interface
    built = []
    real = interface.get_signing_serializer
    monkeypatch.setattr(interface, "get_signing_serializer", lambda app: built.append(1) or real(app))
    assert api.get("/api/v1/runs").status_code == 200 and built == []
    login(api)
    built.clear()
    assert api.client.get("/").status_code == 200 and built
    api.client.set_cookie("ciq_session", "forged.value.here")
    assert api.client.get("/").status_code == 302


def test_the_cookie_is_secure_when_the_public_url_is_https(store, broker_url, tmp_path):
    api = make_api(store, broker_url, tmp_path, public_url="https://ci.example")
    page = api.client.get("/login")
    csrf = CSRF_META.search(page.get_data(as_text=True)).group(1)
    answer = api.client.post("/login", data={"token": TOKENS[0], "csrf_token": csrf})
    assert "Secure" in answer.headers["Set-Cookie"]


def test_a_login_without_the_forms_csrf_token_is_refused(api):
    answer = api.client.post("/login", data={"token": TOKENS[0]})
    assert answer.status_code == 403 and "CSRF" in answer.get_data(as_text=True)


def test_a_change_through_the_session_needs_the_pages_csrf_token_and_this_origin(api):
    run_id, _, _ = api.planned_run(PIPELINE)
    csrf = login(api)
    cancel = f"/api/v1/runs/{run_id}/cancel"
    bare = api.client.post(cancel)
    assert bare.status_code == 403 and "CSRF" in bare.get_json()["error"]
    wrong = api.client.post(cancel, headers={"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403
    cross = api.client.post(cancel, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"})
    assert cross.status_code == 403 and "another site" in cross.get_json()["error"]
    assert api.store.run_status(run_id) == "running"  # none of them changed anything
    done = api.client.post(cancel, headers={"X-CSRF-Token": csrf, "Origin": "http://localhost"})
    assert done.status_code == 200 and done.get_json()["status"] == "canceled"


def test_a_revoked_token_ends_its_sessions(store, broker_url, tmp_path):
    from ci_queue.tokens import revoke_token

    api = scoped_api(store, broker_url, tmp_path, {"viewer": ("read",)}, "repositories: []")
    login(api, api.tokens["viewer"])
    assert api.client.get("/").status_code == 200
    assert revoke_token(tmp_path / "tokens.yml", "viewer")
    assert api.client.get("/").status_code == 302


def test_a_read_only_token_sees_no_buttons_and_cannot_act(store, broker_url, tmp_path):
    api = scoped_api(store, broker_url, tmp_path, {"viewer": ("read",)}, "repositories: []")
    run_id, _, _ = api.planned_run(PIPELINE)
    csrf = login(api, api.tokens["viewer"])
    page = api.client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert "data-action" not in page
    answer = api.client.post(f"/api/v1/runs/{run_id}/cancel", headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 403 and answer.get_json()["missing_scope"] == "operate"


def test_public_read_lets_anonymous_visitors_read_but_never_act(store, broker_url, tmp_path):
    api = make_api(store, broker_url, tmp_path, public_read=True)
    run_id, _, _ = api.planned_run(PIPELINE)
    assert api.client.get(f"/runs/{run_id}").status_code == 200
    assert api.client.get("/api/v1/runs").status_code == 200
    answer = api.client.post(f"/api/v1/runs/{run_id}/cancel")
    assert answer.status_code == 403 and api.store.run_status(run_id) == "running"
    closed = make_api(store, broker_url, tmp_path)
    assert closed.client.get(f"/runs/{run_id}").status_code == 302


def test_every_page_and_answer_has_a_csp_without_inline_scripts_and_no_inline_script(api):
    run_id, _, _ = api.planned_run(PIPELINE)
    login(api)
    for path in ("/login", "/", f"/runs/{run_id}", f"/runs/{run_id}/jobs/build", "/workers", "/api/v1/runs",
                 "/nope"):
        answer = api.client.get(path)
        policy = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy, path
        if answer.mimetype == "text/html":
            tags = start_tags(answer.get_data(as_text=True))
            assert all(attrs.get("src") for tag, attrs in tags if tag == "script"), path  # every script is a file
            assert not [name for _, attrs in tags for name in attrs if name.startswith("on")], path  # no handlers


def test_hostile_names_are_escaped_in_every_page(api):
    run_id, index, _ = api.planned_run(PIPELINE, ref="feature/<b>x</b>", context={"commit_message": HOSTILE})
    login(api)
    finish(api, run_id, index["build"], lines=[HOSTILE])
    pages = [api.client.get(path).get_data(as_text=True)
             for path in ("/", f"/runs/{run_id}", f"/runs/{run_id}?fragment=1",
                          f"/runs/{run_id}/jobs/{quote(HOSTILE, safe='')}")]
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page and "<b>x</b>" not in page
        assert not [tag for tag, _ in start_tags(page) if tag in ("img", "b")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1]


def test_the_raw_log_is_the_whole_log_of_one_attempt(api):
    run_id, index, _ = api.planned_run(PIPELINE)
    login(api)
    lines = [f"line {n}" for n in range(12_000)]  # more than one page of the text API (10,000 lines)
    finish(api, run_id, index["build"], lines=lines)
    answer = api.client.get(f"/runs/{run_id}/log.txt?job=build&attempt=1")
    assert answer.status_code == 200 and "attachment" in answer.headers["Content-Disposition"]
    assert answer.get_data(as_text=True) == "".join(line + "\n" for line in lines)
    assert api.client.get(f"/runs/{run_id}/log.txt?job=build&attempt=2").get_data(as_text=True) == ""
    assert api.client.get(f"/runs/{run_id}/log.txt?job=nope").status_code == 404


def test_page_errors_are_pages_and_bad_input_is_400(api):
    login(api)
    missing = api.client.get("/runs/ffffffffffffffff")
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    assert "no run ffffffffffffffff" in missing.get_data(as_text=True)
    assert api.client.get("/?status=nope").status_code == 400
    assert api.client.get("/?cursor=x").status_code == 400
    run_id, _, _ = api.planned_run(PIPELINE)
    assert api.client.get(f"/runs/{run_id}/jobs/build?attempt=7").status_code == 400
    unknown = api.client.get(f"/runs/{run_id}/jobs/nope")
    assert unknown.status_code == 404 and "has no job &#39;nope&#39;" in unknown.get_data(as_text=True)


def test_the_runs_page_pages_by_the_index_and_filters(api):
    made = [api.store.create_run(repo="o/r" if n % 2 else "o/other", ref="main") for n in range(30)]
    login(api)
    first = api.client.get("/?repo=o/r").get_data(as_text=True)
    shown = re.findall(r'data-run="([0-9a-f]+)"', first)
    assert shown == [run_id for run_id in reversed(made) if made.index(run_id) % 2][:len(shown)]
    assert len(shown) == 15  # all of them: fewer than a page
    page = api.client.get("/").get_data(as_text=True)
    older = re.search(r'id="older" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    rest = re.findall(r'data-run="([0-9a-f]+)"', api.client.get(older).get_data(as_text=True))
    both = re.findall(r'data-run="([0-9a-f]+)"', page) + rest
    assert both[:30] == list(reversed(made))


def test_the_farm_api_lists_workers_with_their_running_jobs(api):
    run_id, index, _ = api.planned_run(PIPELINE)
    beat = Heartbeat(api.store, WorkerInfo("w1@host", "host", ("linux", "docker"), ("ciq.default",), 3)).start()
    try:
        assert api.store.begin_job(run_id, index["build"], 1, "w1@host", 60).status == "ok"
        [worker] = api.get("/api/v1/workers").get_json()["workers"]
        assert worker["name"] == "w1@host" and worker["tags"] == ["linux", "docker"] and worker["concurrency"] == 3
        assert worker["state"] == "online" and worker["draining"] is False
        assert worker["running"] == [{"run_id": run_id, "job": "build", "attempt": 1,
                                      "started_at": worker["running"][0]["started_at"]}]
        beat.draining()
        assert list_workers(api.store)[0].state == "draining"
    finally:
        beat.stop()
    assert list_workers(api.store)[0].state == "stopped"
    assert list_workers(api.store, now=api.store.now() + 7200) == []  # an hour without a beat: not listed


@pytest.mark.parametrize("command", [["workers"], ["workers", "--format", "json"]])
def test_the_workers_command_shows_the_farm(api, command):
    """``ci-queue workers`` against the app behind a real HTTP server on loopback."""
    from click.testing import CliRunner

    from ci_queue.cli import cli

    beat = Heartbeat(api.store, WorkerInfo("w2@host", "host", ("gpu",), ("ciq.t.gpu",), 2)).start()
    try:
        with serve_app(api.app) as url:
            result = CliRunner().invoke(cli, [*command, "--server", url, "--token", TOKENS[0]])
    finally:
        beat.stop()
    assert result.exit_code == 0, result.output
    assert "w2@host" in result.output and "gpu" in result.output


def test_the_log_is_read_in_pages_of_limit_lines(api):
    """The log page reads a small first page (quick first paint), then the largest ones."""
    run_id, index, _ = api.planned_run(PIPELINE)
    finish(api, run_id, index["build"], lines=[f"line {n}" for n in range(5)])
    first = api.get(f"/api/v1/runs/{run_id}/jobs/build/log?format=json&limit=2").get_json()
    assert [line["text"] for line in first["lines"]] == ["line 0", "line 1"]
    rest = api.get(f"/api/v1/runs/{run_id}/jobs/build/log?format=json&offset={first['next_offset']}").get_json()
    assert [line["text"] for line in rest["lines"]] == ["line 2", "line 3", "line 4"]
    for bad in ("0", "10001", "x"):
        answer = api.get(f"/api/v1/runs/{run_id}/jobs/build/log?limit={bad}")
        assert answer.status_code == 400 and "limit" in answer.get_json()["error"]


def test_the_session_key_is_stored_once_and_shared_or_said_missing(tmp_path, monkeypatch, store, broker_url):
    """Without CIQ_SECRET_KEY the key is generated once, kept 0600, and read by every later app
    (gunicorn's workers); a config directory that cannot be written still lets the app start."""
    from ci_queue.web.session import secret_key_path

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    first = make_api(store, broker_url, tmp_path / "a", secret_key="")
    second = make_api(store, broker_url, tmp_path / "b", secret_key="")
    path = secret_key_path()
    assert path.stat().st_mode & 0o777 == 0o600
    assert first.app.secret_key == second.app.secret_key == path.read_text().strip()
    (tmp_path / "ro").mkdir(mode=0o500)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "ro" / "config"))
    if os.access(tmp_path / "ro", os.W_OK):  # root writes anywhere: make the directory a file instead
        (tmp_path / "ro").rmdir()
        (tmp_path / "ro").write_text("not a directory")
    alone = make_api(store, broker_url, tmp_path / "c", secret_key="")
    assert alone.app.secret_key and alone.app.secret_key != first.app.secret_key
    assert login(alone)  # its pages work (in this one process)
