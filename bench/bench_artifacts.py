"""Artifacts through the web app on loopback, beside ``tar`` of the same tree (a script, not a test).

    python3 bench/bench_artifacts.py [--big-mib 1024] [--small-files 10000] [--repeat 3]
                                     [--redis redis://127.0.0.1:6379/0]

For each tree (one big file of random bytes; many 4 KiB files), in the same run:

- floor: ``tar -cf`` of the tree to a local file then ``sync`` (the store fsyncs what it keeps),
  and ``tar -xf`` of that file (a workspace is not synced); every phase starts after a ``sync``;
- upload: a worker process chooses the files, streams the tar to ``ci-queue serve`` (gunicorn, a
  real process) with its job token, and commits the artifacts; the web app streams them into a
  directory store;
- download: a worker process fetches them as a later job does (checksum checked) and unpacks them
  safely into a fresh directory.

Speeds are MB/s of the tree's bytes; the ratio to the floor is what compares across runs (this
machine is noisy). Each tree makes ``--repeat`` rounds, floor and transfers interleaved; medians
are compared, and the largest RSS growth is shown. RSS growth: peak RSS (VmHWM) minus RSS before
the transfer, for the worker process and for the gunicorn worker that served it.
Goal: ratio >= 0.5, growth < 64 MiB for both.
Needs Redis (its own key prefix; removed after).
"""

from __future__ import annotations

import argparse
import json
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ci_queue.standalone import free_port  # noqa: E402

WORKER_SIDE = r"""
import json, resource, sys, time, os
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from ci_queue.artifacts.archive import TarWriter, safe_extract
from ci_queue.artifacts.selection import select
from workers.transfer import JobChannel

def rss(kind):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1]) * 1024
    return 0

mode, url, run_id, index, token, root = sys.argv[2:8]
channel = JobChannel(url, run_id, int(index), 1, token)
before = rss("VmRSS")
start = time.perf_counter()
if mode == "upload":
    selection = select(Path(root), ["tree/"])
    writers = []
    def chunks():
        writers.append(TarWriter(Path(root), selection.entries))
        return writers[-1].chunks()
    uploaded = channel.upload_archive(chunks)
    channel.commit_artifacts(name="bench", expire_in="1 day", uploaded=uploaded,
                             manifest=writers[-1].manifest_json(), files=writers[-1].files)
    size = uploaded.size
else:
    source = int(sys.argv[8])
    dep = next(d for d in channel.dependencies() if d["index"] == source)
    with channel.dependency_archive(source, dep["sha256"], "bench") as reader:
        safe_extract(reader, Path(root))
        reader.verify()
    size = dep["size"]
print(json.dumps({"seconds": time.perf_counter() - start, "bytes": size, "rss_growth": rss("VmHWM") - before}))
"""


def vm(pid: int, kind: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1]) * 1024
    return 0


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def make_big(root: Path, mib: int) -> None:
    (root / "tree").mkdir(parents=True)
    with (root / "tree" / "big.bin").open("wb") as out:
        block = os.urandom(1 << 20)
        for i in range(mib):
            out.write(block[i % 256:] + block[:i % 256])  # not one repeated block: no dedup shortcut


def make_small(root: Path, count: int) -> None:
    for i in range(count):
        directory = root / "tree" / f"d{i // 100:03d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i:05d}.txt").write_bytes(os.urandom(4096))


def floor(root: Path, scratch: Path) -> tuple[float, float]:
    archive = scratch / "floor.tar"
    os.sync()
    start = time.perf_counter()
    subprocess.run(["tar", "-cf", str(archive), "-C", str(root), "tree"], check=True)
    os.sync()
    packed = time.perf_counter() - start
    out = scratch / "floor-out"
    out.mkdir()
    os.sync()
    start = time.perf_counter()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
    unpacked = time.perf_counter() - start
    archive.unlink()
    shutil.rmtree(out)
    return packed, unpacked


class Server:
    """``ci-queue serve`` with a directory store, on a free port of 127.0.0.1."""

    def __init__(self, redis_url: str, prefix: str, objects: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "CIQ_REDIS_URL": redis_url, "CIQ_KEY_PREFIX": prefix, "CIQ_API_TOKENS": "bench",
               "CIQ_ARTIFACTS_URL": objects.as_uri(), "CIQ_MAX_ARTIFACT_BYTES": str(8 << 30),
               "PYTHONPATH": str(REPO), "CIQ_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen([sys.executable, "-m", "ci_queue.cli", "serve", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--workers", "1", "--threads", "4"],
                                     env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
        import requests

        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"the web app did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def worker_pid(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0])

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


def transfer(mode: str, server: Server, job: tuple[str, int, str], root: Path, source: int = 0) -> dict:
    os.sync()  # what the previous phase wrote is not flushed on this one's time
    web = server.worker_pid()
    web_before = vm(web, "VmRSS")
    Path(f"/proc/{web}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    out = subprocess.run([sys.executable, "-c", WORKER_SIDE, str(REPO), mode, server.url, job[0], str(job[1]),
                          job[2], str(root), str(source)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the worker side failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["web_rss_growth"] = vm(web, "VmHWM") - web_before
    return result


def one_round(server: Server, store, source: Path, target: Path) -> tuple[dict, dict]:
    """One upload by a job and one download by the next job of a new run."""
    from ci_queue.pipeline.model import PlanContext
    from ci_queue.pipeline.planner import load_spec, plan_spec

    pipeline = target.parent / "pipeline.yml"
    pipeline.write_text("stages: [a, b]\nmake: {stage: a, script: [x], artifacts: {paths: [tree/]}}\n"
                        "use: {stage: b, script: [y]}\n")
    plan = plan_spec(load_spec(pipeline, target.parent)[0], PlanContext(branch="main"))
    run_id = store.create_run(repo="bench/repo", ref="main")
    store.set_plan(run_id, plan, sha="a" * 40)
    token = uuid.uuid4().hex
    store.begin_job(run_id, 0, 1, "bench", 600, token)
    up = transfer("upload", server, (run_id, 0, token), source)
    store.finish_job(run_id, 0, 1, "success")
    token = uuid.uuid4().hex
    store.begin_job(run_id, 1, 1, "bench", 600, token)
    target.mkdir()
    down = transfer("download", server, (run_id, 1, token), target, source=0)
    shutil.rmtree(target)
    return up, down


def bench_tree(name: str, build: Callable[[Path], None], server: Server, store, scratch: Path,
               repeat: int) -> None:
    """``repeat`` rounds of floor, upload and download, interleaved so that the disk's moods (a
    first write after many deletions can be ten times slower) fall on both; medians compared."""
    source = scratch / f"{name.replace(' ', '-')}-src"
    build(source)
    size = tree_bytes(source)
    floors, ups, downs = [], [], []
    for _ in range(repeat):
        floors.append(floor(source, scratch))
        up, down = one_round(server, store, source, scratch / f"{name.replace(' ', '-')}-dst")
        ups.append(up)
        downs.append(down)
    mb = size / 1e6
    print(f"\n{name}: {mb:.0f} MB in {sum(1 for _ in source.rglob('*'))} entries, median of {repeat}")
    print(f"  {'':10} {'MB/s':>8} {'floor MB/s':>11} {'ratio':>6} {'worker RSS +MiB':>16} {'web RSS +MiB':>13}")
    for label, results, bases in (("upload", ups, [f[0] for f in floors]),
                                  ("download", downs, [f[1] for f in floors])):
        ours, base = statistics.median(r["seconds"] for r in results), statistics.median(bases)
        worker_rss = max(r["rss_growth"] for r in results) / 2**20
        web_rss = max(r["web_rss_growth"] for r in results) / 2**20
        print(f"  {label:10} {mb / ours:8.0f} {mb / base:11.0f} {base / ours:6.2f} {worker_rss:16.1f} {web_rss:13.1f}")
    shutil.rmtree(source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds per tree; medians are compared")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    import redis

    from ci_queue.store import Store

    prefix = f"ciq-bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(args.redis, decode_responses=True)
    store = Store(client, prefix, 3600)
    scratch = Path(tempfile.mkdtemp(prefix="ciq-bench-artifacts-"))
    server = Server(args.redis, prefix, scratch / "objects", scratch / "serve.log")
    try:
        bench_tree(f"one file of {args.big_mib} MiB", lambda root: make_big(root, args.big_mib), server, store,
                   scratch, args.repeat)
        bench_tree(f"{args.small_files} files of 4 KiB", lambda root: make_small(root, args.small_files), server,
                   store, scratch, args.repeat)
    finally:
        server.stop()
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
