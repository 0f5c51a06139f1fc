"""The object store suite, run against both backends: a directory under the test's tmp dir, and
S3 on a real S3-protocol server on loopback (moto's standalone server, a subprocess started once
for the session; each test gets a bucket of its own).

Why a subprocess rather than moto's in-process ThreadedMotoServer: moto keeps objects (and
assembles multipart uploads) in its own memory, which would count against the memory bound the
big-object test asserts, and a server in another process is closer to the real thing (separate
sockets, its own threads). Credentials are dummies set in the environment; the credential chain
never reaches an instance metadata service or ~/.aws.
"""

from __future__ import annotations

import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
import requests

from ci_queue.objects import (
    DirectoryStore,
    ObjectMissing,
    ObjectReader,
    ObjectStore,
    ObjectStoreError,
    ObjectTooLarge,
    StoredObject,
    open_store,
)
from ci_queue.objects import s3 as s3_backend
from tests.conftest import REPO, wait_until
from tests.objects.memory_probe import GeneratedSource, blocks, expected_sha256

MiB = 1 << 20
BACKENDS = ["directory", "s3"]
S3_PREFIX = "objects"  # every S3 store of the suite has a key prefix, so prefixing is always exercised
FAKE_SECRET = "fake-secret-for-tests-only"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def isolated_aws_env() -> dict[str, str]:
    """Dummy credentials, a region, no metadata service, no ~/.aws, no inherited endpoint."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent/ciq-test/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/ciq-test/aws-credentials",
    })
    return env


class MotoServer:
    """``python -m moto.server`` on a free port of 127.0.0.1."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> MotoServer:
        for _ in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=isolated_aws_env())

            def answers() -> bool:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError("exited")
                return requests.get(f"{self.endpoint}/moto-api/", timeout=2).status_code == 200

            try:
                wait_until(answers, timeout, "moto's server answering",
                           ignore=(requests.ConnectionError, requests.Timeout))
                return self
            except RuntimeError:
                continue  # exited (the port was taken): another port
        raise AssertionError(f"moto's server did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = isolated_aws_env()
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return env


class Backend:
    """A store under test and what the test needs to look behind it."""

    def __init__(self, kind: str, store: Any, *, root: Path | None = None, bucket: str = "",
                 endpoint: str = "") -> None:
        self.kind, self.store, self.root, self.bucket, self.endpoint = kind, store, root, bucket, endpoint

    def leftovers(self) -> list[str]:
        """Everything physically there: every file under the root (temp files too), or every key
        in the bucket plus every multipart upload in progress."""
        if self.kind == "directory":
            assert self.root is not None
            return sorted(str(path.relative_to(self.root)) for path in self.root.rglob("*") if not path.is_dir())
        client = self.store.client
        keys = [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
                for item in page.get("Contents", [])]
        uploads = client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return sorted(keys) + [f"multipart upload of {upload['Key']}" for upload in uploads]

    def physical(self, key: str) -> str:
        """How ``leftovers`` names the object ``key``."""
        return key if self.kind == "directory" else f"{S3_PREFIX}/{key}"


def make_s3_backend(server: MotoServer, prefix: str = S3_PREFIX) -> Backend:
    bucket = f"ciq-test-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{bucket}/{prefix}", s3_endpoint_url=server.endpoint, s3_region="us-east-1")
    store.client.create_bucket(Bucket=bucket)
    return Backend("s3", store, bucket=bucket, endpoint=server.endpoint)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, aws_env: dict[str, str]) -> Backend:
    if request.param == "directory":
        root = tmp_path / "store"
        return Backend("directory", open_store(f"file://{root}"), root=root)
    return make_s3_backend(request.getfixturevalue("moto_server"))


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    return backend.store


def read_all(store: ObjectStore, key: str, start: int = 0, length: int | None = None) -> bytes:
    with store.open(key, start, length) as reader:
        return b"".join(reader.iter_chunks())


def pattern(size: int) -> bytes:
    """Random bytes: an off-by-one in a range shows."""
    return random.Random(size).randbytes(size)


class Exploding:
    """A source that hands out ``good`` bytes, then raises (a client that went away)."""

    class Gone(Exception):
        pass

    def __init__(self, good: int) -> None:
        self.source = GeneratedSource(good)
        self.left = good

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise Exploding.Gone("the client went away")
        data = self.source.read(min(n, self.left) if n >= 0 else self.left)
        self.left -= len(data)
        return data


# -- round trips -------------------------------------------------------------------------------
def test_put_and_open_round_trip_with_size_and_sha256(store: ObjectStore) -> None:
    data = pattern(3 * MiB + 123)  # several chunks, not a multiple of one
    stored = store.put("runs/r1/jobs/3/a1/artifacts.tar", io.BytesIO(data))
    assert stored == StoredObject(key="runs/r1/jobs/3/a1/artifacts.tar", size=len(data),
                                  sha256=sha256(data).hexdigest())
    with store.open("runs/r1/jobs/3/a1/artifacts.tar") as reader:
        assert isinstance(reader, ObjectReader)
        assert (reader.size, reader.start, reader.length) == (len(data), 0, len(data))
        chunks = list(reader.iter_chunks())
    assert b"".join(chunks) == data
    assert max(len(chunk) for chunk in chunks) <= MiB
    info = store.stat("runs/r1/jobs/3/a1/artifacts.tar")
    assert info is not None and info.size == len(data)
    assert abs(info.mtime - time.time()) < 120


def test_empty_object(store: ObjectStore) -> None:
    stored = store.put("caches/repo/empty.tar", io.BytesIO(b""))
    assert (stored.size, stored.sha256) == (0, sha256(b"").hexdigest())
    assert read_all(store, "caches/repo/empty.tar") == b""
    assert read_all(store, "caches/repo/empty.tar", 0, 10) == b""
    assert store.stat("caches/repo/empty.tar").size == 0


def test_a_pipe_that_returns_short_reads_is_stored_whole(backend: Backend) -> None:
    """A pipe hands out at most 64 KiB a read: S3's parts must still be full (5 MiB minimum
    except the last), and a short first read must not make s3transfer take the stream for a
    small object (one PUT, read whole into memory), so ``put`` gathers whole parts: 20 MiB is
    a multipart upload of whole parts."""
    store, size = backend.store, 20 * MiB
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            for block in blocks(size):
                pipe.write(block)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        stored = store.put("runs/r1/from-a-pipe", pipe)
    writer.join(timeout=30)
    assert (stored.size, stored.sha256) == (size, expected_sha256(size))
    with store.open("runs/r1/from-a-pipe") as reader:
        digest = sha256()
        for chunk in reader:
            digest.update(chunk)
    assert digest.hexdigest() == expected_sha256(size)
    if backend.kind == "s3":
        head = store.client.head_object(Bucket=backend.bucket, Key=backend.physical("runs/r1/from-a-pipe"))
        parts = -(-size // s3_backend.PART_SIZE)  # 4 full parts of 5 MiB
        assert head["ETag"].strip('"').endswith(f"-{parts}")  # a multipart upload's ETag: <md5 of md5s>-<parts>


@pytest.mark.parametrize("kind", BACKENDS)
def test_big_object_streams_in_bounded_memory(kind: str, tmp_path: Path, aws_env: dict[str, str],
                                              request: pytest.FixtureRequest) -> None:
    """64 MiB generated on the fly, put and read back in a process of its own (see
    memory_probe): neither may raise the peak RSS by more than 32 MiB. A store that held the
    object in memory (or let s3transfer keep its default of 10 parts waiting) would grow by 50+
    MiB; ours measured 21-25 MiB for S3 (moto), 6 MiB for a directory."""
    size_mib = 64
    if kind == "directory":
        url, endpoint = f"file://{tmp_path / 'store'}", None
    else:
        server = request.getfixturevalue("moto_server")
        backend = make_s3_backend(server)
        url, endpoint = f"s3://{backend.bucket}/{S3_PREFIX}", server.endpoint
    command = [sys.executable, "-m", "tests.objects.memory_probe", url, "--mib", str(size_mib)]
    if endpoint:
        command += ["--endpoint", endpoint]
    env = {**aws_env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = expected_sha256(size_mib * MiB)
    assert (result["size"], result["sha256"]) == (size_mib * MiB, expected)
    assert (result["read_bytes"], result["read_sha256"]) == (size_mib * MiB, expected)
    assert result["put_growth_mib"] < 32, result
    assert result["read_growth_mib"] < 32, result


# -- ranges -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("start", "length", "expected_start", "expected_length"), [
    (0, None, 0, 1000),
    (0, 1000, 0, 1000),
    (10, 5, 10, 5),
    (10, None, 10, 990),
    (999, 1, 999, 1),
    (999, None, 999, 1),
    (990, 100, 990, 10),  # cut at the end
    (5, 0, 5, 0),
    (1000, None, 1000, 0),  # at the end
    (5000, 10, 1000, 0),  # past the end
])
def test_range_reads(store: ObjectStore, start: int, length: int | None, expected_start: int,
                     expected_length: int) -> None:
    data = pattern(1000)
    store.put("runs/r1/log", io.BytesIO(data))
    with store.open("runs/r1/log", start, length) as reader:
        assert (reader.size, reader.start, reader.length) == (1000, expected_start, expected_length)
        got = reader.read()
        assert reader.read(10) == b""
    assert got == data[expected_start:expected_start + expected_length]


def test_range_read_across_chunks_with_small_reads(store: ObjectStore) -> None:
    data = pattern(3 * MiB)
    store.put("runs/r1/big-log", io.BytesIO(data))
    start, length = MiB - 7, MiB + 20
    with store.open("runs/r1/big-log", start, length) as reader:
        pieces = list(reader.iter_chunks(size=64 * 1024))
    assert b"".join(pieces) == data[start:start + length]
    assert all(len(piece) <= 64 * 1024 for piece in pieces)


@pytest.mark.parametrize(("start", "length"), [(-1, None), (0, -1), ("1", None)])
def test_bad_ranges_are_refused(store: ObjectStore, start: Any, length: Any) -> None:
    store.put("k", io.BytesIO(b"abc"))
    with pytest.raises(ValueError):
        store.open("k", start, length)


# -- missing, overwrite, delete, stat --------------------------------------------------------
def test_missing_key(store: ObjectStore) -> None:
    with pytest.raises(ObjectMissing) as caught:
        store.open("runs/nope/artifacts.tar")
    assert isinstance(caught.value, KeyError)
    with pytest.raises(ObjectMissing):
        store.open("runs/nope/artifacts.tar", 5, 0)
    assert store.stat("runs/nope/artifacts.tar") is None
    store.delete("runs/nope/artifacts.tar")  # missing is fine
    assert store.delete_prefix("runs/nope/") == 0


def test_a_directory_like_key_is_not_an_object(store: ObjectStore) -> None:
    store.put("runs/r1/jobs/1/log", io.BytesIO(b"x"))
    with pytest.raises(ObjectMissing):
        store.open("runs/r1/jobs")
    assert store.stat("runs/r1/jobs") is None
    store.delete("runs/r1/jobs")
    assert read_all(store, "runs/r1/jobs/1/log") == b"x"


def test_overwrite_replaces_the_object(store: ObjectStore) -> None:
    store.put("caches/repo/key.tar", io.BytesIO(b"first version, longer"))
    stored = store.put("caches/repo/key.tar", io.BytesIO(b"second"))
    assert stored.size == 6
    assert read_all(store, "caches/repo/key.tar") == b"second"
    assert store.stat("caches/repo/key.tar").size == 6


def test_delete_and_stat(backend: Backend) -> None:
    store = backend.store
    store.put("runs/r1/a", io.BytesIO(b"aa"))
    store.put("runs/r1/b", io.BytesIO(b"bbb"))
    assert store.stat("runs/r1/a").size == 2
    store.delete("runs/r1/a")
    assert store.stat("runs/r1/a") is None
    assert store.stat("runs/r1/b").size == 3
    with pytest.raises(ObjectMissing):
        store.open("runs/r1/a")
    store.delete("runs/r1/b")
    assert backend.leftovers() == []
    if backend.kind == "directory":
        assert list(backend.root.iterdir()) == []  # no empty directories left behind either


def test_delete_prefix_removes_the_subtree_only(backend: Backend) -> None:
    store = backend.store
    inside = ["runs/r1/log", "runs/r1/jobs/1/a1/artifacts.tar", "runs/r1/jobs/2/a1/artifacts.tar"]
    outside = ["runs/r10/log", "runs/r1-other/log", "runs/r", "caches/repo/sha.tar"]
    for key in inside + outside:
        store.put(key, io.BytesIO(key.encode()))
    assert store.delete_prefix("runs/r1/") == len(inside)
    for key in inside:
        assert store.stat(key) is None
    for key in outside:
        assert read_all(store, key) == key.encode()
    assert backend.leftovers() == sorted(backend.physical(key) for key in outside)
    if backend.kind == "directory":
        assert not (backend.root / "runs" / "r1").exists()
    assert store.delete_prefix("runs/r1/") == 0


def test_delete_prefix_past_one_page(backend: Backend) -> None:
    """More than 1000 objects: S3 lists them in pages of at most 1000 and deletes them in
    batches of at most 1000 (DeleteObjects' limit)."""
    store, count = backend.store, 1005
    keys = [f"runs/r1/jobs/{i % 7}/o{i}" for i in range(count)]
    if backend.kind == "s3":  # straight to the bucket, in parallel: the listing is what is tested
        batches: list[int] = []
        store.client.meta.events.register(
            "before-parameter-build.s3.DeleteObjects",
            lambda params, **_: batches.append(len(params["Delete"]["Objects"])))
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda key: store.client.put_object(
                Bucket=backend.bucket, Key=f"{S3_PREFIX}/{key}", Body=b"x"), keys))
    else:
        for key in keys:
            store.put(key, io.BytesIO(b"x"))
    store.put("runs/r2/keep", io.BytesIO(b"keep"))
    assert store.delete_prefix("runs/r1/") == count
    assert backend.leftovers() == [backend.physical("runs/r2/keep")]
    if backend.kind == "s3":
        assert len(batches) >= 2 and max(batches) <= 1000 and sum(batches) == count, batches


# -- atomicity and limits ---------------------------------------------------------------------
@pytest.mark.parametrize("good", [100, 2 * MiB, 20 * MiB], ids=["small", "one-part", "multipart"])
def test_a_failing_source_leaves_nothing_and_keeps_the_previous_object(backend: Backend, good: int) -> None:
    store = backend.store
    with pytest.raises(Exploding.Gone):  # the source's own exception, not blamed on the store
        store.put("runs/r1/new", Exploding(good))
    assert store.stat("runs/r1/new") is None
    store.put("runs/r1/old", io.BytesIO(b"previous"))
    with pytest.raises(Exploding.Gone):
        store.put("runs/r1/old", Exploding(good))
    assert read_all(store, "runs/r1/old") == b"previous"
    assert backend.leftovers() == [backend.physical("runs/r1/old")]  # no temp file, no open upload


@pytest.mark.parametrize("limit", [100, 20 * MiB], ids=["small", "multipart"])
def test_max_bytes(backend: Backend, limit: int) -> None:
    store = backend.store
    stored = store.put("runs/r1/exact", GeneratedSource(limit), max_bytes=limit)
    assert (stored.size, stored.sha256) == (limit, expected_sha256(limit))
    with pytest.raises(ObjectTooLarge) as caught:
        store.put("runs/r1/over", GeneratedSource(limit + 1), max_bytes=limit)
    assert isinstance(caught.value, ObjectStoreError)
    assert (caught.value.limit, caught.value.seen) == (limit, limit + 1)
    assert store.stat("runs/r1/over") is None
    store.put("runs/r1/old", io.BytesIO(b"previous"))
    with pytest.raises(ObjectTooLarge):
        store.put("runs/r1/old", GeneratedSource(3 * limit), max_bytes=limit)
    assert read_all(store, "runs/r1/old") == b"previous"
    assert backend.leftovers() == sorted(backend.physical(key) for key in ["runs/r1/exact", "runs/r1/old"])


def test_s3_parts_grow_only_for_objects_that_need_more_than_10000_parts() -> None:
    assert s3_backend.part_size(None) == s3_backend.part_size(1 << 30) == 5 * MiB
    big = 100 << 30
    part = s3_backend.part_size(big)
    assert part % MiB == 0 and part * 10_000 >= big and (part - MiB) * 10_000 < big


def test_max_bytes_stops_reading_a_source_that_never_ends(store: ObjectStore) -> None:
    class Endless:
        handed_out = 0

        def read(self, n: int) -> bytes:
            self.handed_out += n
            return b"x" * n

    source = Endless()
    with pytest.raises(ObjectTooLarge):
        store.put("runs/r1/endless", source, max_bytes=MiB)
    assert source.handed_out == MiB + 1  # not a byte more than needed to prove the excess


# -- keys -------------------------------------------------------------------------------------
BAD_KEYS = ["", "/abs/key", "a/../b", "..", "./a", "a/./b", "a//b", "a/", "a\\b", "a\0b", "a\nb",
            "x" * 256, "/".join(["abcdefgh"] * 120), ".ciq-tmp.key"]


@pytest.mark.parametrize("key", BAD_KEYS, ids=[repr(key)[:30] for key in BAD_KEYS])
def test_bad_keys_are_refused_everywhere(backend: Backend, key: str) -> None:
    store = backend.store
    for operation in (lambda: store.put(key, io.BytesIO(b"x")), lambda: store.open(key),
                      lambda: store.stat(key), lambda: store.delete(key),
                      lambda: store.presigned_url(key, 60)):
        with pytest.raises(ValueError):
            operation()
    with pytest.raises(ValueError):
        store.delete_prefix(key + "/")
    assert backend.leftovers() == []


@pytest.mark.parametrize("prefix", ["", "runs", "/runs/", "runs//", "../", "./"])
def test_bad_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    store.put("runs/r1/log", io.BytesIO(b"x"))
    with pytest.raises(ValueError):
        store.delete_prefix(prefix)
    assert read_all(store, "runs/r1/log") == b"x"


def test_unusual_but_valid_keys(store: ObjectStore) -> None:
    for key in ["caches/my repo/ünïcode+sha.tar", "a/.hidden", "a/b..c", "a/-dash", "x" * 255]:
        store.put(key, io.BytesIO(key.encode()))
        assert read_all(store, key) == key.encode()


# -- presigned URLs -----------------------------------------------------------------------------
def test_presigned_url(backend: Backend) -> None:
    store = backend.store
    data = pattern(10_000)
    store.put("runs/r1/artifacts.tar", io.BytesIO(data))
    url = store.presigned_url("runs/r1/artifacts.tar", 300)
    if backend.kind == "directory":
        assert url is None
        return
    assert url is not None and url.startswith(backend.endpoint) and FAKE_SECRET not in url
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200
    assert answer.content == data
    with pytest.raises(ValueError):
        store.presigned_url("runs/r1/artifacts.tar", 0)
    with pytest.raises(ValueError):
        store.presigned_url("runs/r1/artifacts.tar", 8 * 24 * 3600)


# -- failures of the store itself ----------------------------------------------------------------
def test_an_s3_store_that_is_down_fails_fast(aws_env: dict[str, str]) -> None:
    closed = free_port()  # nothing listens there: connections are refused
    store = open_store("s3://bucket/prefix", s3_endpoint_url=f"http://127.0.0.1:{closed}", s3_region="us-east-1")
    config = store.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (5, 60)
    assert config.retries["total_max_attempts"] == 3
    operations = {
        "put": lambda: store.put("k", io.BytesIO(b"x" * 100)),
        "multipart put": lambda: store.put("k", GeneratedSource(20 * MiB)),
        "open": lambda: store.open("k"),
        "stat": lambda: store.stat("k"),
        "delete": lambda: store.delete("k"),
        "delete_prefix": lambda: store.delete_prefix("k/"),
    }
    for name, operation in operations.items():
        started = time.monotonic()
        with pytest.raises(ObjectStoreError) as caught:
            operation()
        assert time.monotonic() - started < 10, name
        assert not isinstance(caught.value, ObjectTooLarge | ObjectMissing)
        assert f"127.0.0.1:{closed}" in str(caught.value), name


def test_a_missing_bucket_is_a_store_error(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    store = open_store("s3://ciq-test-no-such-bucket", s3_endpoint_url=moto_server.endpoint, s3_region="us-east-1")
    with pytest.raises(ObjectStoreError):
        store.put("k", io.BytesIO(b"x"))
    with pytest.raises(ObjectStoreError):
        store.open("k")
    with pytest.raises(ObjectStoreError):
        store.delete_prefix("k/")


def test_a_directory_store_that_cannot_write_is_a_store_error(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    (tmp_path / "store" / "runs").write_bytes(b"a file where a directory should be")
    with pytest.raises(ObjectStoreError) as caught:
        store.put("runs/r1/log", io.BytesIO(b"x"))
    assert not isinstance(caught.value, ObjectTooLarge)


def test_a_truncated_stream_is_an_error_not_a_short_object() -> None:
    reader = ObjectReader(io.BytesIO(b"only ten b"), key="k", size=100, start=0, length=100)
    assert reader.read(4) == b"only"
    with pytest.raises(ObjectStoreError, match="ended 90 bytes early"):
        reader.read()


# -- the directory backend's own guarantees --------------------------------------------------
def test_a_reader_keeps_the_version_it_opened(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    store.put("runs/r1/log", io.BytesIO(b"old " * 1000))
    with store.open("runs/r1/log") as reader:
        first = reader.read(4)
        store.put("runs/r1/log", io.BytesIO(b"new!"))
        store.delete("runs/r1/log")
        rest = reader.read()
    assert first + rest == b"old " * 1000
    assert reader.closed
    with pytest.raises(ValueError):
        reader.read(1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_writeback_is_started_chunk_by_chunk_through_a_working_binding(tmp_path: Path) -> None:
    """The put starts writeback per chunk (its closing fsync then waits for little): the ctypes
    binding exists on Linux and its calls succeed (wrong argument types would fail with EINVAL)."""
    from ci_queue.objects import directory

    assert directory._start_writeback is not None
    path = tmp_path / "probe"
    path.write_bytes(b"x" * 70_000)
    fd = os.open(path, os.O_WRONLY)
    try:
        assert directory._start_writeback(fd, 0, 65_536) == 0
        assert directory._start_writeback(fd, 65_536, 4_464) == 0
        assert directory._start_writeback(-1, 0, 1) == -1  # a call that reaches the kernel, refused there
    finally:
        os.close(fd)
    store = DirectoryStore(tmp_path / "store")
    calls: list[tuple[int, int]] = []
    real = directory._start_writeback

    def recording(fd: int, offset: int, size: int) -> object:
        calls.append((offset, size))
        return real(fd, offset, size)

    directory._start_writeback = recording
    try:
        stored = store.put("runs/r1/big", io.BytesIO(bytes(3 * (1 << 20) + 5)))
    finally:
        directory._start_writeback = real
    assert stored.size == 3 * (1 << 20) + 5
    assert calls == [(0, 1 << 20), (1 << 20, 1 << 20), (2 << 20, 1 << 20), (3 << 20, 5)]


def test_a_put_racing_with_the_removal_of_its_directory_still_lands(tmp_path: Path) -> None:
    """``delete`` prunes directories left empty; a put into one of them at that moment creates
    it again rather than failing."""
    store = DirectoryStore(tmp_path / "store")
    failures: list[BaseException] = []
    stop = time.monotonic() + 2

    def put_loop() -> None:
        try:
            i = 0
            while time.monotonic() < stop:
                store.put(f"runs/r1/jobs/{i % 3}/log", io.BytesIO(b"x"))
                i += 1
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=put_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    prunes = 0
    while any(thread.is_alive() for thread in threads):
        store.delete("runs/r1/jobs/0/log")
        prunes += 1
    for thread in threads:
        thread.join()
    assert failures == [], failures
    assert prunes > 10


# -- open_store ---------------------------------------------------------------------------------
def test_open_store_urls(tmp_path: Path, aws_env: dict[str, str]) -> None:
    directory = open_store(f"file://{tmp_path}/store%20dir")
    assert isinstance(directory, DirectoryStore) and directory.root == tmp_path / "store dir"
    assert str(tmp_path) in directory.description
    s3 = open_store("s3://my-bucket/some/prefix/", s3_endpoint_url="http://user:pw@127.0.0.1:9/")
    assert isinstance(s3, s3_backend.S3Store)
    assert (s3.bucket, s3.prefix) == ("my-bucket", "some/prefix")
    assert "s3://my-bucket/some/prefix" in s3.description and "127.0.0.1:9" in s3.description
    assert "pw" not in s3.description and FAKE_SECRET not in s3.description and "testing" not in s3.description
    assert open_store("s3://my-bucket").prefix == ""
    for bad in ["", "/abs/dir", "file://relative/dir", "file:relative", "http://host/x", "s3://",
                "s3://key:secret@bucket/x", "s3://bucket/a/../b", "gs://bucket", "S3 bucket"]:
        with pytest.raises(ValueError, match=r"file:///.*s3://"):
            open_store(bad)


def test_the_s3_endpoint_can_come_from_the_environment(moto_server: MotoServer, aws_env: dict[str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = f"ciq-test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    store = open_store(f"s3://{bucket}")
    assert moto_server.endpoint in store.description
    store.client.create_bucket(Bucket=bucket)
    store.put("a/b", io.BytesIO(b"via AWS_ENDPOINT_URL"))
    assert read_all(store, "a/b") == b"via AWS_ENDPOINT_URL"
    assert [item["Key"] for item in store.client.list_objects_v2(Bucket=bucket)["Contents"]] == ["a/b"]


def test_s3_keys_live_under_the_prefix(moto_server: MotoServer, aws_env: dict[str, str]) -> None:
    backend = make_s3_backend(moto_server, prefix="ci/objects")
    backend.store.put("runs/r1/log", io.BytesIO(b"x"))
    assert backend.leftovers() == ["ci/objects/runs/r1/log"]
    assert backend.store.delete_prefix("runs/") == 1
    assert backend.leftovers() == []
