"""Webhook deliveries into normalized events: one module per provider, signatures, the model.

What a webhook route does, in order (see ``docs/DESIGN.md``)::

    from ci_queue import events
    name = events.repo_of(provider, body)            # BadPayload -> 400; None: org ping
    repo = registry.lookup(provider, name)           # None -> 404, nothing stored
    events.verify(provider, headers, body, repo.secret())   # SignatureError -> 401
    result = events.parse(provider, headers, body)   # BadPayload -> 400
    # Pong -> 200 "pong"; Ignored -> 202 {"ignored": reason}; Event -> trigger_run(...)

Nothing from a payload is interpreted: names and refs are validated (``model.valid_ref``,
``model.valid_repo_name``) and carried as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

from ci_queue.events import generic, gitea, github, gitlab
from ci_queue.events.model import PROVIDERS, BadPayload, Event, Ignored, Pong, Result, valid_ref, valid_repo_name
from ci_queue.events.signatures import SignatureError, delivery_id, verify

__all__ = [
    "PROVIDERS",
    "BadPayload",
    "Event",
    "Ignored",
    "Pong",
    "Result",
    "SignatureError",
    "delivery_id",
    "module",
    "parse",
    "repo_of",
    "valid_ref",
    "valid_repo_name",
    "verify",
]

_MODULES: dict[str, ModuleType] = {"github": github, "gitlab": gitlab, "gitea": gitea, "generic": generic}


def module(provider: str) -> ModuleType:
    """The module of ``provider`` (github, gitlab, gitea, generic); ValueError for others."""
    try:
        return _MODULES[provider]
    except KeyError:
        raise ValueError(f"unknown provider {provider!r}; one of {', '.join(PROVIDERS)}") from None


def repo_of(provider: str, body: bytes) -> str | None:
    """The repository full name the delivery is about, read before authentication to find the
    registry entry (and so the secret). None when the payload names none (an organisation ping).
    Raises BadPayload."""
    return module(provider).repo_of(body)


def parse(provider: str, headers: Mapping[str, str], body: bytes) -> Result:
    """Normalize an authenticated delivery: Event, Ignored or Pong; raises BadPayload."""
    return module(provider).parse(headers, body)
