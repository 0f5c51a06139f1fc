"""A real engine for end-to-end tests: a Redis database of the test's own, real ``ci-queue
worker`` processes (Celery prefork), real git repositories in a temp dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ci_queue.celery_app import make_celery
from ci_queue.settings import Settings
from ci_queue.store import RunRecord, Store
from tests.conftest import REPO, require_redis

RESERVATION = "ciq-test:reserved"


def reserve_database(host_url: str = "redis://127.0.0.1:6379") -> tuple[int, str]:
    """A Redis database number no other test run is using (the broker's keys are per database)."""
    import redis

    token = uuid.uuid4().hex
    for db in range(15, 0, -1):
        client = redis.Redis.from_url(f"{host_url}/{db}")
        if client.set(RESERVATION, token, nx=True, ex=3600):
            return db, token
    pytest.fail("no free Redis database for an engine test")


def release_database(client, token: str, *prefixes: str) -> None:
    """Delete what a test made in its reserved database (its key prefixes and the broker's keys)
    and free the reservation. Nothing else in that database is touched."""
    for pattern in (*(f"{p}*" for p in prefixes), "ciq.*", "_kombu.*", "unacked*"):
        for key in client.scan_iter(pattern, count=1000):
            client.delete(key)
    if client.get(RESERVATION) == token:
        client.delete(RESERVATION)


@dataclass
class Engine:
    settings: Settings
    env: dict[str, str]
    store: Store
    workdir: Path
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def celery(self):
        return make_celery(self.settings)

    def start_worker(self, name: str, *, tags: str = "", concurrency: int = 2, untagged: bool = True,
                     extra_env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
                     protected: bool = False) -> subprocess.Popen:
        """A ``ci-queue worker`` process (``prefix``: a command it runs under, e.g. ``faketime``;
        ``protected``: ``--protected``)."""
        path = self.workdir / f"{name}.log"
        start = path.stat().st_size if path.exists() else 0  # a worker started again under its name appends
        log = path.open("ab")
        args = [*prefix, sys.executable, "-m", "ci_queue.cli", "worker", "--name", name, "--concurrency",
                str(concurrency), "--loglevel", "INFO"]
        if tags:
            args += ["--tags", tags]
        if not untagged:
            args.append("--no-untagged")
        if protected:
            args.append("--protected")
        proc = subprocess.Popen(args, env={**self.env, **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                cwd=REPO, start_new_session=True)
        self.workers.append(proc)
        deadline = time.monotonic() + 60
        while b"ready." not in path.read_bytes()[start:]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker {name} did not start:\n" + self.worker_log(name))
            time.sleep(0.1)
        return proc

    def worker_names(self) -> list[str]:
        return [p.args[p.args.index("--name") + 1] for p in self.workers]

    def worker_log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-5000:]

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.workers:
            proc.wait(timeout=30)
        self.workers.clear()

    def trigger(self, repo: Path, ref: str = "main", **kwargs) -> str:
        from ci_queue.dispatch import trigger_run

        return trigger_run(self.store, self.celery, repo=repo.name, ref=ref, clone_url=f"file://{repo}", **kwargs)

    def wait(self, run_id: str, timeout: float = 90,
             until: Callable[[RunRecord], bool] | None = None) -> RunRecord:
        """Poll the run until it is finished (or ``until`` holds); fail with the worker logs if not."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.store.get_run(run_id)
            if run is not None and (until(run) if until else run.status in
                                    ("success", "failed", "canceled", "skipped", "error")):
                return run
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {name}\n" + self.worker_log(name) for name in self.worker_names())
                state = run.to_dict() if run else None
                raise AssertionError(f"run {run_id} did not get there in {timeout}s: {state}\n{logs}")
            time.sleep(0.1)


def make_repo(path: Path, files: dict[str, str]) -> str:
    """A git repository with ``files`` committed on ``main``; returns the commit sha."""
    path.mkdir(parents=True, exist_ok=True)
    git = ["git", "-C", str(path), "-c", "user.email=test@example.com", "-c", "user.name=test"]
    if not (path / ".git").exists():
        subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "ci"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def engine_env(redis_url: str, prefix: str, workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of a test's workers: its Redis and key prefix, its own workspaces and git
    cache, the shell executor, short grace periods, and local (file://) repositories allowed: the
    tests' repositories are directories of theirs."""
    return {
        **os.environ,
        "CIQ_REDIS_URL": redis_url,
        "CIQ_KEY_PREFIX": prefix,
        "CIQ_WORKSPACE_DIR": str(workdir / "workspaces"),
        "CIQ_GIT_CACHE_DIR": str(workdir / "git-cache"),
        "CIQ_EXECUTOR": "shell",
        "CIQ_KILL_GRACE_SECONDS": "1",
        "CIQ_LOG_FORMAT": "json",
        "CIQ_SHUTDOWN_GRACE_SECONDS": "5",
        "PYTHONPATH": str(REPO),
        "CIQ_ALLOW_LOCAL_REPOS": "1",
        **extra,
    }


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    require_redis()
    import redis

    db, token = reserve_database()
    prefix = f"ciq-e2e-{uuid.uuid4().hex[:8]}:"
    env = engine_env(f"redis://127.0.0.1:6379/{db}", prefix, tmp_path)
    settings = Settings.from_env(env)
    client = redis.Redis.from_url(env["CIQ_REDIS_URL"], decode_responses=True)
    engine = Engine(settings=settings, env=env, store=Store(client, prefix, 3600), workdir=tmp_path)
    try:
        yield engine
    finally:
        engine.stop_workers()
        release_database(client, token, prefix)
