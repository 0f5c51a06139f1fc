"""The keywords of the pipeline language, where each may appear, and "did you mean" help.

Kept as plain data so the validator, the docs and the tests agree on one list. The names are
GitLab's (``.gitlab-ci.yml`` reference), plus the short forms of ci-queue's original design
(``command``, ``env``, and ``when: {on: ..., branches: ...}``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# Top-level keys that are not jobs. Anything else at the top level is a job (hidden if it
# starts with a dot).
GLOBAL_KEYS = frozenset({
    "default", "include", "stages", "types", "variables", "workflow", "spec",
    # deprecated global defaults, still accepted by GitLab
    "image", "services", "before_script", "after_script", "cache",
    # short form
    "env",
})

JOB_KEYS = frozenset({
    "after_script", "allow_failure", "artifacts", "before_script", "cache", "coverage",
    "dast_configuration", "dependencies", "environment", "except", "extends", "hooks",
    "id_tokens", "identity", "image", "inherit", "interruptible", "manual_confirmation", "needs",
    "only", "pages", "parallel", "publish", "release", "resource_group", "retry", "rules", "run",
    "script", "secrets", "services", "stage", "start_in", "tags", "timeout", "trigger", "type",
    "variables", "when",
    # short form
    "command", "env",
})

# Keys a job inherits from ``default:`` when it does not set them itself.
DEFAULT_KEYS = frozenset({
    "after_script", "artifacts", "before_script", "cache", "hooks", "id_tokens", "image",
    "interruptible", "retry", "services", "tags", "timeout",
})

RULE_KEYS = frozenset({"if", "changes", "exists", "when", "allow_failure", "variables", "needs",
                       "interruptible", "start_in"})
WORKFLOW_KEYS = frozenset({"rules", "name", "auto_cancel"})
# GitLab tolerates `start_in`, `allow_failure` and `needs` in workflow rules (gitlab#436473), and ignores them.
WORKFLOW_RULE_KEYS = frozenset({"if", "changes", "exists", "when", "variables", "auto_cancel", "start_in",
                                "allow_failure", "needs"})
INCLUDE_RULE_KEYS = frozenset({"if", "changes", "exists", "when"})
INCLUDE_KEYS = frozenset({"local", "file", "project", "ref", "remote", "template", "component",
                          "rules", "inputs", "cache", "integrity"})
NEED_KEYS = frozenset({"job", "artifacts", "optional", "pipeline", "project", "ref", "parallel"})
RETRY_KEYS = frozenset({"max", "when", "exit_codes"})
IMAGE_KEYS = frozenset({"name", "entrypoint", "docker", "pull_policy", "kubernetes"})
SERVICE_KEYS = frozenset({"name", "alias", "entrypoint", "command", "variables", "pull_policy",
                          "docker", "kubernetes"})
ARTIFACTS_KEYS = frozenset({"paths", "exclude", "expose_as", "name", "public", "access", "reports",
                            "untracked", "when", "expire_in"})
CACHE_KEYS = frozenset({"key", "paths", "untracked", "unprotect", "when", "policy", "fallback_keys"})
ENVIRONMENT_KEYS = frozenset({"name", "url", "on_stop", "action", "auto_stop_in", "kubernetes",
                              "deployment_tier"})
INHERIT_KEYS = frozenset({"default", "variables"})
POLICY_KEYS = frozenset({"refs", "variables", "changes", "kubernetes"})
CHANGES_KEYS = frozenset({"paths", "compare_to"})
EXISTS_KEYS = frozenset({"paths", "project", "ref"})
TRIGGER_KEYS = frozenset({"include", "project", "branch", "strategy", "forward"})
VARIABLE_KEYS = frozenset({"value", "description", "options", "expand"})
SHORT_WHEN_KEYS = frozenset({"on", "branches", "tags"})

JOB_WHEN = ("on_success", "on_failure", "always", "manual", "delayed", "never")
RULE_WHEN = JOB_WHEN
WORKFLOW_RULE_WHEN = ("always", "never")
INCLUDE_RULE_WHEN = ("never", "always")
RETRY_WHEN = frozenset({
    "always", "unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure",
    "runner_system_failure", "runner_unsupported", "stale_schedule", "job_execution_timeout",
    "archived_failure", "unmet_prerequisites", "scheduler_failure", "data_integrity_failure",
})
SHORT_FORM_EVENTS = frozenset({"push", "tag", "merge_request", "web", "schedule", "api", "trigger"})
DEFAULT_STAGES = ("build", "test", "deploy")


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``did you mean `x`?`` for the closest known keyword, or None when nothing is close."""
    close = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.75)
    return f"did you mean `{close[0]}`?" if close else None
