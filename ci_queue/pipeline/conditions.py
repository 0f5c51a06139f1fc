"""Does a job (or the pipeline) run for this event? ``rules``, ``only``/``except``, short filters.

GitLab's semantics: the first ``rules`` entry whose clauses (``if``, ``changes``, ``exists``) all
hold decides; no match means the job is not created. ``only`` needs every given part (refs,
variables, changes) to hold, ``except`` removes the job when any part holds, and a job with
neither (nor ``rules``) runs for branches and tags.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache

from ci_queue.pipeline import expressions, globs
from ci_queue.pipeline.model import PIPELINE_SOURCES, PlanContext
from ci_queue.pipeline.specs import ChangesSpec, EventFilter, ExistsSpec, PolicySpec, RuleSpec
from ci_queue.pipeline.variables import expand_text

DEFAULT_ONLY = PolicySpec(refs=("branches", "tags"))
_SOURCE_PLURALS = {"push": "pushes", "merge_request": "merge_requests", "schedule": "schedules",
                   "trigger": "triggers", "pipeline": "pipelines", "api": "api", "web": "web",
                   "chat": "chat", "external": "external"}


@dataclass
class Conditions:
    """Evaluates conditions against one context; caches the repository tree for ``exists:``."""

    ctx: PlanContext
    _tree: tuple[str, ...] | None = field(default=None, init=False, repr=False)

    def rule_matches(self, rule: RuleSpec, variables: dict[str, str]) -> bool:
        if rule.if_ is not None and not expressions.evaluate(rule.if_, variables):
            return False
        if rule.changes is not None and not self.changes_match(rule.changes, variables):
            return False
        return rule.exists is None or self.exists_match(rule.exists, variables)

    def first_rule(self, rules: tuple[RuleSpec, ...], variables: dict[str, str]) -> RuleSpec | None:
        """The first rule whose clauses all hold, or None."""
        return next((rule for rule in rules if self.rule_matches(rule, variables)), None)

    def changes_match(self, spec: ChangesSpec, variables: dict[str, str]) -> bool:
        if self.ctx.changed_files is None:
            return True  # unknown diff (new branch, tag, no push): GitLab says true
        patterns = [expand_text(p, variables) for p in spec.paths]
        return globs.any_match(patterns, self.ctx.changed_files)

    def exists_match(self, spec: ExistsSpec, variables: dict[str, str]) -> bool:
        if self.ctx.repo_dir is None:
            return False
        patterns = [expand_text(p, variables) for p in spec.paths]
        if self._tree is None:
            self._tree = tuple(globs.tree_files(self.ctx.repo_dir))
        return globs.any_match(patterns, self._tree)

    def policy_satisfied(self, policy: PolicySpec, variables: dict[str, str]) -> bool:
        """``only`` semantics: every part given holds (each part: any of its entries)."""
        return all(self._policy_parts(policy, variables))

    def policy_any(self, policy: PolicySpec, variables: dict[str, str]) -> bool:
        """``except`` semantics: some part given holds."""
        return any(self._policy_parts(policy, variables))

    def _policy_parts(self, policy: PolicySpec, variables: dict[str, str]) -> list[bool]:
        parts = []
        if policy.refs is not None:
            parts.append(any(self.ref_matches(p) for p in policy.refs))
        if policy.variables is not None:
            parts.append(any(expressions.evaluate(e, variables) for e in policy.variables))
        if policy.changes is not None:
            parts.append(self.changes_match(policy.changes, variables))
        if policy.kubernetes:
            parts.append(False)  # no Kubernetes integration here
        return parts

    def ref_matches(self, pattern: str) -> bool:
        """One ``only:refs`` entry: a keyword, ``/regex/``, or a ref name (``@project`` optional)."""
        ctx = self.ctx
        if "@" in pattern and not pattern.startswith("/"):
            pattern, _, project = pattern.rpartition("@")
            if project != ctx.project_path:
                return False
        if pattern == "branches":
            return bool(ctx.branch) and not ctx.tag and ctx.kind != "merge_request"
        if pattern == "tags":
            return bool(ctx.tag)
        source = PIPELINE_SOURCES.get(ctx.kind, ctx.kind).removesuffix("_event")
        if pattern in (source, _SOURCE_PLURALS.get(source)):
            return True
        if ctx.kind == "merge_request":
            return False  # GitLab matches ref names only in branch and tag pipelines (Policy::Refs)
        ref = ctx.ref_name
        if len(pattern) >= 2 and pattern.startswith("/") and pattern.rfind("/") > 0:
            regex = _ref_regex(pattern)
            return regex is not None and regex.search(ref) is not None
        return pattern == ref

    def filter_matches(self, flt: EventFilter) -> bool:
        """The short form ``when: {on, branches, tags}``; branches of a merge request are its target."""
        ctx = self.ctx
        if flt.on is not None and ctx.kind not in flt.on:
            return False
        if ctx.tag:
            if flt.tags is not None:
                return any(fnmatch.fnmatchcase(ctx.tag, g) for g in flt.tags)
            return flt.branches is None
        branch = ctx.merge_request.target_branch if ctx.kind == "merge_request" and ctx.merge_request else ctx.branch
        if flt.branches is not None:
            return branch is not None and any(fnmatch.fnmatchcase(branch, g) for g in flt.branches)
        return flt.tags is None


@lru_cache(maxsize=256)
def _ref_regex(pattern: str) -> re.Pattern[str] | None:
    end = pattern.rfind("/")
    flags = re.IGNORECASE if "i" in pattern[end + 1 :] else 0
    try:
        return re.compile(pattern[1:end], flags)
    except re.error:
        return None
