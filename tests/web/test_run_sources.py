"""What ``POST /api/v1/runs`` and webhooks may make a worker clone: registered repositories for
trigger tokens, the clone policy for everything else (local paths, transports, private hosts),
on the real app with a real store and broker."""

from __future__ import annotations

import json

import pytest

from ci_queue.clone_policy import TRUSTED_KEY, ClonePolicy, HostUnresolved
from tests.web.conftest import scoped_api
from tests.web.test_webhooks import SECRET, github_headers, github_push

REGISTRY = """
repositories:
  - name: octo/app
    provider: github
    clone_url: https://git.example.org/octo/app.git
    secret_env: TEST_GITHUB_SECRET
  - name: octo/hello
    provider: github
    secret_env: TEST_GITHUB_SECRET
  - name: tools/nightly
    provider: generic
    clone_url: file:///srv/git/nightly.git
"""


def served(store, broker_url, tmp_path, **settings):
    """The app as ``serve`` has it by default (no local repositories) unless ``settings`` say."""
    tokens = {} if (tmp_path / "tokens.yml").exists() else {"bot": ("read", "trigger")}
    api = scoped_api(store, broker_url, tmp_path, tokens, REGISTRY, **{"allow_local_repos": False, **settings})
    api.bot = {"Authorization": f"Bearer {api.tokens.get('bot')}"}
    return api


@pytest.fixture
def app(store, broker_url, tmp_path):
    return served(store, broker_url, tmp_path)


def trigger(api, clone_url: str, headers=None, **body):
    return api.post("/api/v1/runs", json={"clone_url": clone_url, "ref": "main", **body}, headers=headers or {})


@pytest.mark.parametrize("url", ["file:///etc", "/etc", "file:///srv/git/other.git", "FILE:///etc/passwd"])
def test_local_repositories_are_refused_under_serve_settings_even_for_admin(app, url):
    response = trigger(app, url, repo="o/local")
    assert response.status_code == 403, response.get_json()
    assert "CIQ_ALLOW_LOCAL_REPOS=1" in response.get_json()["error"]
    assert app.store.list_runs()[0] == []


@pytest.mark.parametrize("url, kind", [
    ("https://127.0.0.1/x.git", "loopback"),
    ("https://10.1.2.3/x.git", "private"),
    ("https://172.16.0.1/x.git", "private"),
    ("https://192.168.1.1:8443/x.git", "private"),
    ("https://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("https://0.0.0.0/x.git", "unspecified"),
    ("https://100.64.0.1/x.git", "non-global"),
    ("https://[::1]/x.git", "loopback"),
    ("https://[fd00:ec2::254]/x.git", "private"),
    ("https://[fe80::1]/x.git", "link-local"),
    ("https://[::ffff:10.0.0.1]/x.git", "private (inside the IPv6 address"),
    ("https://[::ffff:169.254.169.254]/x.git", "cloud metadata"),
    ("ssh://git@10.0.0.1/x.git", "private"),
    ("git@192.168.0.1:group/x.git", "private"),
    ("git://127.0.0.1/x.git", "loopback"),
    ("https://localhost/x.git", "loopback"),  # a name: resolved, its address checked
])
def test_private_loopback_link_local_and_metadata_hosts_are_refused(app, url, kind):
    response = trigger(app, url, repo="o/x")
    assert response.status_code == 403, response.get_json()
    error = response.get_json()["error"]
    assert kind in error and "CIQ_CLONE_ALLOW_HOSTS" in error
    assert app.store.list_runs()[0] == []


@pytest.mark.parametrize("url, status, words", [
    ("http://example.com/x.git", 403, "plain http:// is refused"),
    ("ftp://example.com/x.git", 400, "transport ftp:// is refused"),
    ("ext::sh -c touch% /tmp/pwned", 400, "refused clone URL"),
    ("fd::17", 400, "'<transport>::' URLs are refused"),
    ("https://127.1/x.git", 400, "neither a host name nor an IP address"),
    ("https://2130706433/x.git", 400, "neither a host name nor an IP address"),
    ("https://evil.example@127.0.0.1@x/", 400, "more than one '@'"),
    ("relative/path", 400, "not a URL nor an absolute path"),
])
def test_other_transports_and_ambiguous_hosts_are_refused(app, url, status, words):
    response = trigger(app, url, repo="o/x")
    assert response.status_code == status and words in response.get_json()["error"], response.get_json()


def test_the_allow_list_lets_named_hosts_addresses_and_networks_through(store, broker_url, tmp_path):
    api = served(store, broker_url, tmp_path, clone_allow_hosts="10.0.0.0/8, localhost, 127.0.0.1, *.corp.test")
    for url in ("https://10.1.2.3/x.git", "ssh://git@10.9.9.9/x.git", "https://localhost/x.git",
                "http://127.0.0.1:8080/x.git", "https://git.corp.test/x.git", "http://git.corp.test/x.git"):
        response = trigger(api, url, repo="o/x")
        assert response.status_code == 202, (url, response.get_json())
        assert api.store.get_run(response.get_json()["run_id"]).clone_url == url
    for url in ("https://192.168.1.1/x.git", "https://169.254.169.254/x", "http://93.184.216.34/x.git"):
        assert trigger(api, url, repo="o/x").status_code == 403, url


def test_a_name_is_checked_by_the_addresses_it_resolves_to(app):
    """A resolver of the test's own (the policy's hook): the name resolves to a private address."""
    names = {"git.rebind.test": ["93.184.216.34", "10.0.0.7"], "git.public.test": ["93.184.216.34"]}

    def resolve(host: str, port: int) -> list[str]:
        if host not in names:
            raise HostUnresolved(host)
        return names[host]

    app.app.config["CIQ_CLONE_POLICY"] = ClonePolicy(resolver=resolve)
    response = trigger(app, "https://git.rebind.test/x.git", repo="o/x")
    assert response.status_code == 403 and "git.rebind.test (10.0.0.7)" in response.get_json()["error"]
    assert trigger(app, "https://git.public.test/x.git", repo="o/x").status_code == 202
    # a name that does not resolve here is the worker's to check (it resolves again before the fetch)
    assert trigger(app, "https://git.nowhere.test/x.git", repo="o/x").status_code == 202


def test_a_trigger_token_runs_registered_repositories_only(app):
    by_name = trigger(app, "", headers=app.bot, repo="octo/app")
    assert by_name.status_code == 202, by_name.get_json()
    run = app.store.get_run(by_name.get_json()["run_id"])
    assert (run.repo, run.clone_url, run.context[TRUSTED_KEY]) == ("octo/app", "https://git.example.org/octo/app.git",
                                                                   True)
    by_url = trigger(app, "https://GIT.example.org/octo/app/", headers=app.bot)
    assert by_url.status_code == 202
    assert app.store.get_run(by_url.get_json()["run_id"]).repo == "octo/app"
    # the registry's file:// URL is the operator's: trusted even though local repositories are off
    assert trigger(app, "", headers=app.bot, repo="tools/nightly").status_code == 202
    refusals = [
        ({"repo": "octo/app", "clone_url": "https://evil.example/octo/app.git"}, "not the one registered for octo/app"),
        ({"repo": "octo/hello", "clone_url": "https://github.com/octo/hello.git"}, "has no `clone_url`"),
        ({"repo": "someone/else", "clone_url": "https://github.com/someone/else.git"}, "not a registered repository"),
        ({"clone_url": "https://github.com/someone/else.git"}, "not a registered repository"),
    ]
    before = len(app.store.list_runs(limit=100)[0])
    for body, words in refusals:
        response = app.post("/api/v1/runs", json={"ref": "main", **body}, headers=app.bot)
        assert response.status_code == 403 and words in response.get_json()["error"], (body, response.get_json())
        assert "admin" in response.get_json()["error"]
    assert len(app.store.list_runs(limit=100)[0]) == before
    # an admin token (CIQ_API_TOKENS) may run an unregistered repository the clone policy allows
    assert trigger(app, "https://github.com/someone/else.git").status_code == 202


def test_webhook_clone_urls_pass_the_policy_unless_the_registry_sets_them(store, broker_url, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_GITHUB_SECRET", SECRET)
    app = served(store, broker_url, tmp_path)

    def push(repo: str, clone_url: str):
        payload = json.loads(github_push(repo))
        payload["repository"]["clone_url"] = clone_url
        body = json.dumps(payload).encode()
        return app.client.post("/webhooks/github", data=body, headers=github_headers(body, delivery="d-" + clone_url))

    refused = push("octo/hello", "https://10.0.0.5/octo/hello.git")
    assert refused.status_code == 403 and "CIQ_CLONE_ALLOW_HOSTS" in refused.get_json()["error"]
    assert "clone_url" in refused.get_json()["error"] and app.store.list_runs()[0] == []
    # the registry's clone_url wins over the payload's, and is trusted
    accepted = push("octo/app", "https://10.0.0.5/octo/app.git")
    assert accepted.status_code == 202
    run = app.store.get_run(accepted.get_json()["run_id"])
    assert run.clone_url == "https://git.example.org/octo/app.git" and run.context[TRUSTED_KEY] is True
    # the operator allow-lists the forge: the same delivery (not remembered as refused) now starts its run
    allowed = served(store, broker_url, tmp_path, clone_allow_hosts="10.0.0.0/24")
    body = json.loads(github_push("octo/hello"))
    body["repository"]["clone_url"] = "https://10.0.0.5/octo/hello.git"
    data = json.dumps(body).encode()
    response = allowed.client.post("/webhooks/github", data=data,
                                   headers=github_headers(data, delivery="d-https://10.0.0.5/octo/hello.git"))
    assert response.status_code == 202 and "duplicate" not in response.get_json()
    run = allowed.store.get_run(response.get_json()["run_id"])
    assert run.clone_url == "https://10.0.0.5/octo/hello.git" and TRUSTED_KEY not in run.context
