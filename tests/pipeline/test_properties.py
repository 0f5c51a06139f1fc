"""Properties of the pipeline compiler, checked on generated input (hypothesis).

1. ``compose.deep_merge`` is GitLab's ``deep_merge`` (ActiveSupport's ``Hash#deep_merge``: mappings
   merge key by key, any other value is replaced, the right side wins), keeps each key's marks
   from the side its value comes from, and ``extends`` chains are the left fold of it.
2. Whatever a pipeline file holds, ``validate_file`` and ``plan_file`` answer with diagnostics or
   a plan, never with an exception other than ``PipelineError``.
"""

from __future__ import annotations

import functools
import itertools
import json
import string
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ci_queue.pipeline.compose import Composer, deep_merge
from ci_queue.pipeline.errors import Mark, PipelineError
from ci_queue.pipeline.loader import YList, YMap
from ci_queue.pipeline.model import MergeRequest, PlanContext
from ci_queue.pipeline.planner import plan_file, validate_file
from ci_queue.pipeline.schema import JOB_KEYS

# -- 1. deep_merge ------------------------------------------------------------------------------------


def reference_merge(base: Any, override: Any) -> Any:
    """ActiveSupport's ``Hash#deep_merge``, written as plainly as possible."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    result = dict(base)
    for key, value in override.items():
        result[key] = reference_merge(result[key], value) if key in result else value
    return result


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


KEYS = st.sampled_from(["a", "b", "c", "variables", "script", "image", "tags"])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.text("xyz", max_size=2))
PLAIN_TREES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                            st.dictionaries(KEYS, inner, max_size=4)),
                           max_leaves=12)


def marked(value: Any, file: str, lines: itertools.count) -> Any:
    """``value`` as loaded YAML: YMap/YList with a distinct mark on every mapping, key and value."""
    if isinstance(value, dict):
        result = YMap()
        result.mark = Mark(file, next(lines), 1)
        for key, item in value.items():
            line = next(lines)
            result[key] = marked(item, file, lines)
            result.key_marks[key], result.value_marks[key] = Mark(file, line, 3), Mark(file, line, 9)
        return result
    if isinstance(value, list):
        items = YList(marked(item, file, lines) for item in value)
        items.mark = Mark(file, next(lines), 1)
        return items
    return value


def trees(file: str) -> st.SearchStrategy:
    return PLAIN_TREES.map(lambda value: marked(value, file, itertools.count(1)))


def maps(file: str) -> st.SearchStrategy:
    return st.dictionaries(KEYS, PLAIN_TREES, max_size=4).map(lambda value: marked(value, file, itertools.count(1)))


@given(maps("a"), maps("b"))
def test_deep_merge_is_gitlabs_deep_merge(a, b):
    assert plain(deep_merge(a, b)) == reference_merge(plain(a), plain(b))


@given(trees("a"), trees("b"))
def test_deep_merge_of_anything(a, b):
    assert plain(deep_merge(a, b)) == reference_merge(plain(a), plain(b))


@given(maps("a"), maps("b"))
def test_deep_merge_changes_neither_side(a, b):
    before = (plain(a), plain(b), dict(a.key_marks), dict(b.key_marks))
    deep_merge(a, b)
    assert (plain(a), plain(b), dict(a.key_marks), dict(b.key_marks)) == before


@given(maps("a"))
def test_deep_merge_identities(a):
    empty = YMap()
    assert plain(deep_merge(empty, a)) == plain(a)
    assert plain(deep_merge(a, empty)) == plain(a)
    assert plain(deep_merge(a, a)) == plain(a)


def check_marks(merged: Any, a: Any, b: Any) -> None:
    """Each key of the result carries the marks of the side its value was taken from: the right
    side whenever it has the key (merged mappings included), else the left."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return
    for key in merged:
        source = b if key in b else a
        assert merged.key_mark(key) == source.key_mark(key)
        assert merged.value_mark(key) == source.value_mark(key)
        if key in a and key in b:
            check_marks(merged[key], a[key], b[key])


@given(maps("a"), maps("b"))
def test_deep_merge_keeps_the_marks_of_each_side(a, b):
    check_marks(deep_merge(a, b), a, b)


def consistent_maps(depth: int = 2) -> st.SearchStrategy[dict]:
    """Mappings in which a key always holds a mapping (``m``, ``variables``) or never does."""
    leaf = st.one_of(SCALARS, st.lists(SCALARS, max_size=2))
    nested = consistent_maps(depth - 1) if depth else leaf
    return st.fixed_dictionaries({}, optional={"a": leaf, "b": leaf, "m": nested, "variables": nested})


@given(consistent_maps(), consistent_maps(), consistent_maps())
def test_deep_merge_is_associative_when_no_path_mixes_mappings_and_values(a, b, c):
    a, b, c = (marked(v, f, itertools.count(1)) for v, f in ((a, "a"), (b, "b"), (c, "c")))
    left = deep_merge(deep_merge(a, b), c)
    right = deep_merge(a, deep_merge(b, c))
    assert plain(left) == plain(right)


def test_deep_merge_is_not_associative_when_a_value_replaces_a_mapping():
    """Why `extends` folds its parents from the left, as GitLab does: a value between two
    mappings cuts the first one off."""
    a, b, c = YMap(k={"x": 1}), YMap(k="cut"), YMap(k={"y": 2})
    assert plain(deep_merge(deep_merge(a, b), c)) == {"k": {"y": 2}}
    assert plain(deep_merge(a, deep_merge(b, c))) == {"k": {"x": 1, "y": 2}}


JSONISH = st.recursive(
    st.one_of(st.integers(-5, 5), st.booleans(), st.text(string.ascii_letters + " -_$/", max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3)),
    max_leaves=8,
)
JOB_BODIES = st.dictionaries(st.sampled_from(["variables", "tags", "image", "cache", "artifacts", "x_a", "x_b"]),
                             JSONISH, max_size=4)


def compose(text: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ".gitlab-ci.yml"
        path.write_text(text)
        return plain(Composer(tmp).compose_file(path))


@settings(max_examples=60, deadline=None)
@given(st.lists(JOB_BODIES, min_size=1, max_size=5), JOB_BODIES)
def test_an_extends_chain_is_the_left_fold_of_deep_merge(parents, job):
    config: dict[str, Any] = {}
    for i, body in enumerate(parents):
        config[f".p{i}"] = {**body, **({"extends": f".p{i - 1}"} if i else {})}
    config["job"] = {**job, "extends": f".p{len(parents) - 1}"}
    composed = compose(yaml.safe_dump(config, sort_keys=False))
    assert composed["job"] == functools.reduce(reference_merge, [*parents, job], {})


@settings(max_examples=60, deadline=None)
@given(st.lists(JOB_BODIES, min_size=1, max_size=4), JOB_BODIES)
def test_several_parents_are_the_left_fold_of_deep_merge(parents, job):
    config: dict[str, Any] = {f".p{i}": body for i, body in enumerate(parents)}
    config["job"] = {**job, "extends": [f".p{i}" for i in range(len(parents))]}
    composed = compose(yaml.safe_dump(config, sort_keys=False))
    assert composed["job"] == functools.reduce(reference_merge, [*parents, job], {})


# -- 2. nothing but PipelineError ---------------------------------------------------------------------

NAMES = ["build", "test", "deploy", ".base", ".tpl", "lint", "job 1/2", "build: [a]"]
STAGE_NAMES = ["build", "test", "deploy", ".pre", ".post", "nowhere"]
EXPRESSIONS = ['$CI_COMMIT_BRANCH == "main"', "$CI_COMMIT_TAG", '$X =~ /^a.*/i', "$A && ($B || $C)",
               '$CI_PIPELINE_SOURCE == "merge_request_event"', "$X ==", "/x/", "$OS == 'linux'", "null"]
WORDS = ["on_success", "manual", "always", "never", "delayed", "1h 30m", "3 hours", "90", "push", "tag",
         "merge_request", "branches", "tags", "main", "/^rel/", "true", "false", "null", "~", "yes", "1.5", "-1",
         "200", "201", "$VAR", "${VAR}", "$$", "*.yml", "src/**/*", "ci/inc.yml", "../x.yml", "https://x/y.yml"]


def flow_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


@functools.cache
def scalars() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(WORDS),
        st.sampled_from(NAMES + STAGE_NAMES).map(flow_string),
        st.sampled_from(EXPRESSIONS).map(flow_string),
        st.integers(-5, 300).map(str),
        st.text(max_size=8).map(flow_string),  # any unicode, quoted
        st.text(alphabet=string.ascii_letters + string.digits + " _-./:$*[]{}&!|>'\"#@%", max_size=8),  # raw
    )


@functools.cache
def values(depth: int = 3) -> st.SearchStrategy[str]:
    """A YAML flow value: scalars, lists, mappings (job keys mostly), anchors, aliases,
    merge keys and ``!reference``."""
    if depth == 0:
        return scalars()
    inner = values(depth - 1)
    keys = st.one_of(st.sampled_from(sorted(JOB_KEYS | {"matrix", "if", "job", "optional", "max", "name",
                                                         "local", "rules", "paths", "value", "expand", "on"})),
                     st.sampled_from(NAMES).map(flow_string), st.text("ab", min_size=1, max_size=2))
    pair = st.one_of(st.tuples(keys, inner).map(lambda kv: f"{kv[0]}: {kv[1]}"),
                     st.sampled_from(["a1", "a2"]).map(lambda a: f"<<: *{a}"))
    return st.one_of(
        scalars(),
        st.lists(inner, max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(pair, max_size=4).map(lambda items: "{" + ", ".join(items) + "}"),
        st.tuples(st.sampled_from(["a1", "a2"]), inner).map(lambda t: f"&{t[0]} {t[1]}"),
        st.sampled_from(["*a1", "*a2"]),
        st.lists(st.sampled_from([*NAMES, "script", "rules", "variables", "0"]), max_size=3).map(
            lambda path: "!reference [" + ", ".join(flow_string(p) for p in path) + "]"),
    )


def flow(value: Any) -> str:
    """A Python value as a YAML flow value (JSON is YAML)."""
    return json.dumps(value, ensure_ascii=False)


VALID_EXPRESSIONS = [e for e in EXPRESSIONS if e not in ("$X ==", "/x/")]
JOB_NAMES = ["build", "test", "deploy", "lint", "job 1/2", "build: [a]"]
NEEDS = st.lists(st.one_of(st.sampled_from(JOB_NAMES),
                           st.fixed_dictionaries({"job": st.sampled_from(JOB_NAMES)},
                                                 optional={"optional": st.booleans(), "artifacts": st.booleans()})),
                 max_size=3, unique_by=lambda need: need if isinstance(need, str) else need["job"])
RULE = st.fixed_dictionaries({}, optional={
    "if": st.sampled_from(VALID_EXPRESSIONS),
    "when": st.sampled_from(["on_success", "manual", "always", "never", "on_failure"]),
    "changes": st.lists(st.sampled_from(["src/**/*", "*.md", "ci/*"]), min_size=1, max_size=2),
    "exists": st.lists(st.sampled_from(["ci/inc.yml", "nothing"]), min_size=1, max_size=2),
    "allow_failure": st.booleans(),
    "variables": st.dictionaries(st.sampled_from(["A", "B", "OS"]), st.sampled_from(["1", "linux", "$A"]), max_size=2),
    "needs": NEEDS,
})
# A plausible value for each job key, so that generated pipelines often plan.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "stage": st.sampled_from(["build", "test", "deploy", ".pre", ".post"]),
    "script": st.one_of(st.just("make"), st.lists(st.sampled_from(["a", "b $A"]), min_size=1, max_size=2)),
    "before_script": st.lists(st.just("setup"), max_size=2),
    "rules": st.lists(RULE, max_size=3),
    "only": st.one_of(st.lists(st.sampled_from(["branches", "tags", "main", "merge_requests", "/^v/", "schedules"]),
                               min_size=1, max_size=2),
                      st.fixed_dictionaries({"variables": st.lists(st.sampled_from(VALID_EXPRESSIONS), min_size=1,
                                                                   max_size=2)})),
    "except": st.lists(st.sampled_from(["tags", "main", "dev"]), min_size=1, max_size=2),
    "needs": NEEDS,
    "dependencies": st.lists(st.sampled_from(JOB_NAMES), max_size=2),
    "extends": st.sampled_from([".base", ".tpl", [".base", ".tpl"]]),
    "parallel": st.one_of(st.integers(1, 3), st.just({"matrix": [{"OS": ["linux", "mac"], "V": [1, 2]}]})),
    "when": st.sampled_from(["on_success", "manual", "always", "on_failure"]),
    "variables": st.dictionaries(st.sampled_from(["A", "B", "OS", "CI_DEBUG"]), st.sampled_from(["1", "x", "$B"]),
                                 max_size=3),
    "tags": st.lists(st.sampled_from(["docker", "$OS"]), max_size=2),
    "image": st.sampled_from(["ruby", {"name": "alpine", "entrypoint": [""]}]),
    "timeout": st.sampled_from(["1h", "90s", "3 hours", 30]),
    "retry": st.one_of(st.integers(0, 2), st.just({"max": 2, "when": ["script_failure"]})),
    "allow_failure": st.one_of(st.booleans(), st.just({"exit_codes": [1, 2]})),
    "interruptible": st.booleans(),
    "environment": st.sampled_from(["production", {"name": "review/$CI_COMMIT_REF_SLUG", "url": "https://x"}]),
    "artifacts": st.just({"paths": ["dist/"], "expire_in": "1 week"}),
    "cache": st.just({"key": "k", "paths": ["vendor/"]}),
    "inherit": st.sampled_from([{"default": False}, {"variables": ["A"]}]),
    "resource_group": st.just("prod"),
    "trigger": st.sampled_from(["group/other", {"include": "child.yml"}]),
}


@st.composite
def jobs(draw: st.DrawFn, plausible: bool) -> str:
    """A job as a block mapping: plausible values for real keys, or (``plausible`` false) anything."""
    lines = []
    keys = sorted(PLAUSIBLE) if plausible else [*sorted(JOB_KEYS), "scirpt", "<<"]
    for key in draw(st.lists(st.sampled_from(keys), max_size=6, unique=True)):
        if key == "<<":
            lines.append(f"  <<: *{draw(st.sampled_from(['a1', 'a2']))}")
        elif plausible:
            lines.append(f"  {key}: {flow(draw(PLAUSIBLE[key]))}")
        else:
            lines.append(f"  {key}: {draw(values(2))}")
    if plausible or draw(st.booleans()):
        lines.append("  script: [echo]")
    return "\n".join(lines) if lines else "  {}"


@st.composite
def documents(draw: st.DrawFn) -> str:
    plausible = draw(st.integers(0, 3)) > 0
    parts = []
    if plausible and draw(st.booleans()):
        parts.append(f"stages: {flow(draw(st.permutations(['build', 'test', 'deploy', 'extra'])))}")
    elif draw(st.booleans()):
        parts.append(f"stages: {flow(draw(st.lists(st.sampled_from(STAGE_NAMES))))}")
    globals_ = ["variables", "default", "workflow", "include", "image", "spec", "before_script", "cache", "env",
                "types", "services"]
    for key in draw(st.lists(st.sampled_from(globals_), max_size=3, unique=True)):
        if plausible and key == "workflow":
            parts.append(f"workflow: {flow({'rules': draw(st.lists(RULE, max_size=2)), 'name': 'n $A'})}")
        elif plausible and key in ("variables", "default", "include"):
            value = {"variables": PLAUSIBLE["variables"],
                     "default": st.fixed_dictionaries({}, optional={k: PLAUSIBLE[k] for k in (
                         "image", "tags", "retry", "timeout", "interruptible", "before_script")}),
                     "include": st.sampled_from(["ci/inc.yml", [{"local": "ci/inc.yml", "rules": [{"if": "$A"}]}],
                                                 "ci/*.yml"])}[key]
            parts.append(f"{key}: {flow(draw(value))}")
        else:
            parts.append(f"{key}: {draw(values(3))}")
    if plausible:
        parts.append(".base: {image: ruby, variables: {A: base}, script: [base]}")
        parts.append(".tpl: {tags: [docker], rules: [{if: $CI_COMMIT_BRANCH}, {when: manual}]}")
        names = draw(st.lists(st.sampled_from(JOB_NAMES), min_size=1, max_size=5, unique=True))
    else:
        names = draw(st.lists(st.sampled_from([*NAMES, "on", "true", "1", "ünï"]), max_size=5, unique=True))
    for name in names:
        anchor = "" if plausible else draw(st.sampled_from(["", " &a1", " &a2"]))
        parts.append(f"{flow(name)}:{anchor}\n{draw(jobs(plausible))}")
    if draw(st.integers(0, 9)) == 0:
        parts.insert(0, "spec:\n  inputs: {}\n---")
    return "\n".join(parts) + "\n"


CONTEXTS = [
    PlanContext(kind="push", branch="main", changed_files=("src/a.py", "ci/inc.yml")),
    PlanContext(kind="tag", tag="v1.0"),
    PlanContext(kind="merge_request", branch="feature", variables={"X": "abc", "A": "1"},
                merge_request=MergeRequest(source_branch="feature", target_branch="main")),
    PlanContext(kind="schedule", branch="dev", changed_files=()),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents(), documents(), st.sampled_from(CONTEXTS))
def test_any_document_validates_and_plans_or_raises_pipeline_error(main, included, ctx):
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        (repo / "ci").mkdir()
        (repo / "ci" / "inc.yml").write_text(included)
        path = repo / ".gitlab-ci.yml"
        path.write_text(main)
        for diagnostic in validate_file(path, repo):
            assert diagnostic.severity in ("error", "warning") and diagnostic.message
            assert diagnostic.mark is not None, diagnostic  # every problem has a position
        try:
            plan = plan_file(path, PlanContext(**{**ctx.__dict__, "repo_dir": str(repo)}), repo)
        except PipelineError as exc:
            assert exc.diagnostics
            event("refused")
        else:
            plan.to_dict()
            event("planned with jobs" if plan.jobs else "planned, no jobs")


@pytest.mark.parametrize("text", [
    "a: &a [*a]\n",
    "job: {script: !reference [job, script]}\n",
    "job:\n  script: [x]\n  needs: [{job: job, parallel: {matrix: [{A: [1]}]}}]\n",
    "job:\n  stage: nowhere\n  script: x\n  needs: [other]\nother: {stage: nowhere, script: y}\n",
    "job: {script: x, parallel: {matrix: [{A: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], B: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],"
    " C: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], D: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], E: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],"
    " F: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], G: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}]}, needs: []}\n"
    "other: {script: x, needs: ['job: [1, 1, 1, 1, 1, 1, 1]']}\n",
    textwrap.dedent("""\
        .l0: [x]
        .l1: [!reference [.l0], !reference [.l0], !reference [.l0], !reference [.l0], !reference [.l0]]
        .l2: [!reference [.l1], !reference [.l1], !reference [.l1], !reference [.l1], !reference [.l1]]
        .l3: [!reference [.l2], !reference [.l2], !reference [.l2], !reference [.l2], !reference [.l2]]
        .l4: [!reference [.l3], !reference [.l3], !reference [.l3], !reference [.l3], !reference [.l3]]
        .l5: [!reference [.l4], !reference [.l4], !reference [.l4], !reference [.l4], !reference [.l4]]
        .l6: [!reference [.l5], !reference [.l5], !reference [.l5], !reference [.l5], !reference [.l5]]
        .l7: [!reference [.l6], !reference [.l6], !reference [.l6], !reference [.l6], !reference [.l6]]
        .l8: [!reference [.l7], !reference [.l7], !reference [.l7], !reference [.l7], !reference [.l7]]
        job: {script: !reference [.l8]}
    """),
], ids=["recursive-alias", "self-reference", "self-need-matrix", "undefined-stages-with-needs", "huge-matrix",
        "reference-bomb"])
def test_hostile_files_are_refused_quickly(tmp_path, text):
    path = tmp_path / ".gitlab-ci.yml"
    path.write_text(text)
    diagnostics = validate_file(path, tmp_path)
    assert any(d.severity == "error" for d in diagnostics)
    assert all(d.mark is not None for d in diagnostics)
