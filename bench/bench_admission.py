"""Admission on the dispatch path: what holding and admitting a ready job costs.

Against the real Redis (a database of its own) and its broker, in one process, interleaved:

- floor: publishing a job's Celery message straight to its queue (what sending a ready job costs
  at the least: one group ``apply_async``);
- subject: ``dispatch.send_jobs`` for a wave of one ready job (hold it, admit it to a free slot,
  note it queued, publish), then a worker's share of it (begin, end), then ``send_jobs`` with
  nothing ready (a job's end: slots freed, the admission runs);

with an idle farm and with a busy one (``--held`` jobs of 20 repositories held in a queue nobody
serves, which every admission looks at). Prints medians over ``--repeats`` rounds of ``--n``
jobs, and the ratios to the floor::

    python bench/bench_admission.py [--n 200] [--repeats 5] [--held 1000]

A script, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ci_queue.celery_app import RUN_JOB, make_celery  # noqa: E402
from ci_queue.dispatch import send_jobs  # noqa: E402
from ci_queue.pipeline.model import PlanContext  # noqa: E402
from ci_queue.pipeline.planner import load_spec, plan_spec  # noqa: E402
from ci_queue.settings import Settings  # noqa: E402
from ci_queue.store import Store  # noqa: E402
from ci_queue.store.admission import admission_of  # noqa: E402

QUEUE = "ciq.default"


def reserve_db() -> int:
    for db in range(15, 0, -1):
        if redis.Redis(db=db).set("ciq-test:reserved", "bench", nx=True, ex=3600):
            return db
    raise SystemExit("no free Redis database")


def plan_of(text: str, tmp: Path):
    path = tmp / f"{uuid.uuid4().hex}.yml"
    path.write_text(text)
    spec, _ = load_spec(path, tmp)
    return plan_spec(spec, PlanContext(branch="main"))


def round_of(store: Store, app, settings: Settings, client: redis.Redis, plan, n: int) -> tuple[float, float, float]:
    """Medians (seconds) of: floor publish, send_jobs of a ready wave, send_jobs at a job's end."""
    floor, wave, end = [], [], []
    for _ in range(n):
        run_id = store.create_run(repo="o/a", ref="main")
        ready = store.set_plan(run_id, plan)
        signature = app.signature(RUN_JOB, args=[run_id, ready[0], 1], queue=QUEUE)
        started = time.perf_counter()
        signature.apply_async()
        floor.append(time.perf_counter() - started)
        client.delete(QUEUE)
        started = time.perf_counter()
        send_jobs(store, app, settings, run_id, ready)
        wave.append(time.perf_counter() - started)
        client.delete(QUEUE)  # a worker took the message, ran the job, ended it
        assert store.begin_job(run_id, ready[0], 1, "bench@h", 60).status == "ok"
        store.finish_job(run_id, ready[0], 1, "success")
        started = time.perf_counter()
        send_jobs(store, app, settings, run_id, [])
        end.append(time.perf_counter() - started)
    return statistics.median(floor), statistics.median(wave), statistics.median(end)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--held", type=int, default=1000)
    options = parser.parse_args()
    db = reserve_db()
    url = f"redis://127.0.0.1:6379/{db}"
    client = redis.Redis.from_url(url, decode_responses=True)
    prefix = f"ciq-bench-{uuid.uuid4().hex[:6]}:"
    settings = Settings.from_env({"CIQ_REDIS_URL": url, "CIQ_KEY_PREFIX": prefix})
    store = Store(client, prefix)
    app = make_celery(settings)
    tmp = Path(tempfile.mkdtemp(prefix="ciq-bench-"))
    try:
        admission_of(store).register_worker("bench@h", [QUEUE], 4, ttl=3600)
        one = plan_of("job: {script: x}\n", tmp)
        results = {}
        for farm in ("idle", "busy"):
            if farm == "busy":
                big = plan_of("".join(f"j{i}: {{script: x, tags: [gpu]}}\n" for i in range(options.held // 20)), tmp)
                for r in range(20):
                    run_id = store.create_run(repo=f"o/r{r}", ref="main")
                    send_jobs(store, app, settings, run_id, store.set_plan(run_id, big))
            rounds = [round_of(store, app, settings, client, one, options.n) for _ in range(options.repeats)]
            results[farm] = [statistics.median(r[k] for r in rounds) for k in range(3)]
    finally:
        for pattern in (f"{prefix}*", "ciq.*", "_kombu.*", "unacked*"):
            for key in client.scan_iter(pattern, count=1000):
                client.delete(key)
        client.delete("ciq-test:reserved")
    print(f"{'medians of ' + str(options.repeats) + ' rounds of ' + str(options.n):52} {'us':>8} {'/ floor':>8}")
    for farm, (floor, wave, end) in results.items():
        label = "idle farm" if farm == "idle" else f"busy farm ({options.held} held, 20 repos)"
        print(f"{label + ': floor, a bare publish':52} {floor * 1e6:8.0f} {1.0:8.2f}")
        print(f"{label + ': send_jobs, a ready job':52} {wave * 1e6:8.0f} {wave / floor:8.2f}")
        print(f"{label + ': send_jobs, a job end':52} {end * 1e6:8.0f} {end / floor:8.2f}")


if __name__ == "__main__":
    main()
