"""The generic webhook: any system that can sign a small JSON document.

``POST /webhooks/generic`` with a body of this shape (unknown keys are refused, to catch typos)::

    {
      "repo": "team/service",                 # required: the registered name
      "clone_url": "https://git.example/team/service.git",   # optional if the registry has one
      "ref": "refs/heads/main",               # required: a full ref, refs/heads/... or refs/tags/...
      "sha": "<40 or 64 hex digits>",         # required: the commit to build
      "before": "<hex>",                      # optional: the previous tip (zeros or absent: unknown)
      "event": "push",                        # optional: push | tag; must agree with the ref
      "default_branch": "main",               # optional
      "commit_message": "...",                # optional
      "sender": "deploy-bot"                  # optional
    }

and the headers ``X-CIQ-Timestamp`` (unix seconds), ``X-CIQ-Signature``
(``sha256=`` + hex HMAC-SHA256 of ``"<timestamp>." + body`` keyed with the repository's secret)
and, for redelivery dedup, ``X-CIQ-Delivery`` (any unique id). See ``signatures.generic_headers``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ci_queue.events.model import (
    BadPayload,
    Result,
    branch_of,
    clone_url,
    load_json,
    message_of,
    push_result,
    ref_name,
    repo_name,
    tag_of,
    text,
)
from ci_queue.events.signatures import delivery_id

PROVIDER = "generic"
KEYS = frozenset({"repo", "clone_url", "ref", "sha", "before", "event", "default_branch", "commit_message", "sender"})


def repo_of(body: bytes) -> str | None:
    """The ``repo`` of the body (to find the registry entry and its secret)."""
    return repo_name(load_json(body).get("repo"), "repo", PROVIDER)


def parse(headers: Mapping[str, str], body: bytes) -> Result:
    """Normalize a generic delivery (call after the signature was checked)."""
    data = load_json(body)
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise BadPayload(f"unknown key(s) {', '.join(repr(k[:40]) for k in unknown[:5])}; "
                         f"the keys are {', '.join(sorted(KEYS))}")
    repo = repo_name(data.get("repo"), "repo", PROVIDER)
    ref = ref_name(text(data, "ref"), "ref")
    if branch_of(ref) is None and tag_of(ref) is None:
        raise BadPayload("`ref` must be a full ref: refs/heads/<branch> or refs/tags/<tag>")
    event = text(data, "event", required=False) or ("tag" if tag_of(ref) is not None else "push")
    if event not in ("push", "tag"):
        raise BadPayload("`event` must be push or tag")
    if (event == "tag") != (tag_of(ref) is not None):
        raise BadPayload(f"`event` {event!r} does not match the ref {ref[:100]!r}")
    for key in ("sha", "before", "default_branch", "commit_message", "sender", "clone_url"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise BadPayload(f"`{key}` must be a string")
    default = data.get("default_branch") or None
    result = push_result(
        PROVIDER, repo=repo, ref=ref, before=data.get("before") or "", after=text(data, "sha"),
        clone=clone_url(data.get("clone_url"), "clone_url"),
        default_branch=ref_name(default, "default_branch") if default else None,
        message=message_of(data.get("commit_message")), sender=message_of(data.get("sender"), 200),
        delivery=delivery_id(PROVIDER, headers),
    )
    return result  # an all-zero sha is a deletion, ignored as for every provider
