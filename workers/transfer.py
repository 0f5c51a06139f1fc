"""The worker's HTTP client for one running job's artifacts, reports and caches.

It talks to the web app (``CIQ_SERVER_URL``; ``ci_queue.web.transfer``) with the attempt's job
token, never to the object store itself: workers hold no store credentials. Everything is
streamed in bounded chunks. Integrity: an upload's SHA-256 is computed here while the bytes go
out and compared with what the web app stored; a download is hashed while it is read and
compared with the checksum recorded at upload (``ChecksumMismatch``). Both are infrastructure
failures (``runner_system_failure``: the job is retried on a fresh workspace), never a silently
corrupt workspace. Transient failures (connection refused or reset, 502/503/504) are retried a
few times with backoff; a 403 means the attempt is no longer the current one.
"""

from __future__ import annotations

import hashlib
import http.client
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from workers.runners.base import InfrastructureError

RETRIES = 4
TIMEOUT = (10.0, 300.0)  # connect, read (a read waits for the store to take a whole chunk)
RETRYABLE_STATUS = frozenset({502, 503, 504})


class TransferError(InfrastructureError):
    """The web app or the store could not be reached, or refused for a reason of its own."""


class ChecksumMismatch(TransferError):
    """Bytes arrived that are not the bytes that were stored."""


class AttemptGone(TransferError):
    """The job token is no longer valid: the attempt ended or was taken over."""

    retryable = False


class Rejected(Exception):
    """The web app refused the request for a reason of the job's own (400/413): ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Uploaded:
    sha256: str
    size: int


class HashingReader:
    """A response body read in chunks, hashed as it goes; ``verify`` after the last byte."""

    def __init__(self, response: requests.Response, expected: str, what: str) -> None:
        self.response, self.expected, self.what = response, expected, what
        self.raw = response.raw
        self.raw.decode_content = True
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n if n is not None and n >= 0 else None)
        self.digest.update(data)
        self.size += len(data)
        return data

    def verify(self) -> None:
        """Read what is left, then compare with the expected checksum."""
        while self.read(1 << 20):
            pass
        if self.expected and self.digest.hexdigest() != self.expected:
            raise ChecksumMismatch(f"checksum mismatch downloading {self.what}: expected {self.expected[:16]}…, "
                                   f"got {self.digest.hexdigest()[:16]}… ({self.size} bytes)")

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> HashingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobChannel:
    """The web app as one attempt of one job sees it."""

    def __init__(self, server_url: str, run_id: str, index: int, attempt: int, token: str,
                 session: requests.Session | None = None) -> None:
        self.base = f"{server_url.rstrip('/')}/api/v1/jobs/{run_id}/{index}/{attempt}"
        self.session = session or requests.Session()
        self.session.headers["Job-Token"] = token

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> JobChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, body: Callable[[], Any] | None = None, ok: tuple[int, ...] = (200,),
                 chunked: bool = False, **kwargs: Any) -> requests.Response:
        """One request, retried on transient failures (``body`` makes the body afresh each time;
        ``chunked``: it is a stream of chunks for a PUT, sent by ``_put_chunked`` where it can)."""
        delay = 0.5
        for attempt in range(RETRIES):
            last = attempt == RETRIES - 1
            try:
                url = self.base + path
                if chunked and body and self._direct(url):
                    response = self._put_chunked(url, body(), kwargs.get("params"))
                else:
                    response = self.session.request(method, url, data=body() if body else None, timeout=TIMEOUT,
                                                    **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if last:
                    raise TransferError(f"the web app at {self.base.split('/api/')[0]} is unreachable: "
                                        f"{type(exc).__name__}") from None
            else:
                if response.status_code in ok:
                    return response
                reason = _reason(response)
                if response.status_code == 403:
                    raise AttemptGone(reason)
                if response.status_code in (400, 404, 409, 413):
                    raise Rejected(response.status_code, reason)
                if response.status_code not in RETRYABLE_STATUS or last:
                    raise TransferError(f"{method} {path}: {response.status_code} {reason}")
                response.close()
            time.sleep(delay)  # backoff between tries, not synchronization
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def upload(self, path: str, chunks: Callable[[], Iterable[bytes]], **params: str) -> Uploaded:
        """PUT a stream made by ``chunks()``; checks that the web app stored exactly those bytes."""
        sent: dict[str, Any] = {}

        def body() -> Iterator[bytes]:
            digest, size = hashlib.sha256(), 0
            for chunk in chunks():
                digest.update(chunk)
                size += len(chunk)
                yield chunk
            sent.update(sha256=digest.hexdigest(), size=size)

        response = self._request("PUT", path, body=body, chunked=True, params=params or None)
        stored = response.json()
        if stored.get("sha256") != sent.get("sha256") or stored.get("size") != sent.get("size"):
            raise ChecksumMismatch(f"the web app stored {stored.get('size')} bytes ({str(stored.get('sha256'))[:16]}…) "
                                   f"of {sent.get('size')} sent ({str(sent.get('sha256'))[:16]}…)")
        return Uploaded(stored["sha256"], stored["size"])

    def _direct(self, url: str) -> bool:
        """Whether ``_put_chunked`` may send to ``url``: plain HTTP (the web app on loopback or
        the farm's network) that no proxy setting covers. Anything else (TLS, proxies) goes
        through requests, whose settings for them stay the only ones."""
        if urlsplit(url).scheme != "http" or self.session.proxies:
            return False
        return not (self.session.trust_env and requests.utils.get_environ_proxies(url))

    def _put_chunked(self, url: str, chunks: Iterable[bytes], params: dict[str, str] | None) -> requests.Response:
        """PUT ``chunks`` with chunked transfer encoding on a connection of its own, each chunk
        sent as it is (its size line, the chunk, CRLF: three sends, no copy). urllib3, under
        requests, frames a chunk by formatting it into a new bytes object, at 0.5 ms per MiB
        here: 22 ms of the 10,000-file upload, half a second of a 1 GiB one.

        A failed send is not the end: the web app may have answered (413, 403) and closed
        before taking the whole body, and that answer is what counts. A connection that fails
        is ``requests.ConnectionError`` (retried by ``_request``); what ``chunks`` raises is
        raised as it is, after it is closed."""
        prepared = self.session.prepare_request(requests.Request("PUT", url, params=params))
        prepared.headers.pop("Content-Length", None)  # set to 0 for a body-less PUT
        prepared.headers["Transfer-Encoding"] = "chunked"
        prepared.headers["Accept-Encoding"] = "identity"
        where = urlsplit(url)
        connection = http.client.HTTPConnection(where.hostname or "", where.port or 80, timeout=TIMEOUT[0])
        source = iter(chunks)
        try:
            try:
                connection.connect()
                connection.sock.settimeout(TIMEOUT[1])
                connection.putrequest("PUT", prepared.path_url, skip_host=False, skip_accept_encoding=True)
                for name, value in prepared.headers.items():
                    connection.putheader(name, value)
                connection.endheaders()
            except (OSError, http.client.HTTPException) as exc:
                raise requests.ConnectionError(exc) from None
            send = connection.sock.sendall
            try:
                for chunk in source:
                    if chunk:
                        send(b"%x\r\n" % len(chunk))
                        send(chunk)
                        send(b"\r\n")
                send(b"0\r\n\r\n")
            except OSError:
                pass  # the answer, if the web app sent one before closing, says why
            try:
                answer = connection.getresponse()
                response = self.session.get_adapter(url).build_response(prepared, answer)
                _ = response.content  # read whole: the connection is closed below
            except (OSError, http.client.HTTPException) as exc:
                raise requests.ConnectionError(exc) from None
            return response
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
            connection.close()

    def download(self, path: str, expected_sha256: str, what: str, **params: str) -> HashingReader:
        """A streamed GET; a redirect (a presigned URL of the store) is followed without the job
        token, which is for the web app only."""
        response = self._request("GET", path, stream=True, params=params or None, allow_redirects=False,
                                 ok=(200, 302, 303, 307))
        expected = expected_sha256 or response.headers.get("X-Checksum-Sha256", "")
        if response.is_redirect:
            location = response.headers["Location"]
            response.close()
            try:
                response = requests.get(location, stream=True, timeout=TIMEOUT)
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransferError(f"the artifact store is unreachable: {type(exc).__name__}") from None
            if response.status_code != 200:
                raise TransferError(f"the artifact store answered {response.status_code} for {what}")
        return HashingReader(response, expected, what)

    # -- artifacts -----------------------------------------------------------------------------------
    def upload_archive(self, chunks: Callable[[], Iterable[bytes]]) -> Uploaded:
        return self.upload("/artifacts.tar", chunks)

    def commit_artifacts(self, *, name: str, expire_in: str | None, uploaded: Uploaded, manifest: bytes,
                         files: int) -> dict[str, Any]:
        """Upload the file list (``manifest``: the JSON list ``TarWriter.manifest_json()`` makes;
        ``files``: how many regular files it names), then record the archive uploaded before
        with it. The list goes as a stored object of its own, not inside the commit: the web app
        keeps its bytes as they come instead of parsing and re-encoding 10,000 entries per commit."""
        self.upload("/manifest.json", lambda: [manifest])
        body = {"name": name, "expire_in": expire_in, "sha256": uploaded.sha256, "size": uploaded.size,
                "files": files, "manifest_size": len(manifest)}
        return self._request("POST", "/artifacts", json=body).json()

    def put_report(self, kind: str, chunks: Callable[[], Iterable[bytes]]) -> dict[str, Any]:
        return self._request("PUT", f"/reports/{kind}", body=lambda: iter(chunks())).json()

    def dependencies(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/dependencies").json()["dependencies"])

    def dependency_archive(self, source: int, sha256: str, what: str) -> HashingReader:
        return self.download(f"/dependencies/{source}/artifacts.tar", sha256, what)

    # -- caches --------------------------------------------------------------------------------------
    def cache_checksum(self, key: str) -> str | None:
        """The stored cache's SHA-256, None on a miss."""
        try:
            response = self._request("HEAD", "/caches", params={"key": key})
        except Rejected as exc:
            if exc.status == 404:
                return None
            raise
        return response.headers.get("X-Checksum-Sha256") or None

    def cache_archive(self, key: str, sha256: str) -> HashingReader:
        return self.download("/caches", sha256, f"cache {key!r}", key=key)

    def upload_cache(self, key: str, chunks: Callable[[], Iterable[bytes]]) -> Uploaded:
        return self.upload("/caches", chunks, key=key)


def _reason(response: requests.Response) -> str:
    try:
        return str(response.json().get("error") or response.reason)
    except ValueError:
        return response.reason or str(response.status_code)
