"""The workers' side of the web app: the uploads and downloads of one running job.

``/api/v1/jobs/<run>/<index>/<attempt>/...``, authorized by the **job token** in the
``Job-Token`` header: the random token the worker's attempt took its lease with (``BEGIN_JOB``).
It is valid only while that attempt runs and only for its run's objects and its repository's
caches (GitLab's ``CI_JOB_TOKEN`` model), so workers never hold the object store's credentials
and a worker whose attempt was taken over can record nothing (403). Bodies are streamed both ways
in bounded chunks (``ci_queue.objects``); for S3 a download may be a redirect to a presigned URL.

- ``PUT  .../artifacts.tar``            the archive (a tar stream) -> ``{sha256, size}``
- ``PUT  .../manifest.json``            its file list (JSON, kept as sent) -> ``{sha256, size}``
- ``POST .../artifacts``                commit both: ``{name, expire_in, sha256, size, files, manifest_size}``
- ``PUT  .../reports/junit``            a tar of JUnit XML files, summarized here
- ``PUT  .../reports/dotenv``           the dotenv file(s), parsed here (GitLab's rules)
- ``GET  .../dependencies``             whose artifacts the job gets (GitLab's rules), their state
- ``GET  .../dependencies/<i>/artifacts.tar``  one of them
- ``GET|HEAD|PUT .../caches?key=K``     a cache of the run's repository
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import asdict
from typing import IO, Any, BinaryIO

from flask import Blueprint, Response, abort, current_app, g, jsonify, redirect, request, stream_with_context

from ci_queue.artifacts.caches import cache_object_name
from ci_queue.artifacts.dependencies import artifact_sources
from ci_queue.artifacts.reports import DOTENV_MAX_BYTES, ReportError, parse_dotenv, summarize_junit
from ci_queue.objects import ObjectMissing, ObjectStore, ObjectTooLarge
from ci_queue.pipeline.durations import parse_duration
from ci_queue.pipeline.model import Job
from ci_queue.settings import Settings
from ci_queue.store.artifacts import ArtifactIndex, attempt_prefix
from ci_queue.web.api import RUN_ID, _settings, _store

jobs = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs/<run_id>/<int:index>/<int:attempt>")
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_MANIFEST_BYTES = 256 * 1024 * 1024  # an archive's file list: about a million entries
MAX_JUNIT_BYTES = 30 * 1024 * 1024  # the XML of one job's reports:junit, uncompressed
MAX_CACHE_KEY = 1024
PRESIGNED_SECONDS = 600


def objects() -> ObjectStore:
    return current_app.config["CIQ_OBJECTS"]


def _index() -> ArtifactIndex:
    return ArtifactIndex(_store())


def archive_limit(settings: Settings) -> int:
    """The most an archive may hold: the job's file limit plus what tar adds (headers, padding);
    the worker enforces the limit on the files themselves, this only bounds a broken client."""
    return settings.max_artifact_bytes + settings.max_artifact_bytes // 8 + 64 * 1024 * 1024


def _body() -> BinaryIO:
    """The request body as a stream. gunicorn (and werkzeug's server, for a chunked body) end the
    input at the body's end themselves (``wsgi.input_terminated``): read it directly, which spares
    every chunk the two copies of werkzeug's ``LimitedStream`` (measured: half the throughput of a
    bare endpoint); the store counts the bytes and stops at its own limit."""
    if request.environ.get("wsgi.input_terminated"):
        return request.environ["wsgi.input"]
    return request.stream


@jobs.before_request
def require_job_token() -> Any:
    args = request.view_args or {}
    run_id, index, attempt = args.get("run_id", ""), args.get("index", -1), args.get("attempt", -1)
    token = request.headers.get("Job-Token", "")
    if not token:
        response = jsonify(error="missing job token (Job-Token header)")
        response.headers["WWW-Authenticate"] = 'Job-Token realm="ci-queue"'
        return response, 401
    if not RUN_ID.fullmatch(run_id) or not _index().token_holder(run_id, index, attempt, token):
        return jsonify(error=f"the job token is not valid for attempt {attempt} of job {index} of run {run_id} "
                             "(the attempt ended or was taken over)"), 403
    g.job_token = token
    return None


def _attempt_gone(run_id: str, index: int, attempt: int) -> Any:
    return jsonify(error=f"attempt {attempt} of job {index} of run {run_id} ended or was taken over; "
                         "nothing was recorded"), 403


# -- artifacts -----------------------------------------------------------------------------------

@jobs.put("/artifacts.tar")
def put_archive(run_id: str, index: int, attempt: int) -> Any:
    request.max_content_length = archive_limit(_settings()) + 1  # streamed; the store counts and stops first
    _index().note_objects(run_id)
    key = attempt_prefix(run_id, index, attempt) + "artifacts.tar"
    try:
        stored = objects().put(key, _body(), max_bytes=archive_limit(_settings()))
    except ObjectTooLarge as exc:
        abort(413, f"the artifacts archive is over {exc.limit} bytes")
    return jsonify(sha256=stored.sha256, size=stored.size)


@jobs.put("/manifest.json")
def put_manifest(run_id: str, index: int, attempt: int) -> Any:
    """The archive's file list, stored as it comes: it is checked where it is read
    (``ci_queue.web.artifacts``), so a commit costs the same for ten files or a million."""
    request.max_content_length = MAX_MANIFEST_BYTES + 1
    try:
        stored = objects().put(attempt_prefix(run_id, index, attempt) + "manifest.json", _body(),
                               max_bytes=MAX_MANIFEST_BYTES)
    except ObjectTooLarge as exc:
        abort(413, f"the file list is over {exc.limit} bytes")
    return jsonify(sha256=stored.sha256, size=stored.size)


def _non_negative(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        abort(400, f"`{name}` must be a non-negative integer")
    return value


@jobs.post("/artifacts")
def commit_artifacts(run_id: str, index: int, attempt: int) -> Any:
    """Record the archive and file list uploaded before as the attempt's artifacts."""
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "the body must be a JSON object")
    name, sha256 = data.get("name"), data.get("sha256")
    if not isinstance(name, str) or not name or len(name) > 255:
        abort(400, "`name` must be a string of 1 to 255 characters")
    if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
        abort(400, "`sha256` must be 64 lowercase hex digits")
    size, files, manifest_size = (_non_negative(data, key) for key in ("size", "files", "manifest_size"))
    expire_in = _expire_in(data.get("expire_in"))
    prefix = attempt_prefix(run_id, index, attempt)
    for key, what, wanted in (("artifacts.tar", "archive", size), ("manifest.json", "file list", manifest_size)):
        info = objects().stat(prefix + key)
        if info is None or info.size != wanted:
            abort(409, f"no {what} of {wanted} bytes was uploaded for this attempt (found "
                       f"{'none' if info is None else f'{info.size} bytes'}); upload it again")
    record = {"name": name, "size": size, "sha256": sha256, "files": files,
              "key": prefix + "artifacts.tar", "manifest": prefix + "manifest.json"}
    recorded = _index().record_artifacts(run_id, index, attempt, g.job_token, record, expire_in)
    if recorded is None:
        objects().delete_prefix(prefix)
        return _attempt_gone(run_id, index, attempt)
    return jsonify(recorded)


def _expire_in(value: Any) -> int | None:
    """Seconds from a GitLab ``expire_in`` (``never``: None); the farm's default when absent."""
    if value is None or value == "":
        value = _settings().artifacts_expire_in
    if isinstance(value, str) and value.strip().lower() == "never":
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        abort(400, f"`artifacts:expire_in`: {exc}")


# -- reports -------------------------------------------------------------------------------------

@jobs.put("/reports/junit")
def put_junit(run_id: str, index: int, attempt: int) -> Any:
    """A tar of the job's JUnit XML files, summarized on the way in (nothing of it is stored but
    the summary). A report that cannot be read is recorded as such: GitLab does not fail the job."""
    request.max_content_length = MAX_JUNIT_BYTES + 1024 * 1024
    try:
        with tarfile.open(fileobj=request.stream, mode="r|") as tar:
            summary = summarize_junit(_xml_members(tar), max_bytes=MAX_JUNIT_BYTES)
    except (ReportError, tarfile.TarError) as exc:
        summary = {"error": str(exc)}
    if not _index().record_tests(run_id, index, attempt, g.job_token, summary):
        return _attempt_gone(run_id, index, attempt)
    return jsonify(summary)


def _xml_members(tar: tarfile.TarFile) -> Iterator[tuple[str, IO[bytes]]]:
    for member in tar:
        if member.isfile():
            handle = tar.extractfile(member)
            if handle is not None:
                yield member.name, handle


@jobs.put("/reports/dotenv")
def put_dotenv(run_id: str, index: int, attempt: int) -> Any:
    """The job's dotenv file(s): its variables for the jobs that fetch its artifacts. Invalid
    (GitLab's rules: size, count, names, format): 400 with the reason; the worker fails the job."""
    data = request.stream.read(DOTENV_MAX_BYTES + 1)
    try:
        variables = parse_dotenv(data)
    except ReportError as exc:
        abort(400, f"artifacts:reports:dotenv: {exc}")
    if not _index().record_dotenv(run_id, index, attempt, g.job_token, variables):
        return _attempt_gone(run_id, index, attempt)
    return jsonify(variables=sorted(variables))


# -- dependencies ----------------------------------------------------------------------------------

@jobs.get("/dependencies")
def dependencies(run_id: str, index: int, attempt: int) -> Any:
    """The jobs whose artifacts this job fetches, in order, each ``ok`` (fetch it), ``expired``
    (the job must fail: ``missing_dependency``) or ``none`` (it made none: nothing to do), with
    their dotenv variables."""
    run = _store().get_run(run_id)
    if run is None or index >= len(run.jobs):
        abort(404, f"run {run_id} has no job {index}")
    planned = [Job.from_dict(job.spec) for job in run.jobs]
    names = artifact_sources(planned[index], planned, _store().stages(run_id))
    return jsonify(dependencies=[asdict(source) for source in _index().sources(run_id, names)])


@jobs.get("/dependencies/<int:source>/artifacts.tar")
def dependency_archive(run_id: str, index: int, attempt: int, source: int) -> Any:
    record = _index().artifacts(run_id, source)
    if not record or record.get("expired"):
        abort(404, f"job {source} of run {run_id} has no artifacts (any more)")
    return send_object(record["key"], record["sha256"], f"{record.get('name') or 'artifacts'}.tar")


def send_object(key: str, sha256: str, filename: str, start: int = 0, length: int | None = None,
                mimetype: str = "application/x-tar", allow_redirect: bool = True) -> Any:
    """Stream an object (or a byte range of it) in bounded chunks; a presigned redirect where the
    store offers one and the whole object is asked for."""
    if allow_redirect and start == 0 and length is None:
        url = objects().presigned_url(key, PRESIGNED_SECONDS)
        if url:
            response = redirect(url, code=302)
            response.headers["X-Checksum-Sha256"] = sha256
            return response
    try:
        reader = objects().open(key, start, length)
    except ObjectMissing:
        abort(404, "the object is gone (expired or removed)")
    size = length if length is not None else reader.size - start

    def body() -> Iterator[bytes]:
        with reader:
            yield from reader.iter_chunks(1 << 20)

    response = Response(stream_with_context(body()), mimetype=mimetype, direct_passthrough=True)
    response.headers["Content-Length"] = str(size)
    if sha256:
        response.headers["X-Checksum-Sha256"] = sha256
    response.headers["Content-Disposition"] = _attachment(filename)
    return response


def _attachment(filename: str) -> str:
    from urllib.parse import quote

    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", filename)[:200] or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename[:200])}"


# -- caches ----------------------------------------------------------------------------------------

def _cache_name(run_id: str) -> str:
    """The object of the cache ``?key=`` of the run's repository. A run that is not protected (an
    unprotected ref, a fork, an unregistered repository) may not name a ``-protected`` key, read or
    write (403): the worker never asks for one, so only a job that took the token could, and the
    caches protected runs restore must stay out of its reach."""
    key = request.args.get("key", "")
    if not key or len(key) > MAX_CACHE_KEY or "\x00" in key:
        abort(400, f"`key` must be 1 to {MAX_CACHE_KEY} characters")
    repo, protected = _store().r.hmget(_store()._run(run_id), ["repo", "protected"])
    if protected != "1" and key.rstrip(". ").endswith("-protected"):
        abort(403, "a run of an unprotected ref (or a fork's) cannot read or write the caches of protected refs")
    return cache_object_name(repo or "", key)


@jobs.route("/caches", methods=["GET", "HEAD"])
def get_cache(run_id: str, index: int, attempt: int) -> Any:
    """A cache of the run's repository by key: 404 on a miss (never an error for the job)."""
    name = _cache_name(run_id)
    found = _index().cache_sum(name)
    info = objects().stat(name)
    if info is None or found is None:
        abort(404, "no such cache")
    sha256, size = found
    if info.size != size:
        abort(404, "the cache is being replaced")
    _index().touch_cache(name)
    if request.method == "HEAD":
        response = Response(status=200)
        response.headers["X-Checksum-Sha256"] = sha256
        response.headers["Content-Length"] = str(size)
        return response
    return send_object(name, sha256, "cache.tar")


@jobs.put("/caches")
def put_cache(run_id: str, index: int, attempt: int) -> Any:
    request.max_content_length = archive_limit(_settings()) + 1
    name = _cache_name(run_id)
    try:
        stored = objects().put(name, _body(), max_bytes=archive_limit(_settings()))
    except ObjectTooLarge as exc:
        abort(413, f"the cache archive is over {exc.limit} bytes")
    _index().record_cache(name, stored.sha256, stored.size)
    return jsonify(sha256=stored.sha256, size=stored.size)
