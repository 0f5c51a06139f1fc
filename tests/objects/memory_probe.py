"""A child process of the object store tests (and a throughput probe by hand): puts one big
generated object into a store and reads it back, printing as JSON the time each took and how
much each raised the process's peak RSS.

    python -m tests.objects.memory_probe URL [--endpoint URL] [--mib 64]

Why a process of its own: ``ru_maxrss`` is a high-water mark of the whole process, so in the
pytest process an earlier test's peak would hide this one's (the growth would read 0 whatever
the store did). Here the baseline is taken after imports and a small warm-up put, and nothing
else runs. S3 credentials come from the environment, as in production.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import json
import random
import resource
import time
from collections.abc import Iterator

BLOCK = 1 << 20


def blocks(size: int, seed: int = 7) -> Iterator[bytes]:
    """The generated object: pseudo-random 1 MiB blocks (never all alike, so nothing along the
    way can compress or deduplicate them), the last one cut to ``size``."""
    for index in range((size + BLOCK - 1) // BLOCK):
        yield random.Random(seed * 1_000_003 + index).randbytes(min(BLOCK, size - index * BLOCK))


def expected_sha256(size: int, seed: int = 7) -> str:
    digest = hashlib.sha256()
    for block in blocks(size, seed):
        digest.update(block)
    return digest.hexdigest()


class GeneratedSource:
    """A ``put`` source made on the fly: ``read(n)`` returns at most ``n`` bytes of ``blocks``,
    so the whole object never exists in memory on the sending side."""

    def __init__(self, size: int, seed: int = 7) -> None:
        self._blocks = blocks(size, seed)
        self._current = memoryview(b"")

    def read(self, n: int = -1) -> bytes:
        if not self._current:
            self._current = memoryview(next(self._blocks, b""))
        if n is None or n < 0:
            n = len(self._current)
        data = bytes(self._current[:n])
        self._current = self._current[len(data):]
        return data


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--endpoint", default=None)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()

    from ci_queue.objects import open_store

    store = open_store(args.url, s3_endpoint_url=args.endpoint, s3_region="us-east-1")
    store.put("warm-up", io.BytesIO(b"warm-up"))  # imports, the client, its connection pool
    with store.open("warm-up") as reader:
        reader.read()
    gc.collect()
    size = args.mib << 20

    before = peak_rss_mib()
    started = time.monotonic()
    stored = store.put("big", GeneratedSource(size))
    put_seconds = time.monotonic() - started
    after_put = peak_rss_mib()

    digest, read_bytes = hashlib.sha256(), 0
    started = time.monotonic()
    with store.open("big") as reader:
        for chunk in reader.iter_chunks():
            digest.update(chunk)
            read_bytes += len(chunk)
    read_seconds = time.monotonic() - started
    after_read = peak_rss_mib()

    print(json.dumps({
        "size": stored.size, "sha256": stored.sha256, "read_bytes": read_bytes, "read_sha256": digest.hexdigest(),
        "put_seconds": put_seconds, "read_seconds": read_seconds,
        "put_growth_mib": after_put - before, "read_growth_mib": after_read - after_put,
        "baseline_mib": before,
    }))


if __name__ == "__main__":
    main()
