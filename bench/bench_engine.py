"""Dispatch-path benchmark: every figure of issue #11's dispatch goals, each against its floor.

Starts, on a Redis database of its own, the engine (2 ``ci-queue worker`` processes x 2 slots,
shell executor, local repositories allowed) and, as the floor, a bare Celery worker pair (2
workers x 2, prefork, same broker settings as ci-queue: acks late, prefetch 1) serving two tasks:
a no-op and ``subprocess.run(["true"])``. Then, for each repeat, floor and subject interleaved:

1. bare Celery round trip (send -> task ran -> the bench hears of it; p50 / p95), against
   ci-queue's trigger -> first step started (a 1-job pipeline: plan + job);
2. ``subprocess.run(["true"])`` tasks/s through the pair, against trivial jobs/s of one run of
   ``--jobs`` jobs through the two workers;
3. 1-job pipelines end to end: ``--pipelines`` runs triggered at once, runs/s from the first
   trigger to the last run's end, against the same ``true`` floor.

    python bench/bench_engine.py [--repeat 3] [--runs 20] [--jobs 200] [--pipelines 100] [--floor 400]

Prints the median over repeats of each figure, its floor, the ratio and the issue's goal.
A script, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ci_queue.celery_app import make_celery  # noqa: E402
from ci_queue.dispatch import trigger_run  # noqa: E402
from ci_queue.settings import Settings  # noqa: E402
from ci_queue.store import Store  # noqa: E402

FLOOR_QUEUE = "bench-floor"
FLOOR_APP = """
import os, subprocess, redis
from celery import Celery
app = Celery("bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True)
counter = redis.Redis.from_url(os.environ["BENCH_BROKER"])

@app.task(name="bench.noop")
def noop(key):
    counter.rpush(key, 1)

@app.task(name="bench.true")
def true(key):
    subprocess.run(["true"], check=True)
    counter.rpush(key, 1)
"""
T = TypeVar("T")


def reserve_db() -> int:
    for db in range(15, 0, -1):
        if redis.Redis(db=db).set("ciq-test:reserved", "bench", nx=True, ex=3600):
            return db
    raise SystemExit("no free Redis database")


def iso(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def make_repo(path: Path, pipeline: str) -> str:
    """A repository with one commit holding ``pipeline``; its sha."""
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / ".ci-queue.yml").write_text(pipeline)
    git = ["git", "-C", str(path), "-c", "user.email=b@example.com", "-c", "user.name=b"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()


def wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise SystemExit(f"timed out waiting for {what}")


def start(args: list[str], env: dict[str, str], log: Path, ready: bytes) -> subprocess.Popen:
    handle = log.open("wb")
    proc = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    wait_for(lambda: ready in log.read_bytes() or proc.poll() is not None, 60, f"{args[:4]} to start")
    if proc.poll() is not None:
        raise SystemExit(log.read_text())
    return proc


class Bench:
    """The engine and the floor on one Redis database; each method measures one figure once."""

    def __init__(self, client: redis.Redis, store: Store, settings: Settings, tmp: Path, jobs: int) -> None:
        self.client, self.store, self.tmp = client, store, tmp
        self.app = make_celery(settings)
        self.one, self.many = tmp / "one", tmp / "many"
        self.shas = {self.one: make_repo(self.one, "job:\n  script: 'true'\n"),
                     self.many: make_repo(self.many, "".join(f"j{i}:\n  script: 'true'\n" for i in range(jobs)))}
        self.jobs = jobs

    def _trigger(self, repo: Path) -> str:
        """A run as a webhook's push starts it: with its commit (no ``git ls-remote`` for the ref)."""
        return trigger_run(self.store, self.app, repo=repo.name, ref="main", sha=self.shas[repo],
                           clone_url=f"file://{repo}")

    def _succeeded(self, run_id: str, timeout: float):  # -> RunRecord
        def done():
            run = self.store.get_run(run_id, with_jobs=False)
            if run is not None and run.status not in ("queued", "running", "success"):
                raise SystemExit(f"run {run_id} ended {run.status}: {run.error}")
            return run if run is not None and run.status == "success" else None
        return wait_for(done, timeout, f"run {run_id}")

    # -- the subject -------------------------------------------------------------------------

    def first_step_latencies(self, count: int) -> list[float]:
        """Trigger -> first step started of ``count`` 1-job pipelines, one after the other."""
        latencies = []
        for _ in range(count):
            started = time.time()
            run_id = self._trigger(self.one)
            self._succeeded(run_id, 60)
            job = self.store.get_run(run_id).jobs[0]
            latencies.append(iso(job.attempts[-1]["steps"][0]["started_at"]) - started)
        return latencies

    def jobs_per_second(self) -> float:
        """Trivial jobs/s of one run of ``jobs`` jobs, from the first job's start to the run's end."""
        run_id = self._trigger(self.many)
        run = self._succeeded(run_id, 600)
        first_start = min(iso(j.started_at) for j in self.store.get_run(run_id).jobs)
        return self.jobs / (iso(run.finished_at) - first_start)

    def pipelines_per_second(self, count: int) -> float:
        """1-job pipelines end to end: ``count`` triggered at once, first trigger to last end."""
        started = time.time()
        run_ids = [self._trigger(self.one) for _ in range(count)]
        finished = [iso(self._succeeded(run_id, 600).finished_at) for run_id in run_ids]
        return count / (max(finished) - started)

    # -- the floor ---------------------------------------------------------------------------

    def round_trips(self, count: int) -> list[float]:
        """Bare Celery: send a no-op, its worker pushes to a list, the bench pops it (BLPOP)."""
        values = []
        for _ in range(count):
            key = f"bench-rt-{uuid.uuid4().hex}"
            started = time.perf_counter()
            self.app.send_task("bench.noop", args=[key], queue=FLOOR_QUEUE)
            if self.client.blpop([key], timeout=10) is None:
                raise SystemExit("a bare Celery no-op did not come back within 10 s")
            values.append(time.perf_counter() - started)
        return values

    def true_tasks_per_second(self, count: int) -> float:
        """Bare Celery pair (2 x 2 prefork): tasks/s of ``subprocess.run(["true"])``."""
        key = f"bench-true-{uuid.uuid4().hex}"
        started = time.perf_counter()
        for _ in range(count):
            self.app.send_task("bench.true", args=[key], queue=FLOOR_QUEUE)
        wait_for(lambda: self.client.llen(key) >= count, 300, "the floor's tasks")
        rate = count / (time.perf_counter() - started)
        self.client.delete(key)
        return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats; medians are reported")
    parser.add_argument("--runs", type=int, default=20, help="1-job runs for trigger -> first step, per repeat")
    parser.add_argument("--jobs", type=int, default=200, help="jobs of the throughput run")
    parser.add_argument("--pipelines", type=int, default=100, help="1-job runs triggered at once")
    parser.add_argument("--floor", type=int, default=400, help="`true` tasks of the floor, per repeat")
    options = parser.parse_args()
    db = reserve_db()
    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url, decode_responses=True)
    tmp = Path(tempfile.mkdtemp(prefix="ciq-bench-"))
    prefix = f"ciq-bench-{uuid.uuid4().hex[:6]}:"
    env = {**os.environ, "CIQ_REDIS_URL": url, "CIQ_KEY_PREFIX": prefix, "CIQ_EXECUTOR": "shell",
           "CIQ_ALLOW_LOCAL_REPOS": "1", "CIQ_WORKSPACE_DIR": str(tmp / "ws"), "CIQ_GIT_CACHE_DIR": str(tmp / "git"),
           "CIQ_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "BENCH_BROKER": url}
    settings = Settings.from_env(env)
    store = Store(client, prefix)
    procs: list[subprocess.Popen] = []
    figures: dict[str, list[float]] = {}

    def note(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    try:
        for name in ("b1", "b2"):
            procs.append(start([sys.executable, "-m", "ci_queue.cli", "worker", "--name", name, "--concurrency", "2",
                                "--loglevel", "INFO"], env, tmp / f"{name}.log", b"ready."))
        (tmp / "floor_app.py").write_text(FLOOR_APP)
        floor_env = {**env, "PYTHONPATH": str(tmp)}
        for name in ("f1", "f2"):
            procs.append(start([sys.executable, "-m", "celery", "-A", "floor_app", "worker", "--pool=prefork",
                                "--concurrency=2", "-Q", FLOOR_QUEUE, "-n", f"{name}@%h", "--without-gossip",
                                "--without-mingle", "-l", "INFO"], floor_env, tmp / f"{name}.log", b"ready."))
        bench = Bench(client, store, settings, tmp, options.jobs)
        bench.first_step_latencies(3)  # warm: the mirror cache, the worker processes' imports
        bench.round_trips(10)
        for repeat in range(options.repeat):
            round_trips = bench.round_trips(max(options.runs, 30))
            latencies = bench.first_step_latencies(options.runs)
            note("rt50", statistics.median(round_trips))
            note("rt95", percentile(round_trips, 0.95))
            note("lat50", statistics.median(latencies))
            note("lat95", percentile(latencies, 0.95))
            note("floor", bench.true_tasks_per_second(options.floor))
            note("jobs", bench.jobs_per_second())
            note("floor", bench.true_tasks_per_second(options.floor))
            note("pipes", bench.pipelines_per_second(options.pipelines))
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.4g}" for k, v in figures.items()), flush=True)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pattern in (f"{prefix}*", "ciq.*", "_kombu.*", "unacked*", "bench-*", "celery*", FLOOR_QUEUE):
            for key in client.scan_iter(pattern):
                client.delete(key)
        client.delete("ciq-test:reserved")
        shutil.rmtree(tmp, ignore_errors=True)  # repositories, git cache, workspaces, logs

    median = {name: statistics.median(values) for name, values in figures.items()}
    lat_ratio = median["lat50"] / median["rt50"]
    jobs_ratio = median["jobs"] / median["floor"]
    pipes_ratio = median["pipes"] / median["floor"]
    print(f"\nmedians of {options.repeat} interleaved repeats (floor and subject in the same run)")
    print(f"{'measure':48} {'value':>10} {'floor':>10} {'ratio':>7}  goal")
    print(f"{'trigger -> first step started, p50':48} {median['lat50'] * 1000:8.1f}ms {median['rt50'] * 1000:8.1f}ms "
          f"{lat_ratio:6.2f}x  <= 3x bare Celery round trip  {'met' if lat_ratio <= 3 else 'NOT met'}")
    print(f"{'trigger -> first step started, p95':48} {median['lat95'] * 1000:8.1f}ms {median['rt95'] * 1000:8.1f}ms "
          f"{median['lat95'] / median['rt95']:6.2f}x")
    print(f"{'trivial jobs/s, 2 workers x 2':48} {median['jobs']:10.1f} {median['floor']:10.1f} {jobs_ratio:6.1%}  "
          f">= 30% of bare Celery 2x2 running `true`  {'met' if jobs_ratio >= 0.3 else 'NOT met'}")
    met = median["pipes"] >= 200 or pipes_ratio >= 0.2
    print(f"{'1-job pipelines/s end to end':48} {median['pipes']:10.1f} {median['floor']:10.1f} {pipes_ratio:6.1%}  "
          f">= 200/s or >= 20% of the same floor  {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
