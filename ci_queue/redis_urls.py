"""Redis URLs, plain or through Sentinel: one place that turns a ``CIQ_*_URL`` into a client.

``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``) names one server.
``sentinel://[:password@]host:port[;sentinel://host:port...]/db`` names the Sentinels of a
primary (kombu's form, so the same URL serves the broker and the state): the client asks them
which server is the primary now (``CIQ_REDIS_SENTINEL_MASTER``, default ``mymaster``) and asks
again after a failover. The password, when given, is the primary's (and the Sentinels', if they
require one).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel://"


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str | None, int]:
    """The Sentinels' addresses, the password and the database of a ``sentinel://`` URL."""
    hosts: list[tuple[str, int]] = []
    password, db = None, 0
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        if parsed.scheme != "sentinel" or not parsed.hostname:
            raise ValueError(f"not a sentinel:// address: {redact(part)}")
        hosts.append((parsed.hostname, parsed.port or 26379))
        if parsed.password:
            password = unquote(parsed.password)
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    return hosts, password, db


def client(url: str, master: str = "mymaster", **options: Any) -> redis.Redis:
    """A client of the server ``url`` names (for ``sentinel://``: of the current primary)."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    hosts, password, db = sentinel_parts(url)
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
    sentinel = Sentinel(hosts, sentinel_kwargs={"password": password, **timeouts} if password else timeouts)
    return sentinel.master_for(master, db=db, password=password, **options)


def redact(url: str) -> str:
    """A Redis URL (or a ``;``-list of them) without passwords."""
    def one(part: str) -> str:
        scheme, sep, rest = part.partition("://")
        if sep and "@" in rest:
            return f"{scheme}://***@{rest.rpartition('@')[2]}"
        return part

    return ";".join(one(part) for part in url.split(";"))
