"""The ``StepRunner`` protocol: one small life cycle every executor implements.

Modelled on Woodpecker's backend interface: ``prepare`` (once per job: image, network, scratch
space), ``run`` (one step: start it, stream every output line to the job log, wait, stop it at
the deadline or on cancel), ``cleanup`` (once per job, always: nothing the job started may
survive it). ``workers.job.run_job`` drives it and does not care which executor it has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from workers.logs import JobLog

# Polled by a running step; True means "stop now" (the run was canceled).
CancelCheck = Callable[[], bool]


class InfrastructureError(Exception):
    """Something failed before user code ran (image missing, checkout, workspace setup).

    Retryable by the engine when its ``failure_class`` is one of ``runner_system_failure`` /
    ``image_missing``; never a script failure. ``failure_class`` is recorded on the job.
    """

    failure_class = "runner_system_failure"


class EnvironmentTooLarge(InfrastructureError):
    """The kernel refused to start the step: its environment is over MAX_ARG_STRLEN / ARG_MAX
    (E2BIG). Not retried: the same job would be refused on every host."""

    failure_class = "environment_too_large"


class ImageMissing(InfrastructureError):
    """The job's image is neither present nor pullable."""

    failure_class = "image_missing"


@dataclass(frozen=True)
class StepSpec:
    """One step to run: a shell script (already assembled) in the job's environment."""

    name: str  # "script" (before_script + script, one shell session) or "after_script"
    script: str  # the shell program to run, commands echoed as GitLab does
    env: Mapping[str, str]  # the job's full environment (predefined, variables, secrets)
    timeout: float  # seconds from the step's start until it is stopped as "timeout"


@dataclass(frozen=True)
class StepOutcome:
    """How a step ended. ``status``: success | failed | timeout | canceled."""

    status: str
    exit_code: int | None
    started_at: str  # ISO 8601 UTC
    finished_at: str
    duration: float  # seconds
    detail: str | None = None  # why a failed step failed, when the runner knows better than its exit code (OOM)


@dataclass(frozen=True)
class JobEnvironment:
    """What ``prepare`` gets: where the job's files are and who it is (for container labels)."""

    workspace: Path  # the checkout; CI_PROJECT_DIR inside the job
    project_dir: str  # CI_PROJECT_DIR as the job sees it (the workspace path, or a path in the container)
    image: str | None  # the job's image (docker)
    run_id: str
    job_name: str
    attempt: int
    # `services:` as planned (dicts with `name` and optional `alias`, `entrypoint`, `command`,
    # `variables` (already expanded), `pull_policy`); the docker runner starts them
    services: tuple[Mapping[str, object], ...] = ()
    service_env: Mapping[str, str] = field(default_factory=dict)  # the job's environment minus its secrets
    cancel: CancelCheck | None = None  # polled while ``prepare`` waits (for services to get ready)


class StepRunner(Protocol):
    """An executor. Implementations: ``shell.ShellRunner``, ``docker.DockerRunner``."""

    def prepare(self, env: JobEnvironment, log: JobLog) -> None:
        """Get ready to run steps (pull the image...). Raises InfrastructureError."""

    def run(self, step: StepSpec, log: JobLog, cancel: CancelCheck) -> StepOutcome:
        """Run one step to its end, its deadline, or a cancel; stream its output into ``log``."""

    def cleanup(self) -> None:
        """Release everything ``prepare`` and ``run`` made; idempotent, never raises."""
