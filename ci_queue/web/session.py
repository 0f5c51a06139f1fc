"""The web pages' session: who a browser is, and proof that a page (not another site) sent a change.

A person logs in with an API token (``/login``); the session cookie then keeps the token's
SHA-256, never the token, so each request asks the token table again (a revoked token logs its
sessions out at once) and a stolen cookie never reveals the token. The cookie is signed with
``CIQ_SECRET_KEY``, else a key generated once and stored like the standalone token
(``$XDG_CONFIG_HOME/ci-queue/secret_key``, mode 0600); it is ``HttpOnly``, ``SameSite=Strict``,
and ``Secure`` when ``CIQ_PUBLIC_URL`` is https.

Every state-changing request made with the cookie must carry the session's CSRF token
(``X-CSRF-Token`` header or a ``csrf_token`` form field) and, when the browser says where it comes
from (``Origin``), come from this site. ``SameSite=Strict`` already keeps the cookie off
cross-site requests; the token is the second lock, for browsers or proxies that do not.
"""

from __future__ import annotations

import hmac
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, Request, current_app, request, session
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from loguru import logger

from ci_queue.settings import Settings
from ci_queue.tokens import Identity, TokenTable

ANONYMOUS = Identity("anonymous", frozenset({"read"}))  # CIQ_PUBLIC_READ=1: read, never act
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_DAYS = 7


class CsrfRefused(Exception):
    """A state-changing request with the session cookie but without this session's CSRF token,
    or from another site (``str()`` says which)."""


def secret_key_path() -> Path:
    from ci_queue.client import config_dir

    return config_dir() / "secret_key"


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, except that a request without the cookie (every webhook,
    API and worker call) gets its empty session without the signing serializer being built for
    it first (Flask builds it on every request: 2% of a webhook's time in the web process)."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        # the header read as text: parsing it into cookies was as costly as the serializer
        if app.secret_key and self.get_cookie_name(app) not in request.headers.get("Cookie", ""):
            return self.session_class()
        return super().open_session(app, request)


def configure_sessions(app: Flask, settings: Settings) -> None:
    """The signing key, the cookie's flags and its interface (``CookieSessions``)."""
    app.session_interface = CookieSessions()
    app.secret_key = settings.secret_key or _stored_key()
    app.config.update(SESSION_COOKIE_NAME="ciq_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_SECURE=settings.public_url.lower().startswith("https://"),
                      PERMANENT_SESSION_LIFETIME=timedelta(days=SESSION_DAYS))


def _stored_key() -> str:
    """The key kept in the config directory; when it cannot be kept there (a read-only home in a
    container), a key of this process, said loudly: the API does not need it, and the pages then
    work only as long as one process serves them (set CIQ_SECRET_KEY)."""
    from ci_queue.client import ensure_stored_secret

    path = secret_key_path()
    try:
        return ensure_stored_secret(path)[0]
    except OSError as exc:
        logger.error("CIQ_SECRET_KEY is not set and {} cannot be written ({}): the web pages' sessions are signed "
                     "with a key of this process only and end when it does; set CIQ_SECRET_KEY", path,
                     exc.strerror or exc)
        return secrets.token_urlsafe(32)


def log_in(token_digest: str) -> None:
    """Start a new session for the token with this digest (a fresh CSRF token: a session fixed
    before the login is not the one after it)."""
    session.clear()
    session.permanent = True
    session["token"] = token_digest
    session[CSRF_FIELD] = secrets.token_urlsafe(32)


def log_out() -> None:
    session.clear()


def csrf_token() -> str:
    """This session's CSRF token (made now if the session has none: the login form's)."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def session_identity() -> Identity | None:
    """Who the session cookie says is here, or None. Raises CsrfRefused for a state-changing
    request that does not prove it comes from one of our pages."""
    digest = session.get("token")
    if not isinstance(digest, str):
        return None
    table: TokenTable = current_app.config["CIQ_TOKENS"]
    identity = table.identify_digest(digest)
    if identity is None:
        session.clear()  # the token was revoked (or the key changed): the session is over
        return None
    check_csrf()
    return identity


def check_csrf() -> None:
    """Raise CsrfRefused unless the request is safe or carries this session's CSRF token and,
    when it names its origin, comes from this site."""
    if request.method in SAFE_METHODS:
        return
    origin = request.headers.get("Origin")
    if origin and not _same_origin(origin):
        raise CsrfRefused(f"a request from another site ({origin}) cannot change anything here")
    given = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    expected = session.get(CSRF_FIELD)
    if not isinstance(expected, str) or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRefused("this request lacks the page's CSRF token; reload the page and try again")


def _same_origin(origin: str) -> bool:
    """``Origin`` names this server: the request's own host, or ``CIQ_PUBLIC_URL``'s."""
    parts = urlsplit(origin)
    allowed = {request.host_url.rstrip("/")}
    public = current_app.config["CIQ_SETTINGS"].public_url.rstrip("/")
    if public:
        public_parts = urlsplit(public)
        allowed.add(f"{public_parts.scheme}://{public_parts.netloc}")
    return f"{parts.scheme}://{parts.netloc}" in allowed


def visitor() -> Identity | None:
    """The page visitor: the session's identity, else the anonymous reader when
    ``CIQ_PUBLIC_READ=1``, else None (log in)."""
    identity = session_identity()
    if identity is None and current_app.config["CIQ_SETTINGS"].public_read:
        return ANONYMOUS
    return identity
