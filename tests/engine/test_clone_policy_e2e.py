"""The clone policy end to end: a host name that resolves to 127.0.0.1 is refused by the API
(Flask's test client on the engine's settings) and, when a run names it anyway (the API saw
another address, or the run was written by other means), by a real ``ci-queue worker`` right
before its fetch; a registry-configured URL (trusted) on the same host goes through."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ci_queue.clone_policy import TRUSTED_KEY
from ci_queue.dispatch import trigger_run
from ci_queue.web import create_app
from tests.engine.conftest import make_repo

pytestmark = pytest.mark.integration


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_name_resolving_to_loopback_is_refused_at_the_api_and_at_the_worker(engine, tmp_path):
    sha = make_repo(tmp_path / "source", {".ci-queue.yml": "build:\n  script: echo built from http\n"})
    root = tmp_path / "served"
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "source"), str(root / "repo.git")], check=True)
    subprocess.run(["git", "-C", str(root / "repo.git"), "update-server-info"], check=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://localhost:{server.server_address[1]}/repo.git"
    try:
        app = create_app(dataclasses.replace(engine.settings, api_tokens="e2e-token"), store=engine.store,
                         celery=engine.celery)
        response = app.test_client().post("/api/v1/runs", headers={"Authorization": "Bearer e2e-token"},
                                          json={"repo": "o/r", "clone_url": url, "ref": "main"})
        assert response.status_code == 403 and "localhost (127.0.0.1)" in response.get_json()["error"]

        engine.start_worker("w1")
        refused = trigger_run(engine.store, engine.celery, repo="o/r", ref="main", sha=sha, clone_url=url)
        trusted = trigger_run(engine.store, engine.celery, repo="o/r", ref="main", sha=sha, clone_url=url,
                              context={"kind": "push", "branch": "main", TRUSTED_KEY: True})
        run = engine.wait(refused, 60)
        assert run.status == "error", run.to_dict()
        assert "refused clone URL" in run.error and "localhost (127.0.0.1)" in run.error
        assert "CIQ_CLONE_ALLOW_HOSTS" in run.error and "attempts" not in run.error  # never retried
        run = engine.wait(trusted, 60)
        assert run.status == "success", run.to_dict()
    finally:
        server.shutdown()
        server.server_close()
