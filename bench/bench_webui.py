"""The web pages at scale (a script, not a test): 100,000 runs in Redis, and a 4 MiB job log in
headless Chromium.

    python bench/bench_webui.py [--runs 100000] [--repeats 200] [--log-mib 4] [--browser-repeats 5]

1. Server side. Writes ``--runs`` runs through ``Store.create_run`` (the real key schema and
   indexes) under a key prefix of its own on the test Redis (127.0.0.1:6379/0; every key of the
   prefix is deleted at the end), plus one planned run of 40 jobs in 5 stages. Then, through the
   app (Flask's test client: the app's own time, no network), interleaving subject and floor, it
   times the runs page (first page, a page 99,000 runs deep by its cursor, filtered by repository
   and by status) and the run page, against the floor: ``GET /api/v1/runs?limit=25``, the JSON of
   the same page of runs. Prints p50 / p95 (ms) and the ratio of medians page / floor.
   The goal: every page under 50 ms p95.
2. Browser. A run whose job log is ``--log-mib`` MiB (coloured lines, a few sections), served by
   the app on a loopback HTTP server, opened in headless Chromium (/usr/bin/chromium through
   Playwright), logged in. Times, per repeat: the first log line painted, the whole log rendered
   (``log.js`` says it ended), and the longest main-thread task while rendering (how long the
   page could not answer a click); against the floor: the same page of a 10-line log.
   The goal: first lines painted in under 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ci_queue.celery_app import make_celery  # noqa: E402
from ci_queue.pipeline.model import Job, Need, Plan  # noqa: E402
from ci_queue.settings import Settings  # noqa: E402
from ci_queue.store import Store  # noqa: E402
from ci_queue.web import create_app  # noqa: E402

TOKEN = "bench-webui-token"
REDIS_URL = "redis://127.0.0.1:6379/0"
REPOS = [f"team/service-{i}" for i in range(50)]
STATUS_CYCLE = ["success"] * 8 + ["failed", "canceled"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def fill_runs(store: Store, count: int) -> None:
    """``count`` finished runs across 50 repositories, written as triggers write them."""
    started = time.perf_counter()
    for n in range(count):
        run_id = store.create_run(repo=REPOS[n % len(REPOS)], ref="main" if n % 3 else f"feature/{n % 97}",
                                  sha=f"{n:040x}", context={"commit_message": f"Change number {n}\n\nbody"})
        status = STATUS_CYCLE[n % len(STATUS_CYCLE)]
        store.fail_run(run_id, "", status=status)  # ends it: the status index moves as a real end does
        if n and n % 20000 == 0:
            print(f"  {n} runs written ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"  {count} runs written in {time.perf_counter() - started:.0f} s", flush=True)


def big_run(store: Store, log_lines: list[dict[str, str]] | None = None) -> str:
    """A planned run of 40 jobs in 5 stages (needs between them); job 0 finished with ``log_lines``."""
    stages = ["build", "test", "package", "deploy", "verify"]
    jobs = [Job(name=f"{stage}-{i}", stage=stage, script=["true"],
                needs=[Need(f"{stages[s - 1]}-{i}")] if s else None)
            for s, stage in enumerate(stages) for i in range(8)]
    run_id = store.create_run(repo="team/big", ref="main", sha="b" * 40, context={"commit_message": "Big run"})
    store.set_plan(run_id, Plan(stages=stages, jobs=jobs), sha="b" * 40)
    assert store.begin_job(run_id, 0, 1, "bench@host", 600).status == "ok"
    for start in range(0, len(log_lines or []), 5000):
        store.append_log(run_id, 0, log_lines[start:start + 5000], maxlen=10_000_000)
    store.finish_job(run_id, 0, 1, "success", attempt_record={"attempt": 1, "status": "success", "steps": []})
    return run_id


def make_log(mib: float) -> list[dict[str, str]]:
    """About ``mib`` MiB of log text: compiler-like lines, some coloured, a section every 5,000."""
    lines, size, n = [], 0, 0
    while size < mib * 1024 * 1024:
        n += 1
        if n % 5000 == 1:
            text = f"section_start:{1700000000 + n}:part_{n}\r\x1b[0KBuilding part {n // 5000}"
        elif n % 5000 == 0:
            text = f"section_end:{1700000000 + n}:part_{n - 4999}\r\x1b[0K"
        elif n % 50 == 0:
            text = f"\x1b[1;31mERROR\x1b[0m src/module_{n % 300}.c:{n % 2000}: something went wrong in unit {n}"
        elif n % 7 == 0:
            text = f"\x1b[32m  CC\x1b[0m  src/module_{n % 300}/file_{n}.o  (warnings: \x1b[33m{n % 5}\x1b[0m)"
        else:
            text = f"  compiling src/module_{n % 300}/file_{n}.c -O2 -Wall -Wextra -fPIC -DNDEBUG -Iinclude"
        lines.append({"attempt": "1", "step": "script", "n": str(n), "stream": "out",
                      "ts": "2026-01-01T00:00:00.000Z", "text": text})
        size += len(text) + 1
    return lines


def timed(client, url: str) -> float:
    started = time.perf_counter()
    answer = client.get(url)
    elapsed = time.perf_counter() - started
    assert answer.status_code == 200, (url, answer.status_code, answer.get_data(as_text=True)[:300])
    return elapsed * 1000


def server_side(app, store: Store, run_id: str, repeats: int) -> None:
    client = app.test_client()
    client.get("/login")
    with client.session_transaction() as session:
        csrf = session["csrf_token"]
    assert client.post("/login", data={"token": TOKEN, "csrf_token": csrf}).status_code == 302
    cursor = float(store.r.zrevrange(store._index(), 99_000, 99_000, withscores=True)[0][1]) \
        if store.r.zcard(store._index()) > 99_000 else None
    subjects = {
        "runs page (first)": "/",
        "runs page (99,000 deep)": f"/?cursor={cursor}" if cursor else "/",
        "runs page (repo filter)": f"/?repo={REPOS[7]}",
        "runs page (status filter)": "/?status=failed",
        "runs page (live fragment)": "/?fragment=1",
        "run page (40 jobs)": f"/runs/{run_id}",
        "run page fragment": f"/runs/{run_id}?fragment=1",
    }
    floor_url = "/api/v1/runs?limit=25"
    for url in [*subjects.values(), floor_url]:  # warm: templates compiled, scripts loaded
        for _ in range(5):
            timed(client, url)
    floor: list[float] = []
    results: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(repeats):
        for name, url in subjects.items():  # interleaved with the floor: both see the same noise
            floor.append(timed(client, floor_url))
            results[name].append(timed(client, url))
    floor_median = statistics.median(floor)
    print(f"\n{'':28} {'p50 ms':>8} {'p95 ms':>8} {'ratio':>7}")
    print(f"{'floor: GET /api/v1/runs':28} {floor_median:8.2f} {percentile(floor, 0.95):8.2f} {1:7.2f}")
    for name, values in results.items():
        p95 = percentile(values, 0.95)
        verdict = "ok" if p95 < 50 else "OVER 50 ms"
        print(f"{name:28} {statistics.median(values):8.2f} {p95:8.2f} {statistics.median(values) / floor_median:7.2f}"
              f"  {verdict}")


@contextlib.contextmanager
def served(app) -> Iterator[str]:
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on the terminal
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


PAINT_PROBE = """() => new Promise(resolve => {
  window.__longest = 0;
  new PerformanceObserver(list => { for (const e of list.getEntries()) window.__longest = Math.max(window.__longest,
    e.duration); }).observe({type: 'longtask', buffered: true});
  resolve();
})"""


def browser_side(app, big: str, small: str, repeats: int) -> None:
    from playwright.sync_api import sync_playwright

    with served(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1400, "height": 900}, base_url=url)
        page = context.new_page()
        page.goto("/login")
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_url(f"{url}/")

        def open_log(run_id: str) -> tuple[float, float, float]:
            page.goto("about:blank")
            started = time.perf_counter()
            page.goto(f"/runs/{run_id}/jobs/build-0", wait_until="commit")
            page.evaluate(PAINT_PROBE)
            page.locator("#L1").wait_for(state="visible", timeout=60_000)
            first = time.perf_counter() - started
            page.locator("#log[data-ended]").wait_for(state="attached", timeout=120_000)
            page.wait_for_function("() => /^\\d+ lines · job/.test(document.getElementById('log-state').textContent)",
                                   timeout=120_000)
            whole = time.perf_counter() - started
            return first * 1000, whole * 1000, float(page.evaluate("window.__longest"))

        open_log(small)
        samples: dict[str, list[tuple[float, float, float]]] = {"floor: 10-line log": [], "4 MiB log": []}
        for _ in range(repeats):
            samples["floor: 10-line log"].append(open_log(small))
            samples["4 MiB log"].append(open_log(big))
        lines = page.locator(".ln").count()
        browser.close()
    print(f"\n{'':22} {'first lines ms':>15} {'all rendered ms':>16} {'longest task ms':>16}")
    floor_first = statistics.median(s[0] for s in samples["floor: 10-line log"])
    for name, values in samples.items():
        first = statistics.median(v[0] for v in values)
        print(f"{name:22} {first:15.0f} {statistics.median(v[1] for v in values):16.0f} "
              f"{statistics.median(v[2] for v in values):16.0f}   ratio first/floor {first / floor_first:.2f}")
    print(f"(the 4 MiB log has {lines} lines in the page; medians of {repeats} repeats; goal: first lines < 1000 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--log-mib", type=float, default=4.0)
    parser.add_argument("--browser-repeats", type=int, default=5)
    args = parser.parse_args()
    prefix = f"ciq-bench-webui-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    store = Store(client, prefix, retention_seconds=3600)
    settings = Settings(api_tokens=TOKEN, redis_url=REDIS_URL, key_prefix=prefix, secret_key="bench",
                        log_level="WARNING", max_log_bytes=64 * 1024 * 1024)
    app = create_app(settings, store=store, celery=make_celery(settings, web=True))
    try:
        print(f"writing {args.runs} runs under {prefix}")
        fill_runs(store, args.runs)
        log = make_log(args.log_mib)
        print(f"a log of {sum(len(line['text']) + 1 for line in log) / 1048576:.1f} MiB, {len(log)} lines")
        big = big_run(store, log)
        small = big_run(store, make_log(0.0005))
        server_side(app, store, big, args.repeats)
        browser_side(app, big, small, args.browser_repeats)
    finally:
        removed = cleanup(client, prefix)
        print(f"\nremoved {removed} keys of {prefix}")


def cleanup(client: redis.Redis, prefix: str) -> int:
    removed = 0
    batch: list[str] = []
    for key in client.scan_iter(f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            removed += client.delete(*batch)
            batch = []
    if batch:
        removed += client.delete(*batch)
    return removed


if __name__ == "__main__":
    main()
