"""``ci-queue exec``: run one planned job here, exactly as a worker would.

Registered on the ``ci-queue`` group through the ``ci_queue.commands`` entry point (``ci_queue``
never imports ``workers``). The pipeline is planned for the event as ``ci-queue plan`` does (same
options, same diagnostics); the job runs with ``run_job`` in ``--workdir`` (no checkout), with the
runner, timeouts, environment and log format of a worker; the log streams to the terminal.

Exit status: 0 the job succeeded; 1 it failed, the pipeline is invalid, or the job is not in the
pipeline for this event; 2 usage (unknown job, bad option or setting); 130 interrupted (Ctrl-C:
the job is canceled and everything it started is stopped first; 143 for SIGTERM).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import click

from ci_queue.cli import EXIT_INVALID, _print_diagnostics, event_context, event_options
from ci_queue.logging import configure
from ci_queue.pipeline.errors import PipelineError
from ci_queue.pipeline.model import Job, Plan, PlanContext
from ci_queue.pipeline.planner import load_spec, plan_file, repository_root
from ci_queue.settings import Settings, SettingsError
from workers.job import JobRequest, JobResult, run_job
from workers.logs import TerminalSink

EXIT_USAGE = 2
ZERO_SHA = "0" * 40


def _head_sha(workdir: Path) -> str | None:
    """The commit checked out in ``workdir`` (read-only ``git rev-parse``), if it is a git work tree."""
    try:
        result = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=workdir, capture_output=True,
                                text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else None


def _event_text(ctx: PlanContext) -> str:
    if ctx.tag:
        return f"tag {ctx.tag}"
    return f"a {ctx.kind} to {ctx.ref_name}" if ctx.ref_name else f"a {ctx.kind} event"


def _find_job(plan: Plan, name: str, file: str, root: Path, ctx: PlanContext) -> Job:
    """The planned job ``name``, or exit with the reason it cannot run."""
    planned = [job.name for job in plan.jobs]
    if name in planned:
        return plan.job(name)
    instances = [n for n in planned if n.startswith(f"{name}: [") or re.fullmatch(rf"{re.escape(name)} \d+/\d+", n)]
    if instances:
        click.echo(f"job `{name}` runs as {len(instances)} parallel jobs; name one of them:", err=True)
        for instance in instances:
            click.echo(f"  {instance}", err=True)
        sys.exit(EXIT_USAGE)
    try:
        spec, _ = load_spec(file, root, display_name=file)
        defined = [job.name for job in spec.jobs]
    except PipelineError:
        defined = []
    base = re.sub(r"(: \[.*\]| \d+/\d+)$", "", name)
    if name in defined or base in defined:
        why = plan.skipped_reason or "its rules exclude it"
        click.echo(f"job `{name}` is not in the pipeline for {_event_text(ctx)}: {why}", err=True)
        click.echo("choose the event with --event, --branch, --tag (see `ci-queue plan`)", err=True)
        sys.exit(EXIT_INVALID)
    known = list(dict.fromkeys(planned + defined))
    message = f"no job `{name}` in {file}"
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        message += f"; did you mean {' or '.join(f'`{c}`' for c in close)}?"
    click.echo(message, err=True)
    if known:
        click.echo("jobs: " + ", ".join(known), err=True)
    sys.exit(EXIT_USAGE)


def summary(job: Job, result: JobResult) -> str:
    """The one line printed after the log."""
    if result.status == "success":
        head = f"Job `{job.name}` succeeded"
    elif result.status == "canceled":
        head = f"Job `{job.name}` canceled"
    else:
        detail = result.failure_class or "failed"
        if result.exit_code is not None:
            detail += f", exit code {result.exit_code}"
        head = f"Job `{job.name}` failed ({detail})"
    steps = ", ".join(f"{s.name}: {s.status}" + (f" (exit {s.exit_code})" if s.exit_code not in (None, 0) else "")
                      + f" {s.duration:.2f}s" for s in result.steps)
    text = f"{head} in {result.duration:.2f}s"
    if steps:
        text += f" | {steps}"
    if result.log_truncated:
        text += " | log truncated"
    return text


@click.command("exec")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("job_name", metavar="JOB")
@click.option("--workdir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Directory the job runs in, as its checkout (default: the current directory).")
@event_options
def exec_command(file: str, job_name: str, workdir: str | None, kind: str | None, branch: str | None,
                 tag: str | None, default_branch: str, target_branch: str | None,
                 var_pairs: tuple[str, ...]) -> None:
    """Run one job of a pipeline file here, as a worker would (no checkout: the job runs in --workdir)."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        click.echo(f"ci-queue: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    quiet = settings if "CIQ_LOG_LEVEL" in os.environ else dataclasses.replace(settings, log_level="WARNING")
    configure(quiet, force=True)
    workspace = Path(workdir or os.getcwd()).resolve()
    root = repository_root(file)
    ctx = event_context(kind, branch, tag, default_branch, target_branch, var_pairs, repo_dir=root,
                        sha=_head_sha(workspace))
    try:
        plan = plan_file(file, ctx, root, display_name=file)
    except PipelineError as exc:
        _print_diagnostics(exc.diagnostics)
        sys.exit(EXIT_INVALID)
    _print_diagnostics(plan.warnings)
    job = _find_job(plan, job_name, file, root, ctx)
    request = JobRequest(job=job, run_id=f"local-{uuid.uuid4().hex[:8]}", job_id="0", pipeline_id="0",
                         sha=ctx.sha, ref=ctx.ref_name, project_path=ctx.project_path,
                         pipeline_variables=dict(plan.variables))

    received: list[int] = []
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not received:
            click.echo(f"\nci-queue: {signal.Signals(signum).name}: canceling the job...", err=True)
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = run_job(request, workspace, TerminalSink(sys.stdout), stop.is_set, settings=settings)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        click.echo(summary(job, result))
        sys.stdout.flush()
    except BrokenPipeError:  # stdout's reader is gone; no "Exception ignored" noise at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if received:
        sys.exit(128 + received[0])
    sys.exit(0 if result.status == "success" else 1)
