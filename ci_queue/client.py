"""A small HTTP client of the runs API (``/api/v1``), for the ``ci-queue`` client commands.

One method per endpoint; every failure (server unreachable, timeout, 401, 404, any JSON error
answer) becomes a :class:`ClientError` with one clear line, never a traceback. A trigger carries
an ``Idempotency-Key`` and is retried while the server is away (503, a gateway error, no
connection) for up to ``retry_for`` seconds, with backoff honouring ``Retry-After``: the key
makes the retries safe (the server answers the run the first attempt made, never a second one).
The token comes from the caller: ``--token``, ``CIQ_API_TOKEN``, or the file ``ci-queue
standalone`` stores (:func:`token_path`), in that order (:func:`resolve_token`).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

TERMINAL_RUN_STATUSES = frozenset({"success", "failed", "canceled", "skipped", "error"})
TERMINAL_JOB_STATUSES = frozenset({"success", "failed", "canceled", "skipped"})
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0  # a request; the SSE stream sends a keep-alive every 15 s, so this also bounds a dead stream
RETRY_FOR = 60.0  # seconds a retried request keeps trying a server that is away
AWAY_STATUSES = frozenset({502, 503, 504})  # the server (or the proxy before it) says "not now"
MAX_BACKOFF = 10.0


class ClientError(Exception):
    """A request that did not give what was asked for; ``str()`` is the one line to show."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Unavailable(ClientError):
    """The server is away for now (no connection, a timeout, 502/503/504): worth trying again,
    after ``retry_after`` seconds when it said so."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


# -- the stored token ------------------------------------------------------------------------------
def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/ci-queue``, default ``~/.config/ci-queue``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "ci-queue"


def token_path() -> Path:
    return config_dir() / "token"


def read_stored_token(path: Path | None = None) -> str | None:
    """The stored token, or None when there is no (readable, non-empty) token file."""
    try:
        token = (path or token_path()).read_text().strip()
    except OSError:
        return None
    return token or None


def is_private(path: Path) -> bool:
    """Only its owner may read or write the file (mode 0600 or stricter)."""
    try:
        info = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def ensure_stored_token(path: Path | None = None) -> tuple[str, bool]:
    """The token of the standalone mode: the stored one when the file exists and is private,
    else a new random one written with mode 0600. Returns ``(token, created)``."""
    return ensure_stored_secret(path or token_path())


def ensure_stored_secret(path: Path) -> tuple[str, bool]:
    """A random secret kept in ``path`` (mode 0600): the stored one when the file exists and is
    private, else a new one. Returns ``(secret, created)``. The file is linked into place, never
    replaced: when several processes start at once (gunicorn's workers), the first one's secret
    wins and every other process reads it, so they all sign with one key."""
    existing = read_stored_token(path) if is_private(path) else None
    if existing:
        return existing, False
    secret = secrets.token_urlsafe(32)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")
        os.chmod(temp, 0o600)
        if path.exists() and not is_private(path):
            path.unlink()  # readable by others: not a secret any more
        try:
            os.link(temp, path)
        except FileExistsError:  # another process made it first: use its secret
            stored = read_stored_token(path) if is_private(path) else None
            if stored is None:
                raise
            return stored, False
    finally:
        Path(temp).unlink(missing_ok=True)
    return secret, True


def resolve_token(given: str | None, env_token: str | None) -> str | None:
    """``--token``, else ``CIQ_API_TOKEN``, else the stored token."""
    return (given or "").strip() or (env_token or "").strip() or read_stored_token()


# -- the client ------------------------------------------------------------------------------------
class Client:
    """The runs API of one server, with one token."""

    def __init__(self, server: str, token: str | None, timeout: float = READ_TIMEOUT, retry_for: float = RETRY_FOR,
                 on_retry: Callable[[str], None] | None = None) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retry_for = retry_for
        self.on_retry = on_retry  # told why and how long before each retry (the CLI: a line on stderr)
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "ci-queue-cli"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    # -- endpoints ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz", auth=False)

    def create_run(self, *, clone_url: str, ref: str, repo: str = "", sha: str = "", event: str = "push",
                   variables: dict[str, str] | None = None, idempotency_key: str | None = None) -> dict[str, Any]:
        """Trigger a run. With ``idempotency_key`` (one per run the caller wants) the request is
        retried while the server is away: every attempt answers the same run at most."""
        body: dict[str, Any] = {"clone_url": clone_url, "ref": ref, "event": event, "variables": variables or {}}
        if repo:
            body["repo"] = repo
        if sha:
            body["sha"] = sha
        if idempotency_key is None:
            return self._json("POST", "/api/v1/runs", json=body)
        return self._json("POST", "/api/v1/runs", json=body, headers={"Idempotency-Key": idempotency_key},
                          retry=True)

    def list_runs(self, **filters: Any) -> dict[str, Any]:
        return self._json("GET", "/api/v1/runs", params={k: v for k, v in filters.items() if v is not None})

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/runs/{_segment(run_id)}")

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/runs/{_segment(run_id)}/cancel")

    def approve(self, run_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/runs/{_segment(run_id)}/approve")

    def retry(self, run_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/runs/{_segment(run_id)}/retry")

    def play(self, run_id: str, job: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/runs/{_segment(run_id)}/jobs/{_segment(job)}/play")

    def audit(self, **filters: Any) -> dict[str, Any]:
        """A page of the audit log (``before``, ``since``, ``limit``, ``action``, ``token``, ``run_id``)."""
        return self._json("GET", "/api/v1/audit", params={k: v for k, v in filters.items() if v is not None})

    def workers(self) -> dict[str, Any]:
        """The farm: every worker seen in the last hour (``GET /api/v1/workers``)."""
        return self._json("GET", "/api/v1/workers")

    def artifacts_listing(self, run_id: str, job: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/runs/{_segment(run_id)}/jobs/{_segment(job)}/artifacts.json")

    def artifacts_archive(self, run_id: str, job: str) -> requests.Response:
        """The job's artifacts archive (a tar), streamed: read it from ``.raw``; the checksum is
        in the ``X-Checksum-Sha256`` header."""
        return self._request("GET", f"/api/v1/runs/{_segment(run_id)}/jobs/{_segment(job)}/artifacts", stream=True)

    def artifact_file(self, run_id: str, job: str, path: str) -> requests.Response:
        """One file of the job's artifacts, streamed."""
        quoted = "/".join(_segment(part) for part in path.strip("/").split("/"))
        return self._request("GET", f"/api/v1/runs/{_segment(run_id)}/jobs/{_segment(job)}/artifacts/{quoted}",
                             stream=True)

    def job_log(self, run_id: str, job: str, offset: str | None = None) -> tuple[str, str | None]:
        """The job's log text (after ``offset``) and the offset to continue from."""
        response = self._request("GET", f"/api/v1/runs/{_segment(run_id)}/jobs/{_segment(job)}/log",
                                 params={"offset": offset} if offset else None)
        response.encoding = "utf-8"
        return response.text, response.headers.get("X-Next-Offset") or offset

    def stream_log(self, run_id: str, job: str, offset: str | None = None) -> Iterator[tuple[str, str, Any]]:
        """Follow the job's log (Server-Sent Events): yields ``(event, id, data)``; ``line`` events
        carry a log line (a dict with ``text``), the last event is ``end`` (``{"status": ...}``)."""
        headers = {"Accept": "text/event-stream"}
        if offset:
            headers["Last-Event-ID"] = offset
        response = self._request("GET", f"/api/v1/runs/{_segment(run_id)}/jobs/{_segment(job)}/log/stream",
                                 headers=headers, stream=True)
        with response:
            event, event_id, data = "message", "", []
            try:
                for raw in response.iter_lines(decode_unicode=False):
                    line = raw.decode("utf-8", "replace")
                    if not line:
                        if data:
                            yield event, event_id, _maybe_json("\n".join(data))
                        event, data = "message", []
                        continue
                    if line.startswith(":"):
                        continue  # a comment: keep-alive
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        event = value
                    elif name == "data":
                        data.append(value)
                    elif name == "id":
                        event_id = value
            except requests.RequestException as exc:
                raise ClientError(f"the log stream from {self.server} broke off: {_reason(exc)}") from None

    # -- plumbing ------------------------------------------------------------------------------------
    def _json(self, method: str, path: str, retry: bool = False, **kwargs: Any) -> dict[str, Any]:
        response = self._retrying(method, path, **kwargs) if retry else self._request(method, path, **kwargs)
        try:
            data = response.json()
        except ValueError:
            raise ClientError(f"{self.server}{path} answered {response.status_code} with something that is not "
                              f"JSON (is {self.server} a ci-queue server?)", response.status_code) from None
        if not isinstance(data, dict):
            raise ClientError(f"{self.server}{path} answered an unexpected JSON value", response.status_code)
        return data

    def _retrying(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """``_request``, tried again while the server is away, for up to ``retry_for`` seconds:
        backoff from half a second to ``MAX_BACKOFF``, or the server's ``Retry-After``. Only for
        requests that are safe to repeat."""
        deadline = time.monotonic() + self.retry_for
        backoff = 0.5
        while True:
            try:
                return self._request(method, path, **kwargs)
            except Unavailable as exc:
                wait = exc.retry_after if exc.retry_after is not None else backoff
                backoff = min(backoff * 2, MAX_BACKOFF)
                left = deadline - time.monotonic()
                if wait > left:
                    raise Unavailable(f"{exc} (gave up after {self.retry_for:g}s)", exc.status) from None
                if self.on_retry is not None:
                    self.on_retry(f"{exc}; trying again in {wait:g}s (for {left:.0f}s more)")
                time.sleep(wait)  # backoff between attempts, not synchronization

    def _request(self, method: str, path: str, *, auth: bool = True, stream: bool = False,
                 **kwargs: Any) -> requests.Response:
        if auth and not self.token:
            raise ClientError("no API token: give --token, set CIQ_API_TOKEN, or start `ci-queue standalone` "
                              f"(it stores one in {token_path()})")
        url = self.server + path
        try:
            response = self.session.request(method, url, timeout=(CONNECT_TIMEOUT, self.timeout), stream=stream,
                                            **kwargs)
        except requests.exceptions.InvalidURL:
            raise ClientError(f"invalid server URL {self.server!r}") from None
        except requests.exceptions.MissingSchema:
            raise ClientError(f"invalid server URL {self.server!r} (it needs http:// or https://)") from None
        except requests.ConnectionError as exc:
            raise Unavailable(f"cannot reach ci-queue at {self.server}: {_reason(exc)} (is `ci-queue serve` or "
                              "`ci-queue standalone` running there? --server / CIQ_SERVER_URL say where)") from None
        except requests.Timeout:
            raise Unavailable(f"ci-queue at {self.server} did not answer within {self.timeout:g}s") from None
        except requests.RequestException as exc:
            raise ClientError(f"request to {url} failed: {_reason(exc)}") from None
        if response.status_code >= 400:
            message = _error_message(response)
            response.close()
            if response.status_code == 401:
                raise ClientError(f"{self.server} refused the API token (401: {message}); give the right one with "
                                  f"--token or CIQ_API_TOKEN, or in {token_path()}", 401)
            if response.status_code in AWAY_STATUSES:
                raise Unavailable(f"{message} ({response.status_code})", response.status_code,
                                  _retry_after(response.headers.get("Retry-After")))
            raise ClientError(f"{message} ({response.status_code})", response.status_code)
        return response


def _segment(value: str) -> str:
    return quote(value, safe="")


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is not used by ci-queue: ignored), bounded."""
    if value is None or not value.strip().isdigit():
        return None
    return min(float(value.strip()), 60.0)


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _error_message(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error") or data.get("message"), str):
        return data.get("error") or data["message"]
    text = " ".join((response.text or "").split())[:200]
    return text or response.reason or f"HTTP {response.status_code}"


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests error, shortly: 'connection refused', 'name not known'..."""
    text = str(exc)
    for needle, short in (("Connection refused", "connection refused"),
                          ("Name or service not known", "unknown host"),
                          ("nodename nor servname", "unknown host"),
                          ("timed out", "timed out"),
                          ("Connection reset", "connection reset"),
                          ("No route to host", "no route to host")):
        if needle in text:
            return short
    return text[:200]
