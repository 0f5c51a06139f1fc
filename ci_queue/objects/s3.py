"""The S3 backend: objects in a bucket (under an optional key prefix) of anything that speaks the
S3 protocol: AWS S3, MinIO, Ceph RGW, moto in the tests.

Why it is built this way:

- **boto3**, the client S3 users expect: it signs (SigV4), presigns, retries, and its transfer
  manager (s3transfer) does multipart uploads. Credentials come from boto3's usual chain (the
  ``AWS_*`` environment, ``~/.aws``, instance roles) and never appear in ``description``.
- **Bounded memory on put.** The source is wrapped in a ``HashingSource`` (sha256 and size
  computed while streaming, ``max_bytes`` enforced) that s3transfer sees as a non-seekable
  stream: it reads one part at a time and holds at most ``IN_MEMORY_PARTS`` (2) parts in the
  hands of the ``MAX_CONCURRENCY`` (2) upload threads, plus the one it is assembling:
  (2 + 1) x 5 MiB = 15 MiB of parts per put, plus a few 1 MiB chunks, whatever the object's
  size (s3transfer's default would keep up to 10 parts waiting in memory). Parts are S3's
  minimum of 5 MiB rather than s3transfer's 8 MiB: with 8 MiB the same pipeline measured 30 MiB
  in Python objects and up to 36 MiB of peak RSS growth for a 256 MiB put, over our budget of
  32 MiB; with 5 MiB, 21 MiB and 21-25 MiB. S3 allows 10,000 parts, so 5 MiB parts store objects up to about
  48 GiB; a ``put`` with a larger ``max_bytes`` uses parts large enough for it (the memory
  bound grows with them).
- **Atomic** by S3's own rules: a single PUT or a multipart upload's completion replaces the
  object whole. A put that fails aborts its multipart upload (s3transfer does it), so no parts
  are left behind; should the abort itself fail (the store went down), the bucket's
  ``AbortIncompleteMultipartUpload`` lifecycle rule is the safety net to configure.
- **Ranged reads stream**: ``get_object(Range=...)`` and a reader over its body, never the
  whole object in memory. An empty range or one past the end is answered from ``head_object``
  (S3 answers 416 to a range it cannot satisfy, and ignores ``bytes=5-4``).
- **Failing fast**: a 5 s connect timeout, a 60 s read timeout and 3 attempts in all
  (botocore's "standard" retry mode: short backoffs for connection errors, longer ones when
  throttled), so a store that is down is an ``ObjectStoreError`` within seconds (a refused
  connection: well under one; an unreachable host: about 3 x 5 s) rather than a request
  hanging, while a blip is retried.
- **Compatible checksum settings**: botocore's newer default request checksums
  (aws-chunked CRC32 bodies) are refused by some S3-compatible servers, so checksums are sent
  only where an operation requires them ("when_required"). Our own sha256 is the digest that
  callers record.
- **Path-style addressing with a custom endpoint** (MinIO, Ceph RGW, moto): bucket names as
  host names need wildcard DNS that such deployments rarely have.
- **One client per store, made when the store is opened** (no network until the first call).
  A boto3 client is thread-safe but its connection pool is not fork-safe: open the store in
  each process (after gunicorn forks its workers), not once in a parent that then forks.
- Errors: NoSuchKey / 404 is ``ObjectMissing``; every other botocore error (connection refused,
  timeouts, AccessDenied, NoSuchBucket) is ``ObjectStoreError``. One blind spot: S3 answers a
  HEAD in a missing bucket with a bare 404, so ``stat`` says None there, while ``put`` and
  ``open`` name the missing bucket.
"""

from __future__ import annotations

import os
import re
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.exceptions
import urllib3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from .base import (
    HashingSource,
    ObjectMissing,
    ObjectReader,
    ObjectStoreError,
    StoredObject,
    StoredObjectInfo,
    clamp_range,
    validate_key,
    validate_prefix,
    validate_range,
)

MiB = 1 << 20
PART_SIZE = 5 * MiB  # one multipart part (S3's minimum), and the single-PUT threshold
MAX_PARTS = 10_000  # S3's limit for one multipart upload
MAX_CONCURRENCY = 2  # parts uploaded at once per put
IN_MEMORY_PARTS = 2  # parts handed to the upload threads at once (s3transfer's max_in_memory_upload_chunks)
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
MAX_ATTEMPTS = 3  # in all, the first try included
MAX_POOL_CONNECTIONS = 32  # concurrent requests of one store (gthread workers x MAX_CONCURRENCY)
DELETE_BATCH = 1000  # S3's limit for one DeleteObjects
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4's limit

_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_STORE_ERRORS: tuple[type[BaseException], ...] = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    urllib3.exceptions.HTTPError,
    OSError,
)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)$")


def part_size(max_bytes: int | None) -> int:
    """``PART_SIZE``, or whole MiBs enough for ``max_bytes`` in ``MAX_PARTS`` parts."""
    if max_bytes is None:
        return PART_SIZE
    needed = -(-max_bytes // MAX_PARTS)
    return max(PART_SIZE, -(-needed // MiB) * MiB)


def _transfer_config(part: int) -> TransferConfig:
    config = TransferConfig(
        multipart_threshold=part,
        multipart_chunksize=part,
        max_concurrency=MAX_CONCURRENCY,
        use_threads=True,
        preferred_transfer_client="classic",  # never the CRT client: its memory use is its own
    )
    # not a TransferConfig argument, but an s3transfer setting the manager reads: without it up
    # to 10 parts of a non-seekable source wait in memory
    config.max_in_memory_upload_chunks = IN_MEMORY_PARTS
    return config


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _shown_endpoint(endpoint: str | None) -> str:
    """The endpoint for ``description``: scheme, host and port, never user info or a query."""
    if not endpoint:
        return "the default AWS endpoint"
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class _EmptyBody:
    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _S3Reader(ObjectReader):
    def _read_raw(self, n: int) -> bytes:
        try:
            return self._raw.read(n)
        except _STORE_ERRORS as exc:
            raise ObjectStoreError(f"reading {self.key!r} from S3 failed: {exc}") from exc


class S3Store:
    """Objects in ``bucket`` under ``prefix`` (``""`` or a key-like path, no slashes around it)."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, client: Any = None) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"not an S3 bucket name: {bucket!r}")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        if endpoint_url is None:
            endpoint_url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        self.endpoint_url = endpoint_url
        config = Config(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=READ_TIMEOUT,
            retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        # a session of its own: boto3's default session is not thread-safe, a client is
        self.client = client or boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config)
        where = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.description = f"S3 {where} at {_shown_endpoint(endpoint_url)}"

    def __repr__(self) -> str:
        return f"S3Store({self.description!r})"

    def _key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _failed(self, what: str, key: str, exc: BaseException) -> ObjectStoreError:
        return ObjectStoreError(f"S3 {what} of {key!r} in {self.description} failed: {exc}")

    # -- writing ------------------------------------------------------------------------------
    def put(self, key: str, source: BinaryIO, *, max_bytes: int | None = None) -> StoredObject:
        full_key = self._key(key)
        reader = HashingSource(source, max_bytes)
        try:
            self.client.upload_fileobj(reader, self.bucket, full_key, Config=_transfer_config(part_size(max_bytes)))
        except BaseException as exc:
            failure = reader.failure()
            if failure is not None and failure is not exc:
                raise failure from None  # the source's own exception, or ObjectTooLarge, as it was
            if failure is None and isinstance(exc, _STORE_ERRORS):
                raise self._failed("put", key, exc) from exc
            raise
        return StoredObject(key=key, size=reader.size, sha256=reader.sha256)

    # -- reading ------------------------------------------------------------------------------
    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except _STORE_ERRORS as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise self._failed("head", key, exc) from exc

    def _empty_reader(self, key: str, start: int) -> ObjectReader:
        head = self._head(key)
        if head is None:
            raise ObjectMissing(key)
        size = int(head["ContentLength"])
        start, _ = clamp_range(size, start, 0)
        return _S3Reader(_EmptyBody(), key=key, size=size, start=start, length=0)

    def open(self, key: str, start: int = 0, length: int | None = None) -> ObjectReader:
        full_key = self._key(key)
        validate_range(start, length)
        if length == 0:
            return self._empty_reader(key, start)
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": full_key}
        if start or length is not None:
            end = "" if length is None else str(start + length - 1)
            request["Range"] = f"bytes={start}-{end}"
        try:
            response = self.client.get_object(**request)
        except _STORE_ERRORS as exc:
            code = _error_code(exc)
            if code in _MISSING_CODES:
                raise ObjectMissing(key) from None
            if code == "InvalidRange":  # start at or past the end of the object
                return self._empty_reader(key, start)
            raise self._failed("get", key, exc) from exc
        body = response["Body"]
        content_length = int(response["ContentLength"])
        content_range = response.get("ContentRange")
        if content_range:
            match = _CONTENT_RANGE.match(content_range)
            if match is None:
                body.close()
                raise ObjectStoreError(f"S3 get of {key!r} answered an unreadable Content-Range {content_range!r}")
            first, size = int(match.group(1)), int(match.group(3))
        elif "Range" in request:
            body.close()
            raise ObjectStoreError(f"S3 get of {key!r}: {self.description} ignored the Range header")
        else:
            first, size = 0, content_length
        return _S3Reader(body, key=key, size=size, start=first, length=content_length)

    def stat(self, key: str) -> StoredObjectInfo | None:
        head = self._head(key)
        if head is None:
            return None
        return StoredObjectInfo(key=key, size=int(head["ContentLength"]), mtime=head["LastModified"].timestamp())

    # -- deleting -----------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except _STORE_ERRORS as exc:
            if _error_code(exc) in _MISSING_CODES:
                return
            raise self._failed("delete", key, exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        full_prefix = self._key(validate_prefix(prefix)[:-1]) + "/"
        removed = 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full_prefix, PaginationConfig={"PageSize": DELETE_BATCH})
            for page in pages:  # a page at a time: at most DELETE_BATCH keys in memory
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                for batch_start in range(0, len(keys), DELETE_BATCH):
                    batch = keys[batch_start:batch_start + DELETE_BATCH]
                    answer = self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                    errors = [error for error in answer.get("Errors", []) if error.get("Code") != "NoSuchKey"]
                    if errors:
                        first = errors[0]
                        raise ObjectStoreError(
                            f"S3 delete under {prefix!r} in {self.description}: {len(errors)} objects not deleted "
                            f"(first: {first.get('Key')!r}: {first.get('Code')} {first.get('Message')})")
                    removed += len(batch)
        except _STORE_ERRORS as exc:
            raise self._failed("delete", prefix, exc) from exc
        return removed

    def presigned_url(self, key: str, expires: int) -> str | None:
        full_key = self._key(key)
        if not isinstance(expires, int) or not 0 < expires <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"expires must be 1..{MAX_PRESIGN_SECONDS} seconds, not {expires!r}")
        try:
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full_key}, ExpiresIn=expires)
        except _STORE_ERRORS as exc:  # no credentials, for one
            raise self._failed("presign", key, exc) from exc
