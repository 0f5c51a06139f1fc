"""The web app on real services: the store on the test Redis (a key prefix of the test's own) and
a real Celery app whose broker is a Redis database reserved for this session. No worker consumes
it: the messages the API sends just sit in their queues, where the tests read them."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ci_queue.celery_app import make_celery
from ci_queue.repos import parse_registry
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.web import create_app
from tests.engine.conftest import engine, release_database, reserve_database  # noqa: F401 (engine: a fixture)
from tests.engine.test_store import make_plan
from tests.reporters.conftest import recorder  # noqa: F401 (a fixture: the recording HTTP server)

TOKENS = ("tok-one-3f9c1a", "tok-two-77be02")


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    from tests.conftest import require_redis

    require_redis()
    import redis

    db, token = reserve_database()
    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        yield url
    finally:
        release_database(client, token)


@dataclass
class Api:
    """The app, its test client, the store behind it and a view of the broker's queues."""

    app: Any
    client: Any
    store: Store
    broker: Any
    tmp_path: Path
    tokens: dict[str, str] = field(default_factory=dict)  # {name: token} of its tokens file (``scoped_api``)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[0]}"}

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.client.get(url, headers={**self.auth, **kwargs.pop("headers", {})}, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.client.post(url, headers={**self.auth, **kwargs.pop("headers", {})}, **kwargs)

    def messages(self, queue: str, run_id: str | None = None) -> list[tuple[str, list]]:
        """The (task name, args) of the messages waiting in ``queue`` (for ``run_id``)."""
        found = []
        for raw in self.broker.lrange(queue, 0, -1):
            message = json.loads(raw)
            args = json.loads(base64.b64decode(message["body"]))[0]
            if run_id is None or args[0] == run_id:
                found.append((message["headers"]["task"], args))
        return found

    def planned_run(self, text: str, **create: Any) -> tuple[str, dict[str, int], list[int]]:
        """A run planned from pipeline ``text``: (id, job indexes by name, first wave)."""
        plan = make_plan(self.tmp_path, text)
        run_id = self.store.create_run(**{"repo": "o/r", "ref": "main", **create})
        ready = self.store.set_plan(run_id, plan, sha="a" * 40)
        return run_id, {job.name: i for i, job in enumerate(plan.jobs)}, ready


def offline_resolver(host: str, port: int) -> list[str]:
    from ci_queue.clone_policy import HostUnresolved

    if host.lower() != "localhost":
        raise HostUnresolved(host)
    return ["127.0.0.1"]


def make_api(store: Store, broker_url: str, tmp_path: Path, objects: Any = None, **settings: Any) -> Api:
    """The app (its object store: ``objects``, else a directory of the test's own)."""
    import redis

    config = Settings(**{"api_tokens": f" {TOKENS[0]} , {TOKENS[1]},", "redis_url": broker_url,
                         "key_prefix": store.prefix, "artifacts_url": (tmp_path / "objects").as_uri(),
                         "allow_local_repos": True,  # the tests trigger file:// repositories
                         "secret_key": "web-tests-session-key",  # not one stored in the tester's home
                         **settings})
    app = create_app(config, store=store, celery=make_celery(config, web=True), objects=objects)
    app.testing = True
    # the clone policy's resolver hook: `localhost` as /etc/hosts has it, every other name unresolved
    # (as on a machine without DNS), so no test's query leaves the machine; tests needing names set theirs
    app.config["CIQ_CLONE_POLICY"] = dataclasses.replace(app.config["CIQ_CLONE_POLICY"], resolver=offline_resolver)
    return Api(app, app.test_client(), store, redis.Redis.from_url(broker_url, decode_responses=True), tmp_path)


def write_tokens(path: Path, tokens: dict[str, tuple[str, ...] | tuple[tuple[str, ...], tuple[str, ...]]]
                 ) -> dict[str, str]:
    """A tokens file made by ``ci-queue token create``'s code: ``{name: scopes}`` or
    ``{name: (scopes, repos)}``; returns ``{name: token}``."""
    from ci_queue.tokens import create_token

    made = {}
    for name, spec in tokens.items():
        scopes, repos = spec if spec and isinstance(spec[0], tuple) else (spec, ())
        made[name] = create_token(path, name, scopes, repos)
    return made


def scoped_api(store: Store, broker_url: str, tmp_path: Path, tokens: dict[str, Any], registry: str,
               **settings: Any) -> Api:
    """The app with a tokens file (``tmp_path/tokens.yml``, ``tokens`` as ``write_tokens`` takes
    them; ``api.tokens``: ``{name: token}``) and the repository registry ``registry`` (repos.yml text)."""
    path = tmp_path / "tokens.yml"
    made = write_tokens(path, tokens)
    api = make_api(store, broker_url, tmp_path, tokens_file=str(path), **settings)
    api.app.config["CIQ_REGISTRY"] = parse_registry(registry)
    api.tokens = made
    return api


@pytest.fixture
def api(store: Store, broker_url: str, tmp_path: Path) -> Api:
    """Messages are not cleaned per test (the database is this session's): read them by run id."""
    return make_api(store, broker_url, tmp_path)


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """The app behind a real threaded HTTP server on a free loopback port; yields its URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
