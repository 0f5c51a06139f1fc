"""Redis URLs: the one place that turns a ``CIQ_*_URL`` into a client or a broker URL, and the one
place that makes such a URL (or any text that may hold its password) fit to print.

``redis://[[user]:password@]host:port/db`` names one server (``user``: a Redis 6 ACL user; without
it, the ``default`` user); ``rediss://`` the same over TLS; ``unix://`` a socket.
``sentinel://[[user]:password@]host:port[;sentinel://host:port...]/db`` names the Sentinels of a
primary (kombu's form, so the same URL serves the broker and the state): the client asks them
which server is the primary now (``CIQ_REDIS_SENTINEL_MASTER``, default ``mymaster``) and asks
again after a failover. The URL's user and password are the primary's; the Sentinels' own
password, when they require one, is ``CIQ_REDIS_SENTINEL_PASSWORD`` (kombu's ``sentinel_kwargs``).

TLS (``rediss://``): the server's certificate is always verified, against ``CIQ_REDIS_TLS_CA``
(else the system's CAs), and a client certificate is presented when ``CIQ_REDIS_TLS_CERT`` /
``CIQ_REDIS_TLS_KEY`` name one. The same options may be given in the URL as query parameters
(``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``ssl_check_hostname``),
the names redis-py's ``from_url`` and kombu both read; the URL's own win. :func:`resolve` writes
the settings into the URL, so one string configures both libraries alike (kombu, given a
``rediss://`` URL without options, would not verify the certificate at all).

Printing: :func:`redact` for a URL (the password becomes ``***``, the user name stays: it says
which ACL user), :func:`scrub` for free text such as an exception's message; the log sinks of
every process scrub the passwords of the configured URLs (``ci_queue.logging``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel://"
TLS_SCHEME = "rediss://"
MASK = "***"
# query parameters of a rediss:// URL <- the Access field that supplies them by default
TLS_QUERY = {"ssl_ca_certs": "tls_ca", "ssl_certfile": "tls_cert", "ssl_keyfile": "tls_key"}
SECRET_QUERY = frozenset({"password", "ssl_password"})  # query values never printed
MIN_SCRUBBED = 4  # shorter strings are not searched for in free text (they would mask every "a")


@dataclass(frozen=True)
class Access:
    """What a client needs besides the URL: the Sentinels' name for the primary and their
    password, and the TLS files of ``rediss://`` URLs (the ``CIQ_REDIS_*`` settings)."""

    sentinel_master: str = "mymaster"
    sentinel_password: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    @classmethod
    def from_settings(cls, settings: Any) -> Access:
        return cls(sentinel_master=settings.redis_sentinel_master, sentinel_password=settings.redis_sentinel_password,
                   tls_ca=settings.redis_tls_ca, tls_cert=settings.redis_tls_cert, tls_key=settings.redis_tls_key)


class SentinelParts(NamedTuple):
    hosts: list[tuple[str, int]]
    username: str | None
    password: str | None
    db: int


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def sentinel_parts(url: str) -> SentinelParts:
    """The Sentinels' addresses, the primary's user and password and the database of a
    ``sentinel://`` URL."""
    hosts: list[tuple[str, int]] = []
    username = password = None
    db = 0
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        if parsed.scheme != "sentinel" or not parsed.hostname:
            raise ValueError(f"not a sentinel:// address: {redact(part)}")
        hosts.append((parsed.hostname, parsed.port or 26379))
        if parsed.username:
            username = unquote(parsed.username)
        if parsed.password:
            password = unquote(parsed.password)
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    return SentinelParts(hosts, username, password, db)


def resolve(url: str, access: Access | None = None) -> str:
    """``url`` as every client of it gets it: a ``rediss://`` URL with the TLS settings' files as
    query parameters where the URL names none, and ``ssl_cert_reqs=required`` unless it says
    otherwise; any other URL as it is. Idempotent."""
    if not url.startswith(TLS_SCHEME):
        return url
    access = access or Access()
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = {key for key, _ in query}
    query += [(key, getattr(access, name)) for key, name in TLS_QUERY.items()
              if key not in given and getattr(access, name)]
    if "ssl_cert_reqs" not in given:
        query.append(("ssl_cert_reqs", "required"))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def client(url: str, access: Access | None = None, **options: Any) -> redis.Redis:
    """A client of the server ``url`` names (for ``sentinel://``: of the current primary)."""
    access = access or Access()
    url = resolve(url, access)
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    hosts, username, password, db = sentinel_parts(url)
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
    sentinel = Sentinel(hosts, sentinel_kwargs={**timeouts, **sentinel_auth(access)})
    return sentinel.master_for(access.sentinel_master, db=db, username=username, password=password, **options)


def sentinel_auth(access: Access) -> dict[str, str]:
    """The Sentinels' own credentials (not the primary's: those are in the URL)."""
    return {"password": access.sentinel_password} if access.sentinel_password else {}


def broker_transport_options(url: str, access: Access, socket_timeout: float) -> dict[str, Any]:
    """kombu transport options a broker ``url`` needs beyond the URL: for Sentinel, the primary's
    name and how to talk to the Sentinels (their password; a timeout, so a frozen Sentinel
    cannot hold a connection attempt forever)."""
    if not is_sentinel(url):
        return {}
    timeouts = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout}
    return {"master_name": access.sentinel_master, "sentinel_kwargs": {**timeouts, **sentinel_auth(access)}}


def unreachable(url: str, access: Access | None = None, timeout: float = 3.0) -> str | None:
    """None when the server ``url`` names answers a ``PING`` within ``timeout`` seconds; else why
    not, in one line without the password (for a start-up check that says so at once). For
    ``sentinel://``, a Sentinel that refuses its password is said as such (redis-py would only
    say that no Sentinel named a primary)."""
    access = access or Access()
    hidden = [*secrets(url), *sentinel_auth(access).values()]
    try:
        if is_sentinel(url):
            _ping_a_sentinel(url, access, timeout)
        client(url, access, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except (redis.RedisError, ValueError, OSError) as exc:
        return failure(exc, hidden)
    return None


def _ping_a_sentinel(url: str, access: Access, timeout: float) -> None:
    """Return when one Sentinel of ``url`` answers; else raise the first one's error."""
    errors: list[Exception] = []
    for host, port in sentinel_parts(url).hosts:
        try:
            redis.Redis(host, port, socket_connect_timeout=timeout, socket_timeout=timeout,
                        **sentinel_auth(access)).ping()
            return
        except redis.RedisError as exc:
            errors.append(exc)
    raise errors[0]


# -- printing -----------------------------------------------------------------------------------------
def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """``user:password@host...`` -> (the user info or None, what follows it). The last ``@``
    before the query counts: a password written without percent-encoding may hold ``@`` or ``/``."""
    head, qmark, query = rest.partition("?")
    userinfo, at, host = head.rpartition("@")
    if not at:
        return None, rest
    return userinfo, host + qmark + query


def redact(url: str) -> str:
    """A Redis URL (or a ``;``-list of them) fit to print: its password and secret query values
    replaced by ``***``; a user name stays (``user:***@``). A user info without ``:`` may be a
    password written without its colon: all of it is masked."""

    def one(part: str) -> str:
        scheme, sep, rest = part.partition("://")
        if not sep:
            return part
        userinfo, rest = _split_userinfo(rest)
        shown = f"{scheme}://"
        if userinfo is not None:
            user, colon, _ = userinfo.partition(":")
            shown += f"{user}:{MASK}@" if colon and user else f"{MASK}@"
        head, qmark, query = rest.partition("?")
        if qmark:
            pairs = [pair.partition("=") for pair in query.split("&")]
            query = "&".join(f"{k}={MASK}" if k in SECRET_QUERY and eq else k + eq + v for k, eq, v in pairs)
        return shown + head + qmark + query

    return ";".join(one(part) for part in url.split(";"))


def secrets(url: str) -> list[str]:
    """The strings of ``url`` that must never be printed: each password (as written and
    percent-decoded) and secret query value."""
    found: list[str] = []
    for part in url.split(";"):
        _, sep, rest = part.partition("://")
        if not sep:
            continue
        userinfo, rest = _split_userinfo(rest)
        if userinfo:
            password = userinfo.partition(":")[2] if ":" in userinfo else userinfo
            found += [password, unquote(password)]
        query = rest.partition("?")[2]
        found += [value for key, value in parse_qsl(query) if key in SECRET_QUERY]
    return [s for s in dict.fromkeys(found) if s]


def settings_secrets(settings: Any) -> tuple[str, ...]:
    """Every password the settings hold for Redis (the URLs', the Sentinels')."""
    found = secrets(settings.redis_url) + secrets(settings.state_url) + [settings.redis_sentinel_password]
    return tuple(s for s in dict.fromkeys(found) if s)


def scrub(text: str, hidden: Iterable[str]) -> str:
    """``text`` with every string of ``hidden`` (of at least ``MIN_SCRUBBED`` characters) masked:
    the net under messages that are not ours to format (a library's exception, a log line)."""
    for secret in sorted((s for s in hidden if len(s) >= MIN_SCRUBBED), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def failure(exc: BaseException, hidden: Iterable[str] = ()) -> str:
    """What a Redis error means, in one line with the ``hidden`` strings (passwords) masked: a
    refused password or a missing permission said as such, anything else as redis-py said it."""
    if isinstance(exc, redis.AuthenticationError):
        why = f"Redis refused the credentials ({exc})"
    elif isinstance(exc, redis.exceptions.NoPermissionError):
        why = f"the Redis user lacks a permission ({exc})"
    else:
        why = str(exc) or type(exc).__name__
    return scrub(why, hidden)
