"""The runs API, ``/api/v1``: trigger, list, show, logs (text and live), cancel, retry, play, approve.

Every route needs ``Authorization: Bearer <token>`` with the route's scope (``ci_queue.web.auth``:
``g.token`` is the caller's ``Identity``); a run of a repository outside the token's ``repos`` is
answered as if it did not exist (404). Errors are JSON ``{"error": message}``; unknown ids are 404;
Redis or the broker away is 503 with ``Retry-After`` (``ci_queue.web.unavailable``, the app's
error handler).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, abort, current_app, g, jsonify, request, stream_with_context
from loguru import logger

from ci_queue.clone_policy import TRUSTED_KEY
from ci_queue.dispatch import report, send_jobs, send_to_planning, trigger_run, trigger_run_once
from ci_queue.events.model import valid_ref
from ci_queue.limits import (
    MAX_ARG_STRLEN,
    MAX_CLONE_URL_LENGTH,
    MAX_MESSAGE_BYTES,
    MAX_PIPELINE_PATH_BYTES,
    MAX_REF_BYTES,
    MAX_REPO_NAME_LENGTH,
    MAX_TRIGGER_VARIABLES_BYTES,
    MAX_VARIABLE_NAME_BYTES,
    env_string_bytes,
    environment_bytes,
    ref_bytes,
    shown,
    utf8_len,
)
from ci_queue.repos import Repository
from ci_queue.settings import Settings
from ci_queue.store import Once, Store, StoreError
from ci_queue.store.core import RUN_STATUSES, TERMINAL_JOB, TERMINAL_RUN
from ci_queue.trust import CONTROL_PLANE_VARIABLES, RunTrust
from ci_queue.web.auth import caller, require_token
from ci_queue.web.links import run_links
from ci_queue.web.run_source import RunSource, default_name, run_source
from ci_queue.web.unavailable import dependency_failure

api = Blueprint("api", __name__, url_prefix="/api/v1")
MAX_PAGE = 100
MAX_LOG_PAGE = 10_000  # log lines one read of a job's log answers at most
EVENTS = ("push", "tag", "merge_request", "web", "schedule", "api", "trigger")
# Run ids are made by the store (hex); anything else, a `:` above all, could name another key.
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
LIMITED_SCAN_PAGES = 10  # pages of runs a repository-limited token's listing reads at most per request
IDEMPOTENCY_TTL = 86400  # a key is remembered for a day (at most as long as its run)


def _store() -> Store:
    return current_app.config["CIQ_STORE"]


def _settings() -> Settings:
    return current_app.config["CIQ_SETTINGS"]


api.before_request(require_token)


def _json_body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "the body must be a JSON object")
    return data


def _string(data: dict[str, Any], key: str, required: bool = False, default: str = "") -> str:
    value = data.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, str) or (required and not value):
        abort(400, f"`{key}` must be a{' non-empty' if required else ''} string")
    return value


def _bounded(key: str, value: str, limit: int, size: int | None = None, unit: str = "bytes") -> str:
    """``value`` if its ``size`` (default: UTF-8 bytes) is within ``limit``, else 400 with a
    message that shows only its beginning."""
    size = utf8_len(value) if size is None else size
    if size > limit:
        abort(400, f"`{key}` is too long: {size} {unit}, at most {limit}: {shown(value)}")
    return value


def _ref(data: dict[str, Any], key: str, required: bool = False) -> str:
    """A branch or tag name (or a full ref), within Git's and the forges' limits."""
    ref = _string(data, key, required=required)
    if ref:
        _bounded(key, ref, MAX_REF_BYTES, ref_bytes(ref))
        if not valid_ref(ref):
            abort(400, f"`{key}` is not a valid git ref name: {shown(ref)}")
    return ref


def _variables(data: dict[str, Any]) -> dict[str, str]:
    """The run's variables: names and values that can become a job's environment (see
    ``ci_queue.limits``: a job whose environment the kernel refuses could never start)."""
    variables = data.get("variables")
    if variables is None:
        return {}
    if not isinstance(variables, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in variables.items()):
        abort(400, "`variables` must be an object of strings")
    for name, value in variables.items():
        if not name or "=" in name or "\0" in name:
            abort(400, f"`variables`: {shown(name)} is not a variable name (empty, or with '=' or NUL)")
        if name in CONTROL_PLANE_VARIABLES:
            abort(400, f"`variables`: {name} is set by ci-queue from the repositories file (protected branches "
                       "and tags), never by a trigger")
        if utf8_len(name) > MAX_VARIABLE_NAME_BYTES:
            abort(400, f"`variables`: the name {shown(name)} is too long: {utf8_len(name)} bytes, "
                       f"at most {MAX_VARIABLE_NAME_BYTES}")
        size = env_string_bytes(name, value)
        if size > MAX_ARG_STRLEN:
            abort(400, f"`variables`: {shown(name)} is {size} bytes as NAME=value; a job's environment string "
                       f"has at most {MAX_ARG_STRLEN} (the kernel's MAX_ARG_STRLEN)")
    total = environment_bytes(variables)
    if total > MAX_TRIGGER_VARIABLES_BYTES:
        abort(400, f"`variables` are {total} bytes together, at most {MAX_TRIGGER_VARIABLES_BYTES} "
                   "(a job's whole environment must stay under the kernel's ARG_MAX)")
    return variables


def _context(data: dict[str, Any], event: str, ref: str) -> dict[str, Any]:
    context: dict[str, Any] = {"kind": event}
    if event == "tag":
        context["tag"] = ref
    else:
        context["branch"] = ref
    if "default_branch" in data:
        context["default_branch"] = _ref(data, "default_branch")
    if "pipeline" in data:
        context["pipeline"] = _bounded("pipeline", _string(data, "pipeline"), MAX_PIPELINE_PATH_BYTES)
    if "commit_message" in data:
        context["commit_message"] = _bounded("commit_message", _string(data, "commit_message"), MAX_MESSAGE_BYTES)
    return context


@api.post("/runs")
def create_run() -> Any:
    """Trigger a run: ``{repo, clone_url, ref, sha?, event?, variables?, pipeline?}``.

    The run id is chosen before the write, so that a 503 (Redis too slow: the write may still
    land) can name it. With an ``Idempotency-Key`` the key and the run are written in one atomic
    step and a repeat answers the first run (200), so a client may retry blindly."""
    data = _json_body()
    fields = _trigger_fields(data)
    trust = _trust(fields, _apply_source(fields, _string(data, "repo")).entry)
    key = _idempotency_key()
    store, celery = _store(), current_app.config["CIQ_CELERY"]
    g.run_id = run_id = store.new_run_id()
    if key is None:
        trigger_run(store, celery, run_id=run_id, trust=trust, **fields)
        return _trigger_answer(run_id, "queued", 202)
    fingerprint = _fingerprint(fields)
    once = Once(store.idempotency_key(_token_scope(), key), json.dumps({"run_id": run_id, "request": fingerprint}),
                max(1, min(IDEMPOTENCY_TTL, store.retention)))  # never outlives its run (`retention` after its end)
    created = trigger_run_once(store, celery, once, run_id=run_id, trust=trust, **fields)
    if created.new:
        return _trigger_answer(run_id, "queued", 202)
    return _replay(json.loads(created.first), fingerprint)


def _trigger_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The run a trigger body asks for, validated (400 otherwise): ``trigger_run``'s arguments.
    Every field is bounded (``ci_queue.limits``): a value over its limit is refused with 400,
    and the message shows only its beginning."""
    repo = _string(data, "repo")
    clone_url = _string(data, "clone_url", required=not repo)
    _bounded("clone_url", clone_url, MAX_CLONE_URL_LENGTH, len(clone_url), "characters")
    repo = repo or default_name(clone_url)
    _bounded("repo", repo, MAX_REPO_NAME_LENGTH, len(repo), "characters")
    ref = _ref(data, "ref", required=True)
    sha = _string(data, "sha")
    if sha and (len(sha) not in (40, 64) or any(c not in "0123456789abcdef" for c in sha.lower())):
        abort(400, f"`sha` must be a full hexadecimal commit id, not {shown(sha)}")
    event = _string(data, "event", default="push")
    if event not in EVENTS:
        abort(400, f"`event` must be one of {', '.join(EVENTS)}")
    variables = _variables(data)
    return {"repo": repo, "ref": ref, "sha": sha.lower(), "event": event, "clone_url": clone_url,
            "variables": variables, "context": _context(data, event, ref)}


def _trust(fields: dict[str, Any], entry: Repository | None) -> RunTrust:
    """The trusted facts of an API run (``ci_queue.trust``). A run of a registered repository's
    registry ``clone_url`` (``entry``, as ``run_source`` decided) is protected when its ref is one of
    the repository's protected branches or tags (the default branch is the registry's
    ``default_branch``, else ``CIQ_DEFAULT_BRANCH``: never the request's), with its grants. Any
    other run is untrusted: never protected, the ``defaults:`` grants only."""
    if entry is None:
        return current_app.config["CIQ_REGISTRY"].unregistered_trust()
    return entry.trust(fields["event"], fields["ref"], entry.default_branch or _settings().default_branch)


def _apply_source(fields: dict[str, Any], asked_repo: str) -> RunSource:
    """Decide the run's repository and clone URL for this token (``run_source``: registered
    repositories, the clone policy; 400 / 403 otherwise) from the ``repo`` the body named (or
    not); a registered URL is marked trusted, so the worker does not check it again."""
    g.audit_repo = fields["repo"]
    source = run_source(caller(), current_app.config["CIQ_REGISTRY"], current_app.config["CIQ_CLONE_POLICY"],
                        asked_repo, fields["clone_url"])
    g.audit_repo = fields["repo"] = source.repo
    fields["clone_url"] = source.clone_url
    if source.trusted:
        fields["context"][TRUSTED_KEY] = True
    return source


def _idempotency_key() -> str | None:
    """The ``Idempotency-Key`` header (IETF httpapi draft: a string, quoted or not), or None."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not IDEMPOTENCY_KEY.fullmatch(key):
        abort(400, "`Idempotency-Key` must be 1 to 255 visible ASCII characters (a UUID is a good one)")
    return key


def _token_scope() -> str:
    """Keys are per API token, so two clients can never collide on (or probe) each other's keys;
    a hash of the token's hash, so no token is ever part of a key name."""
    return hashlib.sha256(b"idempotency:" + caller().digest.encode()).hexdigest()[:16]


def _fingerprint(fields: dict[str, Any]) -> str:
    """What a request asked for, to tell a repeat from another request reusing a key."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _replay(first: dict[str, Any], fingerprint: str) -> Any:
    """A repeat of an ``Idempotency-Key``: the run its first request made, as it is now (200)."""
    run_id = g.run_id = str(first.get("run_id", ""))
    if first.get("request") != fingerprint:
        abort(422, f"this Idempotency-Key was used for another request (run {run_id}); a new request needs a new key")
    run = _store().get_run(run_id, with_jobs=False) if RUN_ID.fullmatch(run_id) else None
    if run is None:  # deleted by hand: the key outlives no run otherwise
        abort(422, f"the run of this Idempotency-Key ({run_id}) no longer exists; a new request needs a new key")
    if run.status == "queued":  # the first request may have lost its plan message with its answer
        send_to_planning(current_app.config["CIQ_CELERY"], run_id)
    return _trigger_answer(run_id, run.status, 200)


def _trigger_answer(run_id: str, status: str, code: int) -> Any:
    return jsonify(id=run_id, run_id=run_id, status=status, **run_links(run_id)), code


@api.get("/runs")
def list_runs() -> Any:
    status = request.args.get("status")
    if status and status not in RUN_STATUSES:
        abort(400, f"`status` must be one of {', '.join(RUN_STATUSES)}")
    try:
        limit = min(max(int(request.args.get("limit", 20)), 1), MAX_PAGE)
        cursor = float(request.args["cursor"]) if request.args.get("cursor") else None
        if cursor is not None and not math.isfinite(cursor):
            raise ValueError(cursor)
    except ValueError:
        abort(400, "`limit` and `cursor` must be numbers (`cursor`: a `next_cursor` of a previous page)")
    runs, next_cursor = _visible_runs(request.args.get("repo"), request.args.get("ref"), status, cursor, limit)
    return jsonify(runs=[{k: v for k, v in run.to_dict().items() if k != "jobs"} for run in runs],
                   next_cursor=next_cursor)


def _visible_runs(repo: str | None, ref: str | None, status: str | None, cursor: float | None,
                  limit: int) -> tuple[list[Any], float | None]:
    """A page of the runs the token may see. A token limited to repositories gets the runs of
    its repositories only: a page may then hold fewer than ``limit`` runs (pages are read until
    one holds some, at most ``LIMITED_SCAN_PAGES`` of them); follow ``next_cursor``."""
    identity, store = caller(), _store()
    if identity.limited and repo and not identity.sees(repo):
        return [], None  # as if it had no runs: nothing is said about a repository it cannot see
    runs, next_cursor = store.list_runs(repo=repo, ref=ref, status=status, cursor=cursor, limit=limit)
    if not identity.limited:
        return runs, next_cursor
    visible = [run for run in runs if identity.sees(run.repo)]
    for _ in range(LIMITED_SCAN_PAGES - 1):
        if visible or next_cursor is None:
            break
        runs, next_cursor = store.list_runs(repo=repo, ref=ref, status=status, cursor=next_cursor, limit=limit)
        visible = [run for run in runs if identity.sees(run.repo)]
    return visible, next_cursor


def _run_or_404(run_id: str, with_jobs: bool = True) -> Any:
    """The run, or 404 when there is none or the token may not see its repository (the same
    answer: a limited token cannot tell another repository's run from no run)."""
    run = _store().get_run(run_id, with_jobs=with_jobs) if RUN_ID.fullmatch(run_id) else None
    if run is None or not caller().sees(run.repo):
        abort(404, f"no run {run_id}")
    g.audit_repo = run.repo
    return run


def _job_index_or_404(run_id: str, name: str) -> int:
    _run_or_404(run_id, with_jobs=False)
    index = _store().job_index(run_id, name)
    if index is None:
        abort(404, f"run {run_id} has no job {name!r}")
    return index


@api.get("/runs/<run_id>")
def show_run(run_id: str) -> Any:
    return jsonify(_run_or_404(run_id).to_dict())


@api.post("/runs/<run_id>/cancel")
def cancel_run(run_id: str) -> Any:
    _run_or_404(run_id, with_jobs=False)
    status, running = _store().cancel_run(run_id)
    if status in TERMINAL_RUN:
        report(_store(), current_app.config["CIQ_CELERY"], run_id, "run_ended")
    return jsonify(id=run_id, status=status, stopping=len(running))


@api.post("/runs/<run_id>/approve")
def approve_run(run_id: str) -> Any:
    """Let a run that waits for approval (a merge request from a fork, ``fork_pull_requests:
    approve``) be planned and run. It still gets no secrets and no protected caches: approving
    says "this code may use our workers", not "this code may have our credentials"."""
    _run_or_404(run_id, with_jobs=False)
    actor = caller().name
    try:
        _store().approve_run(run_id, actor)
    except StoreError as exc:
        abort(409, str(exc))
    logger.bind(run_id=run_id).info("run approved by {}", actor)
    send_to_planning(current_app.config["CIQ_CELERY"], run_id)  # lost: the sweeper sends it again
    return jsonify(id=run_id, status="queued", approved_by=actor), 202


@api.post("/runs/<run_id>/retry")
def retry_run(run_id: str) -> Any:
    """GitLab's "retry failed jobs": failed and canceled jobs run again as new attempts, what
    depends on them is decided again, successful jobs keep their result (``Store.retry_run``)."""
    _run_or_404(run_id, with_jobs=False)
    store = _store()
    try:
        result = store.retry_run(run_id)
    except StoreError as exc:
        abort(409, str(exc))
    _send_jobs(run_id, result.ready)
    run = store.get_run(run_id)
    jobs = run.jobs if run else []
    return jsonify(id=run_id, status=result.status, retried=[jobs[i].name for i in result.retried if i < len(jobs)],
                   ready=[jobs[i].name for i in result.ready if i < len(jobs)]), 202


@api.post("/runs/<run_id>/jobs/<path:name>/play")
def play_job(run_id: str, name: str) -> Any:
    index = _job_index_or_404(run_id, name)
    try:
        attempt = _store().play_job(run_id, index)
    except StoreError as exc:
        abort(409, str(exc))
    _send_jobs(run_id, [index])
    return jsonify(id=run_id, job=name, attempt=attempt, status="pending"), 202


def _send_jobs(run_id: str, indexes: list[int]) -> None:
    """Send the jobs a stored change (retry, play) made ready. The change is done and its jobs are
    noted as unsent until their messages are out, so a broker or Redis failure now is the
    sweeper's to mend (it re-sends them): the request answers what it did, not an error that
    would make the client repeat a change that already happened."""
    try:
        send_jobs(_store(), current_app.config["CIQ_CELERY"], _settings(), run_id, indexes)
    except Exception as exc:
        if dependency_failure(exc) is None:
            raise
        logger.bind(run_id=run_id).warning("could not send jobs {} now ({}); the sweeper will", indexes, exc)


def _log_text(entries: list[tuple[str, dict[str, str]]]) -> str:
    return "".join(fields.get("text", "") + "\n" for _, fields in entries)


def _offset(value: str | None) -> str:
    """A stream position from ``?offset=`` / ``Last-Event-ID``: ``-`` (the start) or an entry id."""
    if not value or value == "-":
        return "-"
    head, _, tail = value.partition("-")
    if not (head.isdigit() and (tail == "" or tail.isdigit())):
        abort(400, "`offset` must be a value of X-Next-Offset")
    return value


def _attempt_filter() -> str | None:
    """``?attempt=N``: only the lines of that attempt (default: every attempt, in order)."""
    attempt = request.args.get("attempt")
    if attempt is not None and not attempt.isdigit():
        abort(400, "`attempt` must be a positive number")
    return attempt


def _lines(entries: list[tuple[str, dict[str, str]]], attempt: str | None) -> list[tuple[str, dict[str, str]]]:
    return entries if attempt is None else [e for e in entries if e[1].get("attempt") == attempt]


@api.get("/runs/<run_id>/jobs/<path:name>/log")
def job_log(run_id: str, name: str) -> Any:
    """The job's log as text; ``?offset=`` (the ``X-Next-Offset`` of a previous read) continues;
    ``?limit=`` reads fewer lines (the web page's first, small read paints sooner)."""
    index = _job_index_or_404(run_id, name)
    offset = _offset(request.args.get("offset"))
    attempt = _attempt_filter()
    limit = request.args.get("limit", str(MAX_LOG_PAGE))
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_LOG_PAGE:
        abort(400, f"`limit` must be a number from 1 to {MAX_LOG_PAGE}")
    entries = _store().read_log(run_id, index, after=offset, count=int(limit))
    next_offset = entries[-1][0] if entries else offset
    entries = _lines(entries, attempt)
    if request.args.get("format") == "json":
        return jsonify(lines=[{"id": entry_id, **fields} for entry_id, fields in entries], next_offset=next_offset)
    response = Response(_log_text(entries), mimetype="text/plain")
    response.headers["X-Next-Offset"] = next_offset
    return response


@api.get("/runs/<run_id>/jobs/<path:name>/log/stream")
def job_log_stream(run_id: str, name: str) -> Any:
    """Server-Sent Events: one ``line`` event per log line, then ``end`` when the job is over."""
    index = _job_index_or_404(run_id, name)
    store = _store()
    start = _offset(request.headers.get("Last-Event-ID") or request.args.get("offset"))
    attempt = _attempt_filter()

    def events() -> Iterator[str]:
        offset = start
        idle_since = time.monotonic()
        while True:
            # the status first: a worker writes all its lines before it records the end, so once
            # the job was seen over, one more read gets every line there will ever be
            job = store.job(run_id, index)
            over = job is None or job.status in TERMINAL_JOB
            entries = store.read_log(run_id, index, after=offset, count=1000)
            batch = []  # one write per read, not one per line: a long log streams at the network's pace
            for entry_id, fields in entries:
                offset = entry_id
                if attempt is None or fields.get("attempt") == attempt:
                    batch.append(f"id: {entry_id}\nevent: line\ndata: {json.dumps(fields)}\n\n")
            if batch:
                yield "".join(batch)
            if entries:
                idle_since = time.monotonic()
                continue
            if over:
                yield f"event: end\ndata: {json.dumps({'status': job.status if job else 'gone'})}\n\n"
                return
            if time.monotonic() - idle_since > 15:
                yield ": keep-alive\n\n"
                idle_since = time.monotonic()
            time.sleep(0.2)  # polling the stream; XREAD BLOCK would hold a connection per viewer

    return Response(stream_with_context(events()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
