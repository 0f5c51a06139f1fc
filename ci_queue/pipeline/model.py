"""The planner's input (``PlanContext``) and output (``Plan`` of fully resolved ``Job``s).

A ``Job`` holds everything a worker needs and nothing it has to work out again: its stage,
``when``, failure policy, ``needs`` as job names, scripts flattened, variables after GitLab's
precedence, timeout in seconds. It is plain data so it can travel through Celery as JSON.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ci_queue.pipeline.errors import Diagnostic

EVENT_KINDS = ("push", "tag", "merge_request", "web", "schedule", "api", "trigger", "pipeline", "chat")

# CI_PIPELINE_SOURCE for each event kind (GitLab's names).
PIPELINE_SOURCES = {
    "push": "push",
    "tag": "push",
    "merge_request": "merge_request_event",
    "web": "web",
    "schedule": "schedule",
    "api": "api",
    "trigger": "trigger",
    "pipeline": "pipeline",
    "chat": "chat",
}


@dataclass(frozen=True)
class MergeRequest:
    """The merge / pull request a ``merge_request`` pipeline runs for."""

    iid: int | str = 1
    source_branch: str = ""
    target_branch: str = ""
    title: str = ""
    labels: tuple[str, ...] = ()
    source_project_path: str = ""
    target_project_path: str = ""
    diff_base_sha: str = ""


@dataclass(frozen=True)
class PlanContext:
    """What the pipeline is planned for: the event, the ref, the repository tree.

    ``changed_files`` None means "unknown" and makes every ``changes:`` clause true, as GitLab
    does for new branches, tags and pipelines without a push diff. ``repo_dir`` None makes every
    ``exists:`` clause false.
    """

    kind: str = "push"
    branch: str | None = None
    tag: str | None = None
    default_branch: str = "main"
    sha: str = "0" * 40
    before_sha: str = "0" * 40
    project_path: str = "group/project"
    server_url: str = "https://gitlab.example.com"
    commit_message: str = ""
    user_login: str = "ci-queue"
    merge_request: MergeRequest | None = None
    variables: dict[str, str] = field(default_factory=dict)  # user / trigger variables: highest precedence
    changed_files: tuple[str, ...] | None = None
    repo_dir: str | None = None
    protected: bool | None = None  # CI_COMMIT_REF_PROTECTED; None: only the default branch is
    inputs: dict[str, Any] = field(default_factory=dict)  # the top-level file's `spec:inputs` (trigger's)

    @property
    def is_protected(self) -> bool:
        if self.protected is not None:
            return self.protected
        return self.tag is None and self.kind != "merge_request" and self.branch == self.default_branch

    @property
    def ref_name(self) -> str:
        if self.tag:
            return self.tag
        if self.kind == "merge_request" and self.merge_request:
            return self.merge_request.source_branch or self.branch or ""
        return self.branch or ""


@dataclass(frozen=True)
class Need:
    """One entry of ``needs``: a job name (after matrix expansion)."""

    job: str
    artifacts: bool = True
    optional: bool = False


@dataclass(frozen=True)
class Retry:
    """``retry:`` normalized: at most ``max`` (0..2) re-runs for failures matching ``when`` / ``exit_codes``."""

    max: int = 0
    when: tuple[str, ...] = ("always",)
    exit_codes: tuple[int, ...] = ()


@dataclass
class Job:
    """A planned job, fully resolved for one event."""

    name: str
    stage: str
    when: str = "on_success"
    allow_failure: bool = False
    allow_failure_exit_codes: tuple[int, ...] = ()
    needs: list[Need] | None = None
    tags: list[str] = field(default_factory=list)
    image: dict[str, Any] | None = None
    services: list[dict[str, Any]] = field(default_factory=list)
    before_script: list[str] = field(default_factory=list)
    script: list[str] = field(default_factory=list)
    after_script: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    timeout: int | None = None
    start_in: int | None = None
    retry: Retry = field(default_factory=Retry)
    matrix: dict[str, str] | None = None
    node_index: int | None = None
    node_total: int | None = None
    interruptible: bool = False
    resource_group: str | None = None
    environment: dict[str, Any] | None = None
    artifacts: dict[str, Any] | None = None
    cache: list[dict[str, Any]] = field(default_factory=list)
    trigger: dict[str, Any] | None = None
    coverage: str | None = None
    dependencies: list[str] | None = None
    secrets: list[str] = field(default_factory=list)  # names; values come from the worker, never stored
    # what the control plane's grants decided (``ci_queue.trust``): the names of `secrets:` this job
    # is not granted, with why ({name, reason, message}); and the trust class of its queue
    refused_secrets: list[dict[str, str]] = field(default_factory=list)
    route: str = ""  # "" (any worker) | "protected" | "protected-only" (ci_queue.routing)
    raw_variables: list[str] = field(default_factory=list)  # `expand: false`: `$` kept as written
    description: str = ""
    line: int | None = None  # where the job is defined, for messages

    @property
    def runnable(self) -> bool:
        """Trigger jobs (downstream pipelines) are planned but not run by ci-queue."""
        return self.trigger is None

    def allow_failure_value(self) -> bool | dict[str, list[int]]:
        """``allow_failure`` as GitLab writes it: a bool, or ``{exit_codes: [...]}``."""
        if self.allow_failure_exit_codes:
            return {"exit_codes": list(self.allow_failure_exit_codes)}
        return self.allow_failure

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        """The inverse of ``to_dict``: a job that travelled as JSON (store, Celery message)."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        allow = data.get("allow_failure", False)
        fields["allow_failure"] = allow is True
        fields["allow_failure_exit_codes"] = tuple(allow["exit_codes"]) if isinstance(allow, dict) else ()
        if data.get("needs") is not None:
            fields["needs"] = [Need(**n) for n in data["needs"]]
        retry = data.get("retry") or {}
        fields["retry"] = Retry(max=retry.get("max", 0), when=tuple(retry.get("when", ("always",))),
                                exit_codes=tuple(retry.get("exit_codes", ())))
        return cls(**fields)

    def failure_allowed(self, exit_code: int | None) -> bool:
        """May this job fail with ``exit_code`` without failing the pipeline?"""
        if self.allow_failure_exit_codes:
            return exit_code in self.allow_failure_exit_codes
        return self.allow_failure

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["allow_failure"] = self.allow_failure_value()
        del data["allow_failure_exit_codes"]
        data["needs"] = None if self.needs is None else [asdict(n) for n in self.needs]
        data["retry"] = {"max": self.retry.max, "when": list(self.retry.when),
                         "exit_codes": list(self.retry.exit_codes)}
        data["runnable"] = self.runnable
        return data


@dataclass
class Plan:
    """The jobs of one pipeline for one event, grouped by stage in order."""

    stages: list[str]
    jobs: list[Job]
    warnings: list[Diagnostic] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    # Set when workflow:rules decided that no pipeline is created for this event.
    skipped_reason: str | None = None

    def job(self, name: str) -> Job:
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stages": list(self.stages),
            "jobs": [job.to_dict() for job in self.jobs],
            "variables": dict(self.variables),
            "skipped_reason": self.skipped_reason,
            "warnings": [w.to_dict() for w in self.warnings],
        }
