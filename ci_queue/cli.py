"""The ``ci-queue`` command line.

Every failure a user can cause ends in a clear message and an exit status, never a traceback:
0 success, 1 the input is invalid (or the job failed), 2 usage error, 3 an internal error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
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
