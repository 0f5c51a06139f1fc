"""Webhook load benchmark: signed GitHub pushes through gunicorn, next to a bare Flask 202.

    python bench/bench_webhooks.py [--requests 2000] [--concurrency 8] [--repeat 3]

Starts, on 127.0.0.1, the ci-queue app under gunicorn (the `ci-queue serve` configuration: gthread
workers) with a registry of one repository, and a bare Flask app whose only route answers 202
under the same gunicorn settings; then sends the same number of signed push deliveries to each
from a thread pool (bounded in count and time), rounds of both interleaved, and prints the medians
of requests/s and latency percentiles, and their ratios (issue #11: >= 85% of the bare endpoint's
requests/s, p95 within 1.5x).
Runs triggered go to a Redis database of the benchmark's own (no worker: they stay queued) and
are deleted afterwards. A script, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret"
BARE_APP = """
from flask import Flask
app = Flask("bare")

@app.post("/webhooks/github")
def hook():
    return {"run_id": "x"}, 202
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reserve_db() -> int:
    for db in range(15, 0, -1):
        if redis.Redis(db=db).set("ciq-test:reserved", "bench-webhooks", nx=True, ex=3600):
            return db
    raise SystemExit("no free Redis database")


def start_gunicorn(app: str, port: int, env: dict[str, str], workers: int, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
            "--worker-class", "gthread", "--threads", "16", "--log-level", "warning", app]
    proc = subprocess.Popen(args, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=env.get("BENCH_CWD", str(ROOT)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=5)
            return proc
        except requests.RequestException:
            if proc.poll() is not None:
                raise SystemExit(log.read_text()) from None
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # leave nothing running behind a failed start
    raise SystemExit("gunicorn did not start")


def payload(i: int) -> bytes:
    sha = hashlib.sha1(str(i).encode()).hexdigest()
    return json.dumps({"ref": "refs/heads/main", "before": "0" * 39 + "1", "after": sha, "created": False,
                       "deleted": False, "repository": {"full_name": "bench/repo", "default_branch": "main",
                                                        "clone_url": "https://127.0.0.1/bench/repo.git"},
                       "head_commit": {"id": sha, "message": "bench"}, "sender": {"login": "bench"}}).encode()


def fire(port: int, count: int, concurrency: int, budget: float) -> tuple[list[float], float, int]:
    session_per_thread: dict[int, requests.Session] = {}
    deadline = time.monotonic() + budget

    def one(i: int) -> tuple[float, int]:
        if time.monotonic() > deadline:
            return 0.0, 0
        import threading

        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        body = payload(i)
        signature = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={signature}",
                   "X-GitHub-Delivery": uuid.uuid4().hex, "Content-Type": "application/json"}
        started = time.perf_counter()
        response = session.post(f"http://127.0.0.1:{port}/webhooks/github", data=body, headers=headers, timeout=10)
        return time.perf_counter() - started, response.status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(count)))
    elapsed = time.perf_counter() - started
    latencies = [latency for latency, status in results if status == 202]
    return latencies, elapsed, sum(1 for _, status in results if status not in (0, 202))


def figures(latencies: list[float], elapsed: float, errors: int) -> tuple[float, float, float, int]:
    """requests/s, p50 and p95 (seconds), errors of one round."""
    ordered = sorted(latencies)
    return (len(latencies) / elapsed, statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))], errors)


def report(name: str, rounds: list[tuple[float, float, float, int]]) -> tuple[float, float]:
    """Print the medians over rounds; returns (req/s, p95)."""
    rate, p50, p95 = (statistics.median(r[k] for r in rounds) for k in range(3))
    errors = sum(r[3] for r in rounds)
    print(f"{name:34} {rate:9.0f} req/s  p50 {p50 * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms  ({errors} errors)")
    return rate, p95


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved rounds; medians are reported")
    options = parser.parse_args()
    db = reserve_db()
    tmp = Path(tempfile.mkdtemp(prefix="ciq-bench-hooks-"))
    (tmp / "repos.yml").write_text("repositories:\n  - name: bench/repo\n    provider: github\n"
                                   "    secret_env: BENCH_SECRET\n")
    (tmp / "bare_app.py").write_text(BARE_APP)
    prefix = f"ciq-bench-{uuid.uuid4().hex[:6]}:"
    env = {**os.environ, "CIQ_REDIS_URL": f"redis://127.0.0.1:6379/{db}", "CIQ_KEY_PREFIX": prefix,
           "CIQ_REPOS_FILE": str(tmp / "repos.yml"), "CIQ_API_TOKENS": "bench", "BENCH_SECRET": SECRET,
           "CIQ_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
           # the payload's clone URL is an address the clone policy checks without a DNS lookup
           "CIQ_CLONE_ALLOW_HOSTS": "127.0.0.1"}
    procs = []
    try:
        ours, bare = free_port(), free_port()
        procs.append(start_gunicorn("ci_queue.web:create_app()", ours, env, options.workers, tmp / "ours.log"))
        procs.append(start_gunicorn("bare_app:app", bare, {**env, "BENCH_CWD": str(tmp), "PYTHONPATH": str(tmp)},
                                    options.workers, tmp / "bare.log"))
        fire(ours, 50, 4, 30)  # warm-up: connections, imports, Redis scripts
        fire(bare, 50, 4, 30)
        ci, plain = [], []
        for _ in range(options.repeat):  # interleaved: both see the same noise of the machine
            ci.append(figures(*fire(ours, options.requests, options.concurrency, 120)))
            plain.append(figures(*fire(bare, options.requests, options.concurrency, 120)))
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        client = redis.Redis(db=db)
        for pattern in (f"{prefix}*", "ciq.*", "_kombu.*", "unacked*"):
            for key in client.scan_iter(pattern):
                client.delete(key)
        client.delete("ciq-test:reserved")
        shutil.rmtree(tmp, ignore_errors=True)  # repositories, git cache, workspaces, logs
    print(f"{options.requests} signed pushes, {options.concurrency} concurrent clients, gunicorn "
          f"{options.workers} x gthread(16) on 127.0.0.1")
    rate, p95 = report("ci-queue POST /webhooks/github", ci)
    floor_rate, floor_p95 = report("bare Flask 202 (same gunicorn)", plain)
    print(f"medians of {options.repeat} interleaved rounds; requests/s {rate / floor_rate:.0%} of the bare endpoint "
          f"(goal >= 85%: {'met' if rate >= 0.85 * floor_rate else 'NOT met'}), p95 {p95 / floor_p95:.2f}x "
          f"(goal <= 1.5x: {'met' if p95 <= 1.5 * floor_p95 else 'NOT met'})")


if __name__ == "__main__":
    main()
