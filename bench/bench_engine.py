"""Dispatch-path benchmark: trigger -> first step started, and trivial-job throughput.

Starts its own engine on a Redis database of its own (2 ``ci-queue worker`` processes, shell
executor), and, for scale, a bare Celery worker running a no-op task on the same Redis:

    python bench/bench_engine.py [--runs 40] [--jobs 200] [--noop 1000]

Prints p50 / p95 of trigger -> first step, the jobs/s of one run of N trivial jobs through the
two workers, and the same two figures for a bare Celery no-op task. A script, not a test.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ci_queue.celery_app import make_celery  # noqa: E402
from ci_queue.dispatch import trigger_run  # noqa: E402
from ci_queue.settings import Settings  # noqa: E402
from ci_queue.store import Store  # noqa: E402

NOOP_APP = """
import os, redis
from celery import Celery
app = Celery("bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True)
counter = redis.Redis.from_url(os.environ["BENCH_BROKER"])

@app.task(name="bench.noop")
def noop(key):
    counter.rpush(key, 1)
"""


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


def make_repo(path: Path, pipeline: str) -> None:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / ".ci-queue.yml").write_text(pipeline)
    git = ["git", "-C", str(path), "-c", "user.email=b@example.com", "-c", "user.name=b"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "bench"], check=True)


def wait_for(predicate, timeout: float, what: str):
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--noop", type=int, default=1000)
    options = parser.parse_args()
    db = reserve_db()
    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url, decode_responses=True)
    tmp = Path(tempfile.mkdtemp(prefix="ciq-bench-"))
    prefix = f"ciq-bench-{uuid.uuid4().hex[:6]}:"
    env = {**os.environ, "CIQ_REDIS_URL": url, "CIQ_KEY_PREFIX": prefix, "CIQ_EXECUTOR": "shell",
           "CIQ_WORKSPACE_DIR": str(tmp / "ws"), "CIQ_GIT_CACHE_DIR": str(tmp / "git"), "CIQ_LOG_LEVEL": "WARNING",
           "PYTHONPATH": str(ROOT), "BENCH_BROKER": url}
    settings = Settings.from_env(env)
    store = Store(client, prefix)
    app = make_celery(settings)
    procs: list[subprocess.Popen] = []
    try:
        for name in ("b1", "b2"):
            procs.append(start([sys.executable, "-m", "ci_queue.cli", "worker", "--name", name, "--concurrency", "2",
                                "--loglevel", "INFO"], env, tmp / f"{name}.log", b"ready."))
        one, many = tmp / "one", tmp / "many"
        make_repo(one, "job:\n  script: 'true'\n")
        make_repo(many, "".join(f"j{i}:\n  script: 'true'\n" for i in range(options.jobs)))

        latencies = []
        for _ in range(options.runs + 3):
            started = time.time()
            run_id = trigger_run(store, app, repo="one", ref="main", clone_url=f"file://{one}")
            run = wait_for(lambda rid=run_id: (r := store.get_run(rid)) and r.status == "success" and r, 60, "a run")
            step = run.jobs[0].attempts[-1]["steps"][0]["started_at"]
            latencies.append(iso(step) - started)
        latencies = latencies[3:]  # the first runs warm the mirror cache and the worker imports

        run_id = trigger_run(store, app, repo="many", ref="main", clone_url=f"file://{many}")
        run = wait_for(lambda: (r := store.get_run(run_id, with_jobs=False)) and r.status == "success" and r,
                       600, "the throughput run")
        first_start = min(iso(j.started_at) for j in store.get_run(run_id).jobs)
        throughput = options.jobs / (iso(run.finished_at) - first_start)

        (tmp / "noop_app.py").write_text(NOOP_APP)
        noop_env = {**env, "PYTHONPATH": str(tmp)}
        procs.append(start([sys.executable, "-m", "celery", "-A", "noop_app", "worker", "--pool=prefork",
                            "--concurrency=4", "-Q", "bench-noop", "--without-gossip", "--without-mingle",
                            "-l", "INFO"], noop_env, tmp / "noop.log", b"ready."))
        noop = make_celery(settings)
        round_trips = []
        for i in range(100):
            key = f"bench-noop-rt-{i}"
            started = time.perf_counter()
            noop.send_task("bench.noop", args=[key], queue="bench-noop")
            wait_for(lambda k=key: client.llen(k), 10, "a no-op")
            round_trips.append(time.perf_counter() - started)
            client.delete(key)
        started = time.perf_counter()
        for _ in range(options.noop):
            noop.send_task("bench.noop", args=["bench-noop-many"], queue="bench-noop")
        wait_for(lambda: client.llen("bench-noop-many") >= options.noop, 300, "the no-ops")
        noop_rate = options.noop / (time.perf_counter() - started)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pattern in (f"{prefix}*", "ciq.*", "_kombu.*", "unacked*", "bench-*", "celery*"):
            for key in client.scan_iter(pattern):
                client.delete(key)
        client.delete("ciq-test:reserved")

    print(f"{'measure':46} {'p50':>9} {'p95':>9}")
    print(f"{'ci-queue: trigger -> first step started':46} {statistics.median(latencies) * 1000:8.1f}ms "
          f"{percentile(latencies, 0.95) * 1000:8.1f}ms   ({len(latencies)} runs)")
    print(f"{'bare Celery no-op round trip':46} {statistics.median(round_trips) * 1000:8.1f}ms "
          f"{percentile(round_trips, 0.95) * 1000:8.1f}ms   (100 tasks)")
    print(f"{'ci-queue: trivial jobs/s, 2 workers x 2':46} {throughput:9.1f}")
    print(f"{'bare Celery no-ops/s, 1 worker x 4':46} {noop_rate:9.1f}")


if __name__ == "__main__":
    main()
