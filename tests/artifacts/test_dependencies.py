"""Whose artifacts a job fetches, checked on pipelines planned from YAML like real ones.

The rules are GitLab's ``Ci::BuildDependencies#local`` (app/models/ci/build_dependencies.rb):
``dependencies: []`` -> none; with ``needs`` the needed jobs with ``artifacts`` not false, else
every job of an earlier stage; a non-empty ``dependencies`` narrows that; only builds (not
trigger jobs) have artifacts. The order is stage order, then the order of the file.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ci_queue.artifacts.dependencies import artifact_sources
from ci_queue.pipeline.model import Job, Plan, PlanContext
from ci_queue.pipeline.planner import plan_file


@pytest.fixture
def plan(tmp_path: Path):
    def run(text: str, **context) -> Plan:
        path = tmp_path / ".gitlab-ci.yml"
        path.write_text(textwrap.dedent(text))
        ctx = PlanContext(**{"kind": "push", "branch": "main", **context})
        return plan_file(path, ctx, tmp_path, display_name=".gitlab-ci.yml")
    return run


def sources(plan: Plan, name: str) -> list[str]:
    return artifact_sources(plan.job(name), plan.jobs, plan.stages)


THREE_STAGES = """
    stages: [build, test, deploy]
    compile: {stage: build, script: make}
    docs: {stage: build, script: make docs}
    unit: {stage: test, script: make test}
    lint: {stage: test, script: make lint}
    ship: {stage: deploy, script: make ship}
"""


def test_default_is_every_job_of_earlier_stages(plan):
    result = plan(THREE_STAGES)
    assert sources(result, "compile") == []
    assert sources(result, "unit") == ["compile", "docs"]  # not `lint`: same stage
    assert sources(result, "ship") == ["compile", "docs", "unit", "lint"]


def test_order_is_stage_order_then_file_order(plan):
    result = plan("""
        stages: [build, test, deploy]
        ship: {stage: deploy, script: x}
        unit_b: {stage: test, script: x}
        compile_b: {stage: build, script: x}
        unit_a: {stage: test, script: x}
        compile_a: {stage: build, script: x}
    """)
    assert sources(result, "ship") == ["compile_b", "compile_a", "unit_b", "unit_a"]
    # stage order even from a list that is not sorted by stage (inside a stage, the list's order
    # is the file's: Plan.jobs keeps it)
    order = {stage: i for i, stage in enumerate(result.stages)}
    by_stage_backwards = sorted(result.jobs, key=lambda job: -order[job.stage])
    assert [job.name for job in by_stage_backwards][:3] == ["ship", "unit_b", "unit_a"]
    assert artifact_sources(result.job("ship"), by_stage_backwards, result.stages) == [
        "compile_b", "compile_a", "unit_b", "unit_a"]


def test_pre_stage_jobs_are_earlier_than_every_stage(plan):
    result = plan("""
        stages: [build, test]
        setup: {stage: .pre, script: x}
        compile: {stage: build, script: x}
        report: {stage: .post, script: x}
    """)
    assert sources(result, "compile") == ["setup"]
    assert sources(result, "report") == ["setup", "compile"]


def test_empty_dependencies_fetch_nothing(plan):
    result = plan(THREE_STAGES + "    clean: {stage: deploy, script: x, dependencies: []}\n")
    assert sources(result, "clean") == []


def test_dependencies_list_only_those(plan):
    result = plan(THREE_STAGES + "    pack: {stage: deploy, script: x, dependencies: [unit, compile]}\n")
    assert sources(result, "pack") == ["compile", "unit"]  # download order, not the list's


def test_needs_select_needed_jobs_even_of_the_same_stage(plan):
    result = plan("""
        stages: [build, test]
        compile: {stage: build, script: x}
        gen: {stage: test, script: x}
        unit: {stage: test, script: x, needs: [gen]}
    """)
    assert sources(result, "unit") == ["gen"]  # not `compile`, an earlier stage it does not need


def test_empty_needs_fetch_nothing(plan):
    # `needs: []` makes the job a DAG job (scheduling_type dag): from_needs selects nothing
    result = plan(THREE_STAGES + "    early: {stage: deploy, script: x, needs: []}\n")
    assert sources(result, "early") == []


def test_needs_with_artifacts_false_are_not_fetched(plan):
    result = plan(THREE_STAGES + """
    pack:
      stage: deploy
      script: x
      needs: [{job: compile, artifacts: false}, docs, {job: unit, artifacts: true}]
    """)
    assert sources(result, "pack") == ["docs", "unit"]


def test_dependencies_narrow_needs(plan):
    result = plan(THREE_STAGES + """
    pack:
      stage: deploy
      script: x
      needs: [compile, docs, unit]
      dependencies: [docs]
    """)
    assert sources(result, "pack") == ["docs"]


def test_dependencies_cannot_bring_back_a_need_without_artifacts(plan):
    # from_needs then from_dependencies: an intersection
    result = plan(THREE_STAGES + """
    pack:
      stage: deploy
      script: x
      needs: [{job: compile, artifacts: false}, docs]
      dependencies: [compile, docs]
    """)
    assert sources(result, "pack") == ["docs"]


def test_empty_dependencies_win_over_needs(plan):
    # no_local_dependencies_specified? is checked first
    result = plan(THREE_STAGES + "    pack: {stage: deploy, script: x, needs: [compile], dependencies: []}\n")
    assert sources(result, "pack") == []


def test_parallel_instances_are_sources_under_their_planned_names(plan):
    result = plan("""
        stages: [build, test]
        build: {stage: build, script: x, parallel: 2}
        all: {stage: test, script: x}
        needing: {stage: test, script: x, needs: [build]}
        depending: {stage: test, script: x, dependencies: [build]}
        one: {stage: test, script: x, dependencies: ["build 2/2"]}
    """)
    assert sources(result, "all") == ["build 1/2", "build 2/2"]
    assert sources(result, "needing") == ["build 1/2", "build 2/2"]
    assert sources(result, "depending") == ["build 1/2", "build 2/2"]
    assert sources(result, "one") == ["build 2/2"]


def test_matrix_instances_and_needs_parallel_matrix(plan):
    result = plan("""
        stages: [build, test]
        build:
          stage: build
          script: x
          parallel:
            matrix:
              - OS: [linux, mac]
        all: {stage: test, script: x}
        linux_only:
          stage: test
          script: x
          needs:
            - job: build
              parallel:
                matrix:
                  - OS: linux
        mac_only: {stage: test, script: x, dependencies: ["build: [mac]"]}
    """)
    assert sources(result, "all") == ["build: [linux]", "build: [mac]"]
    assert sources(result, "linux_only") == ["build: [linux]"]
    assert sources(result, "mac_only") == ["build: [mac]"]


def test_trigger_jobs_have_no_artifacts_and_fetch_none(plan):
    result = plan("""
        stages: [build, downstream, deploy]
        compile: {stage: build, script: x}
        child: {stage: build, trigger: {include: child.yml}}
        bridge: {stage: downstream, trigger: group/other}
        ship: {stage: deploy, script: x}
        pinned: {stage: deploy, script: x, needs: [child, compile]}
    """)
    assert result.job("child").trigger is not None
    assert sources(result, "ship") == ["compile"]
    assert sources(result, "pinned") == ["compile"]
    assert sources(result, "bridge") == []


def test_jobs_left_out_by_rules_are_no_sources(plan):
    result = plan(THREE_STAGES + """
    tagged_only: {stage: build, script: x, rules: [{if: $CI_COMMIT_TAG}]}
    """)
    assert "tagged_only" not in [job.name for job in result.jobs]
    assert sources(result, "unit") == ["compile", "docs"]
    tagged = plan(THREE_STAGES + """
    tagged_only: {stage: build, script: x, rules: [{if: $CI_COMMIT_TAG}]}
    """, kind="tag", branch=None, tag="v1")
    assert sources(tagged, "unit") == ["compile", "docs", "tagged_only"]


def test_optional_need_on_a_missing_job_is_just_absent(plan):
    result = plan(THREE_STAGES + """
    tagged_only: {stage: build, script: x, rules: [{if: $CI_COMMIT_TAG}]}
    pack: {stage: deploy, script: x, needs: [{job: tagged_only, optional: true}, compile]}
    """)
    assert sources(result, "pack") == ["compile"]


def test_jobs_that_travelled_as_json_give_the_same_sources(plan):
    result = plan(THREE_STAGES + """
    pack:
      stage: deploy
      script: x
      needs: [{job: compile, artifacts: false}, docs, unit]
      dependencies: [unit]
    """)
    jobs = [Job.from_dict(job.to_dict()) for job in result.jobs]
    by_name = {job.name: job for job in jobs}
    for name in ("pack", "ship", "unit", "compile"):
        assert artifact_sources(by_name[name], jobs, result.stages) == sources(result, name)
    assert sources(result, "pack") == ["unit"]


def test_unknown_stage_is_a_programming_error(plan):
    result = plan(THREE_STAGES)
    with pytest.raises(ValueError, match="not in"):
        artifact_sources(result.job("ship"), result.jobs, ["build", "test"])
