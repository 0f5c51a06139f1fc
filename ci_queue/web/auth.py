"""Bearer tokens of ``/api/v1``: who is calling (``g.token``, an ``Identity``) and whether the
token's scopes allow the route (``ENDPOINT_SCOPES``).

``require_token`` is the ``before_request`` of every blueprint with bearer routes: 401 without a
valid token (or a web session: ``ci_queue.web.session``; or ``CIQ_PUBLIC_READ``'s anonymous
reader), 403 ``{"error", "missing_scope"}`` when the token lacks the route's scope. A route
missing from the table needs ``admin``: a new route is closed until someone decides its scope.
The repository limits of a token are applied where runs are looked up (``api._run_or_404``,
``api.list_runs``, ``run_source``).
"""

from __future__ import annotations

from typing import Any

from flask import current_app, g, jsonify, request

from ci_queue.tokens import Identity, TokenTable
from ci_queue.web.session import CsrfRefused, visitor

# endpoint -> the scope it needs (admin has every scope)
ENDPOINT_SCOPES: dict[str, str] = {
    "api.list_runs": "read",
    "api.show_run": "read",
    "api.job_log": "read",
    "api.job_log_stream": "read",
    "artifacts_api.show_job": "read",
    "artifacts_api.archive": "read",
    "artifacts_api.listing": "read",
    "artifacts_api.one_file": "read",
    "api.create_run": "trigger",
    "api.cancel_run": "operate",
    "api.retry_run": "operate",
    "api.play_job": "operate",
    "api.approve_run": "operate",  # POST /runs/<id>/approve (branch `trust`)
    "audit.read_audit": "admin",
    "farm_api.list_workers_route": "read",  # GET /workers (the farm)
}
DEFAULT_SCOPE = "admin"


def scope_of(endpoint: str | None) -> str:
    return ENDPOINT_SCOPES.get(endpoint or "", DEFAULT_SCOPE)


def require_token() -> Any:
    """401 without a valid ``Authorization: Bearer`` token, 403 without the route's scope; else
    ``g.token`` is the caller's ``Identity``."""
    table: TokenTable = current_app.config["CIQ_TOKENS"]
    header = request.headers.get("Authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if given:
        identity = table.identify(given)
    else:  # the web pages call the API with their session cookie (CSRF-checked for changes)
        try:
            identity = visitor()
        except CsrfRefused as exc:
            return jsonify(error=str(exc)), 403
    if identity is None:
        response = jsonify(error="missing or invalid API token (Authorization: Bearer <token>)")
        response.headers["WWW-Authenticate"] = 'Bearer realm="ci-queue"'
        return response, 401
    g.token = identity
    scope = scope_of(request.endpoint)
    if not identity.allows(scope):
        has = ", ".join(sorted(identity.scopes))
        return jsonify(error=f"the token {identity.name!r} lacks the `{scope}` scope (it has: {has}); "
                             "`ci-queue token create` makes one that has it", missing_scope=scope), 403
    return None


def caller() -> Identity:
    """The identity ``require_token`` put on ``g``."""
    return g.token
