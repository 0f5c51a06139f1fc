"""The object store: where artifacts and caches live between jobs on different hosts.

One small interface (``ObjectStore``: put, open, stat, delete, delete_prefix, presigned_url) and
two real backends, chosen by URL with ``open_store``:

- ``file:///abs/dir``: ``DirectoryStore``, files under a directory (one host, or a shared mount);
- ``s3://bucket/optional/prefix``: ``S3Store``, any S3-protocol server (AWS, MinIO, Ceph RGW).

Why a URL: it is one setting, readable in a log line, that names both the kind of store and
where it is; credentials stay out of it (boto3's usual chain), so ``description`` can be logged.
Opening a store does not touch the network: an S3 store that is down fails the first operation
with ``ObjectStoreError``, it does not stop the service from starting. The S3 backend (and boto3)
is imported only when an ``s3://`` URL is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from .base import (
    CHUNK_SIZE,
    ObjectMissing,
    ObjectReader,
    ObjectStore,
    ObjectStoreError,
    ObjectTooLarge,
    StoredObject,
    StoredObjectInfo,
    validate_key,
)
from .directory import DirectoryStore

if TYPE_CHECKING:
    from .s3 import S3Store

__all__ = [
    "CHUNK_SIZE",
    "DirectoryStore",
    "ObjectMissing",
    "ObjectReader",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectTooLarge",
    "S3Store",
    "StoredObject",
    "StoredObjectInfo",
    "open_store",
    "validate_key",
]

_ACCEPTED = "file:///absolute/directory or s3://bucket[/prefix]"


def __getattr__(name: str) -> Any:
    if name == "S3Store":  # imported on first use: boto3 takes a while to import
        from .s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str, *, s3_endpoint_url: str | None = None, s3_region: str | None = None) -> ObjectStore:
    """The store a URL names: ``file:///abs/dir`` or ``s3://bucket/optional/prefix``.

    S3 credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/
    ``AWS_SESSION_TOKEN``, ``~/.aws``, instance roles); the endpoint (MinIO, Ceph RGW, moto) from
    ``s3_endpoint_url`` or ``AWS_ENDPOINT_URL``; anything else is a ValueError naming the accepted
    forms."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"no object store URL given; expected {_ACCEPTED}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ValueError(f"not a local directory URL: {url!r}; expected {_ACCEPTED}")
        path = unquote(parts.path)
        if not path.startswith("/") or "\0" in path:
            raise ValueError(f"the directory of {url!r} must be an absolute path; expected {_ACCEPTED}")
        return DirectoryStore(path)
    if scheme == "s3":
        if parts.username or parts.password or parts.port or parts.query or parts.fragment:
            raise ValueError(f"an s3:// URL names a bucket and a prefix only (credentials come from the "
                             f"environment or ~/.aws): {url!r}; expected {_ACCEPTED}")
        bucket = parts.netloc
        if not bucket:
            raise ValueError(f"no bucket in {url!r}; expected {_ACCEPTED}")
        prefix = unquote(parts.path).strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except ValueError as exc:
                raise ValueError(f"the prefix of {url!r} is not usable ({exc}); expected {_ACCEPTED}") from None
        from .s3 import S3Store

        return S3Store(bucket, prefix, endpoint_url=s3_endpoint_url, region=s3_region)
    raise ValueError(f"unsupported object store URL {url!r}; expected {_ACCEPTED}")
