"""One job on a build host: ``run_job(request, workspace, sink, cancel) -> JobResult``.

Independent of Celery: the engine (and ``ci-queue exec``) call it with a planned job, its run
context, a checked-out workspace, a log sink and a cancel check. GitLab semantics:

- ``before_script`` + ``script`` run as ONE step named ``script`` in one shell session (``cd``
  and ``export`` carry over); ``after_script`` is a step of its own in a fresh shell, run after a
  success, a failure or a timeout of ``script`` (not after a cancel), with its own timeout
  (``CIQ_AFTER_SCRIPT_TIMEOUT``); its outcome never changes the job's status.
- The script of a step is generated as GitLab Runner does for bash: ``set -e`` plus
  ``pipefail`` where the shell has it (bash, busybox/ash; not dash), and each command echoed
  as ``$ <command>`` before it runs (the first line and ``# collapsed multi-line command`` for a
  multi-line one), so the log shows what ran.
- Timeout: ``job.timeout`` or ``CIQ_DEFAULT_JOB_TIMEOUT``, counted from the start of the job
  (preparing the runner, e.g. pulling the image, is part of it); a timed-out job is ``failed``
  with failure class ``timeout``.
- Environment, lowest precedence first: the plan's pipeline variables (predefined for the
  event), the job's predefined variables (``CI_JOB_*``, ``CI_PROJECT_DIR``... from this run:
  they win over the plan's where both exist, e.g. ``CI_COMMIT_SHA``), the job's ``variables``
  (YAML, matrix, event; expanded like GitLab Runner does: ``$NAME`` / ``${NAME}`` of anything
  defined before or among them, unknown names expand to nothing, ``$$`` is ``$``; names in
  ``raw_variables`` are kept as written), then the job's ``secrets``.
- Secrets (``workers.secrets``) are masked in every log line and never appear in the result.
  Only granted ones are resolved: with a control plane (``request.trust``, the run's trusted
  facts) the grants are decided again here before a value is read, and a job that names a
  secret it is not granted (not granted to the repository, protected and the ref is not, a
  merge request from a fork, environment out of scope) fails as ``missing_secret`` with why.
  ``CI_COMMIT_REF_PROTECTED`` is the run's trusted fact, whatever a variable said, and it is what
  keys the caches apart (``-protected`` / ``-non_protected``).
- The shell executor refuses a merge request from a fork (``fork_refused``) unless the worker
  has ``CIQ_SHELL_ALLOW_FORKS=1``: its code would run as the worker's user, on the host.
- ``services:`` run with the docker executor (``workers.runners.docker``): each service gets the
  job's environment *without* the secrets (and without any variable whose value holds one) plus
  its own ``variables`` (expanded against that environment; they win). The shell executor
  ignores them with a warning.

Failure classes: ``script_failure``, ``timeout``, ``canceled``, ``missing_secret``, ``fork_refused``,
``not_runnable`` (a ``trigger:`` job), ``environment_too_large`` (a variable over the kernel's
MAX_ARG_STRLEN, or all of them over ARG_MAX: no step could ever start, so it is checked before
the runner prepares and never retried; see ``ci_queue.limits``), the runner's
``InfrastructureError.failure_class`` (``runner_system_failure``, ``image_missing``...), and
``runner_system_failure`` for any unexpected error of the runner (with the message in the log),
and those of the job's artifacts and caches (``workers.jobdata``): ``missing_dependency``,
``artifacts_too_large``, ``invalid_report``, ``invalid_artifacts``, ``invalid_cache``.

Artifacts and caches (``request.channel``, the web app with the attempt's job token): the
dependencies' dotenv variables join the environment (above the job's variables, below the
event's), caches are restored and dependencies' artifacts unpacked after the runner prepared,
and after ``after_script`` caches are saved and artifacts uploaded; a failure to keep the
artifacts fails a job that had succeeded.
The sink is closed at the end.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_queue.clock import now_iso
from ci_queue.limits import arg_max, environment_problem
from ci_queue.logging import bind
from ci_queue.pipeline.model import Job
from ci_queue.settings import Settings, get_settings
from ci_queue.trust import Refusal, RunTrust, environment_name
from workers.jobdata import DataFailure, JobData
from workers.logs import JobLog, LogSink
from workers.runners.base import CancelCheck, InfrastructureError, JobEnvironment, StepOutcome, StepRunner, StepSpec
from workers.secrets import MissingSecrets, resolve_secrets
from workers.transfer import JobChannel

if TYPE_CHECKING:
    from workers.runners.shell_user import UserSession

SCRIPT_STEP = "script"
AFTER_SCRIPT_STEP = "after_script"
PREPARE_STEP = "prepare"
CONTAINER_BUILDS_DIR = "/builds"
_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|(\w+))|\$\$")
_MAX_VALUE = 1 << 20
# ARG_MAX left for what a runner adds to the job's variables (inherited PATH, HOME..., the step
# token, CI_JOB_STATUS for after_script) and for the command line
ENVIRONMENT_RESERVE = 64 * 1024


@dataclass(kw_only=True)
class JobRequest:
    """A planned job and the context of the run it belongs to."""

    job: Job
    run_id: str
    job_id: str
    pipeline_id: str
    attempt: int = 1
    sha: str
    ref: str
    project_path: str
    pipeline_variables: dict[str, str] = field(default_factory=dict)  # the Plan's `variables`
    clone_url: str | None = None
    builds_dir: str | None = None  # CI_BUILDS_DIR on the host (default: the workspace's parent)
    trigger_variables: frozenset[str] = frozenset()  # names given with the event: they win over dotenv
    channel: JobChannel | None = None  # the web app, for artifacts and caches (None: `ci-queue exec`)
    fetch_artifacts: bool = True  # False: no job of the run makes artifacts, nothing to ask for
    trust: RunTrust | None = None  # the run's trusted facts; None: no control plane (`ci-queue exec`)


@dataclass
class StepRecord:
    name: str
    status: str  # success | failed | timeout | canceled
    exit_code: int | None
    started_at: str
    finished_at: str
    duration: float

    @classmethod
    def from_outcome(cls, name: str, outcome: StepOutcome) -> StepRecord:
        return cls(name, outcome.status, outcome.exit_code, outcome.started_at, outcome.finished_at, outcome.duration)


@dataclass
class JobResult:
    status: str  # success | failed | canceled
    failure_class: str | None
    exit_code: int | None
    steps: list[StepRecord]
    started_at: str
    finished_at: str
    duration: float
    log_truncated: bool
    reason: str | None = None  # one line for humans: why it failed (never a secret value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Failed(Exception):
    """Ends the job early with a failure class and a message for the log."""

    def __init__(self, failure_class: str, message: str, status: str = "failed") -> None:
        super().__init__(message)
        self.failure_class = failure_class
        self.status = status


# -- the shell program of a step ----------------------------------------------------------------

SCRIPT_PROLOGUE = (
    "if (set -o pipefail) 2>/dev/null; then set -o pipefail; fi\n"  # bash, ash: yes; dash: no
    "set -e\n"
)


def build_script(commands: list[str]) -> str:
    """The program of one step: ``set -e`` (+ pipefail), each command echoed, then run."""
    parts = [SCRIPT_PROLOGUE]
    for command in commands:
        body = command.strip("\n")
        if not body.strip():
            continue
        lines = body.split("\n")
        shown = lines[0] + (" # collapsed multi-line command" if len(lines) > 1 else "")
        parts.append(f"printf '%s\\n' {shlex.quote('$ ' + shown)}\n{body}\n")
    return "".join(parts)


# -- environment --------------------------------------------------------------------------------

def expand_job_variables(variables: dict[str, str], context: dict[str, str],
                         raw: frozenset[str] = frozenset()) -> dict[str, str]:
    """``variables`` with ``$NAME`` / ``${NAME}`` expanded as GitLab Runner does: against
    ``context`` and the other variables, unknown names to nothing, ``$$`` to ``$``; names in
    ``raw`` as written; a reference cycle leaves the reference as written."""
    done: dict[str, str] = {}
    cycle = object()

    def value(name: str, active: frozenset[str]) -> str | object | None:
        """The value of ``name``; None if undefined, ``cycle`` inside a reference cycle."""
        if name in done:
            return done[name]
        if name not in variables:
            return context.get(name)
        if name in raw:
            return variables[name]
        if name in active:
            return cycle
        result = expand(variables[name], active | {name})
        done[name] = result
        return result

    def expand(text: str, active: frozenset[str]) -> str:
        if "$" not in text:
            return text

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            resolved = value(match.group(1) or match.group(2), active)
            if resolved is cycle:
                return match.group(0)
            return str(resolved) if resolved is not None else ""

        result = _REFERENCE.sub(replace, text)
        return result if len(result) <= _MAX_VALUE else text

    return {name: str(value(name, frozenset())) for name in variables}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:63].rstrip("-")


def _without_credentials(url: str | None) -> str | None:
    if not url:
        return url
    return re.sub(r"^(\w[\w+.-]*://)[^/@]*@", r"\1", url)


def predefined_job_variables(request: JobRequest, project_dir: str, builds_dir: str, timeout: int,
                             executor: str, started_at: str) -> dict[str, str]:
    """The variables GitLab defines for a running job (those this run knows)."""
    job = request.job
    namespace, _, project = request.project_path.rpartition("/")
    values = {
        "CI": "true",
        "GITLAB_CI": "true",
        "CI_JOB_NAME": job.name,
        "CI_JOB_NAME_SLUG": _slug(job.name),
        "CI_JOB_STAGE": job.stage,
        "CI_JOB_ID": str(request.job_id),
        "CI_JOB_ATTEMPT": str(request.attempt),
        "CI_JOB_TIMEOUT": str(timeout),
        "CI_JOB_STARTED_AT": started_at[:19] + "Z",
        "CI_JOB_STATUS": "running",
        "CI_PIPELINE_ID": str(request.pipeline_id),
        "CI_COMMIT_SHA": request.sha,
        "CI_COMMIT_SHORT_SHA": request.sha[:8],
        "CI_COMMIT_REF_NAME": request.ref,
        "CI_COMMIT_REF_SLUG": _slug(request.ref),
        "CI_PROJECT_DIR": project_dir,
        "CI_PROJECT_PATH": request.project_path,
        "CI_PROJECT_NAME": project,
        "CI_PROJECT_NAMESPACE": namespace,
        "CI_BUILDS_DIR": builds_dir,
        "CI_RUNNER_EXECUTOR": executor,
        "CI_SERVER_NAME": "ci-queue",
    }
    url = _without_credentials(request.clone_url)
    if url:
        values["CI_REPOSITORY_URL"] = url
    if job.image:
        values["CI_JOB_IMAGE"] = str(job.image.get("name", ""))
    if job.node_total is not None:
        values["CI_NODE_INDEX"] = str(job.node_index)
        values["CI_NODE_TOTAL"] = str(job.node_total)
    return values


# -- choosing the runner ------------------------------------------------------------------------

def _image_name(job: Job) -> str | None:
    if not job.image:
        return None
    name = job.image.get("name")
    return str(name) if name else None


def _make_runner(job: Job, settings: Settings) -> tuple[StepRunner, str]:
    """The runner a worker uses for ``job``, and its executor name."""
    image = _image_name(job)
    if settings.executor == "docker" or (settings.executor == "auto" and image):
        from workers.runners.container_policy import ContainerPolicy  # docker SDK only where it is needed
        from workers.runners.docker import DockerRunner

        try:
            policy = ContainerPolicy.from_settings(settings)
        except ValueError as exc:
            raise _Failed("runner_system_failure", f"the docker executor's settings are invalid: {exc}") from None
        return DockerRunner(network_mode=settings.docker_network, kill_grace=settings.kill_grace_seconds,
                            service_wait=settings.service_wait_seconds, policy=policy), "docker"
    from workers.runners.shell import ShellRunner

    return ShellRunner(settings.kill_grace_seconds, as_user=_user_session(settings)), "shell"


def _user_session(settings: Settings) -> UserSession | None:
    """``CIQ_SHELL_USER``: the job runs as one of those users (None: as the worker)."""
    if not settings.shell_user.strip():
        return None
    from workers.cache_copies import default_root as cache_root
    from workers.checkout import default_cache_dir
    from workers.jobusers import ShellUserError, job_users
    from workers.runners.container_policy import engine_sockets
    from workers.runners.shell_user import UserSession
    from workers.workspace import default_root as workspace_root

    try:
        users = job_users(settings.shell_user)
    except ShellUserError as exc:
        raise _Failed("runner_system_failure", str(exc)) from None
    protect = [Path(path) for path in (settings.secrets_file, str(default_cache_dir(settings)),
                                       str(cache_root(settings))) if path]
    return UserSession(users, workspace_root(settings), protect, engine_sockets())


def _executor_of(runner: StepRunner) -> str:
    from workers.runners.shell import ShellRunner

    if isinstance(runner, ShellRunner):
        return "shell"
    return str(getattr(runner, "name", None) or type(runner).__name__.removesuffix("Runner").lower() or "custom")


# -- the job ------------------------------------------------------------------------------------

def run_job(request: JobRequest, workspace: Path, sink: LogSink, cancel: CancelCheck, *,
            settings: Settings | None = None, runner: StepRunner | None = None) -> JobResult:
    """Run one job to its end and return what happened; never raises for the job's own failures."""
    return _JobRun(request, Path(workspace), sink, cancel, settings or get_settings(), runner).run()


class _JobRun:
    def __init__(self, request: JobRequest, workspace: Path, sink: LogSink, cancel: CancelCheck,
                 settings: Settings, runner: StepRunner | None) -> None:
        self.request = request
        self.job = request.job
        self.workspace = workspace
        self.settings = settings
        self.runner = runner
        self.cancel_check = cancel
        self.cancel_failed = False
        self.logger = bind(run_id=request.run_id, job=self.job.name)
        self.steps: list[StepRecord] = []
        self.started_at = now_iso()
        self.start = time.monotonic()
        self.secrets: dict[str, str] = {}
        self.missing: MissingSecrets | None = None
        granted, self.refused = self._granted_secrets()
        if not self.refused:  # nothing is read for a job that fails anyway
            try:
                self.secrets = resolve_secrets(granted, secrets_file=settings.secrets_file or None)
            except MissingSecrets as exc:
                self.missing = exc
        self.log = JobLog(sink, run_id=request.run_id, job=self.job.name, max_bytes=settings.max_log_bytes,
                          secrets=self.secrets.values())

    def _granted_secrets(self) -> tuple[list[str], list[Refusal]]:
        """The secrets the job may have and the refusals of the others: decided again from the
        run's trusted facts (``ci_queue.trust``) over every name the job wrote, whatever its
        planned spec says; without a control plane (``ci-queue exec``), every name it lists."""
        job, trust = self.job, self.request.trust
        if trust is None:
            return list(job.secrets), []
        named = [*job.secrets, *(refused["name"] for refused in job.refused_secrets)]
        return trust.sort_secrets(named, environment_name(job.environment), self.request.project_path)

    @property
    def protected(self) -> bool | None:
        """The run's trusted CI_COMMIT_REF_PROTECTED (None: no control plane said)."""
        return None if self.request.trust is None else self.request.trust.protected

    def canceled(self) -> bool:
        try:
            return bool(self.cancel_check())
        except Exception as exc:
            if not self.cancel_failed:
                self.cancel_failed = True
                self.logger.warning("the cancel check failed, assuming not canceled: {}: {}", type(exc).__name__, exc)
            return False

    def system(self, text: str, step: str = PREPARE_STEP) -> None:
        self.log.system(step, text)

    def run(self) -> JobResult:
        self.logger.info("job started (attempt {})", self.request.attempt)
        status, failure_class, exit_code, reason = "failed", "runner_system_failure", None, None
        try:
            status, failure_class, exit_code, reason = self._run()
        except _Failed as failed:
            status, failure_class, reason = failed.status, failed.failure_class, str(failed)
            self.system(f"{'Job canceled' if status == 'canceled' else 'ERROR: Job failed'}: {reason}")
        except Exception as exc:  # a bug or an unexpected runner error: the job fails, the worker lives
            reason = self.log.mask_text(f"internal error: {type(exc).__name__}: {exc}")
            self.logger.opt(exception=exc).error("job failed on an unexpected error")
            self.system(f"ERROR: Job failed: {reason}")
        duration = round(time.monotonic() - self.start, 3)
        result = JobResult(status=status, failure_class=None if status == "success" else failure_class,
                           exit_code=exit_code, steps=self.steps, started_at=self.started_at,
                           finished_at=now_iso(), duration=duration, log_truncated=self.log.truncated,
                           reason=None if status == "success" else reason)
        self.log.close()
        self.logger.info("job ended: {} {} in {}s", status, result.failure_class or "", duration)
        return result

    def _run(self) -> tuple[str, str | None, int | None, str | None]:
        job, request, settings = self.job, self.request, self.settings
        image = _image_name(job)
        self.system(f"Running job `{job.name}` (stage {job.stage}, attempt {request.attempt}) of run "
                    f"{request.run_id} for {request.ref or '?'} at {request.sha[:8] or '?'} on {socket.gethostname()}")
        if not job.runnable:
            raise _Failed("not_runnable", f"job `{job.name}` triggers a downstream pipeline (`trigger:`), "
                                          "which ci-queue does not run")
        if self.refused:
            raise _Failed("missing_secret", "; ".join(refusal.message for refusal in self.refused))
        if self.missing is not None:
            raise _Failed("missing_secret", f"{self.missing}; the job names it under `secrets:`")
        if self.canceled():
            raise _Failed("canceled", "the job was canceled before it started", status="canceled")

        runner = self.runner
        if runner is None:
            try:
                runner, executor = _make_runner(job, settings)
            except ImportError as exc:
                raise _Failed("runner_system_failure", f"the docker executor is not available here: {exc}") from None
        else:
            executor = _executor_of(runner)
        if executor == "shell" and request.trust is not None and request.trust.fork and not settings.shell_allow_forks:
            raise _Failed("fork_refused", "the shell executor does not run merge requests from forks: their code "
                                          "would run as this worker's user, on this host. Run it on a docker worker "
                                          "(CIQ_EXECUTOR=docker, or an `image:`), or set CIQ_SHELL_ALLOW_FORKS=1 on "
                                          "a worker meant for it")
        if image and executor == "shell":
            why = "this worker runs every job with the shell executor (CIQ_EXECUTOR=shell)" \
                if settings.executor == "shell" else "the job runs with the shell executor"
            self.system(f"warning: the job's image `{image}` is ignored: {why}")
        if job.services and executor != "docker":
            names = ", ".join(str(s.get("name", s)) if isinstance(s, dict) else str(s) for s in job.services)
            self.system(f"warning: `services:` ({names}) are not supported by the {executor} executor and are "
                        "ignored")
        data = None
        if request.channel is not None:
            data = JobData(request.channel, job, self.workspace, self.log, settings, self.canceled)
        elif job.artifacts or job.cache:
            self.system("warning: `artifacts:` and `cache:` need the web app; this job runs without one (ignored)")
        sources: list[dict[str, object]] = []
        if data is not None and request.fetch_artifacts:
            with _data_errors():
                sources = data.dependencies()

        timeout = int(job.timeout or settings.default_job_timeout)
        in_container = executor != "shell"
        if in_container:
            project_dir = f"{CONTAINER_BUILDS_DIR}/{request.project_path.strip('/') or 'project'}"
            builds_dir = CONTAINER_BUILDS_DIR
        else:
            project_dir = str(self.workspace)
            builds_dir = request.builds_dir or str(self.workspace.parent)
        env = self._environment(project_dir, builds_dir, timeout, executor, JobData.dotenv(sources))
        too_large = environment_problem(env, arg_max() - ENVIRONMENT_RESERVE)
        if too_large:  # the kernel would refuse every step (E2BIG), on every host: no retry
            raise _Failed("environment_too_large", too_large)

        service_env = self._service_environment(env) if job.services and in_container else {}
        services = tuple(self._service(spec, service_env) for spec in job.services if isinstance(spec, dict)) \
            if in_container else ()
        job_env = JobEnvironment(workspace=self.workspace, project_dir=project_dir,
                                 image=image if in_container else None, run_id=request.run_id, job_name=job.name,
                                 attempt=request.attempt, services=services, service_env=service_env,
                                 cancel=self.canceled)
        try:
            try:
                runner.prepare(job_env, self.log)
            except InfrastructureError as exc:
                raise _Failed(exc.failure_class, self.log.mask_text(str(exc) or type(exc).__name__)) from None
            if self.canceled():  # while the runner prepared (an image pull, the wait for services)
                raise _Failed("canceled", "the job was canceled before its script started", status="canceled")
            if data is not None:
                with _data_errors():
                    protected = self.protected
                    if protected is None:  # no control plane (`ci-queue exec`): what the plan said
                        protected = env.get("CI_COMMIT_REF_PROTECTED") == "true"
                    data.restore_caches(env, protected)
                    data.download_artifacts(sources)
            return self._steps(runner, env, timeout, data)
        finally:
            try:
                runner.cleanup()
            except Exception as exc:  # cleanup must never raise; say so if it does
                self.logger.opt(exception=exc).error("runner cleanup failed")

    def _environment(self, project_dir: str, builds_dir: str, timeout: int, executor: str,
                     dotenv: dict[str, str]) -> dict[str, str]:
        """GitLab's precedence, lowest first: pipeline and predefined variables, the job's
        variables, the dotenv variables of its dependencies, the variables given with the event,
        the secrets; then the run's trusted CI_COMMIT_REF_PROTECTED, which nothing overrides."""
        request, job = self.request, self.job
        base = {**request.pipeline_variables,
                **predefined_job_variables(request, project_dir, builds_dir, timeout, executor, self.started_at)}
        variables = expand_job_variables(dict(job.variables), {**base, **self.secrets},
                                         frozenset(job.raw_variables))
        given = {name: variables[name] for name in request.trigger_variables if name in variables}
        env = {**base, **variables, **dotenv, **given, **self.secrets}
        if self.protected is not None:
            env["CI_COMMIT_REF_PROTECTED"] = "true" if self.protected else "false"
        return env

    def _keep_data(self, data: JobData, status: str, failure_class: str | None, reason: str | None,
                   env: dict[str, str]) -> tuple[str, str | None, str | None]:
        """Caches and artifacts after the steps; a failure to keep the artifacts fails a job that
        succeeded (as GitLab), and is only a warning for a job that failed already."""
        try:
            with _data_errors():
                data.save_caches(status)
                data.upload_artifacts(status, env)
        except _Failed as failed:
            if status == "success":
                return "failed", failed.failure_class, str(failed)
            self.system(f"warning: {failed}", "upload_artifacts")
        return status, failure_class, reason

    def _service_environment(self, env: dict[str, str]) -> dict[str, str]:
        """What a service container gets of the job's environment: everything but the secrets, and
        but any variable whose value holds a secret (``X: "$TOKEN"``). GitLab too passes only
        public variables to services."""
        values = [part for value in self.secrets.values() for part in str(value).split("\n") if part.strip()]
        return {name: value for name, value in env.items()
                if name not in self.secrets and not any(secret in value for secret in values)}

    def _service(self, spec: dict[str, Any], service_env: dict[str, str]) -> dict[str, Any]:
        """A planned service with its ``variables`` expanded against the job's (secret-less) ones."""
        variables = spec.get("variables")
        if not isinstance(variables, dict) or not variables:
            return dict(spec)
        plain = {str(k): "" if v is None else str(v) for k, v in variables.items()}
        return {**spec, "variables": expand_job_variables(plain, service_env)}

    def _run_step(self, runner: StepRunner, spec: StepSpec) -> StepOutcome:
        logger = self.logger.bind(step=spec.name)
        logger.info("step started (timeout {:.0f}s)", spec.timeout)
        try:
            outcome = runner.run(spec, self.log, self.canceled)
        except InfrastructureError as exc:
            raise _Failed(exc.failure_class, self.log.mask_text(str(exc) or type(exc).__name__)) from None
        self.steps.append(StepRecord.from_outcome(spec.name, outcome))
        logger.info("step ended: {} (exit code {}) in {}s", outcome.status, outcome.exit_code, outcome.duration)
        return outcome

    def _steps(self, runner: StepRunner, env: dict[str, str], timeout: int,
               data: JobData | None) -> tuple[str, str | None, int | None, str | None]:
        job, settings = self.job, self.settings
        commands = [*job.before_script, *job.script]
        remaining = max(0.1, timeout - (time.monotonic() - self.start))
        self.system("Executing step `script`" + (" (before_script + script)" if job.before_script else ""),
                    SCRIPT_STEP)
        outcome = self._run_step(runner, StepSpec(SCRIPT_STEP, build_script(commands), env, remaining))
        if outcome.status == "success":
            status, failure_class, reason = "success", None, None
        elif outcome.status == "timeout":
            status, failure_class, reason = "failed", "timeout", f"the job exceeded its timeout of {timeout}s"
        elif outcome.status == "canceled":
            status, failure_class, reason = "canceled", "canceled", "the job was canceled"
        else:
            status, failure_class, reason = "failed", "script_failure", f"exit code {outcome.exit_code}"
            if outcome.detail:  # the runner knows why (the kernel killed it for memory)
                reason = f"{outcome.detail} (exit code {outcome.exit_code})"

        if job.after_script and status != "canceled":
            self.system("Executing step `after_script`", AFTER_SCRIPT_STEP)
            after_env = {**env, "CI_JOB_STATUS": status}
            spec = StepSpec(AFTER_SCRIPT_STEP, build_script(job.after_script), after_env,
                            float(settings.after_script_timeout))
            try:
                after = self._run_step(runner, spec)
                detail = {"success": "", "timeout": f"timed out after {settings.after_script_timeout}s",
                          "canceled": "was canceled"}.get(after.status, f"failed with exit code {after.exit_code}"
                                                          + (f": {after.detail}" if after.detail else ""))
            except _Failed as failed:  # the runner broke: that does not undo the script's result
                detail = f"could not run: {failed}"
            except Exception as exc:
                self.logger.opt(exception=exc).error("after_script failed on an unexpected error")
                detail = self.log.mask_text(f"could not run: internal error: {type(exc).__name__}: {exc}")
            if detail:
                self.system(f"warning: after_script {detail}; the job's status does not change", AFTER_SCRIPT_STEP)

        if data is not None:
            status, failure_class, reason = self._keep_data(data, status, failure_class, reason, env)

        if status == "success":
            self.system("Job succeeded", SCRIPT_STEP if not job.after_script else AFTER_SCRIPT_STEP)
        elif status == "canceled":
            self.system("Job canceled", SCRIPT_STEP)
        else:
            self.system(f"ERROR: Job failed: {reason}", AFTER_SCRIPT_STEP if job.after_script else SCRIPT_STEP)
        return status, failure_class, outcome.exit_code if failure_class == "script_failure" else None, reason


@contextlib.contextmanager
def _data_errors() -> Iterator[None]:
    """Artifacts' and caches' failures as the job's (``_Failed``)."""
    try:
        yield
    except DataFailure as exc:
        raise _Failed(exc.failure_class, str(exc)) from None
    except InfrastructureError as exc:
        raise _Failed(exc.failure_class, str(exc) or type(exc).__name__) from None
