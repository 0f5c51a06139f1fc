"""A live web app for the artifact tests: the real app served over HTTP on 127.0.0.1 (a threaded
werkzeug server in a thread), its store on the test Redis under a prefix of the test's own, its
objects in a directory or in an S3-protocol server (moto) started by the test. Jobs "run" in
the store: a planned run whose job began with a job token, as a worker's attempt does."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from ci_queue.celery_app import make_celery
from ci_queue.objects import ObjectStore, open_store
from ci_queue.settings import Settings
from ci_queue.store import Store
from ci_queue.trust import RunTrust
from ci_queue.web import create_app
from tests.engine.conftest import engine  # noqa: F401 (a fixture)
from tests.engine.test_store import make_plan
from tests.objects.test_object_store import aws_env, make_s3_backend, moto_server  # noqa: F401 (fixtures)
from tests.web.conftest import TOKENS, broker_url  # noqa: F401 (broker_url: a fixture)
from workers.transfer import JobChannel

BACKENDS = ("directory", "s3")
PROTECTED = RunTrust(protected=True, registered=True)


@dataclass
class RunningJob:
    run_id: str
    index: int
    attempt: int
    token: str
    indexes: dict[str, int]


@dataclass
class LiveApp:
    url: str
    store: Store
    objects: ObjectStore
    settings: Settings
    tmp_path: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[0]}"}

    def plan_run(self, text: str, **create: Any) -> tuple[str, dict[str, int], list[int]]:
        """A planned run, by default of ``main`` of a registered repository (protected)."""
        plan = make_plan(self.tmp_path, text)
        run_id = self.store.create_run(**{"repo": "group/project", "ref": "main", "trust": PROTECTED, **create})
        ready = self.store.set_plan(run_id, plan, sha="a" * 40)
        return run_id, {job.name: i for i, job in enumerate(plan.jobs)}, ready

    def begin(self, run_id: str, index: int, attempt: int = 1) -> str:
        """Start the attempt as a worker does; returns its job token."""
        token = uuid.uuid4().hex
        assert self.store.begin_job(run_id, index, attempt, "test-worker", 60, token).status == "ok"
        return token

    def finish(self, run_id: str, index: int, attempt: int = 1, status: str = "success") -> list[int]:
        return self.store.finish_job(run_id, index, attempt, status).ready

    def running(self, text: str, name: str, **create: Any) -> RunningJob:
        run_id, indexes, _ = self.plan_run(text, **create)
        return RunningJob(run_id, indexes[name], 1, self.begin(run_id, indexes[name]), indexes)

    def channel(self, job: RunningJob) -> JobChannel:
        return JobChannel(self.url, job.run_id, job.index, job.attempt, job.token)


def serve(app: Any) -> tuple[str, Any]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-app", daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_port}", server


def live_app(store: Store, broker: str, tmp_path: Path, objects: ObjectStore, **overrides: Any
             ) -> tuple[LiveApp, Any]:
    settings = Settings(**{"api_tokens": TOKENS[0], "redis_url": broker, "key_prefix": store.prefix,
                           "cache_dir": str(tmp_path / "local-caches"), **overrides})
    app = create_app(settings, store=store, celery=make_celery(settings, web=True), objects=objects)
    url, server = serve(app)
    return LiveApp(url, store, objects, Settings(**{**settings.__dict__, "server_url": url}), tmp_path), server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def objects(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> ObjectStore:
    if backend == "s3":
        request.getfixturevalue("aws_env")
        return make_s3_backend(request.getfixturevalue("moto_server")).store
    return open_store((tmp_path / "objects").as_uri())


@pytest.fixture
def live(store: Store, broker_url: str, tmp_path: Path, objects: ObjectStore) -> Iterator[LiveApp]:  # noqa: F811
    app, server = live_app(store, broker_url, tmp_path, objects)
    try:
        yield app
    finally:
        server.shutdown()
