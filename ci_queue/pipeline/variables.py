"""CI/CD variables: the predefined ones GitLab sets for an event, expansion, precedence.

Precedence, lowest first (GitLab's order, restricted to what exists here): predefined variables,
global YAML ``variables``, ``workflow:rules:variables``, job ``variables`` (with matrix values),
``rules:variables`` of the matching rule, and the variables given with the event (trigger / API /
``--var``), which win over everything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ci_queue.pipeline.model import PIPELINE_SOURCES, PlanContext

_REFERENCE = re.compile(r"\$(?:\{(\w+)\}|(\w+))|\$\$")
MAX_EXPANSION_ROUNDS = 10


def slug(ref: str) -> str:
    """``CI_COMMIT_REF_SLUG``: lower case, non-alphanumerics to ``-``, at most 63 characters."""
    text = re.sub(r"[^a-z0-9]+", "-", ref.lower()).strip("-")
    return text[:63].rstrip("-")


def predefined(ctx: PlanContext) -> dict[str, str]:
    """The pipeline-level predefined variables GitLab defines for ``ctx``."""
    namespace, _, project = ctx.project_path.rpartition("/")
    host = re.sub(r"^\w+://", "", ctx.server_url).split("/")[0]
    ref = ctx.ref_name
    title = ctx.commit_message.split("\n", 1)[0]
    values = {
        "CI": "true",
        "GITLAB_CI": "true",
        "CI_SERVER": "yes",
        "CI_PIPELINE_SOURCE": PIPELINE_SOURCES.get(ctx.kind, ctx.kind),
        "CI_COMMIT_SHA": ctx.sha,
        "CI_COMMIT_SHORT_SHA": ctx.sha[:8],
        "CI_COMMIT_BEFORE_SHA": ctx.before_sha,
        "CI_COMMIT_REF_NAME": ref,
        "CI_COMMIT_REF_SLUG": slug(ref),
        "CI_COMMIT_REF_PROTECTED": "true" if ctx.is_protected else "false",
        "CI_COMMIT_MESSAGE": ctx.commit_message,
        "CI_COMMIT_TITLE": title,
        "CI_COMMIT_DESCRIPTION": ctx.commit_message[len(title) + 1 :],
        "CI_DEFAULT_BRANCH": ctx.default_branch,
        "CI_PROJECT_PATH": ctx.project_path,
        "CI_PROJECT_PATH_SLUG": slug(ctx.project_path),
        "CI_PROJECT_NAMESPACE": namespace,
        "CI_PROJECT_ROOT_NAMESPACE": namespace.split("/")[0],
        "CI_PROJECT_NAME": project,
        "CI_PROJECT_URL": f"{ctx.server_url.rstrip('/')}/{ctx.project_path}",
        "CI_SERVER_URL": ctx.server_url,
        "CI_SERVER_HOST": host,
        "GITLAB_USER_LOGIN": ctx.user_login,
    }
    if ctx.tag:
        values["CI_COMMIT_TAG"] = ctx.tag
    elif ctx.kind != "merge_request" and ctx.branch:
        values["CI_COMMIT_BRANCH"] = ctx.branch
    if ctx.kind == "trigger":
        values["CI_PIPELINE_TRIGGERED"] = "true"
    mr = ctx.merge_request
    if ctx.kind == "merge_request" and mr is not None:
        values.update({
            "CI_MERGE_REQUEST_IID": str(mr.iid),
            "CI_MERGE_REQUEST_ID": str(mr.iid),
            "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": mr.source_branch,
            "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": mr.target_branch,
            "CI_MERGE_REQUEST_TITLE": mr.title,
            "CI_MERGE_REQUEST_LABELS": ",".join(mr.labels),
            "CI_MERGE_REQUEST_EVENT_TYPE": "detached",
            "CI_MERGE_REQUEST_PROJECT_PATH": mr.target_project_path or ctx.project_path,
            "CI_MERGE_REQUEST_SOURCE_PROJECT_PATH": mr.source_project_path or ctx.project_path,
            "CI_MERGE_REQUEST_DIFF_BASE_SHA": mr.diff_base_sha,
            "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA": ctx.sha,
        })
    return values


def job_predefined(name: str, stage: str, node_index: int | None, node_total: int | None) -> dict[str, str]:
    """The job-level predefined variables that rules may already see."""
    values = {"CI_JOB_NAME": name, "CI_JOB_NAME_SLUG": slug(name), "CI_JOB_STAGE": stage}
    if node_total is not None:
        values["CI_NODE_INDEX"] = str(node_index)
        values["CI_NODE_TOTAL"] = str(node_total)
    return values


def expand_text(text: str, variables: Mapping[str, str]) -> str:
    """Replace ``$NAME`` / ``${NAME}`` by their values; unknown names stay as written, ``$$`` is ``$``."""
    if "$" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def expand_all(variables: Mapping[str, str], raw: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every value with references to the others expanded (bounded: cycles stop, not hang).

    Names in ``raw`` (``expand: false``) keep their value as written.
    """
    current = dict(variables)
    for _ in range(MAX_EXPANSION_ROUNDS):
        changed = False
        for name, value in current.items():
            if name in raw or "$" not in value:
                continue
            expanded = _REFERENCE.sub(
                lambda m: m.group(0) if m.group(0) == "$$" else current.get(m.group(1) or m.group(2), m.group(0)),
                value,
            )
            if expanded != value and len(expanded) <= 1 << 20:
                current[name] = expanded
                changed = True
        if not changed:
            break
    return current
