"""Validate a composed configuration and turn it into a ``PipelineSpec``.

Every check reports at the position of the key or value at fault and carries on, so one run of
``ci-queue validate`` lists every problem of a file, not just the first.
"""

from __future__ import annotations

from typing import Any

from ci_queue.pipeline import expressions
from ci_queue.pipeline.durations import DurationError, parse_duration
from ci_queue.pipeline.errors import Diagnostic, Mark
from ci_queue.pipeline.loader import item_mark, key_mark, node_mark, value_mark
from ci_queue.pipeline.model import Retry
from ci_queue.pipeline.schema import (
    ARTIFACTS_KEYS,
    CACHE_KEYS,
    CHANGES_KEYS,
    DEFAULT_KEYS,
    DEFAULT_STAGES,
    ENVIRONMENT_KEYS,
    EXISTS_KEYS,
    GLOBAL_KEYS,
    IMAGE_KEYS,
    INHERIT_KEYS,
    JOB_KEYS,
    JOB_WHEN,
    NEED_KEYS,
    POLICY_KEYS,
    RETRY_KEYS,
    RETRY_WHEN,
    RULE_KEYS,
    RULE_WHEN,
    SERVICE_KEYS,
    SHORT_FORM_EVENTS,
    SHORT_WHEN_KEYS,
    TRIGGER_KEYS,
    VARIABLE_KEYS,
    WORKFLOW_KEYS,
    WORKFLOW_RULE_KEYS,
    WORKFLOW_RULE_WHEN,
    did_you_mean,
)
from ci_queue.pipeline.specs import (
    ChangesSpec,
    EventFilter,
    ExistsSpec,
    JobSpec,
    NeedSpec,
    PipelineSpec,
    PolicySpec,
    RuleSpec,
    VariableSpec,
    WorkflowSpec,
)

MAX_PARALLEL = 200
MAX_NEEDS = 50
MAX_SCRIPT_NESTING = 10
MAX_CACHES = 4
MAX_START_IN = 7 * 86400  # GitLab's limit of `start_in`: one week
# Top-level keys GitLab took as global defaults before `default:` existed.
LEGACY_GLOBAL_DEFAULTS = ("image", "services", "before_script", "after_script", "cache")


class Normalizer:
    """Collects diagnostics while building specs; see ``normalize``."""

    def __init__(self) -> None:
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        # where each (job, dependency) is written, for the cross-job check of `dependencies`
        self.dependency_marks: dict[tuple[str, str], Mark | None] = {}

    def error(self, mark: Mark | None, message: str, hint: str | None = None) -> None:
        self.errors.append(Diagnostic(mark, message, hint))

    def warn(self, mark: Mark | None, message: str, hint: str | None = None) -> None:
        self.warnings.append(Diagnostic(mark, message, hint, severity="warning"))

    # -- small typed readers ----------------------------------------------------------------
    def check_keys(self, mapping: dict, allowed: frozenset[str], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.error(key_mark(mapping, key), f"unknown key `{key}` in {where}", did_you_mean(key, allowed))

    def string(self, value: Any, mark: Mark | None, what: str) -> str | None:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        self.error(mark, f"{what} must be a string")
        return None

    def boolean(self, value: Any, mark: Mark | None, what: str) -> bool | None:
        if isinstance(value, bool):
            return value
        self.error(mark, f"{what} must be true or false")
        return None

    def flat_list(self, value: Any, mark: Mark | None, what: str, depth: int = 0) -> list[Any] | None:
        """A list with nested lists (from ``!reference``) flattened, as GitLab does."""
        if not isinstance(value, list):
            return None
        result: list[Any] = []
        for i, item in enumerate(value):
            if isinstance(item, list):
                if depth >= MAX_SCRIPT_NESTING:
                    self.error(item_mark(value, i) or mark, f"{what} is nested more than {MAX_SCRIPT_NESTING} levels")
                    return None
                inner = self.flat_list(item, item_mark(value, i) or mark, what, depth + 1)
                if inner is None:
                    return None
                result.extend(inner)
            else:
                result.append((item, item_mark(value, i) or mark))
        return result

    def string_list(self, value: Any, mark: Mark | None, what: str, allow_string: bool = True) -> list[str] | None:
        """A string or a (nested) list of strings."""
        items = self.marked_strings(value, mark, what, allow_string)
        return None if items is None else [text for text, _ in items]

    def marked_strings(self, value: Any, mark: Mark | None, what: str,
                       allow_string: bool = True) -> list[tuple[str, Mark | None]] | None:
        """``string_list`` with where each string is written, for messages about one entry."""
        if isinstance(value, str) and allow_string:
            return [(value, mark)]
        items = self.flat_list(value, mark, what)
        if items is None:
            if not isinstance(value, list):  # a list nested too deeply was reported by flat_list
                self.error(mark, f"{what} must be {'a string or ' if allow_string else ''}a list of strings")
            return None
        result = []
        for item, item_pos in items:
            text = self.string(item, item_pos, f"each entry of {what}")
            if text is None:
                return None
            result.append((text, item_pos))
        return result

    def script(self, value: Any, mark: Mark | None, what: str) -> list[str] | None:
        if value is None:
            return []
        return self.string_list(value, mark, what)

    def exit_codes(self, value: Any, mark: Mark | None, what: str) -> tuple[int, ...] | None:
        codes = value if isinstance(value, list) else [value]
        if not codes or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
            self.error(mark, f"{what} must be an exit code or a list of exit codes")
            return None
        return tuple(codes)

    def duration(self, value: Any, mark: Mark | None, what: str) -> int | None:
        try:
            return parse_duration(value)
        except DurationError as exc:
            self.error(mark, f"{what}: {exc}")
            return None

    # -- pipeline ------------------------------------------------------------------------------
    def pipeline(self, config: dict) -> PipelineSpec:
        stages = self.stages(config)
        variables = self.variables(config.get("variables"), value_mark(config, "variables"), "variables")
        if "env" in config:
            variables.update(self.variables(config["env"], value_mark(config, "env"), "env"))
        workflow = self.workflow(config.get("workflow"), value_mark(config, "workflow"))
        defaults = self.defaults(config)
        jobs = []
        for name, raw in config.items():
            if name in GLOBAL_KEYS or (isinstance(name, str) and name.startswith(".")):
                continue
            job = self.job(str(name), raw, config, defaults, stages)
            if job is not None:
                jobs.append(job)
        if not jobs and not self.errors:
            self.error(node_mark(config), "the pipeline defines no jobs",
                       "a job is a top-level key holding a mapping with `script:`")
        self.check_needs(jobs, stages)
        return PipelineSpec(stages=stages, variables=variables, workflow=workflow, jobs=jobs)

    def stages(self, config: dict) -> list[str]:
        key = "stages" if "stages" in config else "types" if "types" in config else None
        if key is None:
            names = list(DEFAULT_STAGES)
        else:
            names = self.string_list(config[key], value_mark(config, key), "stages", allow_string=False) or []
            if key == "types":
                self.warn(key_mark(config, key), "`types` is deprecated; use `stages`")
        result = [".pre"]
        for name in names:
            if name not in result and name not in (".pre", ".post"):
                result.append(name)
        result.append(".post")
        return result

    def variables(self, value: Any, mark: Mark | None, what: str) -> dict[str, VariableSpec]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(mark, f"{what} must be a mapping of names to values")
            return {}
        result: dict[str, VariableSpec] = {}
        for name, raw in value.items():
            vmark = value_mark(value, name)
            if not isinstance(name, str) or not name or not name.replace("_", "a").isalnum():
                self.error(key_mark(value, name), f"invalid variable name {name!r}",
                           "names are letters, digits and underscores")
                continue
            if isinstance(raw, dict):
                self.check_keys(raw, VARIABLE_KEYS, f"variable `{name}`")
                text = self.scalar_text(raw.get("value", ""), value_mark(raw, "value") or vmark, f"variable `{name}`")
                expand = self.boolean(raw["expand"], value_mark(raw, "expand"), "expand") if "expand" in raw else True
                description = raw.get("description")
                if text is not None:
                    result[name] = VariableSpec(text, expand is not False, description if isinstance(description, str)
                                                else None)
            else:
                text = self.scalar_text(raw, vmark, f"variable `{name}`")
                if text is not None:
                    result[name] = VariableSpec(text)
        return result

    def scalar_text(self, raw: Any, mark: Mark | None, what: str) -> str | None:
        if raw is None:
            return ""
        if isinstance(raw, bool):
            return "true" if raw else "false"
        if isinstance(raw, str | int | float):
            return str(raw)
        self.error(mark, f"{what} must be a string or a number")
        return None

    def workflow(self, value: Any, mark: Mark | None) -> WorkflowSpec:
        if value is None:
            return WorkflowSpec()
        if not isinstance(value, dict):
            self.error(mark, "`workflow` must be a mapping")
            return WorkflowSpec()
        self.check_keys(value, WORKFLOW_KEYS, "workflow")
        rules = None
        if "rules" in value:
            rules = self.rules(value["rules"], value_mark(value, "rules"), WORKFLOW_RULE_KEYS, "workflow:rules",
                               WORKFLOW_RULE_WHEN)
        name = None
        if "name" in value:
            name = self.string(value["name"], value_mark(value, "name"), "workflow:name")
        return WorkflowSpec(rules=rules, name=name)

    def defaults(self, config: dict) -> dict:
        """Keys every job inherits unless it sets them: ``default:`` and the legacy globals."""
        merged: dict = {}
        for key in LEGACY_GLOBAL_DEFAULTS:
            if key in config:
                merged[key] = (config[key], value_mark(config, key))
        default = config.get("default")
        if default is None:
            return merged
        if not isinstance(default, dict):
            self.error(value_mark(config, "default"), "`default` must be a mapping")
            return merged
        for key, value in default.items():
            if key in DEFAULT_KEYS:
                merged[key] = (value, value_mark(default, key))
            elif key in JOB_KEYS:
                self.warn(key_mark(default, key), f"`{key}` cannot be set in `default:` and is ignored",
                          f"keys jobs inherit: {', '.join(sorted(DEFAULT_KEYS))}")
            else:
                self.error(key_mark(default, key), f"unknown key `{key}` in default",
                           did_you_mean(key, DEFAULT_KEYS))
        return merged

    # -- rules, only/except, needs --------------------------------------------------------------
    def rules(self, value: Any, mark: Mark | None, allowed: frozenset[str], what: str,
              allowed_when: tuple[str, ...] = RULE_WHEN) -> tuple[RuleSpec, ...] | None:
        """``allowed``/``allowed_when``: the keys and ``when`` values of this kind of rules (GitLab
        gives job, workflow and include rules each their own)."""
        items = self.flat_list(value, mark, what)
        if items is None:
            if not isinstance(value, list):  # a list nested too deeply was reported by flat_list
                self.error(mark, f"`{what}` must be a list of rules")
            return None
        return tuple(rule for raw, rmark in items
                     if (rule := self.rule(raw, rmark, allowed, what, allowed_when)) is not None)

    def rule(self, raw: Any, mark: Mark | None, allowed: frozenset[str], what: str,
             allowed_when: tuple[str, ...] = RULE_WHEN) -> RuleSpec | None:
        if not isinstance(raw, dict):
            self.error(mark, f"each entry of `{what}` must be a mapping (`if:`, `changes:`, `exists:`, `when:`)")
            return None
        self.check_keys(raw, allowed, what)
        fields: dict[str, Any] = {"mark": node_mark(raw) or mark}
        if "if" in raw:
            fields["if_"] = self.expression(raw["if"], value_mark(raw, "if"), f"{what}:if")
        if "changes" in raw:
            fields["changes"] = self.changes(raw["changes"], value_mark(raw, "changes"))
        if "exists" in raw:
            fields["exists"] = self.exists(raw["exists"], value_mark(raw, "exists"))
        if "when" in raw:
            fields["when"] = self.when_value(raw["when"], value_mark(raw, "when"), allowed_when)
        if "allow_failure" in raw:
            fields["allow_failure"], fields["allow_failure_exit_codes"] = self.allow_failure(
                raw["allow_failure"], value_mark(raw, "allow_failure"))
        if "variables" in raw:
            specs = self.variables(raw["variables"], value_mark(raw, "variables"), f"{what}:variables")
            fields["variables"] = {k: v.value for k, v in specs.items()}
        if "needs" in raw:
            fields["needs"] = self.needs(raw["needs"], value_mark(raw, "needs"))
        if "interruptible" in raw:
            fields["interruptible"] = self.boolean(raw["interruptible"], value_mark(raw, "interruptible"),
                                                   "interruptible")
        if "start_in" in raw:
            fields["start_in"] = self.start_in(raw["start_in"], value_mark(raw, "start_in"))
            if fields.get("when") != "delayed":  # as GitLab's Rules::Rule checks
                self.error(key_mark(raw, "start_in"), "`start_in` needs `when: delayed`")
        elif fields.get("when") == "delayed":
            self.error(value_mark(raw, "when"), "`when: delayed` needs `start_in:`")
        return RuleSpec(**fields)

    def start_in(self, value: Any, mark: Mark | None) -> int | None:
        seconds = self.duration(value, mark, "start_in")
        if seconds is not None and seconds > MAX_START_IN:
            self.error(mark, "start_in must be at most one week")
            return None
        return seconds

    def expression(self, value: Any, mark: Mark | None, what: str) -> str | None:
        if not isinstance(value, str):
            self.error(mark, f"`{what}` must be an expression string")
            return None
        try:
            expressions.parse(value)
        except expressions.ExpressionError as exc:
            where = mark.within(exc.position, value) if mark else None
            self.error(where, f"invalid expression in `{what}`: {exc}")
            return None
        return value

    def changes(self, value: Any, mark: Mark | None) -> ChangesSpec | None:
        compare_to = None
        if isinstance(value, dict):
            self.check_keys(value, CHANGES_KEYS, "changes")
            if "compare_to" in value:
                compare_to = self.string(value["compare_to"], value_mark(value, "compare_to"), "changes:compare_to")
            mark, value = value_mark(value, "paths") or mark, value.get("paths", [])
        paths = self.string_list(value, mark, "changes", allow_string=False)
        return None if paths is None else ChangesSpec(tuple(paths), compare_to)

    def exists(self, value: Any, mark: Mark | None) -> ExistsSpec | None:
        if isinstance(value, dict):
            self.check_keys(value, EXISTS_KEYS, "exists")
            mark, value = value_mark(value, "paths") or mark, value.get("paths", [])
        paths = self.string_list(value, mark, "exists")
        return None if paths is None else ExistsSpec(tuple(paths))

    def policy(self, value: Any, mark: Mark | None, what: str) -> PolicySpec | None:
        if isinstance(value, str | list):
            refs = self.string_list(value, mark, what)
            return None if refs is None else PolicySpec(refs=tuple(refs), mark=mark)
        if not isinstance(value, dict):
            self.error(mark, f"`{what}` must be a list of refs or a mapping (refs, variables, changes)")
            return None
        self.check_keys(value, POLICY_KEYS, what)
        refs = variables = changes = None
        if "refs" in value:
            refs = self.string_list(value["refs"], value_mark(value, "refs"), f"{what}:refs")
        if "variables" in value:
            exprs = self.marked_strings(value["variables"], value_mark(value, "variables"), f"{what}:variables")
            if exprs is not None:
                variables = tuple(e for e, emark in exprs
                                  if self.expression(e, emark, f"{what}:variables") is not None)
        if "changes" in value:
            changes = self.changes(value["changes"], value_mark(value, "changes"))
        return PolicySpec(refs=tuple(refs) if refs is not None else None, variables=variables, changes=changes,
                          kubernetes="kubernetes" in value, mark=mark)

    def needs(self, value: Any, mark: Mark | None) -> tuple[NeedSpec, ...] | None:
        if value is None:
            return ()
        items = self.flat_list(value, mark, "needs")
        if items is None:
            if not isinstance(value, list):  # a list nested too deeply was reported by flat_list
                self.error(mark, "`needs` must be a list of job names")
            return None
        result: list[NeedSpec] = []
        for raw, nmark in items:
            need = self.need(raw, nmark)
            if need is not None and need.matrix is None and any(n.job == need.job and n.matrix is None for n in result):
                self.error(need.mark, f"`{need.job}` is needed twice", "GitLab refuses duplicated needs")
            elif need is not None:
                result.append(need)
        if len(result) > MAX_NEEDS:
            self.error(mark, f"a job may need at most {MAX_NEEDS} jobs, not {len(result)}")
        return tuple(result)

    def need(self, raw: Any, mark: Mark | None) -> NeedSpec | None:
        if isinstance(raw, str):
            return NeedSpec(job=raw, mark=mark)
        if not isinstance(raw, dict):
            self.error(mark, "each entry of `needs` must be a job name or a mapping with `job:`")
            return None
        self.check_keys(raw, NEED_KEYS, "needs")
        if "pipeline" in raw or "project" in raw:
            return None  # artifacts of another pipeline or project: not a dependency of this one
        if "job" not in raw:
            self.error(mark, "a `needs` entry needs `job:`")
            return None
        job = self.string(raw["job"], value_mark(raw, "job"), "needs:job")
        artifacts = raw.get("artifacts", True)
        optional = raw.get("optional", False)
        if not isinstance(artifacts, bool) or not isinstance(optional, bool):
            self.error(mark, "`needs:artifacts` and `needs:optional` must be true or false")
            return None
        matrix = None
        if "parallel" in raw:
            parallel = raw["parallel"]
            if not isinstance(parallel, dict) or "matrix" not in parallel:
                self.error(value_mark(raw, "parallel"), "`needs:parallel` must hold `matrix:`")
                return None
            matrix = self.matrix(parallel["matrix"], value_mark(parallel, "matrix"))
        if job is None:
            return None
        return NeedSpec(job=job, artifacts=artifacts, optional=optional, matrix=matrix,
                        mark=value_mark(raw, "job") or mark)

    def matrix(self, value: Any, mark: Mark | None) -> tuple[dict[str, tuple[str, ...]], ...] | None:
        if not isinstance(value, list) or not value:
            self.error(mark, "`matrix` must be a list of mappings of variable names to values")
            return None
        entries = []
        for i, entry in enumerate(value):
            emark = item_mark(value, i) or mark
            if not isinstance(entry, dict) or not entry:
                self.error(emark, "each `matrix` entry must be a mapping of variable names to values")
                return None
            combo: dict[str, tuple[str, ...]] = {}
            for name, raw in entry.items():
                values = raw if isinstance(raw, list) else [raw]
                texts = [self.scalar_text(v, value_mark(entry, name), f"matrix variable `{name}`") for v in values]
                if any(t is None for t in texts) or not texts:
                    self.error(value_mark(entry, name), f"matrix variable `{name}` needs at least one value")
                    return None
                combo[str(name)] = tuple(t for t in texts if t is not None)
            entries.append(combo)
        return tuple(entries)

    def when_value(self, value: Any, mark: Mark | None, allowed: tuple[str, ...]) -> str | None:
        if isinstance(value, str) and value in allowed:
            return value
        self.error(mark, f"`when` must be one of {', '.join(allowed)}, not {value!r}",
                   did_you_mean(str(value), allowed))
        return None

    def allow_failure(self, value: Any, mark: Mark | None) -> tuple[bool | None, tuple[int, ...]]:
        if isinstance(value, bool):
            return value, ()
        if isinstance(value, dict) and set(value) == {"exit_codes"}:
            codes = self.exit_codes(value["exit_codes"], value_mark(value, "exit_codes"), "allow_failure:exit_codes")
            return (False, codes) if codes else (None, ())
        self.error(mark, "`allow_failure` must be true, false or `{exit_codes: [...]}`")
        return None, ()

    def event_filter(self, value: dict, mark: Mark | None) -> EventFilter | None:
        if True in value:  # YAML 1.1 reads a bare `on:` key as the boolean true
            value = _MarkedView({("on" if k is True else k): v for k, v in value.items()}, value,
                                {"on": value_mark(value, True)})
        self.check_keys(value, SHORT_WHEN_KEYS, "when")
        parts: dict[str, tuple[str, ...] | None] = {}
        for key in ("on", "branches", "tags"):
            if key in value:
                items = self.marked_strings(value[key], value_mark(value, key), f"when:{key}")
                parts[key] = tuple(text for text, _ in items) if items is not None else None
                for event, emark in items if key == "on" and items else ():
                    if event not in SHORT_FORM_EVENTS:
                        self.error(emark, f"unknown event `{event}` in `when:on`",
                                   did_you_mean(event, SHORT_FORM_EVENTS)
                                   or f"events: {', '.join(sorted(SHORT_FORM_EVENTS))}")
        return EventFilter(mark=mark, **parts)

    # -- jobs ----------------------------------------------------------------------------------
    def job(self, name: str, raw: Any, config: dict, defaults: dict, stages: list[str]) -> JobSpec | None:
        mark = key_mark(config, name)
        if not isinstance(raw, dict):
            hint = did_you_mean(name, GLOBAL_KEYS)
            self.error(mark, f"job `{name}` must be a mapping of job keywords"
                       + ("" if hint else f", not {type(raw).__name__}"), hint)
            return None
        self.check_keys(raw, JOB_KEYS, f"job `{name}`")
        raw = _without_nulls(raw)
        job = JobSpec(name=name, mark=mark)
        self.inherit(job, raw)
        raw = self.with_defaults(raw, defaults, job.inherit_default)
        self.job_stage(job, raw, stages)
        self.job_scripts(job, raw)
        self.job_when(job, raw)
        self.job_policies(job, raw)
        self.job_execution(job, raw)
        self.job_metadata(job, raw)
        return job

    def inherit(self, job: JobSpec, raw: dict) -> None:
        value = raw.get("inherit")
        if value is None:
            return
        mark = value_mark(raw, "inherit")
        if not isinstance(value, dict):
            self.error(mark, "`inherit` must be a mapping with `default:` and/or `variables:`")
            return
        self.check_keys(value, INHERIT_KEYS, "inherit")
        for key in ("default", "variables"):
            if key not in value:
                continue
            setting = value[key]
            if isinstance(setting, bool):
                chosen: bool | frozenset[str] = setting
            else:
                names = self.string_list(setting, value_mark(value, key), f"inherit:{key}", allow_string=False)
                chosen = frozenset(names or ())
            setattr(job, f"inherit_{key}", chosen)

    def with_defaults(self, raw: dict, defaults: dict, inherit: bool | frozenset[str]) -> dict:
        if inherit is False or not defaults:
            return raw
        merged = dict(raw)
        marks = {}
        for key, (value, mark) in defaults.items():
            if key in raw or (inherit is not True and key not in inherit):
                continue
            merged[key] = value
            marks[key] = mark
        return _MarkedView(merged, raw, marks)

    def job_stage(self, job: JobSpec, raw: dict, stages: list[str]) -> None:
        key = "stage" if "stage" in raw else "type" if "type" in raw else None
        if key is None:
            stage = "test"
            mark = job.mark
        else:
            stage = self.string(raw[key], value_mark(raw, key), "stage") or "test"
            mark = value_mark(raw, key)
        if stage not in stages:
            self.error(mark, f"job `{job.name}`: stage `{stage}` is not defined",
                       did_you_mean(stage, stages) or f"stages: {', '.join(stages)}")
        job.stage = stage

    def job_scripts(self, job: JobSpec, raw: dict) -> None:
        if "script" in raw and "command" in raw:
            self.error(key_mark(raw, "command"), f"job `{job.name}` has both `script` and `command`; use one")
        for key in ("before_script", "after_script", "script", "command", "run"):
            if key in raw:
                lines = self.script(raw[key], value_mark(raw, key), f"`{key}`")
                if lines is not None:
                    setattr(job, "script" if key in ("command", "run") else key, lines)
        if "trigger" in raw:
            job.trigger = self.trigger(raw["trigger"], value_mark(raw, "trigger"))
        elif not ({"script", "command", "run"} & raw.keys()):
            self.error(job.mark, f"job `{job.name}` has no `script`", "every job needs `script:` (or `trigger:`)")
        elif not job.script and any(raw.get(k) == [] or raw.get(k) == "" for k in ("script", "command")):
            key = "script" if "script" in raw else "command"
            self.error(value_mark(raw, key), f"job `{job.name}` has an empty script")

    def trigger(self, value: Any, mark: Mark | None) -> dict[str, Any] | None:
        if isinstance(value, str):
            return {"project": value}
        if isinstance(value, dict):
            self.check_keys(value, TRIGGER_KEYS, "trigger")
            return _plain(value)
        self.error(mark, "`trigger` must be a project path or a mapping")
        return None

    def job_when(self, job: JobSpec, raw: dict) -> None:
        if "when" in raw:
            value, mark = raw["when"], value_mark(raw, "when")
            if isinstance(value, dict):
                job.event_filter = self.event_filter(value, mark)
            else:
                job.when = self.when_value(value, mark, JOB_WHEN)
        # With `rules`, a delayed job takes `start_in` from its rule (job_policies refuses the job's).
        if "start_in" in raw and "rules" not in raw:
            job.start_in = self.start_in(raw["start_in"], value_mark(raw, "start_in"))
            if job.when != "delayed":
                self.error(key_mark(raw, "start_in"), "`start_in` needs `when: delayed`")
        elif job.when == "delayed" and "rules" not in raw:
            self.error(value_mark(raw, "when"), "`when: delayed` needs `start_in:`")
        if "allow_failure" in raw:
            job.allow_failure, job.allow_failure_exit_codes = self.allow_failure(
                raw["allow_failure"], value_mark(raw, "allow_failure"))

    def job_policies(self, job: JobSpec, raw: dict) -> None:
        if "rules" in raw:
            job.rules = self.rules(raw["rules"], value_mark(raw, "rules"), RULE_KEYS, "rules")
            for key in ("only", "except", "start_in"):  # GitLab: "key may not be used with `rules`"
                if key in raw:
                    self.error(key_mark(raw, key), f"`{key}` cannot be used together with `rules`")
            if job.event_filter is not None:
                self.error(job.event_filter.mark, "`when: {on: ...}` cannot be used together with `rules`")
        else:
            if "only" in raw:
                job.only = self.policy(raw["only"], value_mark(raw, "only"), "only")
            if "except" in raw:
                job.except_ = self.policy(raw["except"], value_mark(raw, "except"), "except")
        if "needs" in raw:
            job.needs = self.needs(raw["needs"], value_mark(raw, "needs"))
        if "dependencies" in raw:
            dependencies = self.marked_strings(raw["dependencies"], value_mark(raw, "dependencies"),
                                               "dependencies", allow_string=False)
            if dependencies is not None:
                job.dependencies = [name for name, _ in dependencies]
                self.dependency_marks.update(((job.name, name), dmark) for name, dmark in dependencies)
        if "parallel" in raw:
            self.parallel(job, raw["parallel"], value_mark(raw, "parallel"))

    def parallel(self, job: JobSpec, value: Any, mark: Mark | None) -> None:
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= MAX_PARALLEL:
                self.error(mark, f"`parallel` must be between 1 and {MAX_PARALLEL}")
            else:
                job.parallel = value
            return
        if isinstance(value, dict) and set(value) == {"matrix"}:
            job.matrix = self.matrix(value["matrix"], value_mark(value, "matrix"))
            if job.matrix:
                total = sum(_product_size(entry) for entry in job.matrix)
                if total > MAX_PARALLEL:
                    self.error(mark, f"`parallel: matrix` makes {total} jobs; the limit is {MAX_PARALLEL}")
                    job.matrix = None  # never expanded: it may be astronomically large
            return
        self.error(mark, "`parallel` must be a number or `{matrix: [...]}`")

    def job_execution(self, job: JobSpec, raw: dict) -> None:
        variables = self.variables(raw.get("variables"), value_mark(raw, "variables"), "variables")
        if "env" in raw:
            variables.update(self.variables(raw["env"], value_mark(raw, "env"), "env"))
        job.variables = variables
        if "tags" in raw and raw["tags"] is not None:
            job.tags = self.string_list(raw["tags"], value_mark(raw, "tags"), "tags", allow_string=False) or []
        if raw.get("image") is not None:
            job.image = self.image(raw["image"], value_mark(raw, "image"), IMAGE_KEYS, "image")
        if raw.get("services") is not None:
            job.services = self.services(raw["services"], value_mark(raw, "services"))
        if "timeout" in raw:
            job.timeout = self.duration(raw["timeout"], value_mark(raw, "timeout"), "timeout")
        if "retry" in raw:
            job.retry = self.retry(raw["retry"], value_mark(raw, "retry")) or job.retry
        if "interruptible" in raw:
            job.interruptible = bool(self.boolean(raw["interruptible"], value_mark(raw, "interruptible"),
                                                  "interruptible"))
        if "resource_group" in raw:
            job.resource_group = self.string(raw["resource_group"], value_mark(raw, "resource_group"),
                                             "resource_group")

    def image(self, value: Any, mark: Mark | None, keys: frozenset[str], what: str) -> dict[str, Any] | None:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict):
            self.check_keys(value, keys, what)
            if not isinstance(value.get("name"), str):
                self.error(mark, f"`{what}` needs `name:`")
                return None
            return _plain(value)
        self.error(mark, f"`{what}` must be an image name or a mapping with `name:`")
        return None

    def services(self, value: Any, mark: Mark | None) -> list[dict[str, Any]]:
        items = self.flat_list(value, mark, "services")
        if items is None:
            if not isinstance(value, list):  # a list nested too deeply was reported by flat_list
                self.error(mark, "`services` must be a list")
            return []
        return [s for raw, smark in items if (s := self.image(raw, smark, SERVICE_KEYS, "service")) is not None]

    def retry(self, value: Any, mark: Mark | None) -> Retry | None:
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value <= 2:
                self.error(mark, "`retry` must be 0, 1 or 2")
                return None
            return Retry(max=value)
        if not isinstance(value, dict):
            self.error(mark, "`retry` must be 0, 1, 2 or a mapping with `max`, `when`, `exit_codes`")
            return None
        self.check_keys(value, RETRY_KEYS, "retry")
        maximum = value.get("max", 0)
        if not isinstance(maximum, int) or isinstance(maximum, bool) or not 0 <= maximum <= 2:
            self.error(value_mark(value, "max") or mark, "`retry:max` must be 0, 1 or 2")
            return None
        when: tuple[str, ...] = ("always",)
        if "when" in value:
            names = self.string_list(value["when"], value_mark(value, "when"), "retry:when") or []
            for name in names:
                if name not in RETRY_WHEN:
                    self.error(value_mark(value, "when"), f"unknown `retry:when` value `{name}`",
                               did_you_mean(name, RETRY_WHEN))
            when = tuple(names)
        codes: tuple[int, ...] = ()
        if "exit_codes" in value:
            codes = self.exit_codes(value["exit_codes"], value_mark(value, "exit_codes"), "retry:exit_codes") or ()
            if "when" not in value:
                when = ()  # only the exit codes decide (GitLab: `when` defaults to always only without them)
        return Retry(max=maximum, when=when, exit_codes=codes)

    def job_metadata(self, job: JobSpec, raw: dict) -> None:
        if "environment" in raw and raw["environment"] is not None:
            env = raw["environment"]
            if isinstance(env, str):
                job.environment = {"name": env}
            elif isinstance(env, dict):
                self.check_keys(env, ENVIRONMENT_KEYS, "environment")
                job.environment = _plain(env)
            else:
                self.error(value_mark(raw, "environment"), "`environment` must be a name or a mapping")
        if "artifacts" in raw and raw["artifacts"] is not None:
            if isinstance(raw["artifacts"], dict):
                self.check_keys(raw["artifacts"], ARTIFACTS_KEYS, "artifacts")
                job.artifacts = _plain(raw["artifacts"])
            else:
                self.error(value_mark(raw, "artifacts"), "`artifacts` must be a mapping")
        if "cache" in raw and raw["cache"] is not None:
            caches = raw["cache"] if isinstance(raw["cache"], list) else [raw["cache"]]
            if len(caches) > MAX_CACHES:
                self.error(value_mark(raw, "cache"), f"at most {MAX_CACHES} caches per job")
            for cache in caches:
                if isinstance(cache, dict):
                    self.check_keys(cache, CACHE_KEYS, "cache")
                    job.cache.append(_plain(cache))
                else:
                    self.error(value_mark(raw, "cache"), "`cache` must be a mapping or a list of mappings")
        if "coverage" in raw:
            job.coverage = self.string(raw["coverage"], value_mark(raw, "coverage"), "coverage")
        if "secrets" in raw:
            job.secrets = self.secret_names(raw["secrets"], value_mark(raw, "secrets"))

    def secret_names(self, value: Any, mark: Mark | None) -> list[str]:
        """``secrets:`` as GitLab writes it (a mapping of names) or a plain list of names.

        Only the names matter here: the worker takes the values from its environment or its
        secrets file, so no secret ever passes through the plan or Redis."""
        names = list(value) if isinstance(value, dict) else self.string_list(value, mark, "secrets") or []
        for name in names:
            if not isinstance(name, str) or not name.replace("_", "a").isalnum():
                self.error(mark, f"invalid secret name {name!r}", "names are letters, digits and underscores")
        return [str(n) for n in names]

    # -- cross-job checks --------------------------------------------------------------------------
    def check_needs(self, jobs: list[JobSpec], stages: list[str]) -> None:
        """Every needed job exists and is not in a later stage (GitLab checks this statically,
        after expanding ``parallel`` jobs: a need may name the job, meaning all its instances, or
        one instance such as ``build: [linux, amd64]``); the same for ``dependencies``. Also: no
        two planned jobs share a name, and needs do not go round in circles."""
        by_name = {job.name: job for job in jobs}
        for job in jobs:
            names = [name for name, _, _ in job.instances()]
            for i, name in enumerate(names):
                # two planned jobs of one name could not be told apart
                if by_name.setdefault(name, job) is not job or name in names[:i]:
                    self.error(job.mark, f"two jobs would be named `{name}`",
                               f"`{job.name}` makes one with `parallel`; rename a job or change the matrix")
        order = {stage: i for i, stage in enumerate(stages)}
        for job in jobs:
            for needs in [job.needs or ()] + [rule.needs or () for rule in job.rules or ()]:
                for need in needs:
                    target = by_name.get(need.job)
                    if target is None:
                        if not need.optional:
                            self.error(need.mark, f"job `{job.name}` needs `{need.job}`, which is not defined",
                                       did_you_mean(need.job, by_name))
                    elif order.get(target.stage, -1) > order.get(job.stage, len(order)):
                        self.error(need.mark, f"job `{job.name}` (stage {job.stage}) needs `{need.job}`, "
                                              f"which is in the later stage {target.stage}")
            needed = {need.job for need in job.needs or ()}
            for dep in job.dependencies or ():
                mark = self.dependency_marks.get((job.name, dep), job.mark)
                target = by_name.get(dep)
                if needed and dep not in needed:  # GitLab: "dependencies the X should be part of needs"
                    self.error(mark, f"job `{job.name}` depends on `{dep}` but does not need it",
                               "with `needs`, every job in `dependencies` must be in `needs` too")
                elif target is None:
                    self.error(mark, f"job `{job.name}`: dependency `{dep}` is not defined",
                               did_you_mean(dep, by_name))
                elif order.get(target.stage, -1) > order.get(job.stage, len(order)):
                    self.error(mark, f"job `{job.name}` (stage {job.stage}) depends on `{dep}`, "
                                     f"which is in the later stage {target.stage}")
        # Needs within a stage may go round in circles, and such jobs would wait for ever; GitLab
        # refuses them too ("The pipeline has circular dependencies"). Every instance of a parallel
        # job has the same needs, so a cycle between jobs is a cycle between instances.
        edges = {job.name: {by_name[n.job].name: n.mark for n in job.needs or () if n.job in by_name}
                 for job in jobs}
        cycle = find_cycle({name: list(targets) for name, targets in edges.items()})
        if cycle:
            self.error(edges[cycle[-2]][cycle[-1]], f"circular `needs`: {' -> '.join(cycle)}")


class _MarkedView(dict):
    """A job's keys plus inherited defaults, answering mark queries for both."""

    def __init__(self, merged: dict, raw: dict, marks: dict) -> None:
        super().__init__(merged)
        self._raw = raw
        self._marks = marks
        self.mark = node_mark(raw)

    def key_mark(self, key: Any) -> Mark | None:
        return self._marks.get(key) or key_mark(self._raw, key)

    def value_mark(self, key: Any) -> Mark | None:
        return self._marks.get(key) or value_mark(self._raw, key)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in graph:
        if root in state:
            continue
        path = [root]
        stack = [iter(graph.get(root, ()))]
        state[root] = 1
        while stack:
            node = next(stack[-1], None)
            if node is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(node) == 1:
                return [*path[path.index(node):], node]
            elif node not in state:
                state[node] = 1
                path.append(node)
                stack.append(iter(graph.get(node, ())))
    return None


def _without_nulls(raw: dict) -> dict:
    """The job without keys set to null: GitLab treats ``key: null`` as "not set", which is how a
    job drops a key it inherited (``except: null`` under ``extends``)."""
    if all(value is not None for value in raw.values()):
        return raw
    return _MarkedView({k: v for k, v in raw.items() if v is not None}, raw, {})


def _product_size(entry: dict[str, tuple[str, ...]]) -> int:
    size = 1
    for values in entry.values():
        size *= len(values)
    return size


def _plain(value: Any) -> Any:
    """Plain dicts and lists (no marks), for data that is passed along as JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def normalize(config: dict) -> tuple[PipelineSpec, list[Diagnostic], list[Diagnostic]]:
    """Validate ``config``; returns (spec, errors, warnings)."""
    normalizer = Normalizer()
    spec = normalizer.pipeline(config)
    return spec, normalizer.errors, normalizer.warnings
