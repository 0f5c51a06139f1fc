"""The web pages for people: runs, a run, a job's log, the farm; and the login that opens them.

Server-rendered Jinja2 templates (``templates/``) with a little hand-written JavaScript
(``static/``): no build step, no CDN. Pages follow runs live by fetching a fragment of
themselves again (``?fragment=1``: the same template code renders the page and its updates, so
there is one rendering, escaped by Jinja) or, for logs, through the API's Server-Sent Events.

A page needs the same authority as the API: the session's token (``ci_queue.web.session``) with
the ``read`` scope; the buttons call the API with the cookie and the page's CSRF token, and the
API checks the ``operate`` scope as it does for a bearer token. Without a session a page sends
the visitor to ``/login`` (or, with ``CIQ_PUBLIC_READ=1``, shows it read-only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from werkzeug.exceptions import HTTPException

from ci_queue.farm import list_workers
from ci_queue.store.core import RUN_STATUSES
from ci_queue.tokens import TokenTable
from ci_queue.web import pages
from ci_queue.web.api import MAX_PAGE, _job_index_or_404, _run_or_404, _store, _visible_runs
from ci_queue.web.session import CsrfRefused, check_csrf, csrf_token, log_in, log_out, visitor

ui = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/ui/static")
OPEN_ENDPOINTS = frozenset({"ui.login", "ui.login_submit", "ui.static"})
RUNS_PER_PAGE = 25
RAW_LOG_CHUNK = 5000  # log lines read from Redis per round trip of a raw download


@ui.before_request
def require_visitor() -> Any:
    """Every page but the login needs a visitor with the ``read`` scope; a state change also
    needs the page's CSRF token."""
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    try:
        identity = visitor()
    except CsrfRefused as exc:
        abort(403, str(exc))
    if identity is None:
        return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))
    if not identity.allows("read"):
        abort(403, f"the token {identity.name!r} lacks the `read` scope the pages need")
    g.token = identity
    return None


@ui.app_context_processor
def page_globals() -> dict[str, Any]:
    """What every template may use: the visitor, the CSRF token of its forms and buttons."""
    identity = g.get("token")
    return {"visitor": identity, "csrf_token": csrf_token,
            "can_operate": bool(identity and identity.allows("operate")), "fmt": pages}


@ui.errorhandler(HTTPException)
def page_error(exc: HTTPException) -> Any:
    """A page's error is a page (the API's stay JSON)."""
    return render_template("error.html", code=exc.code, message=exc.description or exc.name), exc.code


# -- login ---------------------------------------------------------------------------------------
@ui.get("/login")
def login() -> Any:
    return render_template("login.html", next=_safe_next(request.args.get("next")), error=None)


@ui.post("/login")
def login_submit() -> Any:
    """A token from the form becomes a session (the cookie keeps its SHA-256, not the token)."""
    try:
        check_csrf()
    except CsrfRefused as exc:
        abort(403, str(exc))
    token = (request.form.get("token") or "").strip()
    table: TokenTable = current_app.config["CIQ_TOKENS"]
    identity = table.identify(token) if token else None
    target = _safe_next(request.form.get("next"))
    if identity is None:
        return render_template("login.html", next=target, error="This token is not valid here."), 401
    log_in(hashlib.sha256(token.encode()).hexdigest())
    return redirect(target)


@ui.post("/logout")
def logout() -> Any:
    log_out()
    return redirect(url_for("ui.login"))


def _safe_next(value: str | None) -> str:
    """Where to go after the login: a path of this site only (never ``//other.host`` or a URL)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return url_for("ui.runs")
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else url_for("ui.runs")


# -- runs ----------------------------------------------------------------------------------------
@ui.get("/")
def runs() -> Any:
    """Runs newest first, filtered by repository, ref and status, paged by the store's indexes."""
    repo = request.args.get("repo", "").strip() or None
    ref = request.args.get("ref", "").strip() or None
    status = request.args.get("status", "").strip() or None
    if status and status not in RUN_STATUSES:
        abort(400, f"status must be one of {', '.join(RUN_STATUSES)}")
    if ref and not repo:
        abort(400, "a ref filter needs a repository (refs are per repository)")
    try:
        cursor = float(request.args["cursor"]) if request.args.get("cursor") else None
    except ValueError:
        abort(400, "cursor must be the number of an `Older runs` link")
    found, next_cursor = _visible_runs(repo, ref, status, cursor, min(RUNS_PER_PAGE, MAX_PAGE))
    rows = [pages.run_row(run) for run in found]
    filters = {"repo": repo or "", "ref": ref or "", "status": status or ""}
    template = "_runs_rows.html" if request.args.get("fragment") else "runs.html"
    return render_template(template, rows=rows, filters=filters, statuses=RUN_STATUSES, next_cursor=next_cursor,
                           first_page=cursor is None)


@ui.get("/runs/<run_id>")
def run(run_id: str) -> Any:
    """A run: the pipeline graph (stages as columns, ``needs`` edges), its jobs and buttons."""
    record = _run_or_404(run_id)
    view = pages.run_view(record, _store().stages(run_id))
    template = "_run_live.html" if request.args.get("fragment") else "run.html"
    return render_template(template, run=view)


@ui.get("/runs/<run_id>/jobs/<path:name>")
def job_log(run_id: str, name: str) -> Any:
    """A job's log, streamed into the page by ``log.js`` from the API's SSE endpoint."""
    record = _run_or_404(run_id, with_jobs=False)
    index = _store().job_index(run_id, name)
    job = _store().job(run_id, index) if index is not None else None
    if job is None:
        abort(404, f"run {run_id} has no job {name!r}")
    attempt = request.args.get("attempt", str(job.attempt))
    if not attempt.isdigit() or not 1 <= int(attempt) <= job.attempt:
        abort(400, f"attempt must be a number from 1 to {job.attempt}")
    return render_template("log.html", run=pages.run_row(record), job=pages.job_view(record.id, job),
                           attempt=int(attempt), attempts=range(1, job.attempt + 1))


@ui.get("/runs/<run_id>/log.txt")
def raw_log(run_id: str) -> Any:
    """The whole log of one attempt (``?job=NAME&attempt=N``) as text, streamed page by page (the
    API's text log answers one page; a download must be all of it)."""
    name = request.args.get("job", "")
    index = _job_index_or_404(run_id, name)
    attempt = request.args.get("attempt")
    if attempt is not None and not attempt.isdigit():
        abort(400, "attempt must be a number")
    store = _store()

    def lines() -> Iterator[str]:
        after = "-"
        while True:
            entries = store.read_log(run_id, index, after=after, count=RAW_LOG_CHUNK)
            if not entries:
                return
            after = entries[-1][0]
            yield "".join(fields.get("text", "") + "\n" for _, fields in entries
                          if attempt is None or fields.get("attempt") == attempt)

    filename = pages.safe_filename(f"{run_id}-{name}" + (f"-{attempt}" if attempt else "") + ".log")
    return Response(stream_with_context(lines()), mimetype="text/plain",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             "X-Content-Type-Options": "nosniff"})


# -- the farm ------------------------------------------------------------------------------------
@ui.get("/workers")
def workers() -> Any:
    """Every worker seen in the last hour and what it runs; the queue table is filled by
    ``workers.js`` from ``GET /api/v1/queues``."""
    found = [worker.to_dict() for worker in list_workers(_store())]
    template = "_workers_rows.html" if request.args.get("fragment") else "workers.html"
    return render_template(template, workers=found)
