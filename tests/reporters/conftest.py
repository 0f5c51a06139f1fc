"""A recording HTTP server on 127.0.0.1 and a real Celery worker (in a thread, on a Redis database
of the test's own) running the reporting tasks with a fast retry policy."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from loguru import logger

from ci_queue.celery_app import make_celery
from ci_queue.routing import CONTROL_QUEUE
from ci_queue.settings import Settings
from ci_queue.store import Store
from tests.conftest import require_redis
from tests.engine.conftest import release_database, reserve_database


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    code: int = 0
    at: float = field(default_factory=time.monotonic)


@dataclass
class Rule:
    path: str
    times: int
    code: int = 500
    hang: float = 0.0
    when: Callable[[Any], bool] | None = None


class Recorder:
    """What the server received, and what it should answer (rules per path, consumed in order)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.rules: list[Rule] = []
        self.lock = threading.Lock()
        self.url = ""

    def fail(self, path: str, times: int, code: int = 500, when: Callable[[Any], bool] | None = None) -> None:
        with self.lock:
            self.rules.append(Rule(path, times, code=code, when=when))

    def hang(self, path: str, seconds: float, times: int = 1) -> None:
        with self.lock:
            self.rules.append(Rule(path, times, hang=seconds))

    def answer(self, request: Request) -> Rule | None:
        with self.lock:
            self.requests.append(request)
            for rule in self.rules:
                if rule.times > 0 and rule.path == request.path and (rule.when is None or rule.when(request.body)):
                    rule.times -= 1
                    return rule
        return None

    def to(self, path: str, ok: bool | None = None) -> list[Request]:
        with self.lock:
            found = [r for r in self.requests if r.path == path]
        return [r for r in found if ok is None or (200 <= r.code < 300) == ok]

    def wait(self, predicate: Callable[[Recorder], bool], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError("the server did not get what was expected:\n" + "\n".join(
                    f"{r.code} {r.method} {r.path} {r.body}" for r in self.requests))
            time.sleep(0.05)


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            request = Request("POST", self.path, dict(self.headers.items()), body)
            rule = recorder.answer(request)
            if rule and rule.hang:
                time.sleep(rule.hang)
            code = rule.code if rule and not rule.hang else 201
            request.code = code if not (rule and rule.hang) else -1  # the client gave up on a hung request
            data = json.dumps({"ok": 200 <= code < 300}).encode()
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    server.daemon_threads = True
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every loguru message of the test (the worker runs in this process)."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(message.record["message"]), level="DEBUG")
    yield lines
    logger.remove(sink)


@dataclass
class Farm:
    settings: Settings
    store: Store
    app: Any
    reporters: Any


@pytest.fixture
def farm_policy() -> Any:
    """Fast retries (waits of 0 or 1 s, 1 + 3 attempts, a 0.5 s read timeout); a test may
    parametrize its own."""
    from ci_queue.reporters.tasks import RetryPolicy

    return RetryPolicy(backoff=1, backoff_max=1, max_retries=3, connect_timeout=1.0, read_timeout=0.5, lock_wait=5.0)


@pytest.fixture
def farm(recorder: Recorder, farm_policy: Any) -> Iterator[Farm]:
    """Settings pointing at the recording server, a store and broker in a reserved Redis
    database, and a real worker (thread pool) consuming the control queue."""
    require_redis()
    import redis
    from celery.contrib.testing.worker import start_worker

    from ci_queue.reporters.tasks import register

    db, token = reserve_database()
    prefix = f"ciq-rep-{uuid.uuid4().hex[:8]}:"
    url = f"redis://127.0.0.1:6379/{db}"
    settings = Settings(redis_url=url, key_prefix=prefix, public_url="https://ci.example.test",
                        github_api_url=recorder.url, gitlab_api_url=recorder.url + "/api/v4",
                        gitea_api_url=recorder.url + "/api/v1", slack_webhook_url=recorder.url + "/slack/hook")
    client = redis.Redis.from_url(url, decode_responses=True)
    store = Store(client, prefix, 3600)
    app = make_celery(settings)
    reporters = register(app, policy=farm_policy, settings=settings, store=store)
    try:
        with start_worker(app, concurrency=4, pool="threads", perform_ping_check=False, loglevel="WARNING",
                          queues=[CONTROL_QUEUE], shutdown_timeout=20):
            yield Farm(settings, store, app, reporters)
    finally:
        release_database(client, token, prefix)
