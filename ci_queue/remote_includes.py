"""``include: remote: https://...``: fetching a pipeline file from a URL, on the farm's terms.

A remote include is a request the planner makes on its host's network for whoever wrote the
pipeline file, so it is held to the rules of clone URLs and a few of its own:

- the host must be on the allow-list ``CIQ_INCLUDE_REMOTE_HOSTS`` (comma list of host names and
  ``*.`` globs, addresses); empty (the default) refuses every remote include, with a message
  that says how to allow them;
- the address rule of clone URLs (``ci_queue.clone_policy``, the same code): ``https`` only, every
  address of the name public, unless ``CIQ_CLONE_ALLOW_HOSTS`` admits the host (which also
  admits plain ``http``: an internal server, or a test's server on 127.0.0.1); the connection goes
  to the checked address (the name is not resolved again), with TLS checked against the name;
  no redirects are followed (a redirect would be a new, unchecked host);
- a timeout for the whole fetch (``CIQ_INCLUDE_REMOTE_TIMEOUT``) and a size limit (the pipeline
  file limit, ``CIQ_PIPELINE_MAX_BYTES``);
- a short cache by URL (``CIQ_INCLUDE_REMOTE_CACHE_SECONDS``): the includes of one push's
  pipelines are fetched once, and a change upstream is seen within that time.
"""

from __future__ import annotations

import fnmatch
import http.client
import socket
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ci_queue.clone_policy import ClonePolicy, CloneRefused, HostUnresolved
from ci_queue.pipeline.sources import IncludeSourceError

ALLOW_HINT = ("list the host in CIQ_INCLUDE_REMOTE_HOSTS (comma list of names, `*.` globs, addresses) where "
              "pipelines are planned (the workers; the shell running `ci-queue plan`)")
CACHE_ENTRIES = 128  # URLs a process keeps at most


@dataclass
class _Cache:
    """Bodies fetched lately, by URL, with the time they expire; bounded, oldest first out."""

    entries: OrderedDict[str, tuple[float, bytes]] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, url: str, now: float) -> bytes | None:
        with self.lock:
            entry = self.entries.get(url)
            if entry is None or entry[0] <= now:
                self.entries.pop(url, None)
                return None
            return entry[1]

    def put(self, url: str, body: bytes, expires: float) -> None:
        with self.lock:
            self.entries[url] = (expires, body)
            self.entries.move_to_end(url)
            while len(self.entries) > CACHE_ENTRIES:
                self.entries.popitem(last=False)


_CACHE = _Cache()  # one per process: a worker's planners share it


@dataclass(frozen=True)
class RemoteIncludes:
    """The reader of ``remote:`` includes (an ``IncludeSources.remote``): ``reader(url) -> bytes``."""

    allow_hosts: tuple[str, ...]  # lower case names, `*.` globs, addresses
    policy: ClonePolicy
    timeout: float = 10.0
    max_bytes: int = 4 * 1024 * 1024
    cache_seconds: float = 60.0
    clock: Any = field(default=time.monotonic, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> RemoteIncludes:
        hosts = tuple(h.strip().lower().strip("[]") for h in settings.include_remote_hosts.split(",") if h.strip())
        return cls(**{"allow_hosts": hosts, "policy": ClonePolicy.from_settings(settings, allow_local=False),
                      "timeout": settings.include_remote_timeout, "max_bytes": settings.pipeline_max_bytes,
                      "cache_seconds": settings.include_remote_cache_seconds, **overrides})

    def __call__(self, url: str) -> bytes:
        """The body of ``url``, from the cache or fetched; IncludeSourceError says why not."""
        now = self.clock()
        cached = _CACHE.get(url, now)
        if cached is not None:
            return cached
        body = self.fetch(url)
        if self.cache_seconds > 0:
            _CACHE.put(url, body, now + self.cache_seconds)
        return body

    def fetch(self, url: str) -> bytes:
        """Check ``url`` against the allow-list and the address rule, then GET it."""
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
        if scheme not in ("https", "http") or not host:
            raise IncludeSourceError(f"remote include {url!r} must be an https:// URL")
        if parts.username or parts.password:
            raise IncludeSourceError(f"a remote include URL with credentials is refused (host {host}); it is "
                                     "not shown, so that they do not travel further")
        if not self.allow_hosts:
            raise IncludeSourceError(f"remote includes are not allowed here ({url!r})", ALLOW_HINT)
        if not any(fnmatch.fnmatchcase(host, pattern) for pattern in self.allow_hosts):
            raise IncludeSourceError(f"remote include host {host} is not in CIQ_INCLUDE_REMOTE_HOSTS "
                                     f"({', '.join(self.allow_hosts)})", ALLOW_HINT)
        try:
            target = self.policy.check(url, must_resolve=True)
        except CloneRefused as exc:
            raise IncludeSourceError(f"remote include {url!r} refused: {exc.reason}", exc.hint or None) from None
        except HostUnresolved as exc:
            raise IncludeSourceError(f"remote include {url!r}: {exc}") from None
        address = target.addresses[0] if target.addresses else host
        return self._get(url, scheme, host, parts.port or (443 if scheme == "https" else 80), address)

    def _get(self, url: str, scheme: str, host: str, port: int, address: str) -> bytes:
        """One GET to ``address`` (the checked one), named ``host``; the body within the limits."""
        deadline = time.monotonic() + self.timeout
        connection = _Pinned(scheme, host, port, address, self.timeout)
        target = urlsplit(url)
        path = (target.path or "/") + (f"?{target.query}" if target.query else "")
        try:
            connection.request("GET", path, headers={"Host": target.netloc.rpartition("@")[2],
                                                     "User-Agent": "ci-queue", "Accept": "*/*"})
            response = connection.getresponse()
            if response.status != 200:
                where = f" (to {response.getheader('Location')})" if 300 <= response.status < 400 else ""
                raise IncludeSourceError(f"remote include {url!r}: HTTP {response.status} {response.reason}{where}",
                                         "redirects are not followed: give the final URL" if where else None)
            body = b""
            while len(body) <= self.max_bytes:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = response.read(min(65536, self.max_bytes + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
            if len(body) > self.max_bytes:
                raise IncludeSourceError(f"remote include {url!r} is larger than {self.max_bytes} bytes")
            return body
        except TimeoutError:
            raise IncludeSourceError(f"remote include {url!r}: no answer within {self.timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise IncludeSourceError(f"remote include {url!r} cannot be fetched: {exc}") from None
        finally:
            connection.close()


class _Pinned(http.client.HTTPSConnection):
    """An HTTP(S) connection to a checked address, with TLS (SNI, certificate) for the host name."""

    def __init__(self, scheme: str, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self.tls = scheme == "https"
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        if self.tls:
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)  # type: ignore[attr-defined]
