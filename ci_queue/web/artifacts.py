"""Artifacts for people and tools: the archive, its file list, one file out of it.

- ``GET /api/v1/runs/<id>/jobs/<name>``                     the job (with artifacts and test summary)
- ``GET /api/v1/runs/<id>/jobs/<name>/artifacts``           the archive (tar), streamed
- ``GET /api/v1/runs/<id>/jobs/<name>/artifacts.json``      its files with sizes, expiry
- ``GET /api/v1/runs/<id>/jobs/<name>/artifacts/<path>``    one file, streamed from its byte range

The same bearer tokens as the rest of ``/api/v1`` (scope ``read``). The archive is an uncompressed tar whose
manifest says where each file's bytes start, so one file is a ranged read of the stored object,
never an unpack. Job output is untrusted: a file is always sent as an attachment, with
``nosniff`` and a sandboxing CSP, so an HTML artifact cannot run in the app's origin.
"""

from __future__ import annotations

import json
import mimetypes
from typing import Any

from flask import Blueprint, abort, jsonify

from ci_queue.artifacts.archive import Entry
from ci_queue.objects import ObjectMissing
from ci_queue.store.artifacts import ArtifactIndex
from ci_queue.web.api import _job_index_or_404, _store
from ci_queue.web.auth import require_token
from ci_queue.web.transfer import objects, send_object

artifacts_api = Blueprint("artifacts_api", __name__, url_prefix="/api/v1/runs/<run_id>/jobs")
artifacts_api.before_request(require_token)
LISTED = ("path", "type", "size", "mode", "target")  # what artifacts.json shows of an entry


@artifacts_api.get("/<path:name>")
def show_job(run_id: str, name: str) -> Any:
    index = _job_index_or_404(run_id, name)
    job = _store().job(run_id, index)
    if job is None:
        abort(404, f"run {run_id} has no job {name!r}")
    return jsonify(job.to_dict())


def _record_or_404(run_id: str, name: str) -> dict[str, Any]:
    index = _job_index_or_404(run_id, name)
    record = ArtifactIndex(_store()).artifacts(run_id, index)
    if not record:
        abort(404, f"job {name!r} of run {run_id} has no artifacts")
    if record.get("expired"):
        abort(404, f"the artifacts of job {name!r} of run {run_id} expired at {record.get('expire_at')}")
    return record


@artifacts_api.get("/<path:name>/artifacts")
def archive(run_id: str, name: str) -> Any:
    record = _record_or_404(run_id, name)
    return send_object(record["key"], record["sha256"], f"{record.get('name') or 'artifacts'}.tar")


def _manifest(record: dict[str, Any]) -> list[Entry]:
    """The archive's file list, checked here: the worker stored it as it sent it (``PUT
    .../manifest.json``). An entry it could not have written makes the list unusable (500 with
    the reason), never a read outside the archive: every offset and size is bounded by it."""
    try:
        with objects().open(record["manifest"]) as reader:
            items = json.loads(b"".join(reader.iter_chunks(1 << 20)))
    except ObjectMissing:
        abort(404, "the artifacts are gone (expired or removed)")
    except ValueError:
        abort(500, "the stored file list of these artifacts is not JSON")
    try:
        entries = [Entry.from_dict(item) for item in items]
    except (KeyError, TypeError, ValueError) as exc:
        abort(500, f"the stored file list of these artifacts is damaged: {exc}")
    size = int(record.get("size") or 0)
    if any(e.offset is not None and e.offset + e.size > size for e in entries):
        abort(500, "the stored file list of these artifacts points past the end of the archive")
    return entries


@artifacts_api.get("/<path:name>/artifacts.json")
def listing(run_id: str, name: str) -> Any:
    record = _record_or_404(run_id, name)
    files = [{k: v for k, v in entry.to_dict().items() if k in LISTED and v is not None}
             for entry in _manifest(record)]
    return jsonify(name=record.get("name"), attempt=record.get("attempt"), size=record.get("size"),
                   sha256=record.get("sha256"), expire_at=record.get("expire_at"), files=files)


@artifacts_api.get("/<path:name>/artifacts/<path:path>")
def one_file(run_id: str, name: str, path: str) -> Any:
    record = _record_or_404(run_id, name)
    entry = next((e for e in _manifest(record) if e.path == path.strip("/")), None)
    if entry is None or entry.type != "file" or entry.offset is None:
        abort(404, f"the artifacts of job {name!r} have no file {path!r}")
    mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
    response = send_object(record["key"], "", path.rsplit("/", 1)[-1], start=entry.offset,
                           length=entry.size, mimetype=mimetype, allow_redirect=False)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return response
