"""What a run is trusted with: protected refs, forks, and the secrets its jobs may have.

Every decision here is made from facts the control plane established when the run was made (the
web app, from ``configs/repos.yml`` and the forge's signed payload) and stored on the run
(``RunRecord.protected``, ``.fork``, ``.registered``, ``.protected_workers_only``, ``.grants``):
nothing a pipeline file, a trigger variable or a job can write changes them. The planner uses
``RunTrust.sort_secrets`` to put into each job only the secrets it is granted; the worker asks
the same question again from the run record before it resolves a single value, so a job spec
that said otherwise (an older plan, a hand-edited key) still gets nothing it is not granted.

GitLab's semantics:

- protected branches and tags are glob patterns where ``*`` matches any run of characters,
  ``/`` included (``release/*``, ``*-stable``), as GitLab's protected-branch wildcards;
- a merge request run is never protected (its ref, ``refs/merge-requests/<iid>/head`` or
  ``refs/pull/<n>/head``, is no protected branch in GitLab either), and a merge request from a
  fork gets no secret at all;
- a secret's ``environments`` are GitLab's environment scopes: globs with the same ``*``,
  matched against the job's ``environment:`` name (expanded); a grant without ``environments``
  (or with ``*``) is for every job, a scoped one only for jobs whose environment matches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ci_queue.pipeline.model import Plan

FORK_MODES = ("run", "approve", "never")
DEFAULT_FORK_MODE = "approve"

# Why a job does not get a secret it names (the codes of ``Refusal.reason``).
NOT_GRANTED = "not_granted"
REF_NOT_PROTECTED = "ref_not_protected"
FORK = "fork"
ENVIRONMENT_OUT_OF_SCOPE = "environment_out_of_scope"

# Variables only the control plane sets: a trigger, the API or a pipeline file cannot set them
# (the API refuses them, the planner and the worker put the trusted value last).
CONTROL_PLANE_VARIABLES = frozenset({"CI_COMMIT_REF_PROTECTED"})

# The trust class of a job's queue (``ci_queue.routing``): untrusted work, a protected job any
# worker with its tags may take, a protected job only ``--protected`` workers may take.
ROUTE_ANY = ""
ROUTE_PROTECTED = "protected"
ROUTE_PROTECTED_ONLY = "protected-only"


@lru_cache(maxsize=1024)
def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def wildcard_match(pattern: str, text: str) -> bool:
    """GitLab's wildcard: ``*`` is any run of characters (``/`` too), everything else literal."""
    return _wildcard(pattern).fullmatch(text) is not None


def short_ref(ref: str) -> str:
    """``refs/heads/x`` and ``refs/tags/x`` as ``x`` (the API accepts either spelling)."""
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def ref_is_protected(kind: str, ref: str, *, branches: Iterable[str], tags: Iterable[str]) -> bool:
    """Whether a run of event ``kind`` for ``ref`` (a branch, or a tag for ``kind == "tag"``) is
    on a protected ref. A merge request run never is."""
    if kind == "merge_request" or not ref:
        return False
    name = short_ref(ref)
    patterns = tags if kind == "tag" else branches
    return any(wildcard_match(pattern, name) for pattern in patterns)


@dataclass(frozen=True)
class Grant:
    """One secret a repository's jobs may have: its name, whether only runs of protected refs get
    it, and the environments (globs) it is scoped to (empty: every job)."""

    name: str
    protected: bool = False
    environments: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "protected": self.protected, "environments": list(self.environments)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Grant:
        environments = tuple(str(e) for e in data.get("environments") or ())
        return cls(str(data["name"]), bool(data.get("protected")), environments)

    def covers(self, environment: str | None) -> bool:
        """Whether a job of ``environment`` (None: the job has none) is in this grant's scope."""
        if not self.environments or "*" in self.environments:
            return True
        return environment is not None and any(wildcard_match(p, environment) for p in self.environments)


@dataclass(frozen=True)
class Refusal:
    """A secret a job names and does not get: the code of the reason and a sentence for the log."""

    name: str
    reason: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class RunTrust:
    """The trusted facts of a run. The default (nothing registered, nothing protected, no grant)
    is what a run gets when the control plane said nothing: no secret, no protected cache."""

    protected: bool = False
    fork: bool = False
    registered: bool = False
    protected_workers_only: bool = False
    grants: tuple[Grant, ...] = field(default=())

    @property
    def route(self) -> str:
        """The trust class of the run's job queues: protected work only for protected refs of
        registered repositories (``ci_queue.routing``)."""
        if not (self.protected and self.registered) or self.fork:
            return ROUTE_ANY
        return ROUTE_PROTECTED_ONLY if self.protected_workers_only else ROUTE_PROTECTED

    def grant(self, name: str) -> Grant | None:
        return next((g for g in self.grants if g.name == name), None)

    def refusal(self, name: str, environment: str | None, repo: str = "") -> Refusal | None:
        """Why a job of ``environment`` does not get secret ``name``, or None when it does."""
        grant = self.grant(name)
        where = f" to {repo}" if repo else ""
        if grant is None:
            unregistered = "" if self.registered else " (a repository not registered gets only `defaults:` grants)"
            return Refusal(name, NOT_GRANTED, f"secret {name} is not granted{where} in the repositories file "
                                              f"(configs/repos.yml `secrets:`){unregistered}")
        if self.fork:
            return Refusal(name, FORK, f"secret {name} is not given to a merge request from a fork: forks get "
                                       "no secrets")
        if grant.protected and not self.protected:
            return Refusal(name, REF_NOT_PROTECTED, f"secret {name} is protected: only runs of protected "
                                                    "branches and tags get it, and this ref is not protected")
        if not grant.covers(environment):
            scopes = ", ".join(grant.environments)
            job_env = f"environment `{environment}`" if environment else "no environment"
            return Refusal(name, ENVIRONMENT_OUT_OF_SCOPE, f"secret {name} is scoped to the environments {scopes}; "
                                                           f"this job has {job_env}")
        return None

    def sort_secrets(self, names: Iterable[str], environment: str | None,
                     repo: str = "") -> tuple[list[str], list[Refusal]]:
        """The names a job gets, and the refusals of the others, in the order written."""
        granted: list[str] = []
        refused: list[Refusal] = []
        for name in dict.fromkeys(names):
            refusal = self.refusal(name, environment, repo)
            if refusal is None:
                granted.append(name)
            else:
                refused.append(refusal)
        return granted, refused


def environment_name(environment: Mapping[str, Any] | None) -> str | None:
    """A job's ``environment:`` name (None when it has none)."""
    if not environment:
        return None
    name = environment.get("name")
    return str(name) if name else None


def apply_to_plan(plan: Plan, trust: RunTrust, repo: str = "") -> None:
    """The planner's part: each job keeps in ``secrets`` only the names it is granted, the others
    go to ``refused_secrets`` with their reason (the worker fails the job with ``missing_secret``);
    each job's ``route`` is the run's trust class (its queue family)."""
    for job in plan.jobs:
        named = [*job.secrets, *(r["name"] for r in job.refused_secrets)]
        granted, refused = trust.sort_secrets(named, environment_name(job.environment), repo)
        job.secrets = granted
        job.refused_secrets = [refusal.to_dict() for refusal in refused]
        job.route = trust.route
