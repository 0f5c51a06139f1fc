"""``GET /api/v1/workers``: the farm as the API shows it (``ci_queue.farm``), for the ``/workers``
page and ``ci-queue workers``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from ci_queue.farm import list_workers
from ci_queue.web.api import _store
from ci_queue.web.auth import require_token

farm_api = Blueprint("farm_api", __name__, url_prefix="/api/v1")
farm_api.before_request(require_token)


@farm_api.get("/workers")
def list_workers_route() -> Any:
    """Every worker that beat within the last hour: what it serves, what it runs, its last beat."""
    return jsonify(workers=[worker.to_dict() for worker in list_workers(_store())])
