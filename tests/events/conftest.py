"""Helpers of the webhook event tests: the shared fixtures, signed the way each forge signs."""

from __future__ import annotations

import json
from pathlib import Path

from ci_queue.events import signatures

SECRET = "test-webhook-secret"
EVENT_HEADERS = {"github": "X-GitHub-Event", "gitlab": "X-Gitlab-Event", "gitea": "X-Gitea-Event"}


def manifest(root: Path, provider: str) -> list[dict]:
    return json.loads((root / "webhooks" / provider / "MANIFEST.json").read_text())


def signed_headers(provider: str, body: bytes, event: str, secret: str = SECRET) -> dict[str, str]:
    """The headers the forge would send for ``body`` (signature over the raw bytes)."""
    headers = {EVENT_HEADERS[provider]: event, "Content-Type": "application/json"}
    if provider == "github":
        headers["X-Hub-Signature-256"] = signatures.github_signature(secret, body)
        headers["X-GitHub-Delivery"] = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    elif provider == "gitea":
        headers["X-Gitea-Signature"] = signatures.hmac_hex(secret, body)
        headers["X-Gitea-Delivery"] = "f6266f16-1bf3-46a5-9ea4-602e06ead473"
    elif provider == "gitlab":
        headers["X-Gitlab-Token"] = secret
        headers["Idempotency-Key"] = "1b3b2ccd-5a3f-4b41-b4e6-5a7f0bd2b1e8"
    return headers
