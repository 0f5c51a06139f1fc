"""The audit log in the web app: every state-changing bearer call is recorded after it was
carried out (``audit_request``, an ``after_request`` of the app), and ``GET /api/v1/audit``
(``admin``) reads the records back (``ci_queue.audit`` has the fields and the stream).

Redis away while auditing: the call must not succeed without its record. The record is written
after the action and before the answer; if it cannot be written, the answer is 503 (with
``Retry-After``, like every Redis outage) saying that the action was carried out, and the record
goes to the service log at ERROR level, so it is never lost. Repeating is safe: a trigger with
its ``Idempotency-Key`` answers the run it made, a repeated cancel changes nothing, a repeated
retry or play of jobs that are running again is refused (409). Writing the record inside each
action's own Lua script would close even that window, at the price of every state-changing
script of the store knowing about auditing; one Redis outage between two writes of one request
is the rare case this design accepts. The webhook route does it for the runs deliveries start
(the run's script writes the record, ``ci_queue.store.Alongside``), the hottest path of the app.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, jsonify, request

from ci_queue.audit import STREAM_ID, AuditLog
from ci_queue.web.auth import require_token
from ci_queue.web.unavailable import dependency_failure, unavailable

audit = Blueprint("audit", __name__, url_prefix="/api/v1")
audit.before_request(require_token)
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NOT_AUDITED_PREFIX = "/api/v1/jobs/"  # the workers' job-token routes: per chunk, not per action
MAX_PAGE = 500


def audit_log() -> AuditLog:
    return AuditLog.of(current_app.config["CIQ_STORE"], current_app.config["CIQ_SETTINGS"].audit_maxlen)


def audited(method: str, path: str) -> bool:
    """Whether a request is one the audit log records."""
    return method in STATE_CHANGING and path.startswith("/api/v1/") and not path.startswith(NOT_AUDITED_PREFIX)


def audit_request(response: Response) -> Response:
    """Record a state-changing API call with its outcome; 503 when the record cannot be written."""
    if not audited(request.method, request.path):
        return response
    identity = g.get("token")
    view_args = request.view_args or {}
    record = {"token": identity.name if identity is not None else "", "source": request.remote_addr,
              "action": (request.endpoint or "").rpartition(".")[2], "method": request.method,
              "path": request.path, "run_id": view_args.get("run_id") or g.get("run_id") or "",
              "job": view_args.get("name") or "", "repo": g.get("audit_repo") or "",
              "status": response.status_code}
    stream = identity is not None and response.status_code != 503
    try:
        audit_log().record(stream=stream, **record)
    except Exception as exc:
        reason = dependency_failure(exc)
        if reason is None:
            raise
        answer = unavailable(reason, exc)
        body = answer.get_json()
        body["error"] = (f"the request was carried out ({response.status_code}) but its audit record could not be "
                         f"written ({reason}; the service log has it); " + body["error"])
        answer.set_data(json.dumps(body))
        return answer
    return response


def _stream_id(name: str) -> str | None:
    value = request.args.get(name)
    if value and not STREAM_ID.fullmatch(value):
        abort(400, f"`{name}` must be a record id (the `id` or `next` of a previous page)")
    return value or None


def _since() -> str | None:
    """``since``: a record id, or an ISO 8601 time (records from then on)."""
    value = request.args.get("since")
    if not value or STREAM_ID.fullmatch(value):
        return value or None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        abort(400, "`since` must be an ISO 8601 time (2025-01-31T10:00:00Z) or a record id")
    if moment.tzinfo is None:
        abort(400, "`since` needs a time zone (`Z` for UTC)")
    return f"{max(int(moment.timestamp() * 1000), 0)}-0"


@audit.get("/audit")
def read_audit() -> Any:
    """Records newest first: ``?before=`` (the ``next`` of the previous page), ``?since=``,
    ``?limit=``, filters ``?action=``, ``?token=``, ``?run_id=``."""
    try:
        limit = min(max(int(request.args.get("limit", 50)), 1), MAX_PAGE)
    except ValueError:
        abort(400, "`limit` must be a number")
    entries, next_id = audit_log().read(before=_stream_id("before"), since=_since(), limit=limit,
                                        action=request.args.get("action") or None,
                                        token=request.args.get("token") or None,
                                        run_id=request.args.get("run_id") or None)
    return jsonify(entries=entries, next=next_id)
