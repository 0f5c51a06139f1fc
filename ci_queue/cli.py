"""The ``ci-queue`` command line.

Every failure a user can cause ends in a clear message and an exit status, never a traceback:
0 success, 1 the input is invalid (or the job failed), 2 usage error, 3 an internal error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import click

from ci_queue.pipeline.durations import format_duration
from ci_queue.pipeline.errors import Diagnostic, PipelineError
from ci_queue.pipeline.model import EVENT_KINDS, MergeRequest, Plan, PlanContext
from ci_queue.pipeline.planner import plan_file, repository_root, validate_file

EXIT_INVALID = 1
EXIT_INTERNAL = 3


def _print_diagnostics(diagnostics: list[Diagnostic]) -> None:
    for diagnostic in diagnostics:
        click.echo(diagnostic.format(), err=True)
        if diagnostic.hint:
            click.echo(f"    hint: {diagnostic.hint}", err=True)


def _parse_vars(pairs: tuple[str, ...]) -> dict[str, str]:
    variables = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--var")
        variables[name] = value
    return variables


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ci-queue")
def cli() -> None:
    """ci-queue: a distributed CI backend for GitLab-CI-compatible pipelines."""


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--repo-dir", type=click.Path(file_okay=False, exists=True),
              help="Directory `include: local` paths are relative to (default: the file's git work tree).")
def validate(files: tuple[str, ...], repo_dir: str | None) -> None:
    """Check pipeline files; print every problem as FILE:LINE:COL: message."""
    invalid = False
    for name in files:
        diagnostics = validate_file(Path(name), repo_dir, display_name=name)
        _print_diagnostics(diagnostics)
        errors = [d for d in diagnostics if d.severity == "error"]
        invalid |= bool(errors)
        if not errors:
            warned = len(diagnostics)
            click.echo(f"{name}: valid" + (f" ({warned} warning{'s' * (warned != 1)})" if warned else ""))
    sys.exit(EXIT_INVALID if invalid else 0)


_EVENT_OPTIONS = (
    click.option("--event", "kind", type=click.Choice(EVENT_KINDS), default=None,
                 help="Event kind (default: push, or tag with --tag)."),
    click.option("--branch", help="Branch pushed (the source branch of a merge request)."),
    click.option("--tag", help="Tag pushed."),
    click.option("--default-branch", default="main", show_default=True),
    click.option("--target-branch", help="Target branch of a merge request (default: the default branch)."),
    click.option("--var", "var_pairs", multiple=True, metavar="K=V", help="A pipeline variable (repeatable)."),
)


def event_options(command: Any) -> Any:
    """The options saying which event a pipeline is planned for (``plan``, ``exec``): ``--event``,
    ``--branch``, ``--tag``, ``--default-branch``, ``--target-branch``, ``--var``."""
    for option in reversed(_EVENT_OPTIONS):
        command = option(command)
    return command


def event_context(kind: str | None, branch: str | None, tag: str | None, default_branch: str,
                  target_branch: str | None, var_pairs: tuple[str, ...], *, repo_dir: Path,
                  changed: tuple[str, ...] = (), sha: str | None = None) -> PlanContext:
    """The ``PlanContext`` of the :func:`event_options` (raises click.UsageError / BadParameter)."""
    if branch and tag:
        raise click.UsageError("give --branch or --tag, not both")
    kind = kind or ("tag" if tag else "push")
    if kind == "tag" and not tag:
        raise click.UsageError("--event tag needs --tag")
    branch = branch if branch or tag else default_branch
    merge_request = None
    if kind == "merge_request":
        merge_request = MergeRequest(source_branch=branch or "", target_branch=target_branch or default_branch)
    extra = {"sha": sha} if sha else {}
    return PlanContext(kind=kind, branch=branch, tag=tag, default_branch=default_branch,
                       variables=_parse_vars(var_pairs), merge_request=merge_request,
                       changed_files=tuple(changed) if changed else None, repo_dir=str(repo_dir), **extra)


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@event_options
@click.option("--changed", multiple=True, metavar="PATH",
              help="A changed file, for `changes:` (repeatable; none given: every `changes:` holds).")
@click.option("--repo-dir", type=click.Path(file_okay=False, exists=True),
              help="Repository tree for `include: local` and `exists:` (default: the file's git work tree).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def plan(file: str, kind: str | None, branch: str | None, tag: str | None, default_branch: str,
         target_branch: str | None, var_pairs: tuple[str, ...], changed: tuple[str, ...],
         repo_dir: str | None, fmt: str) -> None:
    """Show the jobs a pipeline file runs for an event."""
    root = Path(repo_dir) if repo_dir else repository_root(file)
    ctx = event_context(kind, branch, tag, default_branch, target_branch, var_pairs, repo_dir=root, changed=changed)
    try:
        result = plan_file(file, ctx, root, display_name=file)
    except PipelineError as exc:
        _print_diagnostics(exc.diagnostics)
        sys.exit(EXIT_INVALID)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_diagnostics(result.warnings)
        click.echo(_plan_table(result, ctx))


def _plan_table(result: Plan, ctx: PlanContext) -> str:
    what = f"tag {ctx.tag}" if ctx.tag else f"{ctx.kind} to {ctx.ref_name}" if ctx.ref_name else ctx.kind
    if result.skipped_reason:
        return f"No pipeline for {what}: {result.skipped_reason}."
    if not result.jobs:
        return f"No jobs for {what}: the rules of every job exclude this event."
    lines = [f"Pipeline{' ' + repr(result.name) if result.name else ''} for {what}: "
             f"{len(result.jobs)} job{'s' * (len(result.jobs) != 1)} in {len(result.stages)} "
             f"stage{'s' * (len(result.stages) != 1)}"]
    width = max((len(j.name) for j in result.jobs), default=10)
    for stage in result.stages:
        lines.append(f"\n{stage}")
        for job in (j for j in result.jobs if j.stage == stage):
            lines.append(f"  {job.name:<{width}}  {_job_summary(job)}")
    return "\n".join(lines)


def _job_summary(job: Any) -> str:
    parts = [job.when]
    if job.allow_failure_exit_codes:
        parts.append(f"may fail with {','.join(map(str, job.allow_failure_exit_codes))}")
    elif job.allow_failure:
        parts.append("may fail")
    if job.needs is not None:
        parts.append("needs: " + (", ".join(n.job for n in job.needs) or "[]"))
    if job.image:
        parts.append(f"image: {job.image['name']}")
    if job.tags:
        parts.append(f"tags: {','.join(job.tags)}")
    if job.timeout:
        parts.append(f"timeout: {format_duration(job.timeout)}")
    if job.retry.max:
        parts.append(f"retry: {job.retry.max}")
    if not job.runnable:
        parts.append("trigger (not run by ci-queue)")
    return "  ".join(parts)


# -- serving and the whole system on one machine -------------------------------------------------------
def _add_service_commands() -> None:
    from ci_queue.serve import serve_command
    from ci_queue.standalone import standalone_command

    cli.add_command(serve_command, "serve")
    cli.add_command(standalone_command, "standalone")


_add_service_commands()


# -- client commands: talk to a server's runs API ------------------------------------------------------
API_EVENTS = ("push", "tag", "merge_request", "web", "schedule", "api", "trigger")


class CommandError(click.ClickException):
    """A failure the user can act on: one line on stderr, exit 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"ci-queue: {self.message}", err=True)


def client_options(command: Any) -> Any:
    """``--server`` and ``--token`` of every client command."""
    command = click.option("--token", metavar="TOKEN", default=None,
                           help="API token (default: CIQ_API_TOKEN, else the one `ci-queue standalone` stored)."
                           )(command)
    return click.option("--server", metavar="URL", default=None,
                        help="The ci-queue server (default: CIQ_SERVER_URL, else http://127.0.0.1:8080).")(command)


def client_errors(function: Any) -> Any:
    """Turn the client's errors into one line and exit 1 (Ctrl-C is `main`'s: exit 130)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ci_queue.client import ClientError

        try:
            return function(*args, **kwargs)
        except ClientError as exc:
            raise CommandError(str(exc)) from None
        except BrokenPipeError:  # `ci-queue logs ... | head`
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)

    return wrapper


def _client(server: str | None, token: str | None) -> Any:
    from ci_queue.client import Client, resolve_token
    from ci_queue.settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    return Client(server or settings.server_url, resolve_token(token, settings.api_token),
                  on_retry=lambda text: click.echo(f"ci-queue: {text}", err=True))


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise click.UsageError("git is not installed; give --repo a clone URL and --ref") from None
    return result.stdout.strip() if result.returncode == 0 else None


def _is_url(value: str) -> bool:
    return "://" in value or bool(re.match(r"^[\w.+-]+@[\w.-]+:", value))


def local_repository(path_text: str, ref: str | None) -> tuple[str, str, str, str]:
    """``(name, file:// URL of the work tree's root, ref, sha)`` of a local repository: its current
    branch and HEAD, or ``ref`` and the commit it names."""
    path = Path(path_text).expanduser()
    if not path.exists():
        raise click.BadParameter(f"{path_text}: no such file or directory", param_hint="--repo")
    top = _git(["rev-parse", "--show-toplevel"], path if path.is_dir() else path.parent)
    if not top:
        raise click.BadParameter(f"{path_text} is not in a git repository", param_hint="--repo")
    root = Path(top).resolve()
    if ref:
        sha = _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], root)
        if not sha:
            raise click.BadParameter(f"no branch, tag or commit {ref!r} in {root}", param_hint="--ref")
        ref = ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
    else:
        branch = _git(["symbolic-ref", "--quiet", "--short", "HEAD"], root)
        if not branch:
            raise click.UsageError(f"HEAD of {root} is detached: say which branch or tag with --ref")
        sha = _git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], root)
        if not sha:
            raise click.UsageError(f"{root} has no commit yet: commit the pipeline file first")
        ref = branch
    if _git(["status", "--porcelain", "--untracked-files=no"], root):
        click.echo(f"note: uncommitted changes in {root} are not part of the run (it runs commit {sha[:12]})",
                   err=True)
    return root.name, root.as_uri(), ref, sha


@cli.command("run")
@click.option("--repo", "repo_arg", default=".", show_default=True, metavar="PATH_OR_URL",
              help="A local git repository (its file:// URL, current branch and HEAD) or a clone URL (needs --ref).")
@click.option("--ref", default=None, help="Branch or tag to run (a local repository: default its current branch).")
@click.option("--var", "var_pairs", multiple=True, metavar="K=V", help="A pipeline variable (repeatable).")
@click.option("--event", type=click.Choice(API_EVENTS), default="push", show_default=True,
              help="The event the run is planned for (`tag`: --ref is the tag).")
@click.option("--no-wait", is_flag=True, help="Print the run's id and return instead of following it.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: the final run (with --no-wait: the created run) as JSON on stdout.")
@client_options
@client_errors
def run_command(repo_arg: str, ref: str | None, var_pairs: tuple[str, ...], event: str, no_wait: bool, fmt: str,
                server: str | None, token: str | None) -> None:
    """Trigger a run and follow it live; exit 0 only if it succeeded."""
    variables = _parse_vars(var_pairs)
    if event == "tag" and not ref:
        raise click.UsageError("--event tag needs --ref TAG")
    if _is_url(repo_arg):
        if not ref:
            raise click.UsageError("--ref is needed with a clone URL (which branch or tag to run)")
        name, clone_url, sha = "", repo_arg, ""
    else:
        name, clone_url, ref, sha = local_repository(repo_arg, ref)
    client = _client(server, token)
    # one key per invocation: the client's retries (server away) answer this run, never a second one
    created = client.create_run(clone_url=clone_url, ref=ref, repo=name, sha=sha, event=event, variables=variables,
                                idempotency_key=str(uuid.uuid4()))
    run_id = str(created.get("id") or created.get("run_id") or "")
    if not run_id:
        raise CommandError(f"{client.server} created a run but did not say its id: {created}")
    if no_wait:
        if fmt == "json":
            click.echo(json.dumps(created, indent=2))
        else:
            click.echo(f"run {run_id} queued ({name or clone_url} {ref}{' @ ' + sha[:12] if sha else ''})")
            click.echo(f"  follow it: ci-queue status {run_id}; stop it: ci-queue cancel {run_id}")
        return
    display = sys.stderr if fmt == "json" else sys.stdout
    click.echo(f"run {run_id}: {name or clone_url} {ref}{' @ ' + sha[:12] if sha else ''} ({event})", file=display)
    try:
        final = follow_run(client, run_id, display)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; run {run_id} goes on (ci-queue status {run_id}, "
                   f"ci-queue cancel {run_id})", err=True)
        sys.exit(130)
    if fmt == "json":
        click.echo(json.dumps(final, indent=2))
    else:
        _print_failures(client, final)
    sys.exit(0 if final.get("status") == "success" else 1)


QUEUED_HINT_SECONDS = 15


def follow_run(client: Any, run_id: str, stream: Any, interval: float = 0.5) -> dict[str, Any]:
    """Poll the run until it ends, showing its jobs on ``stream`` (redrawn in place on a terminal,
    else one line per change); returns the final run."""
    from ci_queue.client import TERMINAL_RUN_STATUSES, ClientError, Unavailable

    view = RunView(stream)
    lost_since: float | None = None
    while True:
        try:
            run = client.get_run(run_id)
            lost_since = None
        except ClientError as exc:
            if not isinstance(exc, Unavailable):  # a real answer: 401, 404 (expired)... no point in waiting
                raise
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > 30:
                raise
            time.sleep(1)
            continue
        if run.get("status") == "queued" and time.monotonic() - view.started > QUEUED_HINT_SECONDS:
            view.note = (f"still queued after {QUEUED_HINT_SECONDS}s: is a worker running "
                         "(`ci-queue worker`, or `ci-queue standalone`)?")
        view.update(run)
        if run.get("status") in TERMINAL_RUN_STATUSES:
            view.finish(run)
            return run
        time.sleep(interval)


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _duration(start: str | None, end: str | None, now: datetime | None = None) -> float | None:
    began = _parse_time(start)
    ended = _parse_time(end) or (now if began else None)
    return (ended - began).total_seconds() if began and ended else None


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def failure_allowed(job: dict[str, Any]) -> bool:
    allowed = job.get("allow_failure")
    if isinstance(allowed, dict):
        return job.get("exit_code") in (allowed.get("exit_codes") or [])
    return bool(allowed)


def job_status_text(job: dict[str, Any]) -> str:
    status = str(job.get("status") or "?")
    if status == "failed" and failure_allowed(job):
        return "failed (allowed)"
    return status


def _failure_text(job: dict[str, Any]) -> str:
    reason = job.get("failure_reason") or ""
    if job.get("exit_code") not in (None, 0) and job.get("status") == "failed":
        reason = f"{reason} (exit {job['exit_code']})" if reason else f"exit {job['exit_code']}"
    return reason


_COLORS = {"success": "green", "failed": "red", "failed (allowed)": "yellow", "running": "cyan", "pending": "blue",
           "canceled": "magenta", "error": "red", "manual": "blue"}
_ICONS = {"success": ("✔", "+"), "failed": ("✘", "x"), "failed (allowed)": ("!", "!"), "running": ("●", "*"),
          "pending": ("◌", "o"), "created": ("·", "."), "skipped": ("\u2013", "-"), "manual": ("▶", ">"),
          "canceled": ("⊘", "/")}


class RunView:
    """The live display of a run: a table redrawn in place on a terminal, else a line per change."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        encoding = (getattr(stream, "encoding", None) or "").lower()
        self.unicode = encoding.startswith("utf")
        self.drawn = 0
        self.seen: dict[str, tuple[Any, ...]] = {}
        self.run_status: str | None = None
        self.started = time.monotonic()
        self.note: str | None = None  # a hint shown once (a line) or under the table (a terminal)
        self._noted: str | None = None

    def update(self, run: dict[str, Any]) -> None:
        if self.tty:
            self._redraw(run)
        else:
            self._changes(run)

    def finish(self, run: dict[str, Any]) -> None:
        """The last line: how the run ended (after a last ``update``)."""
        took = _duration(run.get("created_at"), run.get("finished_at"))
        status = run.get("status")
        word = {"success": "succeeded", "failed": "failed", "canceled": "was canceled", "skipped": "was skipped",
                "error": "ended in error"}.get(str(status), str(status))
        line = f"run {run.get('id')} {word}" + (f" in {_seconds(took)}" if took is not None else "")
        self._echo(self._style(line, str(status), bold=True))
        if run.get("error"):
            self._echo(str(run["error"]))

    def _echo(self, text: str) -> None:
        click.echo(text, file=self.stream)
        with contextlib.suppress(Exception):
            self.stream.flush()

    def _style(self, text: str, status: str, bold: bool = False) -> str:
        if not self.tty or status not in _COLORS:
            return text
        return click.style(text, fg=_COLORS[status], bold=bold)

    def _icon(self, status: str) -> str:
        pair = _ICONS.get(status, ("?", "?"))
        return pair[0] if self.unicode else pair[1]

    def _changes(self, run: dict[str, Any]) -> None:
        elapsed = f"[{_seconds(time.monotonic() - self.started):>7}]"
        if self.note and self.note != self._noted:
            self._noted = self.note
            self._echo(f"{elapsed} {self.note}")
        jobs = run.get("jobs") or []
        if run.get("status") != self.run_status:
            self.run_status = run.get("status")
            if self.run_status not in ("success", "failed", "canceled", "skipped", "error"):
                self._echo(f"{elapsed} run {self.run_status}")
        if jobs and not self.seen:
            stages = list(dict.fromkeys(str(j.get("stage")) for j in jobs))
            self._echo(f"{elapsed} planned {len(jobs)} job{'s' * (len(jobs) != 1)} in {len(stages)} "
                       f"stage{'s' * (len(stages) != 1)}: {', '.join(stages)}")
        width = max((len(j["name"]) for j in jobs), default=0)
        for job in jobs:
            key = (job.get("status"), job.get("attempt"))
            if self.seen.get(job["name"]) == key:
                continue
            self.seen[job["name"]] = key
            if job.get("status") == "created":
                continue
            line = f"{elapsed} {job['name']:<{width}}  {job_status_text(job)}"
            details = []
            if (job.get("attempt") or 1) > 1:
                details.append(f"attempt {job['attempt']}")
            if job.get("worker") and job.get("status") in ("running", "success", "failed"):
                details.append(f"on {job['worker']}")
            if job.get("status") in ("success", "failed", "canceled"):
                took = _duration(job.get("started_at"), job.get("finished_at"))
                if took is not None:
                    details.append(_seconds(took))
            if _failure_text(job) and job.get("status") == "failed":
                details.append(_failure_text(job))
            self._echo(line + (f"  ({', '.join(details)})" if details else ""))

    def _redraw(self, run: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        width = shutil.get_terminal_size((100, 24)).columns - 1
        jobs = run.get("jobs") or []
        took = _duration(run.get("started_at") or run.get("created_at"), run.get("finished_at"), now)
        status = str(run.get("status"))
        lines = [self._style(f"run {run.get('id')}  {status}  {_seconds(took)}", status, bold=True)]
        if not jobs and status == "queued":
            lines.append("  planning...")
        name_w = max((len(j["name"]) for j in jobs), default=4)
        stage_w = max((len(str(j.get("stage") or "")) for j in jobs), default=5)
        for job in jobs:
            text = job_status_text(job)
            duration = _duration(job.get("started_at"), job.get("finished_at"), now)
            attempt = f" #{job['attempt']}" if (job.get("attempt") or 1) > 1 else ""
            detail = _failure_text(job) if job.get("status") == "failed" else (job.get("worker") or "")
            plain = (f"  {self._icon(text)} {job['name']:<{name_w}}  {job.get('stage') or '':<{stage_w}}  "
                     f"{text + attempt:<18} {_seconds(duration):>7}  {detail}")[:width]
            lines.append(self._style(plain, text))
        if self.note and status == "queued":
            lines.append(self.note[:width])
        out = "".join(f"\x1b[{self.drawn}F\x1b[J" if self.drawn else "")
        self.stream.write(out + "\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn = len(lines)


def _print_failures(client: Any, run: dict[str, Any], tail: int = 20) -> None:
    """For each job that failed the run: the end of its log, and where the rest is."""
    from ci_queue.client import ClientError

    failed = [j for j in run.get("jobs") or [] if j.get("status") == "failed" and not failure_allowed(j)]
    for job in failed:
        try:
            text, _ = client.job_log(run["id"], job["name"])
        except ClientError as exc:
            click.echo(f"(the log of {job['name']} could not be read: {exc})")
            continue
        lines = text.splitlines()
        click.echo(f"\n--- {job['name']}: {_failure_text(job) or 'failed'}; last {min(tail, len(lines))} of "
                   f"{len(lines)} log lines (all: ci-queue logs {run['id']} {shlex.quote(job['name'])})")
        for line in lines[-tail:]:
            click.echo(f"    {line}")
    if run.get("status") != "success":
        click.echo(f"\ndetails: ci-queue status {run['id']}")


@cli.command("status")
@click.argument("run_id", metavar="RUN")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@client_options
@client_errors
def status_command(run_id: str, fmt: str, server: str | None, token: str | None) -> None:
    """Show a run and its jobs: stage, status, attempt, worker, duration, failure reason."""
    run = _client(server, token).get_run(run_id)
    if fmt == "json":
        click.echo(json.dumps(run, indent=2))
    else:
        click.echo(run_table(run))


def run_table(run: dict[str, Any]) -> str:
    took = _duration(run.get("started_at") or run.get("created_at"), run.get("finished_at"), datetime.now(UTC))
    lines = [f"run {run.get('id')}  {run.get('status')}  {run.get('repo')} {run.get('ref')}"
             f"{' @ ' + str(run['sha'])[:12] if run.get('sha') else ''}  ({run.get('event')})",
             f"created {run.get('created_at')}"
             + (f", started {run['started_at']}" if run.get("started_at") else "")
             + (f", finished {run['finished_at']}" if run.get("finished_at") else "")
             + (f" ({_seconds(took)})" if took is not None else "")]
    if run.get("fork") or run.get("protected"):
        lines.append("a merge request from a fork: no secrets" if run.get("fork") else "a protected ref")
    if run.get("approved_by"):
        lines.append(f"approved by {run['approved_by']} at {run.get('approved_at')}")
    if run.get("error"):
        lines.append("error: " + str(run["error"]).replace("\n", "\n       "))
    jobs = run.get("jobs") or []
    if not jobs:
        waiting = {"queued": " yet (planning)",
                   "waiting_approval": f" yet: waiting for approval (`ci-queue approve {run.get('id')}`)"}
        lines.append("no jobs" + waiting.get(str(run.get("status")), ""))
        return "\n".join(lines)
    now = datetime.now(UTC)
    rows = [("JOB", "STAGE", "STATUS", "ATTEMPT", "WORKER", "DURATION", "FAILURE")]
    for job in jobs:
        rows.append((job["name"], str(job.get("stage") or ""), job_status_text(job), str(job.get("attempt") or ""),
                     job.get("worker") or "", _seconds(_duration(job.get("started_at"), job.get("finished_at"), now)),
                     _failure_text(job) if job.get("status") in ("failed", "canceled") else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    return "\n".join(lines)


@cli.command("logs")
@click.argument("run_id", metavar="RUN")
@click.argument("job")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@client_options
@client_errors
def logs_command(run_id: str, job: str, follow: bool, server: str | None, token: str | None) -> None:
    """Print a job's log (all its attempts); --follow streams it live until the job ends."""
    from ci_queue.client import ClientError

    client = _client(server, token)
    try:
        if follow:
            _follow_log(client, run_id, job)
        else:
            text, _ = client.job_log(run_id, job)
            click.echo(text, nl=False)
    except ClientError as exc:
        if exc.status == 404:
            _explain_unknown_job(client, run_id, job, exc)
        raise


def _explain_unknown_job(client: Any, run_id: str, job: str, error: Exception) -> None:
    from ci_queue.client import ClientError

    try:
        names = [j["name"] for j in client.get_run(run_id).get("jobs") or []]
    except ClientError:
        return  # the run itself is unknown: the first message says so
    if job not in names:
        raise CommandError(f"run {run_id} has no job {job!r}; its jobs: {', '.join(names) or 'none yet'}")


def _follow_log(client: Any, run_id: str, job: str) -> None:
    """The SSE stream, resumed from the last line seen if the connection drops."""
    from ci_queue.client import ClientError

    offset: str | None = None
    lost_since: float | None = None
    while True:
        try:
            for event, event_id, data in client.stream_log(run_id, job, offset):
                lost_since = None
                if event == "line":
                    offset = event_id or offset
                    click.echo(data.get("text", "") if isinstance(data, dict) else str(data))
                elif event == "end":
                    return
        except ClientError as exc:
            if exc.status is not None:
                raise
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > 30:
                raise
            time.sleep(1)


def _answer(data: dict[str, Any], fmt: str, text: str) -> None:
    click.echo(json.dumps(data, indent=2) if fmt == "json" else text)


_FORMAT = click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)


def _run_action(name: str) -> Any:
    """The decorators every command that acts on one run shares (``cancel``, ``approve``,
    ``retry``): its RUN argument, ``--format``, the server options and one-line errors."""
    def decorate(function: Any) -> Any:
        for decorator in (client_errors, client_options, _FORMAT, click.argument("run_id", metavar="RUN"),
                          cli.command(name)):
            function = decorator(function)
        return function
    return decorate


@_run_action("cancel")
def cancel_command(run_id: str, fmt: str, server: str | None, token: str | None) -> None:
    """Cancel a run: jobs not started never start, running ones are stopped."""
    from ci_queue.client import TERMINAL_RUN_STATUSES

    answer = _client(server, token).cancel(run_id)
    status, stopping = answer.get("status"), answer.get("stopping") or 0
    if status in TERMINAL_RUN_STATUSES and status != "canceled" and not stopping:
        text = f"run {run_id} had already ended: {status}"
    else:
        text = f"run {run_id}: {status}" + (f", stopping {stopping} running job{'s' * (stopping != 1)}"
                                            if stopping else "")
    _answer(answer, fmt, text)


@_run_action("approve")
def approve_command(run_id: str, fmt: str, server: str | None, token: str | None) -> None:
    """Approve a run waiting for approval (a merge request from a fork): it is planned and run,
    still without secrets or protected caches."""
    answer = _client(server, token).approve(run_id)
    _answer(answer, fmt, f"run {answer.get('id', run_id)}: {answer.get('status')} (approved by "
                         f"{answer.get('approved_by')})")


@_run_action("retry")
@click.option("--wait", is_flag=True, help="Follow the run as `ci-queue run` does; exit 0 only if it succeeds.")
def retry_command(run_id: str, fmt: str, wait: bool, server: str | None, token: str | None) -> None:
    """Run the failed and canceled jobs of a run again (and what depends on them), as new attempts."""
    client = _client(server, token)
    answer = client.retry(run_id)
    retried = answer.get("retried", answer.get("jobs"))
    names = [j if isinstance(j, str) else j.get("name", "?") for j in retried] if isinstance(retried, list) else []
    text = f"run {answer.get('id', run_id)}: {answer.get('status', 'retried')}"
    if names:
        text += f"; again: {', '.join(names)}"
    if not wait:
        _answer(answer, fmt, text)
        return
    display = sys.stderr if fmt == "json" else sys.stdout
    click.echo(text, file=display)
    final = follow_run(client, run_id, display)
    if fmt == "json":
        click.echo(json.dumps(final, indent=2))
    else:
        _print_failures(client, final)
    sys.exit(0 if final.get("status") == "success" else 1)


# -- the farm (issue #12) --
@cli.command("workers")
@_FORMAT
@client_options
@client_errors
def workers_command(fmt: str, server: str | None, token: str | None) -> None:
    """Show every worker seen in the last hour: state, tags, load, running jobs, last heartbeat."""
    data = _client(server, token).workers()
    _answer(data, fmt, workers_table(data["workers"]))


def workers_table(workers: list[dict[str, Any]]) -> str:
    if not workers:
        return "no worker was seen in the last hour"
    rows = [("WORKER", "STATE", "TAGS", "LOAD", "HEARTBEAT", "RUNNING")]
    for worker in workers:
        running = ", ".join(f"{job['run_id'][:8]}/{job['job']}" for job in worker["running"]) or "-"
        rows.append((worker["name"], worker["state"], ",".join(worker["tags"]) or "-",
                     f"{len(worker['running'])}/{worker['concurrency']}",
                     f"{worker['seconds_since_heartbeat']:g}s ago", running))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
                     for row in rows)


@cli.command("artifacts")
@click.argument("run_id", metavar="RUN")
@click.argument("job")
@click.argument("path", required=False)
@click.option("-o", "--output", "output", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Directory to unpack the artifacts (or to write PATH) into.")
@click.option("--list", "listing", is_flag=True, help="Print the files of the artifacts (path, size) instead.")
@client_options
@client_errors
def artifacts_command(run_id: str, job: str, path: str | None, output: Path, listing: bool, server: str | None,
                      token: str | None) -> None:
    """Download a job's artifacts and unpack them into -o DIR, or only the file PATH of them.

    The archive is checked against its checksum and unpacked safely: an entry that would land
    outside DIR (``../``, an absolute name, a link out of it) stops the download with its name."""
    client = _client(server, token)
    if listing:
        answer = client.artifacts_listing(run_id, job)
        for entry in answer.get("files") or []:
            size = entry.get("size") if entry.get("type") == "file" else entry.get("type")
            click.echo(f"{size}\t{entry.get('path')}" + (f" -> {entry['target']}" if entry.get("target") else ""))
        return
    output.mkdir(parents=True, exist_ok=True)
    if path:
        target = output / PurePosixPath(path).name
        with client.artifact_file(run_id, job, path) as response, target.open("wb") as out:
            for chunk in response.iter_content(1 << 20):
                out.write(chunk)
        click.echo(f"{target} ({target.stat().st_size} bytes)")
        return
    _unpack_artifacts(client, run_id, job, output)


def _unpack_artifacts(client: Any, run_id: str, job: str, output: Path) -> None:
    import hashlib

    from ci_queue.artifacts.archive import UnsafeArchive, safe_extract

    with client.artifacts_archive(run_id, job) as response:
        expected = response.headers.get("X-Checksum-Sha256", "")
        digest = hashlib.sha256()

        class Hashing:
            def read(self, n: int = -1) -> bytes:
                data = response.raw.read(n if n >= 0 else None)
                digest.update(data)
                return data

        reader = Hashing()
        try:
            entries = safe_extract(reader, output)
        except UnsafeArchive as exc:
            raise CommandError(f"refused the artifacts of {job!r}: {exc}") from None
        while reader.read(1 << 20):
            pass
    if expected and digest.hexdigest() != expected:
        raise CommandError(f"the artifacts of {job!r} arrived damaged (checksum mismatch); what was unpacked into "
                           f"{output} is incomplete: download them again")
    files = sum(entry.type == "file" for entry in entries)
    click.echo(f"unpacked {files} files of the artifacts of {job!r} into {output}")


@cli.command("play")
@click.argument("run_id", metavar="RUN")
@click.argument("job")
@_FORMAT
@client_options
@client_errors
def play_command(run_id: str, job: str, fmt: str, server: str | None, token: str | None) -> None:
    """Start a manual job."""
    answer = _client(server, token).play(run_id, job)
    _answer(answer, fmt, f"run {run_id}, job {answer.get('job', job)}: {answer.get('status')} "
                         f"(attempt {answer.get('attempt')})")


@cli.command("audit")
@click.option("--since", default=None, metavar="WHEN",
              help="Records from then on: a duration back from now (1h, 2 days) or an ISO 8601 time.")
@click.option("--action", default=None, help="Only this action (create_run, cancel_run, webhook_run, ...).")
@click.option("--by", "token_name", default=None, metavar="NAME",
              help="Only the calls of the token of this name (webhook:<provider> for webhook runs).")
@click.option("--run", "run_id", default=None, metavar="RUN", help="Only the records of this run.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="The newest records at most.")
@_FORMAT
@client_options
@client_errors
def audit_command(since: str | None, action: str | None, token_name: str | None, run_id: str | None, limit: int,
                  fmt: str, server: str | None, token: str | None) -> None:
    """The audit log (a token with the admin scope): who changed what, from where, with what answer,
    oldest first."""
    client = _client(server, token)
    filters = {"since": _since(since), "action": action, "token": token_name, "run_id": run_id}
    records: list[dict[str, Any]] = []
    before = None
    while len(records) < limit:
        page = client.audit(**filters, before=before, limit=min(limit - len(records), 500))
        records += page.get("entries") or []
        before = page.get("next")
        if not before:
            break
    records.reverse()
    if fmt == "json":
        click.echo(json.dumps(records, indent=2))
        return
    for record in records:
        target = record.get("run_id") or record.get("path") or ""
        if record.get("job"):
            target += f" {record['job']}"
        click.echo(f"{record.get('time')}  {record.get('status')}  {record.get('action') or record.get('method')}"
                   f"  {target}  {record.get('repo') or '-'}  by {record.get('token') or '?'}"
                   f" from {record.get('source') or '?'}")


def _since(value: str | None) -> str | None:
    """``--since``: an ISO 8601 time as given, or a duration back from now as one."""
    if not value:
        return None
    from datetime import timedelta

    from ci_queue.pipeline.durations import DurationError, parse_duration

    if re.match(r"\d{4}-\d{2}-\d{2}", value):
        return value
    try:
        seconds = parse_duration(value)
    except DurationError as exc:
        raise click.BadParameter(f"{value!r}: neither an ISO 8601 time nor a duration ({exc})",
                                 param_hint="--since") from None
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="seconds").replace("+00:00", "Z")


def _add_access_commands() -> None:
    from ci_queue.token_commands import token_group

    cli.add_command(token_group, "token")


_add_access_commands()


def _load_plugin_commands() -> None:
    """Commands of the execution plane (``exec``, ``worker``) live in ``workers`` and register
    through the ``ci_queue.commands`` entry point group, so ``ci_queue`` never imports ``workers``
    (a control-plane host needs neither Docker nor git)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="ci_queue.commands"):
        if entry.name not in cli.commands:
            try:
                cli.add_command(entry.load(), entry.name)
            except ImportError as exc:  # the execution plane is not installed here
                click.echo(f"ci-queue: command `{entry.name}` is unavailable: {exc}", err=True)


def main() -> None:
    """Console entry point: no traceback ever reaches the user."""
    try:
        _load_plugin_commands()
        cli.main(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # the last line of defence: report, do not dump a traceback
        click.echo(f"ci-queue: internal error: {type(exc).__name__}: {exc}", err=True)
        click.echo("please report this with the command and the input that caused it", err=True)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
