"""The pipeline language, feature by feature, planned for events as GitLab would plan them.

Each test writes a small pipeline (and the files it includes) to a temporary repository and
plans it with ``plan_file`` for one event: a push to ``main`` unless it says otherwise. GitLab's
documented semantics (https://docs.gitlab.com/ee/ci/yaml/) are the reference; where GitLab's
source decides a detail, the test says so. The errors and warnings of the language, with their
positions, are in ``test_validation.py``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from ci_queue.pipeline.errors import PipelineError
from ci_queue.pipeline.model import MergeRequest, Need, Plan, PlanContext, Retry
from ci_queue.pipeline.planner import find_pipeline_file, load_spec, plan_file, plan_spec
from tests.pipeline.conftest import write

# -- events -------------------------------------------------------------------------------------


def push(branch: str = "main", **fields) -> PlanContext:
    return PlanContext(kind="push", branch=branch, **fields)


def tag(name: str = "v1.0.0", **fields) -> PlanContext:
    return PlanContext(kind="tag", tag=name, **fields)


def merge_request(source: str = "feature", target: str = "main", **fields) -> PlanContext:
    mr = MergeRequest(iid=42, source_branch=source, target_branch=target, title="Add feature",
                      labels=("backend", "ready"), diff_base_sha="b" * 40)
    return PlanContext(kind="merge_request", branch=source, merge_request=mr, **fields)


def schedule(branch: str = "main", **fields) -> PlanContext:
    return PlanContext(kind="schedule", branch=branch, **fields)


def web(branch: str = "main", **fields) -> PlanContext:
    return PlanContext(kind="web", branch=branch, **fields)


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def plan(repo: Path):
    """``plan(text, ctx=None, files={name: text}, **context fields)``: the Plan for one event."""

    def run(text: str, ctx: PlanContext | None = None, files: dict[str, str] | None = None, **fields) -> Plan:
        for name, content in (files or {}).items():
            write(repo, name, content)
        path = write(repo, ".gitlab-ci.yml", text)
        if ctx is None:
            ctx = PlanContext(**{"kind": "push", "branch": "main", **fields})
        return plan_file(path, ctx, repo, display_name=".gitlab-ci.yml")

    return run


@pytest.fixture
def plan_error(plan):
    """The messages of the PipelineError that planning must raise."""

    def run(text: str, ctx: PlanContext | None = None, files: dict[str, str] | None = None, **fields) -> list[str]:
        with pytest.raises(PipelineError) as info:
            plan(text, ctx, files, **fields)
        return [d.format() for d in info.value.errors]

    return run


def names(result: Plan) -> list[str]:
    return [job.name for job in result.jobs]


# -- stages ---------------------------------------------------------------------------------------


def test_default_stages_are_build_test_deploy_and_a_job_defaults_to_test(plan):
    result = plan("""
        d: {stage: deploy, script: d}
        t: {script: t}
        b: {stage: build, script: b}
    """)
    assert result.stages == ["build", "test", "deploy"]
    assert [(j.name, j.stage) for j in result.jobs] == [("b", "build"), ("t", "test"), ("d", "deploy")]


def test_declared_stages_order_jobs_and_unused_stages_are_dropped(plan):
    result = plan("""
        stages: [lint, unused, test, ship]
        ship: {stage: ship, script: s}
        unit: {script: u}
        style: {stage: lint, script: l}
    """)
    assert result.stages == ["lint", "test", "ship"]
    assert names(result) == ["style", "unit", "ship"]


def test_pre_and_post_stages_are_implicit_first_and_last(plan):
    result = plan("""
        stages: [build]
        after: {stage: .post, script: a}
        build: {stage: build, script: b}
        before: {stage: .pre, script: p}
    """)
    assert result.stages == [".pre", "build", ".post"]
    assert names(result) == ["before", "build", "after"]


def test_pre_and_post_written_in_stages_keep_their_place(plan):
    result = plan("""
        stages: [.post, build, .pre]
        a: {stage: .post, script: a}
        b: {stage: build, script: b}
        c: {stage: .pre, script: c}
    """)
    assert result.stages == [".pre", "build", ".post"]


def test_a_pipeline_of_only_pre_and_post_jobs_is_not_created(plan):
    result = plan("""
        before: {stage: .pre, script: p}
        after: {stage: .post, script: a}
    """)
    assert result.jobs == [] and result.skipped_reason


def test_a_pipeline_whose_rules_leave_no_job_is_not_created(plan):
    """GitLab: "No stages / jobs for this pipeline." (before, the plan had 0 jobs and no reason,
    and the run became a `success` of nothing)."""
    result = plan("""
        release: {script: r, rules: [{if: $CI_COMMIT_TAG}]}
        nightly: {script: n, only: [schedules]}
    """)
    assert (result.jobs, result.stages) == ([], [])
    assert result.skipped_reason == "No stages / jobs for this pipeline."
    assert result.to_dict()["skipped_reason"] == result.skipped_reason


def test_types_is_the_old_name_of_stages(plan):
    result = plan("""
        types: [one, two]
        b: {type: two, script: b}
        a: {stage: one, script: a}
    """)
    assert result.stages == ["one", "two"]
    assert names(result) == ["a", "b"]
    assert [w.message for w in result.warnings] == ["`types` is deprecated; use `stages`"]


def test_jobs_keep_file_order_inside_a_stage(plan):
    result = plan("""
        z: {script: z}
        a: {script: a}
        m: {script: m}
    """)
    assert names(result) == ["z", "a", "m"]


def test_job_line_is_where_it_is_defined(plan):
    result = plan("""
        first:
          script: a
        second:
          script: b
    """)
    assert [j.line for j in result.jobs] == [2, 4]


# -- hidden jobs and default ------------------------------------------------------------------------


def test_hidden_jobs_are_not_planned(plan):
    result = plan("""
        .template:
          script: hidden
        .not even a job: 42
        real:
          script: run
    """)
    assert names(result) == ["real"]


def test_default_keys_are_inherited_and_a_jobs_own_key_wins(plan):
    result = plan("""
        default:
          image: ruby:3.2
          before_script: [setup]
          after_script: [cleanup]
          tags: [docker]
          timeout: 10m
          retry: 1
          interruptible: true
          services: [postgres:16]
          cache: {key: k, paths: [vendor]}
          artifacts: {paths: [out]}
        a:
          script: a
        b:
          image: alpine
          tags: [arm]
          before_script: []
          script: b
    """)
    a, b = result.job("a"), result.job("b")
    assert a.image == {"name": "ruby:3.2"} and b.image == {"name": "alpine"}
    assert a.before_script == ["setup"] and b.before_script == []
    assert a.after_script == b.after_script == ["cleanup"]
    assert a.tags == ["docker"] and b.tags == ["arm"]
    assert a.timeout == b.timeout == 600
    assert a.retry == Retry(max=1)
    assert a.interruptible is True
    assert a.services == [{"name": "postgres:16"}]
    assert a.cache == [{"key": "k", "paths": ["vendor"]}]
    assert a.artifacts == {"paths": ["out"]}


def test_default_is_not_deep_merged_into_a_jobs_key(plan):
    """A job's own key replaces the default's whole value (GitLab: `default` is not `extends`)."""
    result = plan("""
        default:
          image: {name: ruby, entrypoint: [""]}
          artifacts: {paths: [a], expire_in: 1 day}
        job:
          image: {name: alpine}
          artifacts: {paths: [b]}
          script: x
    """)
    job = result.job("job")
    assert job.image == {"name": "alpine"}
    assert job.artifacts == {"paths": ["b"]}


def test_inherit_default_false_takes_nothing_from_default(plan):
    result = plan("""
        default:
          image: ruby
          before_script: [setup]
        job:
          inherit: {default: false}
          script: x
    """)
    job = result.job("job")
    assert job.image is None and job.before_script == []


def test_inherit_default_list_takes_only_the_named_keys(plan):
    result = plan("""
        default:
          image: ruby
          before_script: [setup]
          tags: [docker]
        job:
          inherit:
            default: [image, tags]
          script: x
    """)
    job = result.job("job")
    assert job.image == {"name": "ruby"} and job.tags == ["docker"] and job.before_script == []


def test_inherit_variables_false_and_list(plan):
    result = plan("""
        variables: {A: "1", B: "2", C: "3"}
        none:
          inherit: {variables: false}
          script: x
        some:
          inherit: {variables: [A, C]}
          script: x
        all:
          script: x
    """)
    assert "A" not in result.job("none").variables
    some = result.job("some").variables
    assert (some.get("A"), some.get("B"), some.get("C")) == ("1", None, "3")
    assert {k: result.job("all").variables[k] for k in "ABC"} == {"A": "1", "B": "2", "C": "3"}


def test_inherit_variables_false_hides_global_variables_from_rules(plan):
    result = plan("""
        variables: {DEPLOY: "yes"}
        job:
          inherit: {variables: false}
          rules:
            - if: $DEPLOY == "yes"
          script: x
        other:
          rules:
            - if: $DEPLOY == "yes"
          script: x
    """)
    assert names(result) == ["other"]


def test_legacy_global_keys_are_defaults(plan):
    result = plan("""
        image: python:3.11
        services: [redis]
        before_script: [pip install .]
        after_script: [echo done]
        cache: {paths: [.cache]}
        job:
          script: pytest
    """)
    job = result.job("job")
    assert job.image == {"name": "python:3.11"}
    assert job.services == [{"name": "redis"}]
    assert job.before_script == ["pip install ."]
    assert job.after_script == ["echo done"]
    assert job.cache == [{"paths": [".cache"]}]


def test_default_wins_over_a_legacy_global_key(plan):
    result = plan("""
        image: old
        default:
          image: new
        job:
          script: x
    """)
    assert result.job("job").image == {"name": "new"}


def test_a_job_only_key_in_default_is_ignored_with_a_warning(plan):
    result = plan("""
        default:
          stage: build
          image: ruby
        job:
          script: x
    """)
    assert result.job("job").stage == "test"
    assert [w.format() for w in result.warnings] == [
        ".gitlab-ci.yml:3:3: warning: `stage` cannot be set in `default:` and is ignored"]


def test_default_keys_come_after_extends(plan):
    """A key a job gets through `extends` is its own: `default` does not replace it."""
    result = plan("""
        default:
          image: ruby
        .base:
          image: alpine
        job:
          extends: .base
          script: x
    """)
    assert result.job("job").image == {"name": "alpine"}


# -- extends --------------------------------------------------------------------------------------


def test_extends_multi_level(plan):
    result = plan("""
        .base:
          image: ruby
          tags: [docker]
        .middle:
          extends: .base
          stage: build
        job:
          extends: .middle
          script: x
    """)
    job = result.job("job")
    assert (job.image, job.tags, job.stage) == ({"name": "ruby"}, ["docker"], "build")


def test_extends_several_parents_later_wins_and_the_job_wins_over_all(plan):
    result = plan("""
        .a:
          image: a
          tags: [a]
          stage: build
        .b:
          image: b
          timeout: 1m
        job:
          extends: [.a, .b]
          timeout: 2m
          script: x
    """)
    job = result.job("job")
    assert (job.image, job.tags, job.stage, job.timeout) == ({"name": "b"}, ["a"], "build", 120)


def test_extends_deep_merges_mappings_and_replaces_lists(plan):
    result = plan("""
        .base:
          variables: {A: base-a, B: base-b}
          script: [base1, base2]
          artifacts: {paths: [base], expire_in: 1 week}
        job:
          extends: .base
          variables: {B: job-b, C: job-c}
          script: [job]
          artifacts: {paths: [job]}
    """)
    job = result.job("job")
    assert {k: job.variables[k] for k in "ABC"} == {"A": "base-a", "B": "job-b", "C": "job-c"}
    assert job.script == ["job"]
    assert job.artifacts == {"paths": ["job"], "expire_in": "1 week"}


def test_extends_of_a_visible_job(plan):
    result = plan("""
        base:
          script: base
          tags: [x]
        child:
          extends: base
          tags: [y]
    """)
    assert [(j.name, j.script, j.tags) for j in result.jobs] == [("base", ["base"], ["x"]),
                                                                 ("child", ["base"], ["y"])]


def test_extends_does_not_change_the_parent(plan):
    result = plan("""
        .base:
          variables: {A: "1"}
        one:
          extends: .base
          variables: {B: "2"}
          script: x
        two:
          extends: .base
          script: x
    """)
    assert "B" not in result.job("two").variables


def test_null_in_a_child_unsets_an_inherited_key(plan):
    """GitLab treats `key: null` as not set: `except: null` drops a parent's `except`."""
    result = plan("""
        .base:
          except: [main]
          tags: [docker]
        job:
          extends: .base
          except: null
          tags: null
          script: x
    """)
    job = result.job("job")
    assert job.tags == []


def test_null_key_falls_back_to_default(plan):
    result = plan("""
        default:
          image: ruby
        job:
          image: null
          script: x
    """)
    assert result.job("job").image == {"name": "ruby"}


# -- YAML anchors and merge keys --------------------------------------------------------------------


def test_anchors_aliases_and_merge_keys(plan):
    result = plan("""
        .defaults: &defaults
          image: ruby
          tags: [docker]
        .setup: &setup
          - bundle install
        job:
          <<: *defaults
          tags: [arm]
          before_script: *setup
          script: [rspec]
        other:
          <<: *defaults
          script: [rake]
    """)
    job, other = result.job("job"), result.job("other")
    assert (job.image, job.tags, job.before_script) == ({"name": "ruby"}, ["arm"], ["bundle install"])
    assert other.tags == ["docker"]


def test_merge_key_list_earlier_mapping_wins(plan):
    result = plan("""
        .a: &a {image: a, tags: [a]}
        .b: &b {image: b, timeout: 1m}
        job:
          <<: [*a, *b]
          script: x
    """)
    job = result.job("job")
    assert (job.image, job.tags, job.timeout) == ({"name": "a"}, ["a"], 60)


def test_anchored_script_lines_nested_in_a_script_are_flattened(plan):
    result = plan("""
        .prepare: &prepare
          - apt-get update
          - apt-get install -y make
        job:
          script:
            - *prepare
            - make
    """)
    assert result.job("job").script == ["apt-get update", "apt-get install -y make", "make"]


# -- !reference -----------------------------------------------------------------------------------


def test_reference_in_script_is_flattened(plan):
    result = plan("""
        .setup:
          script: [one, two]
          after_script: [done]
        job:
          script:
            - !reference [.setup, script]
            - three
          after_script: !reference [.setup, after_script]
    """)
    job = result.job("job")
    assert job.script == ["one", "two", "three"]
    assert job.after_script == ["done"]


def test_reference_to_rules(plan):
    text = """
        .rules:
          rules:
            - if: $CI_COMMIT_TAG
              when: never
            - if: $CI_COMMIT_BRANCH == "main"
        job:
          rules:
            - !reference [.rules, rules]
            - when: manual
          script: x
    """
    assert [(j.name, j.when) for j in plan(text).jobs] == [("job", "on_success")]
    assert plan(text, push("dev")).job("job").when == "manual"
    assert names(plan(text, tag())) == []


def test_reference_in_variables(plan):
    result = plan("""
        .vars:
          variables:
            A: "1"
            B: "2"
        one:
          variables: !reference [.vars, variables]
          script: x
        two:
          variables:
            A: !reference [.vars, variables, B]
          script: x
    """)
    assert result.job("one").variables["B"] == "2"
    assert result.job("two").variables["A"] == "2"


def test_reference_sees_the_result_of_extends(plan):
    result = plan("""
        .base:
          script: [base]
        .child:
          extends: .base
        job:
          script:
            - !reference [.child, script]
            - own
    """)
    assert result.job("job").script == ["base", "own"]


def test_reference_to_a_reference(plan):
    result = plan("""
        .a:
          script: [a]
        .b:
          script: [!reference [.a, script], b]
        job:
          script: [!reference [.b, script], c]
    """)
    assert result.job("job").script == ["a", "b", "c"]


# -- include: local -------------------------------------------------------------------------------


def test_include_local_string(plan):
    result = plan("""
        include: ci/build.yml
        test: {script: t}
    """, files={"ci/build.yml": "build: {stage: build, script: b}\n"})
    assert names(result) == ["build", "test"]


def test_include_local_list_and_mapping_forms(plan):
    result = plan("""
        include:
          - ci/a.yml
          - local: /ci/b.yml
          - {local: ci/c.yaml}
        main: {script: m}
    """, files={"ci/a.yml": "a: {script: a}\n", "ci/b.yml": "b: {script: b}\n", "ci/c.yaml": "c: {script: c}\n"})
    assert sorted(names(result)) == ["a", "b", "c", "main"]


def test_include_wildcard_takes_every_matching_file_in_sorted_order(plan):
    result = plan("""
        include: ci/*.yml
        main: {script: m}
    """, files={"ci/b.yml": "b: {script: b}\n", "ci/a.yml": "a: {script: a}\nvariables: {WHO: a}\n",
                "ci/z.yml": "variables: {WHO: z}\n", "ci/deep/d.yml": "d: {script: d}\n",
                "ci/notes.txt": "not yaml: [\n"})
    assert names(result) == ["a", "b", "main"]
    assert result.job("main").variables["WHO"] == "z"  # later files win


def test_include_double_star_wildcards(plan):
    files = {"ci/a.yml": "a: {script: a}\n", "ci/deep/d.yml": "d: {script: d}\n"}
    assert sorted(names(plan("include: 'ci/**.yml'\n", files=files))) == ["a", "d"]
    assert names(plan("include: 'ci/**/*.yml'\n", files=files)) == ["d"]


def test_the_including_file_wins_and_merges_deeply(plan):
    result = plan("""
        include: ci/base.yml
        variables: {B: main}
        job:
          tags: [main]
    """, files={"ci/base.yml": """
        variables: {A: base, B: base}
        job:
          script: from-include
          tags: [base]
    """})
    job = result.job("job")
    assert (job.script, job.tags) == (["from-include"], ["main"])
    assert (job.variables["A"], job.variables["B"]) == ("base", "main")


def test_a_later_include_overrides_an_earlier_one(plan):
    result = plan("include: [one.yml, two.yml]\n",
                  files={"one.yml": "job: {script: one, tags: [one]}\n", "two.yml": "job: {script: two}\n"})
    job = result.job("job")
    assert (job.script, job.tags) == (["two"], ["one"])


def test_nested_includes(plan):
    result = plan("include: ci/one.yml\nmain: {script: m}\n", files={
        "ci/one.yml": "include: ci/two.yml\none: {script: '1'}\n",
        "ci/two.yml": "two: {script: '2'}\n",
    })
    assert sorted(names(result)) == ["main", "one", "two"]


def test_nested_include_paths_are_relative_to_the_repository(plan):
    result = plan("include: ci/one.yml\n", files={
        "ci/one.yml": "include: /other/two.yml\none: {script: '1'}\n",
        "other/two.yml": "two: {script: '2'}\n",
    })
    assert sorted(names(result)) == ["one", "two"]


def test_a_file_included_twice_is_taken_once(plan):
    result = plan("include: [a.yml, b.yml, a.yml]\n", files={
        "a.yml": "a: {script: a}\n", "b.yml": "include: a.yml\nb: {script: b}\n"})
    assert sorted(names(result)) == ["a", "b"]


def test_extends_across_included_files(plan):
    result = plan("""
        include: templates.yml
        job:
          extends: .template
          script: x
    """, files={"templates.yml": ".template: {image: ruby, stage: build}\n"})
    assert (result.job("job").image, result.job("job").stage) == ({"name": "ruby"}, "build")


def test_reference_into_an_included_file(plan):
    result = plan("""
        include: templates.yml
        job:
          script: [!reference [.setup, script], go]
    """, files={"templates.yml": ".setup: {script: [prepare]}\n"})
    assert result.job("job").script == ["prepare", "go"]


def test_include_rules_decide_per_event(plan):
    text = """
        include:
          - local: release.yml
            rules:
              - if: $CI_COMMIT_TAG
          - local: never.yml
            rules:
              - if: $CI_COMMIT_TAG
                when: never
              - when: always
        build: {script: b}
    """
    files = {"release.yml": "release: {script: r}\n", "never.yml": "extra: {script: e}\n"}
    assert names(plan(text, files=files)) == ["extra", "build"]  # included keys come first
    assert names(plan(text, tag(), files=files)) == ["release", "build"]


def test_include_rules_see_event_variables_but_not_yaml_variables(plan):
    text = """
        variables: {FROM_YAML: "yes"}
        include:
          - local: a.yml
            rules: [{if: $FROM_YAML}]
          - local: b.yml
            rules: [{if: $FROM_EVENT}]
        main: {script: m}
    """
    files = {"a.yml": "a: {script: a}\n", "b.yml": "b: {script: b}\n"}
    assert names(plan(text, files=files)) == ["main"]
    assert names(plan(text, push(variables={"FROM_EVENT": "1"}), files=files)) == ["b", "main"]


def test_include_rules_exists(plan, repo):
    text = """
        include:
          - local: go.yml
            rules:
              - exists: [go.mod]
        main: {script: m}
    """
    files = {"go.yml": "go: {script: g}\n"}
    assert names(plan(text, push(repo_dir=str(repo)), files=files)) == ["main"]
    write(repo, "go.mod", "module x\n")
    assert names(plan(text, push(repo_dir=str(repo)), files=files)) == ["go", "main"]


# -- variables ------------------------------------------------------------------------------------


def test_global_and_job_variables_with_scalars_as_text(plan):
    result = plan("""
        variables:
          GLOBAL: g
          NUMBER: 3
          FLOAT: 1.5
          FLAG: true
          EMPTY:
        job:
          variables: {LOCAL: l}
          script: x
    """)
    variables = result.job("job").variables
    assert {k: variables[k] for k in ("GLOBAL", "NUMBER", "FLOAT", "FLAG", "EMPTY", "LOCAL")} == {
        "GLOBAL": "g", "NUMBER": "3", "FLOAT": "1.5", "FLAG": "true", "EMPTY": "", "LOCAL": "l"}


def test_variable_value_and_description_form(plan):
    result = plan("""
        variables:
          DEPLOY_ENV:
            value: staging
            description: Where to deploy
          OPTS:
            value: fast
            options: [fast, slow]
            description: Speed
        job:
          rules:
            - if: $DEPLOY_ENV == "staging"
          script: x
    """)
    assert result.job("job").variables["DEPLOY_ENV"] == "staging"
    assert result.job("job").variables["OPTS"] == "fast"


def test_expand_false_keeps_references_as_written(plan):
    result = plan("""
        variables:
          BASE: /opt
          RAW:
            value: $BASE/raw
            expand: false
          COOKED: $BASE/cooked
        job:
          rules:
            - if: $RAW == "$BASE/raw"
              variables: {MATCHED: raw}
            - if: $COOKED == "/opt/cooked"
              variables: {MATCHED: cooked}
          script: x
    """)
    assert result.job("job").variables["MATCHED"] == "raw"


def test_a_job_variable_with_expand_true_expands_even_if_a_global_of_that_name_does_not(plan):
    result = plan("""
        variables:
          BASE: /opt
          PATHS:
            value: $BASE/global
            expand: false
        job:
          variables:
            PATHS: $BASE/job
          rules:
            - if: $PATHS == "/opt/job"
          script: x
    """)
    assert names(result) == ["job"]


def test_variable_precedence_global_workflow_job_matrix_rule_event(plan):
    text = """
        variables: {A: global, B: global, C: global, D: global, E: global, F: global}
        workflow:
          rules:
            - variables: {B: workflow, C: workflow, D: workflow, E: workflow, F: workflow}
        job:
          variables: {C: job, D: job, E: job, F: job}
          parallel:
            matrix:
              - D: matrix
                E: matrix
                F: matrix
          rules:
            - variables: {E: rule, F: rule}
          script: x
    """
    result = plan(text, push(variables={"F": "event"}))
    variables = result.jobs[0].variables
    assert [variables[k] for k in "ABCDEF"] == ["global", "workflow", "job", "matrix", "rule", "event"]


def test_rules_if_sees_global_job_and_expanded_variables(plan):
    result = plan("""
        variables:
          ROOT: /srv
          TARGET: $ROOT/app
        job:
          variables:
            MODE: release
            FULL: ${TARGET}-$MODE
          rules:
            - if: $FULL == "/srv/app-release" && $CI_JOB_NAME == "job"
          script: x
    """)
    assert names(result) == ["job"]


def test_variables_are_planned_as_written_for_the_runner_to_expand(plan):
    job = plan("""
        variables: {ROOT: /srv}
        job:
          variables: {TARGET: $ROOT/app}
          script: x
    """).job("job")
    assert job.variables["TARGET"] == "$ROOT/app"


def test_event_variables_reach_every_job_and_win(plan):
    result = plan("""
        variables: {LEVEL: low}
        job: {script: x}
    """, push(variables={"LEVEL": "high", "EXTRA": "1"}))
    assert (result.job("job").variables["LEVEL"], result.job("job").variables["EXTRA"]) == ("high", "1")


def test_dollar_dollar_stays_as_written_for_rules(plan):
    """GitLab's Variables::Collection#sort_and_expand_all keeps an escaped `$$` as it is."""
    result = plan("""
        variables: {PRICE: $$5, COST: $$PRICE}
        job:
          rules:
            - if: $PRICE == "$$5" && $COST == "$$PRICE"
          script: x
    """)
    assert names(result) == ["job"]


def test_plan_variables_are_the_predefined_ones(plan):
    result = plan("job: {script: x}\n")
    assert result.variables["CI_COMMIT_BRANCH"] == "main"
    assert result.variables["CI_PIPELINE_SOURCE"] == "push"


def test_job_predefined_variables_in_rules(plan):
    result = plan("""
        build:
          stage: build
          rules:
            - if: $CI_JOB_STAGE == "build" && $CI_JOB_NAME_SLUG == "build"
          script: x
        test:
          rules:
            - if: $CI_JOB_STAGE == "build"
          script: x
    """)
    assert names(result) == ["build"]


# -- workflow ---------------------------------------------------------------------------------------


WORKFLOW = """
    workflow:
      name: Pipeline for $CI_COMMIT_REF_NAME ($KIND)
      rules:
        - if: $CI_COMMIT_TAG
          variables: {KIND: release}
        - if: $CI_COMMIT_BRANCH == "wip"
          when: never
        - if: $CI_PIPELINE_SOURCE == "merge_request_event"
        - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
    variables: {KIND: normal}
    job:
      script: x
"""


def test_workflow_rules_no_match_skips_the_pipeline(plan):
    result = plan(WORKFLOW, push("feature"))
    assert result.jobs == [] and result.stages == []
    assert result.skipped_reason == "workflow:rules excluded this pipeline"


def test_workflow_rules_when_never_skips_the_pipeline(plan):
    result = plan(WORKFLOW, push("wip"))
    assert result.jobs == []
    assert result.skipped_reason == "a workflow rule with `when: never` matched"


def test_workflow_rule_variables_and_name(plan):
    result = plan(WORKFLOW, tag("v2"))
    assert result.name == "Pipeline for v2 (release)"
    assert result.job("job").variables["KIND"] == "release"
    result = plan(WORKFLOW, push("main"))
    assert result.name == "Pipeline for main (normal)"
    assert result.job("job").variables["KIND"] == "normal"


def test_workflow_rules_admit_jobs_without_rules_into_merge_request_pipelines(plan):
    """GitLab drops the default `only: [branches, tags]` of every job once `workflow:rules`
    exists (Processable#compose!), so the job runs in the merge request pipeline."""
    result = plan(WORKFLOW, merge_request())
    assert names(result) == ["job"]


def test_workflow_rules_keep_an_explicit_only(plan):
    result = plan(textwrap.dedent(WORKFLOW) + "\nbranch-only:\n  only: [branches]\n  script: x\n", merge_request())
    assert names(result) == ["job"]


def test_workflow_rule_variables_are_visible_to_job_rules(plan):
    result = plan("""
        workflow:
          rules:
            - variables: {DEPLOY: "true"}
        deploy:
          rules:
            - if: $DEPLOY == "true"
          script: x
    """)
    assert names(result) == ["deploy"]


def test_workflow_without_rules_creates_the_pipeline(plan):
    result = plan("workflow: {name: fixed}\njob: {script: x}\n")
    assert (result.name, names(result), result.skipped_reason) == ("fixed", ["job"], None)


def test_plan_to_dict_is_plain_data(plan):
    result = plan(WORKFLOW, tag("v2"))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["name"] == "Pipeline for v2 (release)"
    assert data["jobs"][0]["name"] == "job" and data["jobs"][0]["runnable"] is True


# -- rules ------------------------------------------------------------------------------------------


def test_rules_first_match_wins(plan):
    text = """
        job:
          rules:
            - if: $CI_COMMIT_BRANCH == "main"
              when: manual
            - if: $CI_COMMIT_BRANCH =~ /^ma/
              when: always
            - when: on_success
          script: x
    """
    assert plan(text).job("job").when == "manual"
    assert plan(text, push("mars")).job("job").when == "always"
    assert plan(text, push("dev")).job("job").when == "on_success"


def test_rules_no_match_means_no_job(plan):
    result = plan("""
        job:
          rules:
            - if: $CI_COMMIT_TAG
          script: x
        other: {script: y}
    """)
    assert names(result) == ["other"]


def test_rules_when_never_means_no_job(plan):
    result = plan("""
        job:
          rules:
            - if: $CI_COMMIT_BRANCH == "main"
              when: never
            - when: always
          script: x
        other: {script: y}
    """)
    assert names(result) == ["other"]


def test_empty_rules_list_means_no_job(plan):
    result = plan("job: {rules: [], script: x}\nother: {script: y}\n")
    assert names(result) == ["other"]


def test_a_rule_without_when_takes_the_jobs_when(plan):
    result = plan("""
        job:
          when: always
          rules:
            - if: $CI_COMMIT_BRANCH
          script: x
    """)
    assert result.job("job").when == "always"


def test_rules_with_several_clauses_need_all_of_them(plan, repo):
    text = """
        job:
          rules:
            - if: $CI_COMMIT_BRANCH == "main"
              changes: [src/**/*.py]
              exists: [setup.cfg]
          script: x
    """
    ctx = push(changed_files=("src/pkg/mod.py",), repo_dir=str(repo))
    assert names(plan(text, ctx)) == []
    write(repo, "setup.cfg", "[x]\n")
    assert names(plan(text, ctx)) == ["job"]
    assert names(plan(text, push("dev", changed_files=("src/pkg/mod.py",), repo_dir=str(repo)))) == []
    assert names(plan(text, push(changed_files=("README.md",), repo_dir=str(repo)))) == []


def test_rules_changes_globs(plan):
    text = """
        docs:
          rules:
            - changes: ["docs/**/*", "*.md"]
          script: x
        code:
          rules:
            - changes:
                paths: ["src/{app,lib}/*.py"]
                compare_to: refs/heads/main
          script: x
    """
    assert names(plan(text, push(changed_files=("docs/a/b.txt",)))) == ["docs"]
    assert names(plan(text, push(changed_files=("README.md",)))) == ["docs"]
    assert names(plan(text, push(changed_files=("sub/README.md",)))) == []
    assert names(plan(text, push(changed_files=("src/lib/x.py",)))) == ["code"]
    assert names(plan(text, push(changed_files=("src/other/x.py",)))) == []
    assert names(plan(text, push(changed_files=()))) == []


def test_rules_changes_is_true_when_the_diff_is_unknown(plan):
    """GitLab: `changes` is true for new branches, tags and pipelines without a push diff."""
    text = "job:\n  rules:\n    - changes: [src/*]\n  script: x\n"
    assert names(plan(text, push(changed_files=None))) == ["job"]
    assert names(plan(text, tag())) == ["job"]


def test_rules_changes_paths_expand_variables(plan):
    text = """
        variables: {DIR: src}
        job:
          rules:
            - changes: [$DIR/*.c]
          script: x
    """
    assert names(plan(text, push(changed_files=("src/a.c",)))) == ["job"]
    assert names(plan(text, push(changed_files=("lib/a.c",)))) == []


def test_rules_exists(plan, repo):
    text = """
        docker:
          rules:
            - exists: [Dockerfile, "**/Dockerfile"]
          script: x
        never-without-repo:
          rules:
            - exists:
                paths: [README.md]
          script: x
    """
    assert names(plan(text)) == []  # no repository directory: exists is false
    write(repo, "services/api/Dockerfile", "FROM x\n")
    write(repo, "README.md", "hi\n")
    assert names(plan(text, push(repo_dir=str(repo)))) == ["docker", "never-without-repo"]


def test_rules_allow_failure_and_exit_codes(plan):
    result = plan("""
        a:
          rules:
            - allow_failure: true
          script: x
        b:
          allow_failure: true
          rules:
            - allow_failure: false
          script: x
        c:
          rules:
            - allow_failure: {exit_codes: [1, 137]}
          script: x
        d:
          allow_failure: true
          rules:
            - if: $CI_COMMIT_BRANCH
          script: x
    """)
    assert result.job("a").allow_failure is True
    assert result.job("b").allow_failure is False
    assert result.job("c").allow_failure_value() == {"exit_codes": [1, 137]}
    assert result.job("d").allow_failure is True


def test_rules_variables_are_added_to_the_job(plan):
    result = plan("""
        job:
          variables: {TARGET: dev, KEEP: yes-please}
          rules:
            - if: $CI_COMMIT_BRANCH == "main"
              variables: {TARGET: prod, NEW: "1"}
          script: x
    """)
    variables = result.job("job").variables
    assert (variables["TARGET"], variables["NEW"], variables["KEEP"]) == ("prod", "1", "yes-please")


def test_rules_needs_replace_the_jobs_needs(plan):
    text = """
        a: {stage: build, script: x}
        b: {stage: build, script: x}
        job:
          needs: [a]
          rules:
            - if: $CI_COMMIT_BRANCH == "main"
              needs: [b]
            - when: on_success
          script: x
    """
    assert plan(text).job("job").needs == [Need("b")]
    assert plan(text, push("dev")).job("job").needs == [Need("a")]


def test_rules_start_in_and_interruptible(plan):
    result = plan("""
        job:
          interruptible: false
          rules:
            - when: delayed
              start_in: 5 minutes
              interruptible: true
          script: x
    """)
    job = result.job("job")
    assert (job.when, job.start_in, job.interruptible) == ("delayed", 300, True)


def test_rules_if_with_undefined_and_empty_variables(plan):
    result = plan("""
        variables: {EMPTY: ""}
        undefined-is-null:
          rules: [{if: $NOPE == null}]
          script: x
        empty-is-not-null:
          rules: [{if: $EMPTY == null}]
          script: x
        empty-is-false:
          rules: [{if: $EMPTY}]
          script: x
        empty-equals-empty:
          rules: [{if: $EMPTY == ""}]
          script: x
    """)
    assert names(result) == ["undefined-is-null", "empty-equals-empty"]


def test_rules_in_a_merge_request_pipeline(plan):
    text = """
        mr-only:
          rules:
            - if: $CI_PIPELINE_SOURCE == "merge_request_event" && $CI_MERGE_REQUEST_TARGET_BRANCH_NAME == "main"
          script: x
        labelled:
          rules:
            - if: $CI_MERGE_REQUEST_LABELS =~ /ready/
          script: x
        branch:
          rules:
            - if: $CI_COMMIT_BRANCH
          script: x
    """
    assert names(plan(text, merge_request())) == ["mr-only", "labelled"]
    assert names(plan(text, merge_request(target="dev"))) == ["labelled"]
    assert names(plan(text)) == ["branch"]


# -- only / except ----------------------------------------------------------------------------------


ONLY = """
    branches: {only: [branches], script: x}
    tags: {only: [tags], script: x}
    mrs: {only: [merge_requests], script: x}
    schedules: {only: [schedules], script: x}
    web: {only: [web], script: x}
    api: {only: [api], script: x}
    pushes: {only: [pushes], script: x}
    main: {only: [main], script: x}
    release-regex: {only: ['/^release-.*$/'], script: x}
    case-regex: {only: ['/^RELEASE/i'], script: x}
    v-tags: {only: ['/^v\\d+/'], script: x}
    this-project: {only: ['main@group/project'], script: x}
    other-project: {only: ['branches@other/project'], script: x}
    plain: {script: x}
    not-main: {except: [main], script: x}
    not-tags: {except: [tags], script: x}
"""


@pytest.mark.parametrize(("ctx", "expected"), [
    (push("main"), ["branches", "pushes", "main", "this-project", "plain", "not-tags"]),
    (push("release-1"), ["branches", "pushes", "release-regex", "case-regex", "plain", "not-main", "not-tags"]),
    (tag("v1.2"), ["tags", "pushes", "v-tags", "plain", "not-main"]),
    (tag("main"), ["tags", "pushes", "main", "this-project", "plain"]),
    (merge_request("main", "main"), ["mrs"]),
    (schedule("main"), ["branches", "schedules", "main", "this-project", "plain", "not-tags"]),
    (web("dev"), ["branches", "web", "plain", "not-main", "not-tags"]),
    (PlanContext(kind="api", branch="dev"), ["branches", "api", "plain", "not-main", "not-tags"]),
], ids=["push-main", "push-release", "tag", "tag-named-main", "merge-request", "schedule", "web", "api"])
def test_only_and_except_refs(plan, ctx, expected):
    assert names(plan(ONLY, ctx)) == expected


def test_ref_names_never_match_in_a_merge_request_pipeline(plan):
    """GitLab matches ref names and patterns only in branch and tag pipelines (Policy::Refs)."""
    result = plan("""
        exact: {only: [feature], script: x}
        regex: {only: ['/^feat/'], script: x}
        keyword: {only: [merge_requests], except: [feature], script: x}
    """, merge_request("feature"))
    assert names(result) == ["keyword"]


def test_only_mapping_needs_every_part_and_except_any_part(plan):
    text = """
        both:
          only:
            refs: [main]
            variables: [$RELEASE == "yes"]
          script: x
        unless-either:
          except:
            refs: [tags]
            variables: [$SKIP]
          script: x
    """
    assert names(plan(text)) == ["unless-either"]
    assert names(plan(text, push(variables={"RELEASE": "yes"}))) == ["both", "unless-either"]
    assert names(plan(text, push(variables={"RELEASE": "yes", "SKIP": "1"}))) == ["both"]
    assert names(plan(text, push("dev", variables={"RELEASE": "yes"}))) == ["unless-either"]


def test_only_variables_any_of_the_expressions(plan):
    text = """
        job:
          only:
            variables: [$A == "1", $B]
          script: x
    """
    assert names(plan(text)) == []
    assert names(plan(text, push(variables={"B": "x"}))) == ["job"]
    assert names(plan(text, push(variables={"A": "1"}))) == ["job"]


def test_only_variables_see_yaml_variables(plan):
    result = plan("""
        variables: {FLAG: "on"}
        job:
          only:
            variables: [$FLAG == "on"]
          script: x
    """)
    assert names(result) == ["job"]


def test_only_and_except_changes(plan):
    text = """
        docs:
          only:
            changes: [docs/*]
          script: x
        code:
          except:
            changes: [docs/*]
          script: x
    """
    assert names(plan(text, push(changed_files=("docs/a.md",)))) == ["docs"]
    assert names(plan(text, push(changed_files=("src/a.c",)))) == ["code"]


def test_default_only_is_branches_and_tags_so_no_job_in_a_merge_request_pipeline(plan):
    text = "a: {script: x}\nb: {except: [main], script: x}\nc: {rules: [{when: always}], script: x}\n"
    assert names(plan(text, merge_request())) == ["c"]
    assert names(plan(text, tag())) == ["a", "b", "c"]


def test_only_as_a_string(plan):
    text = "job: {only: tags, script: x}\n"
    assert names(plan(text)) == []
    assert names(plan(text, tag())) == ["job"]


def test_except_null_under_extends_drops_the_parents_except(plan):
    result = plan("""
        .base:
          except: [main]
          only: [tags]
        job:
          extends: .base
          except: null
          only: null
          script: x
    """)
    assert names(result) == ["job"]


def test_extends_can_swap_only_for_rules(plan):
    result = plan("""
        .base:
          only: [tags]
        job:
          extends: .base
          only: null
          rules: [{if: $CI_COMMIT_BRANCH}]
          script: x
    """)
    assert names(result) == ["job"]


# -- when and allow_failure ---------------------------------------------------------------------------


def test_when_values(plan):
    result = plan("""
        a: {when: on_success, script: x}
        b: {when: on_failure, script: x}
        c: {when: always, script: x}
        d: {when: manual, script: x}
        e: {when: delayed, start_in: 30 minutes, script: x}
        f: {when: never, script: x}
        g: {script: x}
    """)
    assert [(j.name, j.when) for j in result.jobs] == [
        ("a", "on_success"), ("b", "on_failure"), ("c", "always"), ("d", "manual"), ("e", "delayed"),
        ("g", "on_success")]
    assert result.job("e").start_in == 1800 and result.job("a").start_in is None


def test_allow_failure_bool_and_exit_codes(plan):
    result = plan("""
        a: {allow_failure: true, script: x}
        b: {allow_failure: false, script: x}
        c: {allow_failure: {exit_codes: 42}, script: x}
        d: {allow_failure: {exit_codes: [1, 2]}, script: x}
        e: {script: x}
    """)
    assert [j.allow_failure_value() for j in result.jobs] == [
        True, False, {"exit_codes": [42]}, {"exit_codes": [1, 2]}, False]


def test_a_manual_job_may_fail_by_default_unless_a_rule_made_it_manual(plan):
    """GitLab: `when: manual` on the job makes an optional manual job (allow_failure true);
    `rules: when: manual` makes a blocking one (allow_failure false)."""
    result = plan("""
        optional: {when: manual, script: x}
        strict: {when: manual, allow_failure: false, script: x}
        by-rule:
          rules: [{when: manual}]
          script: x
        by-rule-allowed:
          rules: [{when: manual, allow_failure: true}]
          script: x
        job-manual-with-rules:
          when: manual
          rules: [{if: $CI_COMMIT_BRANCH}]
          script: x
    """)
    assert [(j.name, j.when, j.allow_failure) for j in result.jobs] == [
        ("optional", "manual", True), ("strict", "manual", False), ("by-rule", "manual", False),
        ("by-rule-allowed", "manual", True), ("job-manual-with-rules", "manual", True)]


# -- needs ------------------------------------------------------------------------------------------


NEEDS = """
    stages: [build, test, deploy]
    compile: {stage: build, script: x}
    lint: {stage: build, script: x}
    unit:
      stage: test
      needs: [compile]
      script: x
    report:
      stage: test
      needs:
        - job: compile
          artifacts: false
        - job: unit
          optional: true
      script: x
    eager:
      stage: deploy
      needs: []
      script: x
    staged: {stage: deploy, script: x}
"""


def test_needs_forms(plan):
    result = plan(NEEDS)
    assert result.job("unit").needs == [Need("compile")]
    assert result.job("report").needs == [Need("compile", artifacts=False), Need("unit", optional=True)]
    assert result.job("eager").needs == []
    assert result.job("staged").needs is None


def test_a_need_in_the_same_stage_is_allowed(plan):
    result = plan("""
        a: {script: x}
        b: {needs: [a], script: x}
    """)
    assert result.job("b").needs == [Need("a")]


def test_an_optional_need_on_a_job_not_in_the_pipeline_is_dropped(plan):
    result = plan("""
        build:
          stage: build
          rules: [{if: $CI_COMMIT_TAG}]
          script: x
        test:
          needs: [{job: build, optional: true}, {job: undefined, optional: true}]
          script: x
    """)
    assert names(result) == ["test"]
    assert result.job("test").needs == []


def test_a_required_need_on_a_job_excluded_by_rules_is_an_error(plan_error):
    errors = plan_error("""
        build:
          stage: build
          rules: [{if: $CI_COMMIT_TAG}]
          script: x
        test:
          needs: [build]
          script: x
    """)
    assert errors == [".gitlab-ci.yml:7:11: job `test` needs `build`, which is not in this pipeline "
                      "(its rules exclude it for this event)"]


def test_needs_of_a_job_excluded_itself_do_not_matter(plan):
    result = plan("""
        build: {stage: build, only: [tags], script: x}
        test: {only: [tags], needs: [build], script: x}
        other: {script: x}
    """)
    assert names(result) == ["other"]


def test_needs_with_project_or_pipeline_are_not_dependencies_here(plan):
    result = plan("""
        job:
          needs:
            - project: group/other
              job: build
              ref: main
              artifacts: true
            - pipeline: $PARENT_PIPELINE_ID
              job: gen
          script: x
    """)
    assert result.job("job").needs == []


def test_dependencies_are_resolved_and_filtered(plan):
    result = plan("""
        a: {stage: build, script: x}
        b: {stage: build, only: [tags], script: x}
        m:
          stage: build
          parallel: 2
          script: x
        job:
          dependencies: [a, b, m]
          script: x
        none:
          dependencies: []
          script: x
    """)
    assert result.job("job").dependencies == ["a", "m 1/2", "m 2/2"]
    assert result.job("none").dependencies == []
    assert result.job("a").dependencies is None


# -- parallel -----------------------------------------------------------------------------------------


def test_parallel_number_names_and_node_variables(plan):
    result = plan("""
        test:
          parallel: 3
          rules:
            - if: $CI_NODE_INDEX == "2"
              when: manual
            - when: on_success
          script: x
    """)
    assert [(j.name, j.node_index, j.node_total, j.when) for j in result.jobs] == [
        ("test 1/3", 1, 3, "on_success"), ("test 2/3", 2, 3, "manual"), ("test 3/3", 3, 3, "on_success")]
    assert result.jobs[0].matrix is None


def test_parallel_matrix_names_values_in_key_order_first_key_slowest(plan):
    result = plan("""
        build:
          parallel:
            matrix:
              - OS: [linux, mac]
                ARCH: [amd64, arm64]
              - OS: windows
                ARCH: 386
          script: x
    """)
    assert names(result) == ["build: [linux, amd64]", "build: [linux, arm64]", "build: [mac, amd64]",
                             "build: [mac, arm64]", "build: [windows, 386]"]
    job = result.job("build: [mac, arm64]")
    assert job.matrix == {"OS": "mac", "ARCH": "arm64"}
    assert (job.variables["OS"], job.variables["ARCH"]) == ("mac", "arm64")
    assert (job.node_index, job.node_total) == (4, 5)


def test_matrix_values_are_visible_to_rules(plan):
    result = plan("""
        build:
          parallel:
            matrix:
              - OS: [linux, mac]
          rules:
            - if: $OS == "mac"
              when: manual
            - when: on_success
          script: x
    """)
    assert [(j.name, j.when) for j in result.jobs] == [("build: [linux]", "on_success"), ("build: [mac]", "manual")]


def test_the_matrix_limit_is_200_jobs(plan, plan_error):
    def pipeline(count: int) -> str:
        values = ", ".join(str(i) for i in range(count))
        return f"job:\n  parallel:\n    matrix:\n      - A: [{values}]\n        B: [x, y]\n  script: x\n"

    assert len(plan(pipeline(100)).jobs) == 200
    assert plan_error(pipeline(101)) == [".gitlab-ci.yml:3:5: `parallel: matrix` makes 202 jobs; the limit is 200"]


def test_needs_on_a_parallel_job_mean_every_instance(plan):
    result = plan("""
        build:
          stage: build
          parallel: 2
          script: x
        matrix:
          stage: build
          parallel:
            matrix:
              - V: [a, b]
          script: x
        test:
          needs: [build, matrix]
          script: x
    """)
    assert [n.job for n in result.job("test").needs] == ["build 1/2", "build 2/2", "matrix: [a]", "matrix: [b]"]


def test_needs_parallel_matrix_selects_instances(plan):
    result = plan("""
        build:
          stage: build
          parallel:
            matrix:
              - OS: [linux, mac]
                ARCH: [amd64, arm64]
          script: x
        test:
          needs:
            - job: build
              parallel:
                matrix:
                  - OS: linux
                    ARCH: [arm64]
                  - OS: mac
                    ARCH: amd64
          script: x
    """)
    assert [n.job for n in result.job("test").needs] == ["build: [linux, arm64]", "build: [mac, amd64]"]


def test_a_need_can_name_one_instance(plan):
    result = plan("""
        build:
          stage: build
          parallel:
            matrix:
              - OS: [linux, mac]
                ARCH: [amd64]
          script: x
        shard:
          stage: build
          parallel: 2
          script: x
        test:
          needs: ["build: [mac, amd64]", "shard 2/2"]
          script: x
    """)
    assert [n.job for n in result.job("test").needs] == ["build: [mac, amd64]", "shard 2/2"]


def test_instances_excluded_by_rules_take_optional_needs_with_them(plan):
    result = plan("""
        build:
          stage: build
          parallel:
            matrix:
              - OS: [linux, mac]
          rules:
            - if: $OS == "linux"
          script: x
        test:
          needs: [{job: build, optional: true}]
          script: x
    """)
    assert [n.job for n in result.job("test").needs] == ["build: [linux]"]


# -- job keywords -------------------------------------------------------------------------------------


def test_tags_expand_variables(plan):
    result = plan("""
        variables: {ARCH: arm64}
        job:
          tags: [docker, "runner-$ARCH", "${CI_COMMIT_REF_NAME}"]
          script: x
    """)
    assert result.job("job").tags == ["docker", "runner-arm64", "main"]


def test_image_and_services_forms(plan):
    result = plan("""
        job:
          image:
            name: registry.example.com/tools:1
            entrypoint: [""]
            pull_policy: if-not-present
          services:
            - postgres:16
            - name: redis:7
              alias: cache
              command: [redis-server, --appendonly, "yes"]
          script: x
    """)
    job = result.job("job")
    assert job.image == {"name": "registry.example.com/tools:1", "entrypoint": [""], "pull_policy": "if-not-present"}
    assert job.services == [{"name": "postgres:16"},
                            {"name": "redis:7", "alias": "cache", "command": ["redis-server", "--appendonly", "yes"]}]


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("90", 90), ("1h 30m", 5400), ("3 hours", 10800), ("1h30m", 5400), ("2 days", 172800),
    ("1 hour and 5 minutes", 3900), ("1:30:00", 5400), ("10 mins", 600), ("1.5h", 5400), ("1 week", 604800),
])
def test_timeout_durations(plan, text, seconds):
    assert plan(f"job: {{timeout: '{text}', script: x}}\n").job("job").timeout == seconds


def test_timeout_as_a_number_is_seconds(plan):
    assert plan("job: {timeout: 3600, script: x}\n").job("job").timeout == 3600


def test_retry_forms(plan):
    result = plan("""
        none: {script: x}
        number: {retry: 2, script: x}
        mapping:
          retry:
            max: 2
            when: [runner_system_failure, stuck_or_timeout_failure]
            exit_codes: [137, 255]
          script: x
        single:
          retry: {max: 1, when: script_failure, exit_codes: 1}
          script: x
    """)
    assert result.job("none").retry == Retry()
    assert result.job("number").retry == Retry(max=2)
    assert result.job("mapping").retry == Retry(2, ("runner_system_failure", "stuck_or_timeout_failure"), (137, 255))
    assert result.job("single").retry == Retry(1, ("script_failure",), (1,))


def test_interruptible_resource_group_environment_coverage(plan):
    result = plan("""
        deploy:
          interruptible: true
          resource_group: production
          environment:
            name: production
            url: https://example.com
            action: start
          coverage: '/Total: (\\d+)%/'
          script: x
        review:
          environment: review/$CI_COMMIT_REF_SLUG
          script: x
    """)
    deploy = result.job("deploy")
    assert (deploy.interruptible, deploy.resource_group) == (True, "production")
    assert deploy.environment == {"name": "production", "url": "https://example.com", "action": "start"}
    assert deploy.coverage == "/Total: (\\d+)%/"
    # expanded, as GitLab does: the name secrets' environment scopes are matched against
    slug = result.variables["CI_COMMIT_REF_SLUG"]
    assert slug and result.job("review").environment == {"name": f"review/{slug}"}


def test_artifacts_and_caches(plan):
    result = plan("""
        job:
          artifacts:
            paths: [dist/]
            exclude: [dist/*.tmp]
            expire_in: 1 week
            when: always
            reports: {junit: report.xml}
          cache:
            - key: {files: [Gemfile.lock]}
              paths: [vendor/]
              policy: pull
            - key: $CI_COMMIT_REF_SLUG
              paths: [node_modules/]
              fallback_keys: [main]
          script: x
    """)
    job = result.job("job")
    assert job.artifacts == {"paths": ["dist/"], "exclude": ["dist/*.tmp"], "expire_in": "1 week", "when": "always",
                             "reports": {"junit": "report.xml"}}
    assert job.cache == [{"key": {"files": ["Gemfile.lock"]}, "paths": ["vendor/"], "policy": "pull"},
                         {"key": "$CI_COMMIT_REF_SLUG", "paths": ["node_modules/"], "fallback_keys": ["main"]}]


def test_trigger_jobs_are_planned_but_not_runnable(plan):
    result = plan("""
        downstream:
          trigger: group/other-project
        child:
          trigger:
            include: child.yml
            strategy: depend
        build: {script: x}
    """)
    assert result.job("downstream").trigger == {"project": "group/other-project"}
    assert result.job("child").trigger == {"include": "child.yml", "strategy": "depend"}
    assert [(j.name, j.runnable) for j in result.jobs] == [("downstream", False), ("child", False), ("build", True)]
    assert result.job("child").to_dict()["runnable"] is False


def test_scripts_as_string_or_list(plan):
    result = plan("""
        job:
          before_script: echo before
          script:
            - echo one
            - |
              multi
              line
          after_script: [echo after]
    """)
    job = result.job("job")
    assert job.before_script == ["echo before"]
    assert job.script == ["echo one", "multi\nline\n"]
    assert job.after_script == ["echo after"]


def test_job_to_dict(plan):
    data = plan("job: {script: x, allow_failure: {exit_codes: [3]}, needs: [], retry: 1}\n").job("job").to_dict()
    assert data["allow_failure"] == {"exit_codes": [3]} and "allow_failure_exit_codes" not in data
    assert data["needs"] == [] and data["retry"] == {"max": 1, "when": ["always"], "exit_codes": []}


# -- short forms ----------------------------------------------------------------------------------------


def test_command_is_script_and_env_is_variables(plan):
    result = plan("""
        env: {GLOBAL: g}
        one:
          command: make
          env: {LOCAL: l}
        two:
          command: [make, make install]
          variables: {A: a}
          env: {B: b}
    """)
    one, two = result.job("one"), result.job("two")
    assert one.script == ["make"] and two.script == ["make", "make install"]
    assert (one.variables["GLOBAL"], one.variables["LOCAL"]) == ("g", "l")
    assert (two.variables["A"], two.variables["B"]) == ("a", "b")


SHORT_WHEN = """
    check:
      command: make check
      when:
        on: [push, merge_request]
        branches: [main, "release/*"]
    release:
      command: make dist
      when:
        on: [tag]
        tags: ["v*"]
    any-event:
      command: x
      when: {on: [push, tag, merge_request, schedule, web]}
    branches-only:
      command: x
      when: {branches: ["feat*"]}
"""


@pytest.mark.parametrize(("ctx", "expected"), [
    (push("main"), ["check", "any-event"]),
    (push("release/2"), ["check", "any-event"]),
    (push("release/2/x"), ["check", "any-event"]),  # fnmatch: `*` crosses `/`
    (push("feature"), ["any-event", "branches-only"]),
    (tag("v1"), ["release", "any-event"]),
    (tag("x1"), ["any-event"]),
    (merge_request("feature", "main"), ["check", "any-event"]),  # branches of a merge request: its target
    (merge_request("main", "feature"), ["any-event", "branches-only"]),
    (schedule("main"), ["any-event"]),
], ids=["push-main", "push-release", "push-release-deep", "push-feature", "tag", "tag-other", "mr", "mr-to-feature",
        "schedule"])
def test_short_form_event_filter(plan, ctx, expected):
    assert names(plan(SHORT_WHEN, ctx)) == expected


def test_the_example_short_form_pipeline_plans(repo):
    path = Path(__file__).resolve().parents[2] / "configs" / "pipelines" / "short-form.yml"
    result = plan_file(path, tag("v3"), repo)
    assert names(result) == ["release"]
    assert result.job("release").variables["LANG"] == "C.UTF-8"


# -- predefined variables per event ---------------------------------------------------------------------


def variables_for(plan, ctx: PlanContext) -> dict[str, str]:
    return plan("job: {rules: [{when: always}], script: x}\n", ctx).variables


def test_predefined_variables_of_a_push(plan):
    variables = variables_for(plan, push("feature/x-1", sha="a" * 40, commit_message="Title\n\nBody"))
    assert variables["CI_PIPELINE_SOURCE"] == "push"
    assert variables["CI_COMMIT_BRANCH"] == variables["CI_COMMIT_REF_NAME"] == "feature/x-1"
    assert variables["CI_COMMIT_REF_SLUG"] == "feature-x-1"
    assert variables["CI_DEFAULT_BRANCH"] == "main"
    assert variables["CI_COMMIT_REF_PROTECTED"] == "false"
    assert (variables["CI_COMMIT_SHA"], variables["CI_COMMIT_SHORT_SHA"]) == ("a" * 40, "a" * 8)
    assert (variables["CI_COMMIT_TITLE"], variables["CI_COMMIT_DESCRIPTION"]) == ("Title", "\nBody")
    assert (variables["CI_PROJECT_PATH"], variables["CI_PROJECT_NAME"]) == ("group/project", "project")
    assert "CI_COMMIT_TAG" not in variables and "CI_MERGE_REQUEST_IID" not in variables


def test_the_default_branch_is_protected(plan):
    assert variables_for(plan, push("main"))["CI_COMMIT_REF_PROTECTED"] == "true"
    assert variables_for(plan, push("dev", protected=True))["CI_COMMIT_REF_PROTECTED"] == "true"


def test_predefined_variables_of_a_tag(plan):
    variables = variables_for(plan, tag("v1.0"))
    assert variables["CI_PIPELINE_SOURCE"] == "push"
    assert variables["CI_COMMIT_TAG"] == variables["CI_COMMIT_REF_NAME"] == "v1.0"
    assert "CI_COMMIT_BRANCH" not in variables


def test_predefined_variables_of_a_merge_request(plan):
    variables = variables_for(plan, merge_request("feature", "main"))
    assert variables["CI_PIPELINE_SOURCE"] == "merge_request_event"
    assert variables["CI_COMMIT_REF_NAME"] == "feature"
    assert "CI_COMMIT_BRANCH" not in variables and "CI_COMMIT_TAG" not in variables
    assert variables["CI_MERGE_REQUEST_IID"] == "42"
    assert variables["CI_MERGE_REQUEST_SOURCE_BRANCH_NAME"] == "feature"
    assert variables["CI_MERGE_REQUEST_TARGET_BRANCH_NAME"] == "main"
    assert variables["CI_MERGE_REQUEST_TITLE"] == "Add feature"
    assert variables["CI_MERGE_REQUEST_LABELS"] == "backend,ready"
    assert variables["CI_MERGE_REQUEST_DIFF_BASE_SHA"] == "b" * 40
    assert variables["CI_COMMIT_REF_PROTECTED"] == "false"


@pytest.mark.parametrize(("ctx", "source"), [
    (schedule(), "schedule"), (web(), "web"), (PlanContext(kind="api", branch="main"), "api"),
    (PlanContext(kind="trigger", branch="main"), "trigger"),
])
def test_pipeline_source_of_other_events(plan, ctx, source):
    variables = variables_for(plan, ctx)
    assert variables["CI_PIPELINE_SOURCE"] == source
    assert variables["CI_COMMIT_BRANCH"] == "main"


# -- files ----------------------------------------------------------------------------------------------


def test_a_spec_header_document_is_skipped(plan):
    result = plan("""
        spec:
          inputs:
            stage: {default: test}
        ---
        job: {script: x}
    """)
    assert names(result) == ["job"]


def test_find_pipeline_file_prefers_ci_queue_yml(repo):
    assert find_pipeline_file(repo) is None
    write(repo, ".gitlab-ci.yml", "a: {script: x}\n")
    assert find_pipeline_file(repo) == repo / ".gitlab-ci.yml"
    write(repo, ".ci-queue.yml", "a: {script: x}\n")
    assert find_pipeline_file(repo) == repo / ".ci-queue.yml"


def test_include_paths_are_relative_to_the_git_work_tree_when_no_repo_dir_is_given(repo):
    (repo / ".git").mkdir()
    write(repo, "ci/parts.yml", "part: {script: x}\n")
    path = write(repo, "ci/main.yml", "include: ci/parts.yml\nmain: {script: x}\n")
    assert names(plan_file(path, push())) == ["part", "main"]


def test_plan_spec_plans_one_spec_for_many_events(repo):
    path = write(repo, ".gitlab-ci.yml", "a: {only: [tags], script: x}\nb: {script: x}\n")
    spec, warnings = load_spec(path, repo)
    assert warnings == []
    assert names(plan_spec(spec, push())) == ["b"]
    assert names(plan_spec(spec, tag())) == ["a", "b"]


def test_a_missing_need_from_rules_points_at_the_rules_need(plan_error):
    errors = plan_error("""
        build:
          stage: build
          rules: [{if: $CI_COMMIT_TAG}]
          script: x
        test:
          rules:
            - needs: [build]
          script: x
    """)
    assert errors == [".gitlab-ci.yml:8:15: job `test` needs `build`, which is not in this pipeline "
                      "(its rules exclude it for this event)"]


def test_a_missing_need_on_one_matrix_instance(plan_error):
    errors = plan_error("""
        build:
          stage: build
          parallel:
            matrix:
              - OS: [linux, mac]
          rules:
            - if: $OS == "linux"
          script: x
        test:
          needs: [build]
          script: x
    """)
    assert errors == [".gitlab-ci.yml:11:11: job `test` needs `build: [mac]`, which is not in this pipeline "
                      "(its rules exclude it for this event)"]


def test_rules_needs_that_go_round_in_circles_are_an_error(plan, plan_error):
    text = """
        a:
          rules:
            - if: $CI_COMMIT_TAG
              needs: [b]
            - when: on_success
          script: x
        b:
          needs: [a]
          script: x
    """
    assert plan(text).job("b").needs == [Need("a")]
    assert plan_error(text, tag()) == [".gitlab-ci.yml:2:1: circular `needs` in this pipeline: a -> b -> a"]


def test_a_delayed_job_whose_rule_gives_no_start_in_cannot_be_planned(plan, plan_error):
    text = """
        job:
          when: delayed
          rules:
            - if: $CI_COMMIT_TAG
              when: delayed
              start_in: 1 hour
            - if: $CI_COMMIT_BRANCH
          script: x
    """
    assert plan(text, tag()).job("job").start_in == 3600
    assert plan_error(text) == [".gitlab-ci.yml:2:1: job `job`: `when: delayed` needs `start_in`"]


def test_inherit_variables_filters_workflow_rule_variables_too(plan):
    """GitLab merges workflow:rules:variables into the global variables before `inherit`."""
    result = plan("""
        variables: {GLOBAL: g}
        workflow:
          rules:
            - variables: {FROM_WORKFLOW: w, OTHER: o}
        none:
          inherit: {variables: false}
          script: x
        some:
          inherit: {variables: [FROM_WORKFLOW]}
          script: x
    """)
    assert {"GLOBAL", "FROM_WORKFLOW", "OTHER"}.isdisjoint(result.job("none").variables)
    some = result.job("some").variables
    assert some["FROM_WORKFLOW"] == "w" and "OTHER" not in some and "GLOBAL" not in some
