"""Speed of the artifact archive module alone against GNU tar (a script, not a test; the whole
transfer through the web app is bench/bench_artifacts.py).

    python3 bench/bench_archive.py [--big-mib 1024] [--small-files 10000] [--runs 3] [--dir DIR]

Two trees: one file of ``--big-mib`` MiB, and ``--small-files`` files of 4 KiB in 100
directories. For each: ``TarWriter`` writing its chunks to a local file against
``tar -cf out.tar tree`` (also with ``select`` walking the tree first, as tar does), and
``safe_extract`` reading that archive as an unbuffered stream against ``tar -xf out.tar``.
Medians of ``--runs`` runs, alternating with the baseline so both see the same page cache, each
after a ``sync``; MB/s counts the files' bytes. ``--dir /dev/shm`` takes the disk out and leaves
the CPU cost. The goal: at least half of tar's speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ci_queue.artifacts.archive import TarWriter, safe_extract
from ci_queue.artifacts.selection import select


def make_big(root: Path, mib: int) -> int:
    root.mkdir(parents=True)
    block = os.urandom(16 << 20)
    with open(root / "big.bin", "wb") as f:
        for _ in range(mib // 16):
            f.write(block)
        f.write(block[: (mib % 16) << 20])
    return mib << 20


def make_small(root: Path, count: int) -> int:
    for i in range(count):
        directory = root / f"d{i % 100:02}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{i}.bin").write_bytes(os.urandom(4096))
    return count * 4096


def timed(action: Callable[[], object], before: Callable[[], object] | None = None) -> float:
    if before:
        before()
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def bench(name: str, work: Path, tree: Path, payload: int, runs: int) -> None:
    ours_tar, gnu_tar = work / "ours.tar", work / "gnu.tar"
    dest = work / "dest"

    entries = select(tree.parent, [tree.name]).entries

    def write_ours() -> None:
        writer = TarWriter(tree.parent, entries)
        with open(ours_tar, "wb") as out:
            for chunk in writer.chunks():
                out.write(chunk)

    def select_and_write_ours() -> None:
        writer = TarWriter(tree.parent, select(tree.parent, [tree.name]).entries)
        with open(ours_tar, "wb") as out:
            for chunk in writer.chunks():
                out.write(chunk)

    def write_gnu() -> None:
        subprocess.run(["tar", "-cf", gnu_tar, tree.name], cwd=tree.parent, check=True)

    def settle() -> None:
        os.sync()  # the previous run's writeback is not billed to the next one

    def clear_dest() -> None:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir()
        os.sync()

    def extract_ours() -> None:
        with open(ours_tar, "rb", buffering=0) as stream:
            safe_extract(stream, dest)

    def extract_gnu() -> None:
        subprocess.run(["tar", "-xf", gnu_tar, "-C", dest], check=True)

    rows = []
    for label, ours, theirs, before in (("TarWriter", write_ours, write_gnu, settle),
                                        ("select+TarWriter", select_and_write_ours, write_gnu, settle),
                                        ("safe_extract", extract_ours, extract_gnu, clear_dest)):
        timed(ours, before)
        timed(theirs, before)  # warm-up: the page cache holds the tree and the archive
        ours_times, gnu_times = [], []
        for _ in range(runs):
            ours_times.append(timed(ours, before))
            gnu_times.append(timed(theirs, before))
        a, b = statistics.median(ours_times), statistics.median(gnu_times)
        rows.append(f"{name:>14} {label:>16}: ours {a:7.3f}s {payload / a / 1e6:8.0f} MB/s | "
                    f"tar {b:7.3f}s {payload / b / 1e6:8.0f} MB/s | ours/tar speed {b / a:5.2f}")
    print("\n".join(rows), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the trees go (default: the temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-artifacts-") as temp:
        base = Path(temp)
        small = base / "small" / "tree"
        payload = make_small(small, args.small_files)
        bench(f"{args.small_files} x 4 KiB", base / "small", small, payload, args.runs)
        shutil.rmtree(base / "small")
        big = base / "big" / "tree"
        payload = make_big(big, args.big_mib)
        bench(f"1 x {args.big_mib} MiB", base / "big", big, payload, args.runs)


if __name__ == "__main__":
    main()
