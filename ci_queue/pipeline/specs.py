"""Event-independent, validated forms of the pieces of a pipeline file.

``normalize`` turns raw YAML (after ``include``/``extends``/``!reference``) into these specs,
reporting every problem with its position; ``planner`` then evaluates them for one event. Keeping
the two apart lets ``ci-queue validate`` check a file once for all events.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ci_queue.pipeline.errors import Mark
from ci_queue.pipeline.model import Retry


@dataclass(frozen=True)
class ChangesSpec:
    """``changes:`` globs (``compare_to`` is recorded; the diff comes from the context)."""

    paths: tuple[str, ...]
    compare_to: str | None = None


@dataclass(frozen=True)
class ExistsSpec:
    """``exists:`` globs, matched against the repository tree."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class NeedSpec:
    """One ``needs:`` entry as written (``matrix`` selects instances of a parallel job)."""

    job: str
    artifacts: bool = True
    optional: bool = False
    matrix: tuple[dict[str, tuple[str, ...]], ...] | None = None
    mark: Mark | None = None


@dataclass(frozen=True)
class RuleSpec:
    """One entry of ``rules:`` (or ``workflow:rules:``)."""

    if_: str | None = None
    changes: ChangesSpec | None = None
    exists: ExistsSpec | None = None
    when: str | None = None
    allow_failure: bool | None = None
    allow_failure_exit_codes: tuple[int, ...] = ()
    variables: dict[str, str] = field(default_factory=dict)
    needs: tuple[NeedSpec, ...] | None = None
    interruptible: bool | None = None
    start_in: int | None = None
    mark: Mark | None = None


@dataclass(frozen=True)
class PolicySpec:
    """``only:`` or ``except:``: refs, variables expressions, changes."""

    refs: tuple[str, ...] | None = None
    variables: tuple[str, ...] | None = None
    changes: ChangesSpec | None = None
    kubernetes: bool = False
    mark: Mark | None = None


@dataclass(frozen=True)
class EventFilter:
    """The short form ``when: {on: [...], branches: [...], tags: [...]}``."""

    on: tuple[str, ...] | None = None
    branches: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    mark: Mark | None = None


@dataclass(frozen=True)
class VariableSpec:
    """A YAML variable: value and whether ``$OTHER`` references in it are expanded."""

    value: str
    expand: bool = True
    description: str | None = None


@dataclass
class JobSpec:
    """A job as written, validated, before any event is known."""

    name: str
    mark: Mark | None
    stage: str = "test"
    when: str | None = None
    start_in: int | None = None
    allow_failure: bool | None = None
    allow_failure_exit_codes: tuple[int, ...] = ()
    rules: tuple[RuleSpec, ...] | None = None
    only: PolicySpec | None = None
    except_: PolicySpec | None = None
    event_filter: EventFilter | None = None
    needs: tuple[NeedSpec, ...] | None = None
    parallel: int | None = None
    matrix: tuple[dict[str, tuple[str, ...]], ...] | None = None
    variables: dict[str, VariableSpec] = field(default_factory=dict)
    inherit_default: bool | frozenset[str] = True
    inherit_variables: bool | frozenset[str] = True
    tags: list[str] = field(default_factory=list)
    image: dict[str, Any] | None = None
    services: list[dict[str, Any]] = field(default_factory=list)
    before_script: list[str] = field(default_factory=list)
    script: list[str] = field(default_factory=list)
    after_script: list[str] = field(default_factory=list)
    timeout: int | None = None
    retry: Retry = field(default_factory=Retry)
    interruptible: bool = False
    resource_group: str | None = None
    environment: dict[str, Any] | None = None
    artifacts: dict[str, Any] | None = None
    cache: list[dict[str, Any]] = field(default_factory=list)
    trigger: dict[str, Any] | None = None
    coverage: str | None = None
    dependencies: list[str] | None = None
    secrets: list[str] = field(default_factory=list)

    def instances(self) -> list[tuple[str, dict[str, str] | None, int | None]]:
        """(name, matrix values, node index) of each job GitLab makes of this one: ``job 1/3``
        for ``parallel: 3``, ``job: [a, b]`` for a matrix (entries in turn, values in key order,
        the first key varying slowest), else just ``job``. Validation and planning share it so
        that a need on an instance is checked against the very names that get planned."""
        if self.matrix:
            combos = [dict(zip(entry, values, strict=True))
                      for entry in self.matrix for values in itertools.product(*entry.values())]
            return [(f"{self.name}: [{', '.join(combo.values())}]", combo, i + 1) for i, combo in enumerate(combos)]
        if self.parallel:
            return [(f"{self.name} {i}/{self.parallel}", None, i) for i in range(1, self.parallel + 1)]
        return [(self.name, None, None)]


@dataclass
class WorkflowSpec:
    """``workflow:``: rules deciding whether a pipeline is created, and its name."""

    rules: tuple[RuleSpec, ...] | None = None
    name: str | None = None


@dataclass
class PipelineSpec:
    """A whole validated pipeline file."""

    stages: list[str]
    variables: dict[str, VariableSpec]
    workflow: WorkflowSpec
    jobs: list[JobSpec]
