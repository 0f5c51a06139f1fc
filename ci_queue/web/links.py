"""Links a request answers (a trigger's, a webhook's): through ``CIQ_PUBLIC_URL`` when it is set
(how users reach the app behind a proxy), else the request's own host."""

from __future__ import annotations

from typing import Any

from flask import current_app, url_for


def public_link(endpoint: str, **values: Any) -> str:
    base = current_app.config["CIQ_SETTINGS"].public_url.rstrip("/")
    if base:
        return base + url_for(endpoint, **values)
    return url_for(endpoint, **values, _external=True)


def run_links(run_id: str) -> dict[str, str]:
    """``status_url``: the run in the API (for programs); ``web_url``: its page (for people)."""
    return {"status_url": public_link("api.show_run", run_id=run_id),
            "web_url": public_link("ui.run", run_id=run_id)}
