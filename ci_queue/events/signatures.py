"""Authenticity of webhook deliveries: constant-time checks on the raw body bytes.

One function per provider, each raising :class:`SignatureError` (-> 401, nothing stored) when
the proof is missing or wrong, and also when no secret is configured: an unsigned delivery is
never accepted.

- GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``. The legacy
  ``X-Hub-Signature: sha1=<hex>`` counts only with ``allow_sha1=True`` (and only when no
  SHA-256 header came: a wrong SHA-256 signature is never rescued by a SHA-1 one).
- Gitea / Forgejo: ``X-Gitea-Signature`` / ``X-Forgejo-Signature`` (also Gogs'
  ``X-Gogs-Signature``): the same HMAC-SHA256, lower-case hex, no prefix.
- GitLab: ``X-Gitlab-Token`` is the secret itself; compared in constant time.
- Generic: ``X-CIQ-Timestamp: <unix seconds>`` and
  ``X-CIQ-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` (the prefix is
  optional), the timestamp within 5 minutes of the server's clock, so a captured request cannot
  be replayed later (the delivery id dedup covers the 5 minutes).

Delivery ids (for redelivery dedup) come from :func:`delivery_id`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

from ci_queue.events.model import header

GENERIC_TOLERANCE_SECONDS = 300
GENERIC_TIMESTAMP_HEADER = "X-CIQ-Timestamp"
GENERIC_SIGNATURE_HEADER = "X-CIQ-Signature"
GENERIC_DELIVERY_HEADER = "X-CIQ-Delivery"


class SignatureError(Exception):
    """The delivery is not proven to come from the forge; ``reason`` is a short metric label
    (``missing``, ``mismatch``, ``malformed``, ``stale``, ``no_secret``)."""

    def __init__(self, message: str, reason: str = "mismatch") -> None:
        super().__init__(message)
        self.reason = reason


def _key(secret: str | bytes | None) -> bytes:
    if secret is None or secret == "" or secret == b"":
        raise SignatureError("no webhook secret is configured for this repository; unsigned hooks are refused",
                             "no_secret")
    return secret.encode() if isinstance(secret, str) else bytes(secret)


def hmac_hex(secret: str | bytes, body: bytes, digest: str = "sha256") -> str:
    """Lower-case hex HMAC of ``body`` keyed with ``secret`` (``digest``: sha256 or sha1)."""
    return hmac.new(_key(secret), bytes(body), getattr(hashlib, digest)).hexdigest()


def github_signature(secret: str | bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return "sha256=" + hmac_hex(secret, body)


def generic_signature(secret: str | bytes, body: bytes, timestamp: int | str) -> str:
    """The ``X-CIQ-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    return "sha256=" + hmac_hex(secret, str(timestamp).encode("ascii") + b"." + bytes(body))


def generic_headers(secret: str | bytes, body: bytes, *, timestamp: int | None = None,
                    delivery: str | None = None) -> dict[str, str]:
    """Every header a generic sender needs (for clients, scripts and tests)."""
    stamp = int(time.time()) if timestamp is None else int(timestamp)
    headers = {GENERIC_TIMESTAMP_HEADER: str(stamp),
               GENERIC_SIGNATURE_HEADER: generic_signature(secret, body, stamp)}
    if delivery:
        headers[GENERIC_DELIVERY_HEADER] = delivery
    return headers


def _same(expected: str, given: str) -> bool:
    """Constant-time equality of two ASCII strings (non-ASCII input simply does not match)."""
    try:
        return hmac.compare_digest(expected.encode("ascii"), given.encode("ascii"))
    except UnicodeEncodeError:
        hmac.compare_digest(expected.encode("ascii"), expected.encode("ascii"))  # same work either way
        return False


def _hex_part(value: str, prefix: str, length: int, name: str) -> str:
    if prefix:
        if not value.lower().startswith(prefix):
            raise SignatureError(f"{name} must start with {prefix!r}", "malformed")
        value = value[len(prefix):]
    value = value.lower()
    if len(value) != length or any(c not in "0123456789abcdef" for c in value):
        raise SignatureError(f"{name} must be {length} hexadecimal digits", "malformed")
    return value


def verify_github(headers: Mapping[str, str], body: bytes, secret: str | bytes | None, *,
                  allow_sha1: bool = False) -> None:
    """GitHub's ``X-Hub-Signature-256`` (or, when enabled, the legacy SHA-1 one)."""
    key = _key(secret)
    sig256 = header(headers, "X-Hub-Signature-256")
    if sig256:
        given = _hex_part(sig256, "sha256=", 64, "X-Hub-Signature-256")
        if not _same(hmac_hex(key, body), given):
            raise SignatureError("X-Hub-Signature-256 does not match the body", "mismatch")
        return
    sig1 = header(headers, "X-Hub-Signature")
    if sig1 and allow_sha1:
        given = _hex_part(sig1, "sha1=", 40, "X-Hub-Signature")
        if not _same(hmac_hex(key, body, "sha1"), given):
            raise SignatureError("X-Hub-Signature does not match the body", "mismatch")
        return
    if sig1:
        raise SignatureError("only a SHA-1 X-Hub-Signature came; X-Hub-Signature-256 is required", "missing")
    raise SignatureError("X-Hub-Signature-256 header is missing", "missing")


GITEA_SIGNATURE_HEADERS = ("X-Gitea-Signature", "X-Forgejo-Signature", "X-Gogs-Signature")


def verify_gitea(headers: Mapping[str, str], body: bytes, secret: str | bytes | None) -> None:
    """Gitea / Forgejo / Gogs: HMAC-SHA256 hex with no prefix. Every such header sent must match."""
    key = _key(secret)
    expected = hmac_hex(key, body)
    seen = False
    for name in GITEA_SIGNATURE_HEADERS:
        value = header(headers, name)
        if not value:
            continue
        seen = True
        if not _same(expected, _hex_part(value, "", 64, name)):
            raise SignatureError(f"{name} does not match the body", "mismatch")
    if not seen:
        raise SignatureError("X-Gitea-Signature header is missing (is a secret set on the hook?)", "missing")


def verify_gitlab(headers: Mapping[str, str], body: bytes, secret: str | bytes | None) -> None:
    """GitLab's ``X-Gitlab-Token``: the hook's secret token verbatim. ``body`` is not signed."""
    key = _key(secret)
    token = header(headers, "X-Gitlab-Token")
    if not token:
        raise SignatureError("X-Gitlab-Token header is missing", "missing")
    # Compare digests: constant time whatever the lengths, and no ASCII requirement on the token.
    if not hmac.compare_digest(hashlib.sha256(key).digest(), hashlib.sha256(token.encode()).digest()):
        raise SignatureError("X-Gitlab-Token does not match", "mismatch")


def verify_generic(headers: Mapping[str, str], body: bytes, secret: str | bytes | None, *,
                   now: float | None = None, tolerance: float = GENERIC_TOLERANCE_SECONDS) -> None:
    """``X-CIQ-Signature`` over ``timestamp.body`` with ``X-CIQ-Timestamp`` within ``tolerance`` s."""
    key = _key(secret)
    stamp = header(headers, GENERIC_TIMESTAMP_HEADER)
    signature = header(headers, GENERIC_SIGNATURE_HEADER)
    if not stamp or not signature:
        raise SignatureError(f"{GENERIC_TIMESTAMP_HEADER} and {GENERIC_SIGNATURE_HEADER} headers are required",
                             "missing")
    if not stamp.isdigit() or len(stamp) > 12:
        raise SignatureError(f"{GENERIC_TIMESTAMP_HEADER} must be unix seconds", "malformed")
    prefix = "sha256=" if signature.lower().startswith("sha256=") else ""
    given = _hex_part(signature, prefix, 64, GENERIC_SIGNATURE_HEADER)
    if not _same(hmac_hex(key, stamp.encode("ascii") + b"." + bytes(body)), given):
        raise SignatureError(f"{GENERIC_SIGNATURE_HEADER} does not match the timestamp and body", "mismatch")
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance:
        raise SignatureError(f"{GENERIC_TIMESTAMP_HEADER} is more than {int(tolerance)} s away from the server's clock",
                             "stale")


_VERIFIERS: dict[str, Callable[..., None]] = {
    "github": verify_github,
    "gitea": verify_gitea,
    "gitlab": verify_gitlab,
    "generic": verify_generic,
}


def verify(provider: str, headers: Mapping[str, str], body: bytes, secret: str | bytes | None, **options) -> None:
    """Check the delivery for ``provider``; options go to the provider's function
    (``allow_sha1`` for GitHub, ``now`` / ``tolerance`` for generic)."""
    try:
        check = _VERIFIERS[provider]
    except KeyError:
        raise ValueError(f"unknown provider {provider!r}") from None
    check(headers, body, secret, **options)


_DELIVERY_HEADERS = {
    "github": ("X-GitHub-Delivery",),
    "gitea": ("X-Gitea-Delivery", "X-Forgejo-Delivery", "X-Gogs-Delivery", "X-GitHub-Delivery"),
    # Idempotency-Key is the same across retries of one delivery (GitLab 17.4+); the event UUID
    # is shared by every hook of one event, which is what a redelivery of one hook repeats too.
    "gitlab": ("Idempotency-Key", "X-Gitlab-Event-UUID"),
    "generic": (GENERIC_DELIVERY_HEADER,),
}


def delivery_id(provider: str, headers: Mapping[str, str]) -> str:
    """The provider's delivery id ('' when none came). Only printable ASCII, at most 200
    characters, is kept: it becomes part of a Redis key, so anything else is dropped."""
    for name in _DELIVERY_HEADERS.get(provider, ()):
        value = header(headers, name)
        if value and len(value) <= 200 and value.isascii() and value.isprintable():
            return value
    return ""
