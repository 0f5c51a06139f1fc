"""The pipeline compiler's entry points: validate a file, plan it for an event.

parse (``loader``) -> compose (``include``, ``extends``, ``!reference``) -> lint (``normalize``)
-> plan (this module: ``workflow``, matrix expansion, ``rules`` for the event, ``needs``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ci_queue.pipeline.compose import Composer, IncludeFilter
from ci_queue.pipeline.conditions import DEFAULT_ONLY, Conditions
from ci_queue.pipeline.errors import Diagnostic, Mark, PipelineError
from ci_queue.pipeline.inputs import InputValues
from ci_queue.pipeline.model import Job, Need, Plan, PlanContext
from ci_queue.pipeline.normalize import Normalizer, find_cycle
from ci_queue.pipeline.schema import INCLUDE_RULE_KEYS, INCLUDE_RULE_WHEN
from ci_queue.pipeline.sources import IncludeSources
from ci_queue.pipeline.specs import JobSpec, NeedSpec, PipelineSpec, RuleSpec
from ci_queue.pipeline.variables import expand_all, expand_text, job_predefined, predefined

PIPELINE_FILES = (".ci-queue.yml", ".gitlab-ci.yml")
NO_JOBS = "No stages / jobs for this pipeline."
"""GitLab's reason for an event whose rules leave no job: no pipeline is created (run: ``skipped``)."""


def find_pipeline_file(repo_dir: str | os.PathLike) -> Path | None:
    """The pipeline file of a checkout: ``.ci-queue.yml``, else ``.gitlab-ci.yml``."""
    for name in PIPELINE_FILES:
        candidate = Path(repo_dir) / name
        if candidate.is_file():
            return candidate
    return None


def repository_root(path: str | os.PathLike) -> Path:
    """The directory ``include: local`` paths are relative to: the enclosing git work tree,
    else the directory of the file."""
    start = Path(path).resolve().parent
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return start


def _sorted(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(diagnostics, key=lambda d: (d.mark.file, d.mark.line, d.mark.col) if d.mark else ("", 0, 0))


def load_spec(path: str | os.PathLike, repo_dir: str | os.PathLike | None = None,
              display_name: str | None = None, ctx: PlanContext | None = None,
              max_bytes: int | None = None, sources: IncludeSources | None = None,
              inputs: Mapping[str, Any] | None = None) -> tuple[PipelineSpec, list[Diagnostic]]:
    """Parse, compose and validate a pipeline file; raises PipelineError (errors and warnings).

    ``inputs``: the top-level file's ``spec:inputs`` values (default: the event's, ``ctx.inputs``);
    ``sources``: where ``project:`` and ``remote:`` includes are read from.
    """
    root = Path(repo_dir) if repo_dir is not None else repository_root(path)
    variables = {**predefined(ctx), **ctx.variables} if ctx is not None else {}
    composer = Composer(root, _include_filter(ctx), max_bytes=max_bytes, sources=sources, variables=variables)
    given = inputs if inputs is not None else (ctx.inputs if ctx is not None else {})
    try:
        config = composer.compose_file(path, display_name, InputValues(dict(given), text=True) if given else None)
    except PipelineError as exc:
        raise PipelineError(_sorted(composer.warnings) + _sorted(exc.errors)) from None
    normalizer = Normalizer()
    spec = normalizer.pipeline(config)
    warnings = _sorted(composer.warnings + normalizer.warnings)
    if normalizer.errors:
        raise PipelineError(warnings + _sorted(normalizer.errors))
    return spec, warnings


def validate_file(path: str | os.PathLike, repo_dir: str | os.PathLike | None = None,
                  display_name: str | None = None, sources: IncludeSources | None = None,
                  inputs: Mapping[str, Any] | None = None) -> list[Diagnostic]:
    """Every warning and error of a pipeline file (all includes taken, whatever their rules)."""
    try:
        _, warnings = load_spec(path, repo_dir, display_name, sources=sources, inputs=inputs)
    except PipelineError as exc:
        return exc.diagnostics
    return warnings


def plan_file(path: str | os.PathLike, ctx: PlanContext, repo_dir: str | os.PathLike | None = None,
              display_name: str | None = None, sources: IncludeSources | None = None) -> Plan:
    """The plan of a pipeline file for one event (its inputs: ``ctx.inputs``); raises PipelineError."""
    if repo_dir is None and ctx.repo_dir is not None:
        repo_dir = ctx.repo_dir
    spec, warnings = load_spec(path, repo_dir, display_name, ctx, sources=sources)
    plan = plan_spec(spec, ctx)
    plan.warnings = warnings + plan.warnings
    return plan


def _include_filter(ctx: PlanContext | None) -> IncludeFilter:
    """``include: rules:`` see the predefined and the event's variables (not the YAML ones).

    Without an event (``validate_file``) every include is taken and its rules are only checked.
    """
    conditions = Conditions(ctx) if ctx is not None else None

    def include_applies(raw_rules: Any, mark: Mark | None) -> bool:
        normalizer = Normalizer()
        rules = normalizer.rules(raw_rules, mark, INCLUDE_RULE_KEYS, "include:rules", INCLUDE_RULE_WHEN)
        if normalizer.errors:
            raise PipelineError(normalizer.errors)
        if ctx is None or conditions is None:
            return True
        variables = expand_all({**predefined(ctx), **ctx.variables})
        rule = conditions.first_rule(rules or (), variables)
        return rule is not None and rule.when != "never"

    return include_applies


@dataclass
class _Instance:
    """One job to plan: a job, or one instance of a ``parallel`` / ``parallel: matrix`` job."""

    name: str
    spec: JobSpec
    matrix: dict[str, str] | None = None
    index: int | None = None
    total: int | None = None


def _instances(spec: JobSpec) -> list[_Instance]:
    instances = spec.instances()
    total = len(instances) if spec.matrix or spec.parallel else None
    return [_Instance(name, spec, matrix, index, total) for name, matrix, index in instances]


class _Planner:
    def __init__(self, spec: PipelineSpec, ctx: PlanContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.conditions = Conditions(ctx)
        self.predefined = predefined(ctx)
        self.errors: list[Diagnostic] = []
        self.need_marks: dict[tuple[str, str], Mark | None] = {}  # (job, needed job): where it is written
        self.instances = {spec_job.name: _instances(spec_job) for spec_job in spec.jobs}
        self.by_instance = {inst.name: inst for insts in self.instances.values() for inst in insts}

    def plan(self) -> Plan:
        global_vars = {name: v.value for name, v in self.spec.variables.items()}
        raw_names = frozenset(name for name, v in self.spec.variables.items() if not v.expand)
        plan = Plan(stages=[], jobs=[], variables=dict(self.predefined), name=self.spec.workflow.name)
        workflow_vars: dict[str, str] = {}
        if self.spec.workflow.rules is not None:
            env = expand_all({**self.predefined, **global_vars, **self.ctx.variables},
                             raw_names - self.ctx.variables.keys())
            rule = self.conditions.first_rule(self.spec.workflow.rules, env)
            if rule is None or rule.when == "never":
                plan.skipped_reason = ("workflow:rules excluded this pipeline" if rule is None
                                       else "a workflow rule with `when: never` matched")
                plan.stages = []
                return plan
            workflow_vars = dict(rule.variables)
        if plan.name:
            plan.name = expand_text(plan.name, {**self.predefined, **global_vars, **workflow_vars,
                                                 **self.ctx.variables})
        for insts in self.instances.values():
            for inst in insts:
                job = self.job(inst, global_vars, workflow_vars, raw_names)
                if job is not None:
                    plan.jobs.append(job)
        self.link_needs(plan)
        cycle = find_cycle({job.name: [n.job for n in job.needs or ()] for job in plan.jobs})
        if cycle:  # only `rules:needs` can make one: the static needs were checked by normalize
            spec = self.by_instance[cycle[0]].spec
            self.errors.append(Diagnostic(spec.mark, f"circular `needs` in this pipeline: {' -> '.join(cycle)}"))
        if self.errors:
            raise PipelineError(self.errors)
        order = {stage: i for i, stage in enumerate(self.spec.stages)}
        plan.jobs.sort(key=lambda j: order[j.stage])  # stable: file order inside a stage
        plan.stages = [s for s in self.spec.stages if any(j.stage == s for j in plan.jobs)]
        if plan.jobs and all(j.stage in (".pre", ".post") for j in plan.jobs):
            plan.skipped_reason = "the pipeline would only hold .pre/.post jobs"
            plan.jobs, plan.stages = [], []
        elif not plan.jobs:
            plan.skipped_reason = NO_JOBS
        return plan

    def job(self, inst: _Instance, global_vars: dict[str, str], workflow_vars: dict[str, str],
            raw_names: frozenset[str]) -> Job | None:
        spec = inst.spec
        # workflow:rules:variables join the global ones, and `inherit:variables` filters both
        # (GitLab's Seed::Build#calculate_yaml_variables! on the context's root variables).
        inherited = _inherited({**global_vars, **workflow_vars}, spec.inherit_variables)
        job_vars = {name: v.value for name, v in spec.variables.items()}
        yaml_vars = {**inherited, **job_vars, **(inst.matrix or {})}
        # `expand: false` belongs to one definition: a name stays raw only while the definition
        # that carries it is the one that wins.
        overridden = workflow_vars.keys() | job_vars.keys() | (inst.matrix or {}).keys() | self.ctx.variables.keys()
        raw = ((raw_names & inherited.keys()) - overridden) | {
            name for name, v in spec.variables.items() if not v.expand and name not in self.ctx.variables}
        env = expand_all({**self.predefined, **job_predefined(inst.name, spec.stage, inst.index, inst.total),
                          **yaml_vars, **self.ctx.variables}, raw)
        decision = self.decide(spec, env)
        if decision is None:
            return None
        when, allow_failure, exit_codes, rule = decision
        if rule is not None and rule.variables:
            yaml_vars.update(rule.variables)
        needs_spec = rule.needs if rule is not None and rule.needs is not None else spec.needs
        job = Job(
            name=inst.name, stage=spec.stage, when=when, allow_failure=allow_failure,
            allow_failure_exit_codes=exit_codes,
            needs=None if needs_spec is None else self.resolve_needs(inst.name, needs_spec),
            tags=[expand_text(t, env) for t in spec.tags], image=_expand_image(spec.image, env),
            services=[_expand_image(s, env) for s in spec.services],
            before_script=spec.before_script, script=spec.script, after_script=spec.after_script,
            variables={**yaml_vars, **self.ctx.variables}, timeout=spec.timeout,
            start_in=(rule.start_in if rule is not None and rule.start_in else spec.start_in),
            retry=spec.retry, matrix=inst.matrix, node_index=inst.index, node_total=inst.total,
            interruptible=(rule.interruptible if rule is not None and rule.interruptible is not None
                           else spec.interruptible),
            resource_group=spec.resource_group, environment=_expand_environment(spec.environment, env),
            artifacts=spec.artifacts,
            cache=spec.cache, trigger=spec.trigger, coverage=spec.coverage,
            dependencies=None if spec.dependencies is None else self.resolve_names(spec.dependencies),
            secrets=list(spec.secrets), raw_variables=sorted(raw & set(yaml_vars)),
            line=spec.mark.line if spec.mark else None,
        )
        if job.when == "delayed" and job.start_in is None:
            self.errors.append(Diagnostic(spec.mark, f"job `{inst.name}`: `when: delayed` needs `start_in`"))
        return job

    def decide(self, spec: JobSpec, env: dict[str, str]) -> tuple[str, bool, tuple[int, ...], RuleSpec | None] | None:
        """(when, allow_failure, exit codes, matching rule) for this event, or None: not created."""
        rule = None
        if spec.rules is not None:
            rule = self.conditions.first_rule(spec.rules, env)
            if rule is None:
                return None
            when = rule.when or spec.when or "on_success"
        else:
            if spec.event_filter is not None and not self.conditions.filter_matches(spec.event_filter):
                return None
            # GitLab drops the default `only: [branches, tags]` once `workflow: rules` exists
            # (Processable#compose!): the workflow decides which pipelines exist.
            default_only = None if spec.event_filter or self.spec.workflow.rules is not None else DEFAULT_ONLY
            only = spec.only or default_only
            if only is not None and not self.conditions.policy_satisfied(only, env):
                return None
            if spec.except_ is not None and self.conditions.policy_any(spec.except_, env):
                return None
            when = spec.when or "on_success"
        if when == "never":
            return None
        if rule is not None and rule.allow_failure is not None:
            return when, rule.allow_failure, rule.allow_failure_exit_codes, rule
        if rule is not None and rule.allow_failure_exit_codes:
            return when, False, rule.allow_failure_exit_codes, rule
        if spec.allow_failure is not None or spec.allow_failure_exit_codes:
            return when, bool(spec.allow_failure), spec.allow_failure_exit_codes, rule
        # GitLab: a manual job (set on the job itself, not by a rule) may fail by default.
        return when, spec.when == "manual", (), rule

    def resolve_needs(self, job: str, needs: tuple[NeedSpec, ...]) -> list[Need]:
        result: list[Need] = []
        for need in needs:
            for name in self.need_targets(need):
                if all(n.job != name for n in result):
                    result.append(Need(job=name, artifacts=need.artifacts, optional=need.optional))
                    self.need_marks[job, name] = need.mark
        return result

    def need_targets(self, need: NeedSpec) -> list[str]:
        if need.job in self.instances:
            insts = self.instances[need.job]
            if need.matrix:
                insts = [i for i in insts if i.matrix and _matrix_selected(i.matrix, need.matrix)]
            return [i.name for i in insts]
        if need.job in self.by_instance:
            return [need.job]
        return [need.job]  # undefined: reported by link_needs when not optional

    def resolve_names(self, names: list[str]) -> list[str]:
        return [target for name in names for target in self.need_targets(NeedSpec(job=name))]

    def link_needs(self, plan: Plan) -> None:
        """Drop optional needs and dependencies on jobs not in this pipeline; a missing required
        need is an error."""
        planned = {job.name for job in plan.jobs}
        for job in plan.jobs:
            if job.dependencies is not None:
                job.dependencies = [d for d in job.dependencies if d in planned]
            if job.needs is None:
                continue
            kept = []
            for need in job.needs:
                if need.job in planned:
                    kept.append(need)
                elif not need.optional:
                    mark = self.need_marks.get((job.name, need.job)) or self.by_instance[job.name].spec.mark
                    self.errors.append(Diagnostic(mark, f"job `{job.name}` needs `{need.job}`, which is not "
                                                        "in this pipeline (its rules exclude it for this event)",
                                                  "make the need `optional: true`, or give both jobs the "
                                                  "same rules"))
            job.needs = kept


def _expand_image(image: dict[str, Any] | None, env: dict[str, str]) -> Any:
    """GitLab expands variables in image and service names (``image: python:$VERSION``)."""
    if image is None or "$" not in image["name"]:
        return image
    return {**image, "name": expand_text(image["name"], env)}


def _expand_environment(environment: dict[str, Any] | None, env: dict[str, str]) -> dict[str, Any] | None:
    """GitLab expands variables in an environment's name (``review/$CI_COMMIT_REF_SLUG``); the
    expanded name is what secrets' environment scopes are matched against."""
    if not environment or "$" not in str(environment.get("name") or ""):
        return environment
    return {**environment, "name": expand_text(str(environment["name"]), env)}


def _matrix_selected(values: dict[str, str], selectors: tuple[dict[str, tuple[str, ...]], ...]) -> bool:
    return any(all(values.get(k) in allowed for k, allowed in selector.items()) for selector in selectors)


def _inherited(global_vars: dict[str, str], inherit: bool | frozenset[str]) -> dict[str, str]:
    if inherit is True:
        return dict(global_vars)
    if inherit is False:
        return {}
    return {k: v for k, v in global_vars.items() if k in inherit}


def plan_spec(spec: PipelineSpec, ctx: PlanContext) -> Plan:
    """Evaluate a validated pipeline for one event."""
    return _Planner(spec, ctx).plan()
