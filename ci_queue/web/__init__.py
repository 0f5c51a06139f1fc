"""The Flask app: the runs API under ``/api/v1``, the health endpoints and the web pages.

``create_app`` is the factory (gunicorn: ``ci-queue serve`` or
``gunicorn 'ci_queue.web:create_app()'``); configuration comes from ``Settings`` only.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from ci_queue.settings import Settings, get_settings

# Every answer's policy: scripts and styles of this site only (no inline script, no eval), no
# frames, no plugins; job output shown by a page is text, and this keeps it so even if a bug
# let markup through. An answer that sets its own (an artifact file: a sandbox) keeps it.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")


def security_headers(response: Any) -> Any:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def create_app(settings: Settings | None = None, *, store: Any = None, celery: Any = None,
               registry: Any = None, objects: Any = None) -> Flask:
    """Build the app; ``store`` / ``celery`` / ``registry`` / ``objects`` may be given (tests), else
    made from the settings. An invalid repository registry stops here, with its FILE:LINE:COL errors,
    and so does an invalid tokens file (``TokenFileError``)."""
    from ci_queue.artifacts.storage import objects_from_settings
    from ci_queue.celery_app import make_celery
    from ci_queue.clone_policy import ClonePolicy
    from ci_queue.repos import load_registry
    from ci_queue.store import store_from_settings
    from ci_queue.tokens import TokenTable
    from ci_queue.web.api import api
    from ci_queue.web.artifacts import artifacts_api
    from ci_queue.web.audit import audit, audit_request
    from ci_queue.web.farm import farm_api
    from ci_queue.web.health import health
    from ci_queue.web.metrics import metrics_bp
    from ci_queue.web.openapi import openapi
    from ci_queue.web.session import configure_sessions
    from ci_queue.web.transfer import jobs
    from ci_queue.web.ui import ui
    from ci_queue.web.webhooks import webhooks

    settings = settings or get_settings()
    from ci_queue.logging import configure

    configure(settings)  # once per process: the format and level of CIQ_LOG_FORMAT / CIQ_LOG_LEVEL
    app = Flask("ci_queue")
    app.config["CIQ_SETTINGS"] = settings
    app.config["CIQ_STORE"] = store or store_from_settings(settings)
    app.config["CIQ_CELERY"] = celery or make_celery(settings, web=True)
    app.config["CIQ_TOKENS"] = TokenTable([t.strip() for t in settings.api_tokens.split(",") if t.strip()],
                                          settings.tokens_file)
    app.config["CIQ_CLONE_POLICY"] = ClonePolicy.from_settings(settings)
    app.config["CIQ_OBJECTS"] = objects if objects is not None else objects_from_settings(settings)
    app.config["CIQ_REGISTRY"] = registry if registry is not None else load_registry(settings.repos_file or None)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.json.sort_keys = False
    app.register_blueprint(api)
    app.register_blueprint(artifacts_api)
    app.register_blueprint(audit)
    app.register_blueprint(jobs)
    app.register_blueprint(health)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(openapi)
    app.register_blueprint(webhooks)
    # -- the web pages (issue #12): their session, the farm API, the pages, a CSP on every answer --
    configure_sessions(app, settings)
    app.register_blueprint(farm_api)
    app.register_blueprint(ui)
    app.after_request(security_headers)
    app.after_request(audit_request)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        """Every error is JSON with a message, never an HTML page or a traceback."""
        return jsonify(error=exc.description or exc.name), exc.code

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Any:
        """A dependency away (Redis, the broker) is 503 with Retry-After; anything else is a bug."""
        from loguru import logger

        from ci_queue.web.unavailable import dependency_failure, unavailable

        reason = dependency_failure(exc)
        if reason is not None:
            return unavailable(reason, exc)
        logger.opt(exception=exc).error("unhandled error in a request")
        return jsonify(error="internal error; the server log has the details"), 500

    return app
