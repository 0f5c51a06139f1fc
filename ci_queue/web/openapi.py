"""The OpenAPI 3.1 description of the runs API (``/api/v1``) and the webhook receivers, served at
``/api/v1/openapi.json`` (open, no token: it describes the API, it holds nothing of it).

Written by hand as a dict (no generator to keep in step with Flask). ``tests/web/test_openapi.py``
keeps it honest: every ``/api/v1`` rule of the app is a path here and every path here is a rule,
and real responses of every route are validated against these schemas (JSON Schema 2020-12, the
dialect of OpenAPI 3.1).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from ci_queue.audit import FIELDS as AUDIT_FIELDS
from ci_queue.store.core import JOB_STATUSES, RUN_STATUSES
from ci_queue.tokens import SCOPES
from ci_queue.web.api import EVENTS as API_EVENTS
from ci_queue.web.api import MAX_LOG_PAGE, MAX_PAGE
from ci_queue.web.audit import MAX_PAGE as MAX_AUDIT_PAGE
from ci_queue.web.auth import ENDPOINT_SCOPES

openapi = Blueprint("openapi", __name__)
# endpoints under /api/v1 that need no token (every other one does: ``api.require_token``)
OPEN_ENDPOINTS = frozenset({"openapi.openapi_json"})

EVENTS = list(API_EVENTS)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


TIME = {"type": "string", "format": "date-time", "description": "UTC, ISO 8601 with milliseconds and `Z`"}
TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
STATUS_URL = {"type": "string", "format": "uri", "description": "The run in this API (CIQ_PUBLIC_URL when set)"}
WEB_URL = {"type": "string", "format": "uri", "description": "The run's web page, for people"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


UNAVAILABLE = {**_json(_ref("Unavailable"), "A dependency is away (Redis or the broker unreachable, too slow, "
                                             "loading, read-only or out of memory): come back after Retry-After"),
               "headers": {"Retry-After": {"schema": {"type": "string", "pattern": r"^\d+$"},
                                           "description": "Seconds to wait before trying again"}}}
UNAUTHORIZED = {**_error("Missing or invalid API token"),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                                 "description": 'Bearer realm="ci-queue"'}}}
FORBIDDEN = _json({"$ref": "#/components/schemas/Forbidden"},
                  "The token lacks the operation's scope (`missing_scope` names it), or the request is one the "
                  "token may not make (a repository outside its `repos`, an unregistered repository without "
                  "`admin`, a clone URL the clone policy refuses): the message says how to allow it")
NOT_FOUND = _error("No such run (or job), or a run of a repository the token is not limited to")
RUN_ID = {"name": "run_id", "in": "path", "required": True, "description": "A run id (letters, digits, `_`, `-`)",
          "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
JOB_NAME = {"name": "name", "in": "path", "required": True,
            "description": "The job's name, URL-encoded (it may hold `/`, spaces, brackets)",
            "schema": {"type": "string"}}
OFFSET = {"name": "offset", "in": "query", "required": False,
          "description": "Continue after this position: the `X-Next-Offset` (or `next_offset`) of a previous read",
          "schema": {"type": "string", "pattern": r"^(-|\d+(-\d+)?)$"}}
ATTEMPT = {"name": "attempt", "in": "query", "required": False, "description": "Only the lines of this attempt",
           "schema": {"type": "string", "pattern": r"^\d+$"}}

IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Makes a retry safe (IETF httpapi draft): the same key with the same token and body within "
                   "a day answers the run the first request made (200) instead of making another. The key is "
                   "written with the run in one atomic step. 1 to 255 visible ASCII characters, a UUID say; "
                   "quotes around it are ignored.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 257},
}

RUN_FIELDS: dict[str, Any] = {
    "id": {"type": "string"},
    "status": {"enum": list(RUN_STATUSES)},
    "repo": {"type": "string"},
    "ref": {"type": "string"},
    "sha": {"type": "string", "pattern": "^([0-9a-f]{40}|[0-9a-f]{64})?$",
            "description": "Empty until the run is planned when the trigger gave none"},
    "event": {"enum": EVENTS},
    "created_at": TIME,
    "started_at": TIME_OR_NULL,
    "finished_at": TIME_OR_NULL,
    "error": _nullable("string", description="Why the run could not be planned (FILE:LINE:COL lines)"),
    "protected": {"type": "boolean", "description": "A protected branch or tag of a registered repository "
                                                     "(CI_COMMIT_REF_PROTECTED), decided by the server"},
    "fork": {"type": "boolean", "description": "A merge request from another project: no secrets, no protected "
                                                "caches"},
    "approved_by": _nullable("string", description="Who approved a fork's run (`waiting_approval` -> `queued`)"),
    "approved_at": TIME_OR_NULL,
}
RUN_REQUIRED = list(RUN_FIELDS)
DUPLICATE = {"const": True, "description": "Present on the answer to a repeated delivery id (nothing was started)"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {"type": "string", "minLength": 1}},
    },
    "Forbidden": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {
            "error": {"type": "string", "minLength": 1},
            "missing_scope": {"enum": list(SCOPES), "description": "The scope the token lacks (absent when "
                                                                 "the refusal is about the request itself)"},
        },
    },
    "AuditRecord": {
        "type": "object", "required": ["id", *AUDIT_FIELDS], "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": r"^\d+-\d+$", "description": "The record's stream id (ordered)"},
            **{name: {"type": "string"} for name in AUDIT_FIELDS},
            "time": TIME,
            "token": {"type": "string", "description": "The token's name (`CIQ_API_TOKENS#N` for those of "
                                                       "CIQ_API_TOKENS); `webhook:<provider>` for webhook runs"},
            "source": {"type": "string", "description": "The client's address as the web server saw it"},
            "action": {"type": "string", "description": "create_run, cancel_run, retry_run, play_job, "
                                                        "approve_run, webhook_run, ..."},
            "status": {"type": "string", "pattern": r"^\d{3}$", "description": "The HTTP status answered"},
        },
    },
    "AuditPage": {
        "type": "object", "required": ["entries", "next"], "additionalProperties": False,
        "properties": {
            "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditRecord"},
                        "description": "Newest first"},
            "next": _nullable("string", description="Pass as `before` for older records; null: no more"),
        },
    },
    "Unavailable": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {
            "error": {"type": "string", "minLength": 1},
            "run_id": {"type": "string", "description": "The run this request was making, when it was making one: "
                                                       "it may exist (the write may have landed late). Repeat the "
                                                       "request with the same Idempotency-Key (or delivery id) to "
                                                       "get it, never a second one"},
        },
    },
    "Step": {
        "type": "object", "required": ["name", "status"],
        "properties": {
            "name": {"type": "string", "description": "checkout, before_script, script, after_script, ..."},
            "status": {"type": "string", "description": "success | failed | timeout | canceled"},
            "exit_code": _nullable("integer"),
            "started_at": TIME_OR_NULL,
            "finished_at": TIME_OR_NULL,
            "duration": {"type": "number", "minimum": 0},
        },
    },
    "Attempt": {
        "type": "object", "required": ["attempt", "status"],
        "description": "One attempt of a job; every attempt is kept (retries are new attempts)",
        "properties": {
            "attempt": {"type": "integer", "minimum": 1},
            "worker": _nullable("string"),
            "status": {"type": "string"},
            "failure_reason": _nullable("string", description="script_failure, timeout, runner_system_failure, "
                                                              "canceled, stuck, ..."),
            "exit_code": _nullable("integer"),
            "started_at": TIME_OR_NULL,
            "finished_at": TIME_OR_NULL,
            "duration": _nullable("number", minimum=0),
            "steps": {"type": "array", "items": _ref("Step")},
            "reason": _nullable("string", description="Why, in words"),
            "retried": {"type": "string", "description": "Why a next attempt was made: system | yaml | manual"},
        },
    },
    "Job": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "stage", "status", "when", "allow_failure", "attempt", "worker", "exit_code",
                     "failure_reason", "queue", "started_at", "finished_at", "attempts", "steps", "secrets",
                     "refused_secrets"],
        "properties": {
            "name": {"type": "string"},
            "stage": {"type": "string"},
            "status": {"enum": list(JOB_STATUSES)},
            "when": {"type": "string", "description": "on_success | on_failure | always | manual | delayed"},
            "allow_failure": {"oneOf": [
                {"type": "boolean"},
                {"type": "object", "required": ["exit_codes"],
                 "properties": {"exit_codes": {"type": "array", "items": {"type": "integer"}}}}]},
            "attempt": {"type": "integer", "minimum": 1, "description": "The current attempt"},
            "worker": _nullable("string"),
            "exit_code": _nullable("integer"),
            "failure_reason": _nullable("string"),
            "queue": _nullable("string", description="The Celery queue of its tags"),
            "started_at": TIME_OR_NULL,
            "finished_at": TIME_OR_NULL,
            "attempts": {"type": "array", "items": _ref("Attempt")},
            "steps": {"type": "array", "items": _ref("Step"), "description": "The steps of the latest attempt"},
            "artifacts": {"oneOf": [{"type": "null"}, _ref("ArtifactsSummary")]},
            "test_summary": {"oneOf": [{"type": "null"}, _ref("TestSummary")]},
            "secrets": {"type": "array", "items": {"type": "string"},
                        "description": "The secrets (names) it was granted; values never leave the worker"},
            "refused_secrets": {"type": "array", "items": _ref("RefusedSecret"),
                                "description": "Secrets it names and is not granted: the job fails with "
                                               "`missing_secret`"},
        },
    },
    "RefusedSecret": {
        "type": "object", "required": ["name", "reason", "message"], "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "reason": {"enum": ["not_granted", "ref_not_protected", "fork", "environment_out_of_scope"]},
            "message": {"type": "string"},
        },
    },
    "ArtifactsSummary": {
        "type": "object", "required": ["attempt", "name", "size", "files", "expire_at", "expired"],
        "description": "The newest artifacts of the job (`artifacts:`), kept in the object store",
        "properties": {
            "attempt": {"type": "integer", "minimum": 1, "description": "The attempt that made them"},
            "name": {"type": "string", "description": "`artifacts:name` (the download's name, without .tar)"},
            "size": {"type": "integer", "minimum": 0, "description": "Bytes of the archive"},
            "files": {"type": "integer", "minimum": 0},
            "expire_at": TIME_OR_NULL,
            "expired": {"type": "boolean", "description": "The objects were removed (`expire_in` passed)"},
        },
    },
    "TestSummary": {
        "type": "object", "description": "The job's `artifacts:reports:junit`, parsed on upload; `error` "
                                         "instead of the counts when the report could not be read",
        "properties": {
            "attempt": {"type": "integer", "minimum": 1},
            "total": {"type": "integer", "minimum": 0},
            "passed": {"type": "integer", "minimum": 0},
            "failed": {"type": "integer", "minimum": 0},
            "errors": {"type": "integer", "minimum": 0},
            "skipped": {"type": "integer", "minimum": 0},
            "duration": {"type": "number"},
            "failing": {"type": "array", "items": {"type": "object"},
                        "description": "The failing tests (at most 100): suite, classname, name, kind, message"},
            "failing_truncated": {"type": "boolean"},
            "error": {"type": "string"},
        },
    },
    "ArtifactsListing": {
        "type": "object", "required": ["name", "attempt", "size", "sha256", "expire_at", "files"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"}, "attempt": {"type": "integer"}, "size": {"type": "integer"},
            "sha256": {"type": "string"}, "expire_at": TIME_OR_NULL,
            "files": {"type": "array", "items": {
                "type": "object", "required": ["path", "type"],
                "properties": {"path": {"type": "string"}, "type": {"enum": ["file", "dir", "symlink"]},
                               "size": {"type": "integer"}, "mode": {"type": "integer"},
                               "target": {"type": "string", "description": "A symlink's target"}}}},
        },
    },
    "RunSummary": {
        "type": "object", "additionalProperties": False, "required": RUN_REQUIRED, "properties": RUN_FIELDS,
    },
    "Run": {
        "type": "object", "additionalProperties": False, "required": [*RUN_REQUIRED, "jobs"],
        "properties": {**RUN_FIELDS, "jobs": {"type": "array", "items": _ref("Job")}},
    },
    "RunList": {
        "type": "object", "required": ["runs", "next_cursor"], "additionalProperties": False,
        "properties": {
            "runs": {"type": "array", "items": _ref("RunSummary"), "description": "Newest first"},
            "next_cursor": _nullable("number", description="Pass as `cursor` for the next page; null: last page"),
        },
    },
    "TriggerRequest": {
        "type": "object", "required": ["ref"],
        "anyOf": [{"required": ["clone_url"]}, {"required": ["repo"]}],
        "description": "Without `admin`, a registered repository whose `clone_url` the registry sets: named by "
                       "`repo` (then `clone_url` may be left out) or by that clone URL. With `admin`, also any "
                       "clone URL the clone policy lets through (CIQ_ALLOW_LOCAL_REPOS, CIQ_CLONE_ALLOW_HOSTS).",
        "properties": {
            "clone_url": {"type": "string", "minLength": 1,
                          "description": "https://, ssh (also user@host:path) or git://; http:// and file:// only "
                                         "as the settings allow"},
            "ref": {"type": "string", "minLength": 1, "description": "A branch, or a tag for `event: tag`"},
            "repo": {"type": "string", "description": "Default: the last part of the clone URL"},
            "sha": {"type": "string", "pattern": "^([0-9a-fA-F]{40}|[0-9a-fA-F]{64})?$",
                    "description": "Default: the head of `ref` when the run is planned"},
            "event": {"enum": EVENTS, "default": "push"},
            "variables": {"type": "object", "additionalProperties": {"type": "string"}},
            "pipeline": {"type": "string", "description": "The pipeline file, if not the default"},
            "default_branch": {"type": "string"},
            "commit_message": {"type": "string"},
        },
    },
    "TriggerResponse": {
        "type": "object", "required": ["id", "run_id", "status", "status_url", "web_url"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"}, "run_id": {"type": "string"},
            "status": {"enum": list(RUN_STATUSES), "description": "`queued` for a new run; a repeated "
                                                                   "Idempotency-Key gets its run's status now"},
            "status_url": STATUS_URL, "web_url": WEB_URL,
        },
    },
    "CancelResponse": {
        "type": "object", "required": ["id", "status", "stopping"], "additionalProperties": False,
        "properties": {"id": {"type": "string"}, "status": {"enum": list(RUN_STATUSES)},
                       "stopping": {"type": "integer", "minimum": 0, "description": "Jobs still stopping"}},
    },
    "ApproveResponse": {
        "type": "object", "required": ["id", "status", "approved_by"], "additionalProperties": False,
        "properties": {"id": {"type": "string"}, "status": {"const": "queued"},
                       "approved_by": {"type": "string", "description": "The approving token's name"}},
    },
    "RetryResponse": {
        "type": "object", "required": ["id", "status", "retried", "ready"], "additionalProperties": False,
        "properties": {"id": {"type": "string"}, "status": {"enum": list(RUN_STATUSES)},
                       "retried": {"type": "array", "items": {"type": "string"}},
                       "ready": {"type": "array", "items": {"type": "string"}}},
    },
    "PlayResponse": {
        "type": "object", "required": ["id", "job", "attempt", "status"], "additionalProperties": False,
        "properties": {"id": {"type": "string"}, "job": {"type": "string"},
                       "attempt": {"type": "integer", "minimum": 1}, "status": {"const": "pending"}},
    },
    "LogLine": {
        "type": "object", "required": ["id", "text"],
        "properties": {
            "id": {"type": "string", "pattern": r"^\d+-\d+$", "description": "The line's stream position"},
            "attempt": {"type": "string"}, "step": {"type": "string"}, "n": {"type": "string"},
            "stream": {"type": "string", "description": "out | err | system"},
            "ts": {"type": "string"}, "text": {"type": "string"},
        },
    },
    "LogPage": {
        "type": "object", "required": ["lines", "next_offset"], "additionalProperties": False,
        "properties": {"lines": {"type": "array", "items": _ref("LogLine")},
                       "next_offset": {"type": "string"}},
    },
    "WebhookAccepted": {
        "type": "object", "required": ["run_id", "status_url", "web_url"],
        "properties": {"run_id": {"type": "string"}, "status_url": STATUS_URL, "web_url": WEB_URL,
                       "status": {"enum": ["queued", "waiting_approval"],
                                  "description": "`waiting_approval`: a merge request from a fork, waiting for "
                                                 "`POST /api/v1/runs/{run_id}/approve`"},
                       "duplicate": DUPLICATE},
    },
    "WebhookIgnored": {
        "type": "object", "required": ["ignored"],
        "properties": {"ignored": {"type": "string", "description": "Why no run was started"},
                       "duplicate": DUPLICATE},
    },
    "WebhookPong": {
        "type": "object", "required": ["pong"], "properties": {"pong": {"const": True}},
    },
    # -- the farm (issue #12) --
    "Worker": {
        "type": "object", "additionalProperties": False,
        "required": ["name", "host", "tags", "queues", "concurrency", "protected", "started_at", "last_heartbeat",
                     "seconds_since_heartbeat", "state", "draining", "running"],
        "properties": {
            "name": {"type": "string", "description": "NAME@host, as the jobs it runs record it"},
            "host": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "queues": {"type": "array", "items": {"type": "string"}, "description": "The queues it consumes"},
            "concurrency": {"type": "integer", "minimum": 1, "description": "Jobs it runs at once"},
            "protected": {"type": "boolean", "description": "A `--protected` worker (protected jobs only)"},
            "started_at": TIME_OR_NULL,
            "last_heartbeat": TIME,
            "seconds_since_heartbeat": {"type": "number", "minimum": 0},
            "state": {"enum": ["online", "draining", "stopped", "lost"],
                      "description": "`draining`: told to stop, lets its running jobs end; `lost`: no heartbeat "
                                     "for 30 s (killed, host down, cut off from Redis)"},
            "draining": {"type": "boolean"},
            "running": {"type": "array", "items": {
                "type": "object", "required": ["run_id", "job", "attempt", "started_at"],
                "additionalProperties": False,
                "properties": {"run_id": {"type": "string"}, "job": {"type": "string"},
                               "attempt": {"type": "integer", "minimum": 1}, "started_at": TIME_OR_NULL}}},
        },
    },
    "WorkerList": {
        "type": "object", "required": ["workers"], "additionalProperties": False,
        "properties": {"workers": {"type": "array", "items": {"$ref": "#/components/schemas/Worker"}}},
    },
}


def _webhook(provider: str, headers: list[tuple[str, bool, str]], summary: str) -> dict[str, Any]:
    return {"post": {
        "tags": ["webhooks"], "operationId": f"webhook_{provider}", "summary": summary, "security": [],
        "description": "Authenticity is checked first, on the raw bytes, in constant time; a repository "
                       "that is not registered in the repositories file is refused. A repeated delivery id "
                       "(remembered for a day, written with the run it starts) gets the first answer again "
                       "and starts nothing; a delivery answered 503 and redelivered starts one run at most.",
        "parameters": [{"name": name, "in": "header", "required": required, "description": text,
                        "schema": {"type": "string"}} for name, required, text in headers],
        "requestBody": {"required": True, "description": "The provider's event payload (at most "
                        "`CIQ_MAX_WEBHOOK_BYTES`, default 25 MiB)",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
        "responses": {
            "202": _json({"anyOf": [_ref("WebhookAccepted"), _ref("WebhookIgnored")]},
                         "A run was queued (or waits for approval: a fork's merge request), or the event was "
                         "ignored (branch deletion, closed pull request, unknown event, a fork's merge request "
                         "under `fork_pull_requests: never`, ...); a repeated delivery gets the first answer "
                         "with `duplicate: true`"),
            "200": _json(_ref("WebhookPong"), "A ping"),
            "400": _error("Not JSON, not the expected shape, or a hostile name"),
            "401": _error("Missing or wrong signature / token, stale timestamp, or no secret configured"),
            "403": _error("The payload's clone URL is refused by the clone policy (a private or loopback host "
                          "not in CIQ_CLONE_ALLOW_HOSTS, a local path...): the message says how to allow it"),
            "404": _error("The repository is not registered (or the provider is unknown)"),
            "413": _error("Body larger than CIQ_MAX_WEBHOOK_BYTES"),
            "503": UNAVAILABLE,
        },
    }}


WEBHOOKS = {
    "/webhooks/github": _webhook("github", [
        ("X-GitHub-Event", True, "push | pull_request | ping | create | delete | ..."),
        ("X-GitHub-Delivery", True, "The delivery id (replay protection)"),
        ("X-Hub-Signature-256", True, "`sha256=` + HMAC-SHA256 hex of the body with the repository's secret"),
        ("X-Hub-Signature", False, "Legacy `sha1=` HMAC; only when explicitly enabled"),
    ], "A GitHub (or GitHub Enterprise) webhook"),
    "/webhooks/gitlab": _webhook("gitlab", [
        ("X-Gitlab-Event", True, "Push Hook | Tag Push Hook | Merge Request Hook | System Hook | ..."),
        ("X-Gitlab-Token", True, "The repository's secret itself"),
        ("Idempotency-Key", False, "The delivery id (replay protection)"),
        ("X-Gitlab-Event-UUID", False, "The delivery id when Idempotency-Key is absent"),
    ], "A GitLab project or system hook"),
    "/webhooks/gitea": _webhook("gitea", [
        ("X-Gitea-Event", True, "push | create | pull_request | ..."),
        ("X-Gitea-Delivery", True, "The delivery id (replay protection)"),
        ("X-Gitea-Signature", False, "HMAC-SHA256 hex of the body, no prefix (or X-Forgejo-Signature)"),
        ("X-Forgejo-Signature", False, "Forgejo's name of the same signature"),
    ], "A Gitea or Forgejo webhook"),
    "/webhooks/generic": _webhook("generic", [
        ("X-CIQ-Timestamp", True, "Unix time of the request; refused when more than 5 minutes away"),
        ("X-CIQ-Signature", True, "`sha256=` (optional) + HMAC-SHA256 hex of `<timestamp>.<body>` with the secret"),
        ("X-CIQ-Delivery", False, "The delivery id (replay protection)"),
    ], "A generic signed hook (any system that can sign a request)"),
}


def _op(operation_id: str, summary: str, responses: dict[str, Any], parameters: list[Any] | None = None,
        *, endpoint: str = "", tag: str = "runs", **extra: Any) -> dict[str, Any]:
    """A bearer operation; its ``security`` names the scope its endpoint (default ``api.<operation_id>``)
    needs, as ``ci_queue.web.auth.ENDPOINT_SCOPES`` says."""
    scope = ENDPOINT_SCOPES[endpoint or f"api.{operation_id}"]
    responses = {**responses, "401": UNAUTHORIZED, "403": FORBIDDEN, "503": UNAVAILABLE}
    return {"operationId": operation_id, "summary": summary, "tags": [tag], "parameters": parameters or [],
            "security": [{"bearerAuth": [scope]}], "responses": responses, **extra}


PATHS: dict[str, Any] = {
    "/api/v1/openapi.json": {"get": {
        "operationId": "openapi", "summary": "This description", "tags": ["meta"], "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {
            "schema": {"type": "object", "required": ["openapi", "paths"]}}}}},
    }},
    "/api/v1/runs": {
        "post": _op("trigger_run", "Trigger a run (cloning and planning happen on a worker)", {
            "202": _json(_ref("TriggerResponse"), "The run is queued"),
            "200": _json(_ref("TriggerResponse"), "A repeated Idempotency-Key: the run its first request made, "
                                                  "as it is now; nothing new was made"),
            "400": _error("Invalid request (the message says which field), or an invalid Idempotency-Key"),
            "413": _error("Body larger than 1 MiB"),
            "422": _error("The Idempotency-Key was used for a different request (or its run was deleted): "
                          "a new request needs a new key"),
        }, [IDEMPOTENCY_KEY], endpoint="api.create_run",
            requestBody={"required": True, "content": {"application/json": {"schema": _ref("TriggerRequest")}}}),
        "get": _op("list_runs", "Runs, newest first, filtered and paged", {
            "200": _json(_ref("RunList"), "A page of runs (without their jobs)"),
            "400": _error("Invalid status, limit or cursor"),
        }, [
            {"name": "repo", "in": "query", "schema": {"type": "string"}},
            {"name": "ref", "in": "query", "schema": {"type": "string"}},
            {"name": "status", "in": "query", "schema": {"enum": list(RUN_STATUSES)}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                                                         "default": 20}},
            {"name": "cursor", "in": "query", "schema": {"type": "number"},
             "description": "The `next_cursor` of the previous page"},
        ]),
    },
    "/api/v1/runs/{run_id}": {
        "get": _op("show_run", "A run with its jobs, their attempts and steps", {
            "200": _json(_ref("Run"), "The run"), "404": NOT_FOUND}, [RUN_ID]),
    },
    "/api/v1/runs/{run_id}/cancel": {
        "post": _op("cancel_run", "Cancel a run: queued jobs never start, running ones are stopped (a run "
                                  "waiting for approval ends as canceled)", {
            "200": _json(_ref("CancelResponse"), "Canceled (or canceling while jobs stop)"),
            "404": NOT_FOUND}, [RUN_ID]),
    },
    "/api/v1/runs/{run_id}/approve": {
        "post": _op("approve_run", "Approve a run waiting for approval (a merge request from a fork): it is "
                                   "planned and run, still without secrets or protected caches", {
            "202": _json(_ref("ApproveResponse"), "Approved; the run is queued for planning"),
            "404": NOT_FOUND,
            "409": _error("The run is not waiting for approval (approved already, canceled, or not a fork's)"),
        }, [RUN_ID]),
    },
    "/api/v1/runs/{run_id}/retry": {
        "post": _op("retry_run", "Retry the failed and canceled jobs (GitLab's \"retry failed jobs\")", {
            "202": _json(_ref("RetryResponse"), "Retried; `ready` jobs were sent to the workers"),
            "404": NOT_FOUND,
            "409": _error("Nothing to retry, the run is not planned yet (queued, waiting for approval), or "
                          "still being canceled"),
        }, [RUN_ID]),
    },
    "/api/v1/runs/{run_id}/jobs/{name}/play": {
        "post": _op("play_job", "Start a manual job", {
            "202": _json(_ref("PlayResponse"), "The job was sent to the workers"),
            "404": NOT_FOUND, "409": _error("The job is not manual (or not waiting to be played)"),
        }, [RUN_ID, JOB_NAME]),
    },
    "/api/v1/runs/{run_id}/jobs/{name}": {
        "get": _op("show_job", "One job: its attempts, steps, artifacts and test summary", {
            "200": _json(_ref("Job"), "The job"), "404": NOT_FOUND}, [RUN_ID, JOB_NAME],
            endpoint="artifacts_api.show_job"),
    },
    "/api/v1/runs/{run_id}/jobs/{name}/artifacts": {
        "get": _op("job_artifacts", "The job's artifacts: an uncompressed tar, streamed", {
            "200": {"description": "The archive", "headers": {"X-Checksum-Sha256": {
                "schema": {"type": "string"}, "description": "SHA-256 of the archive"}},
                    "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}},
            "302": {"description": "A presigned URL of the S3 store to fetch it from"},
            "404": _error("The run, the job or its artifacts do not exist, or they expired"),
        }, [RUN_ID, JOB_NAME], endpoint="artifacts_api.archive"),
    },
    "/api/v1/runs/{run_id}/jobs/{name}/artifacts.json": {
        "get": _op("job_artifacts_listing", "The files of the job's artifacts, with sizes, and their expiry", {
            "200": _json(_ref("ArtifactsListing"), "The listing"),
            "404": _error("The run, the job or its artifacts do not exist, or they expired"),
        }, [RUN_ID, JOB_NAME], endpoint="artifacts_api.listing"),
    },
    "/api/v1/runs/{run_id}/jobs/{name}/artifacts/{path}": {
        "get": _op("job_artifact_file", "One file of the job's artifacts, streamed (always as an attachment)", {
            "200": {"description": "The file; its content type is guessed from its name",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "404": _error("No such file in the artifacts (or they expired)"),
        }, [RUN_ID, JOB_NAME, {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
                               "description": "The file's path inside the artifacts"}],
            endpoint="artifacts_api.one_file"),
    },
    "/api/v1/runs/{run_id}/jobs/{name}/log": {
        "get": _op("job_log", "A job's log: text (default) or JSON lines, read incrementally with `offset`", {
            "200": {"description": "The lines after `offset`",
                    "headers": {"X-Next-Offset": {"schema": {"type": "string"},
                                                  "description": "Pass as `offset` to read what follows (text)"}},
                    "content": {"text/plain": {"schema": {"type": "string"}},
                                "application/json": {"schema": _ref("LogPage")}}},
            "400": _error("Invalid offset, attempt or limit"), "404": NOT_FOUND,
        }, [RUN_ID, JOB_NAME, OFFSET, ATTEMPT,
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LOG_PAGE,
                                                         "default": MAX_LOG_PAGE},
             "description": "Log entries read at most (lines of other attempts count too)"},
            {"name": "format", "in": "query", "schema": {"enum": ["text", "json"]},
             "description": "`json` for one object per line with its fields"}]),
    },
    "/api/v1/runs/{run_id}/jobs/{name}/log/stream": {
        "get": _op("job_log_stream", "A job's log live, as Server-Sent Events", {
            "200": {"description": "`line` events (id: the stream position, data: the line's fields as JSON), "
                                   "then one `end` event (data: {\"status\": ...}) when the job is over",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "400": _error("Invalid offset or attempt"), "404": NOT_FOUND,
        }, [RUN_ID, JOB_NAME, OFFSET, ATTEMPT,
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"},
             "description": "Resume after this event (browsers send it on reconnect)"}]),
    },
    "/api/v1/audit": {
        "get": _op("read_audit", "The audit log: every state-changing API call and webhook run, newest first", {
            "200": _json(_ref("AuditPage"), "A page of records"),
            "400": _error("Invalid before, since or limit"),
        }, [
            {"name": "before", "in": "query", "schema": {"type": "string", "pattern": r"^\d+(-\d+)?$"},
             "description": "Records older than this id: the `next` of the previous page"},
            {"name": "since", "in": "query", "schema": {"type": "string"},
             "description": "Records from this time on (ISO 8601 with a time zone) or from this record id on"},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_AUDIT_PAGE,
                                                         "default": 50}},
            {"name": "action", "in": "query", "schema": {"type": "string"}, "description": "e.g. cancel_run"},
            {"name": "token", "in": "query", "schema": {"type": "string"}, "description": "A token's name"},
            {"name": "run_id", "in": "query", "schema": {"type": "string"}},
        ], endpoint="audit.read_audit", tag="audit"),
    },
    # -- the farm (issue #12) --
    "/api/v1/workers": {
        "get": _op("list_workers", "Every worker seen in the last hour: what it serves, what it runs now, its "
                                   "last heartbeat", {"200": _json(_ref("WorkerList"), "The workers, by name")},
                   endpoint="farm_api.list_workers_route", tag="farm"),
    },
}


JOB_PATH = "/api/v1/jobs/{run_id}/{index}/{attempt}"
JOB_PARAMETERS = [
    RUN_ID,
    {"name": "index", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0},
     "description": "The job's index in the run"},
    {"name": "attempt", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}},
]
TAR = {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}}
STORED = {"type": "object", "required": ["sha256", "size"],
          "properties": {"sha256": {"type": "string"}, "size": {"type": "integer"}}}


def _job_op(operation_id: str, summary: str, responses: dict[str, Any], parameters: list[Any] | None = None,
            **extra: Any) -> dict[str, Any]:
    """An operation of the workers' API: the job token instead of a bearer token."""
    responses = {**responses, "401": _error("No Job-Token header"),
                 "403": _error("The token is not the running attempt's (it ended or was taken over); for caches, "
                               "also a `-protected` key asked by a run that is not on a protected ref"),
                 "503": UNAVAILABLE}
    return {"operationId": operation_id, "summary": summary, "tags": ["workers"], "security": [{"jobToken": []}],
            "parameters": [*JOB_PARAMETERS, *(parameters or [])], "responses": responses, **extra}


CACHE_KEY = {"name": "key", "in": "query", "required": True, "schema": {"type": "string"},
             "description": "The cache key (with its -protected / -non_protected suffix)"}
WORKER_PATHS: dict[str, Any] = {
    f"{JOB_PATH}/artifacts.tar": {"put": _job_op("upload_artifacts", "Upload the attempt's artifacts archive", {
        "200": _json(STORED, "Stored; the worker compares the checksum with what it sent"),
        "413": _error("Over the archive limit (CIQ_MAX_ARTIFACT_BYTES and tar's overhead)")},
        requestBody={"required": True, "content": TAR})},
    f"{JOB_PATH}/manifest.json": {"put": _job_op("upload_manifest", "Upload the archive's file list (entries: "
                                                 "path, type, size, mode, mtime, offset, target), kept as sent", {
        "200": _json(STORED, "Stored"), "413": _error("Over 256 MiB")},
        requestBody={"required": True, "content": {"application/json": {"schema": {"type": "array"}}}})},
    f"{JOB_PATH}/artifacts": {"post": _job_op("commit_artifacts", "Record the uploaded archive and file list as "
                                              "the attempt's artifacts", {
        "200": _json({"type": "object"}, "The artifacts record"),
        "400": _error("Invalid body or expire_in"),
        "409": _error("No archive or file list of the given size was uploaded")},
        requestBody={"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["name", "sha256", "size", "files", "manifest_size"],
            "properties": {"name": {"type": "string"}, "expire_in": {"type": ["string", "null"]},
                           "sha256": {"type": "string"}, "size": {"type": "integer"},
                           "files": {"type": "integer"}, "manifest_size": {"type": "integer"}}}}}})},
    f"{JOB_PATH}/reports/junit": {"put": _job_op("upload_junit", "The job's `reports:junit`: a tar of JUnit XML "
                                                 "files, summarized on the way in", {
        "200": _json(_ref("TestSummary"), "The summary (or the reason it could not be read)")},
        requestBody={"required": True, "content": TAR})},
    f"{JOB_PATH}/reports/dotenv": {"put": _job_op("upload_dotenv", "The job's `reports:dotenv` file(s)", {
        "200": _json({"type": "object", "required": ["variables"]}, "The names of its variables"),
        "400": _error("Invalid (GitLab's rules: size, count, names, format)")},
        requestBody={"required": True, "content": {"text/plain": {"schema": {"type": "string"}}}})},
    f"{JOB_PATH}/dependencies": {"get": _job_op("job_dependencies", "The jobs whose artifacts this job fetches, "
                                                "their state and dotenv variables", {
        "200": _json({"type": "object", "required": ["dependencies"]}, "In order")})},
    f"{JOB_PATH}/dependencies/{{source}}/artifacts.tar": {"get": _job_op(
        "dependency_artifacts", "The artifacts archive of a job of the same run", {
            "200": {"description": "The archive", "content": TAR},
            "302": {"description": "A presigned URL of the S3 store"}, "404": NOT_FOUND},
        [{"name": "source", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}])},
    f"{JOB_PATH}/caches": {
        "get": _job_op("get_cache", "A cache of the run's repository", {
            "200": {"description": "The cache archive", "content": TAR},
            "302": {"description": "A presigned URL of the S3 store"},
            "404": _error("A miss")}, [CACHE_KEY]),
        "put": _job_op("put_cache", "Store a cache of the run's repository", {
            "200": _json(STORED, "Stored"), "413": _error("Over the archive limit")}, [CACHE_KEY],
            requestBody={"required": True, "content": TAR}),
    },
}


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "ci-queue", "version": "1",
        "description": "The runs API of ci-queue and its webhook receivers. Every `/api/v1` route but this "
                       "description needs `Authorization: Bearer <token>` with the scope its `security` names "
                       "(read, trigger, operate; admin has every scope): a token of `CIQ_API_TOKENS` (every "
                       "scope) or of the tokens file (`CIQ_TOKENS_FILE`, `ci-queue token create`). Errors are "
                       "JSON `{\"error\": message}`; 503 with `Retry-After` means a dependency (Redis, the "
                       "broker) is away for now: try again.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearerAuth": []}],
    "tags": [{"name": "runs"}, {"name": "webhooks"}, {"name": "meta"}, {"name": "audit"},
             {"name": "farm", "description": "The build hosts: workers, what they serve and run"},
             {"name": "workers", "description": "What workers use for a running job's artifacts and caches"}],
    "paths": {**PATHS, **WORKER_PATHS, **WEBHOOKS},
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                           "description": "An API token; an operation's `security` lists the "
                                                          "scope it needs (read, trigger, operate, admin: admin "
                                                          "has every scope)"},
                            "jobToken": {"type": "apiKey", "in": "header", "name": "Job-Token",
                                         "description": "The running attempt's job token (workers only)"}},
    },
}


def spec() -> dict[str, Any]:
    return SPEC


@openapi.get("/api/v1/openapi.json")
def openapi_json() -> Any:
    return jsonify(SPEC)
