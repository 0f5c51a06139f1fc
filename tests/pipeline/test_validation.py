"""Every error and warning of the pipeline language, at its exact ``FILE:LINE:COL``.

``problems(text)`` runs ``validate_file`` on a pipeline written to a temporary repository as
``.gitlab-ci.yml`` (included files keep their repository-relative names) and returns the
one-line forms a user reads. Positions are 1-based and point at the key or value at fault.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_queue.pipeline.errors import Diagnostic, PipelineError
from ci_queue.pipeline.model import PlanContext
from ci_queue.pipeline.planner import plan_file, validate_file
from tests.pipeline.conftest import write


@pytest.fixture
def diagnostics(repo: Path):
    """``diagnostics(text, files={name: text})``: what validate_file reports, in its order."""

    def run(text: str, files: dict[str, str] | None = None) -> list[Diagnostic]:
        for name, content in (files or {}).items():
            write(repo, name, content)
        return validate_file(write(repo, ".gitlab-ci.yml", text), repo, display_name=".gitlab-ci.yml")

    return run


@pytest.fixture
def problems(diagnostics):
    """``problems(text, files=...)``: the ``FILE:LINE:COL: message`` lines of validate_file."""

    def run(text: str, files: dict[str, str] | None = None) -> list[str]:
        return [d.format() for d in diagnostics(text, files)]

    return run


@pytest.fixture
def hints(diagnostics):
    def run(text: str, files: dict[str, str] | None = None) -> list[str | None]:
        return [d.hint for d in diagnostics(text, files)]

    return run


def test_a_valid_file_has_no_problems(problems):
    assert problems("job: {script: x}\n") == []


# -- the file itself --------------------------------------------------------------------------------


def test_yaml_syntax_error(problems):
    assert problems("job:\n  script: [x\n") == [".gitlab-ci.yml:3:1: did not find expected ',' or ']'"]


def test_a_file_must_be_a_mapping(problems):
    assert problems("- a\n- b\n") == [".gitlab-ci.yml:1:1: a pipeline file must be a mapping of keywords and jobs"]


def test_an_empty_file_defines_no_jobs(problems):
    assert problems("") == [".gitlab-ci.yml:1:1: the pipeline defines no jobs"]


def test_only_hidden_jobs_define_no_jobs(problems):
    assert problems("stages: [a]\n.hidden: {script: x}\n") == [".gitlab-ci.yml:1:1: the pipeline defines no jobs"]


def test_duplicate_keys_warn_naming_both_lines(problems):
    assert problems("""
        job:
          script: a
          script: b
        other:
          script: c
        other:
          script: d
    """) == [
        ".gitlab-ci.yml:4:3: warning: duplicate key 'script' (first defined at line 3); the last one is used",
        ".gitlab-ci.yml:7:1: warning: duplicate key 'other' (first defined at line 5); the last one is used",
    ]


def test_multiple_documents_without_a_spec_header(problems):
    assert problems("a: {script: x}\n---\nb: {script: y}\n") == [
        ".gitlab-ci.yml:2:1: multiple YAML documents; only a `spec:` header document may come before the pipeline"]


def test_unknown_yaml_tag(problems):
    assert problems("job:\n  script: !include x\n") == [".gitlab-ci.yml:2:11: unknown tag '!include'"]


# -- top level ---------------------------------------------------------------------------------------


def test_a_job_that_is_not_a_mapping(problems, hints):
    text = "job: echo hi\nstagse: [a]\n"
    assert problems(text) == [".gitlab-ci.yml:1:1: job `job` must be a mapping of job keywords, not str",
                              ".gitlab-ci.yml:2:1: job `stagse` must be a mapping of job keywords"]
    assert hints(text) == [None, "did you mean `stages`?"]


def test_stages_must_be_a_list_of_strings(problems):
    assert problems("stages: build\njob: {script: x, stage: build}\n") == [
        ".gitlab-ci.yml:1:9: stages must be a list of strings",
        ".gitlab-ci.yml:2:25: job `job`: stage `build` is not defined"]


def test_variables_must_be_a_mapping_with_valid_names(problems):
    assert problems("""
        variables: [A]
        job:
          variables:
            GOOD: 1
            "BAD-NAME": 2
            LIST: [1, 2]
            MAP: {value: x, descripton: y}
            RAW: {value: $X, expand: "no"}
          script: x
    """) == [
        ".gitlab-ci.yml:2:12: variables must be a mapping of names to values",
        ".gitlab-ci.yml:6:5: invalid variable name 'BAD-NAME'",
        ".gitlab-ci.yml:7:11: variable `LIST` must be a string or a number",
        ".gitlab-ci.yml:8:21: unknown key `descripton` in variable `MAP`",
        ".gitlab-ci.yml:9:30: expand must be true or false",
    ]


def test_workflow_errors(problems, hints):
    text = """
        workflow:
          rule:
            - if: $X
          name: [not, text]
        job: {script: x}
    """
    assert problems(text) == [".gitlab-ci.yml:3:3: unknown key `rule` in workflow",
                              ".gitlab-ci.yml:5:9: workflow:name must be a string"]
    assert hints(text)[0] == "did you mean `rules`?"


def test_workflow_must_be_a_mapping(problems):
    assert problems("workflow: [rules]\njob: {script: x}\n") == [".gitlab-ci.yml:1:11: `workflow` must be a mapping"]


def test_workflow_rules_when_is_always_or_never(problems):
    """GitLab's workflow entry allows only `always` and `never` in `workflow:rules:when`."""
    assert problems("""
        workflow:
          rules:
            - if: $CI_COMMIT_TAG
              when: manual
            - when: always
        job: {script: x}
    """) == [".gitlab-ci.yml:5:13: `when` must be one of always, never, not 'manual'"]


def test_workflow_rules_tolerate_the_keys_gitlab_tolerates(problems):
    assert problems("""
        workflow:
          rules:
            - if: $CI_COMMIT_TAG
              auto_cancel: {on_new_commit: interruptible}
              needs: [job]
              allow_failure: true
        job: {script: x}
    """) == []


def test_default_errors_and_warnings(problems, hints):
    text = """
        default:
          image: ruby
          stage: build
          imagee: x
        job: {script: x}
    """
    assert problems(text) == [
        ".gitlab-ci.yml:4:3: warning: `stage` cannot be set in `default:` and is ignored",
        ".gitlab-ci.yml:5:3: unknown key `imagee` in default",
    ]
    assert hints(text)[1] == "did you mean `image`?"


def test_default_must_be_a_mapping(problems):
    assert problems("default: ruby\njob: {script: x}\n") == [".gitlab-ci.yml:1:10: `default` must be a mapping"]


def test_types_is_deprecated(problems):
    assert problems("types: [a]\njob: {stage: a, script: x}\n") == [
        ".gitlab-ci.yml:1:1: warning: `types` is deprecated; use `stages`"]


# -- jobs ------------------------------------------------------------------------------------------------


def test_unknown_job_key_with_did_you_mean(problems, hints):
    text = """
        job:
          scirpt: x
          script: y
          tgas: [a]
          frobnicate: true
    """
    assert problems(text) == [
        ".gitlab-ci.yml:3:3: unknown key `scirpt` in job `job`",
        ".gitlab-ci.yml:5:3: unknown key `tgas` in job `job`",
        ".gitlab-ci.yml:6:3: unknown key `frobnicate` in job `job`",
    ]
    assert hints(text) == ["did you mean `script`?", "did you mean `tags`?", None]


def test_a_job_without_script(problems, hints):
    text = "job:\n  stage: test\n"
    assert problems(text) == [".gitlab-ci.yml:1:1: job `job` has no `script`"]
    assert hints(text) == ["every job needs `script:` (or `trigger:`)"]


def test_an_empty_script(problems):
    assert problems("job:\n  script: []\n") == [".gitlab-ci.yml:2:11: job `job` has an empty script"]


def test_script_entries_must_be_strings(problems):
    assert problems("job:\n  script:\n    - ok\n    - {a: b}\n") == [
        ".gitlab-ci.yml:4:7: each entry of `script` must be a string"]


def test_script_and_command_together(problems):
    assert problems("job:\n  script: a\n  command: b\n") == [
        ".gitlab-ci.yml:3:3: job `job` has both `script` and `command`; use one"]


def test_unknown_stage_at_the_values_position_with_did_you_mean(problems, hints):
    text = """
        stages: [build, test, deploy]
        job:
          stage: deplyo
          script: x
        other:
          script: x
          stage: nowhere
    """
    assert problems(text) == [
        ".gitlab-ci.yml:4:10: job `job`: stage `deplyo` is not defined",
        ".gitlab-ci.yml:8:10: job `other`: stage `nowhere` is not defined",
    ]
    assert hints(text) == ["did you mean `deploy`?", "stages: .pre, build, test, deploy, .post"]


def test_the_default_stage_test_must_exist(problems):
    assert problems("stages: [build]\njob: {script: x}\n") == [
        ".gitlab-ci.yml:2:1: job `job`: stage `test` is not defined"]


def test_when_errors(problems, hints):
    text = """
        a: {when: manul, script: x}
        b: {when: delayed, script: x}
        c: {start_in: 1 hour, script: x}
        d: {when: [manual], script: x}
    """
    assert problems(text) == [
        ".gitlab-ci.yml:2:11: `when` must be one of on_success, on_failure, always, manual, delayed, never, "
        "not 'manul'",
        ".gitlab-ci.yml:3:11: `when: delayed` needs `start_in:`",
        ".gitlab-ci.yml:4:5: `start_in` needs `when: delayed`",
        ".gitlab-ci.yml:5:11: `when` must be one of on_success, on_failure, always, manual, delayed, never, "
        "not ['manual']",
    ]
    assert hints(text)[0] == "did you mean `manual`?"


def test_allow_failure_errors(problems):
    assert problems("""
        a: {allow_failure: maybe, script: x}
        b: {allow_failure: {exit_codes: [one]}, script: x}
        c: {allow_failure: {codes: [1]}, script: x}
    """) == [
        ".gitlab-ci.yml:2:20: `allow_failure` must be true, false or `{exit_codes: [...]}`",
        ".gitlab-ci.yml:3:33: allow_failure:exit_codes must be an exit code or a list of exit codes",
        ".gitlab-ci.yml:4:20: `allow_failure` must be true, false or `{exit_codes: [...]}`",
    ]


def test_bad_durations(problems):
    assert problems("""
        a: {timeout: 1 fortnight, script: x}
        b: {timeout: soon, script: x}
        c: {timeout: 0, script: x}
        d: {when: delayed, start_in: later, script: x}
    """) == [
        ".gitlab-ci.yml:2:14: timeout: unknown unit 'fortnight' in duration '1 fortnight'",
        ".gitlab-ci.yml:3:14: timeout: 'soon' is not a duration (examples: 90s, 1h 30m, 3 hours)",
        ".gitlab-ci.yml:4:14: timeout: 0 is not a positive duration",
        ".gitlab-ci.yml:5:30: start_in: 'later' is not a duration (examples: 90s, 1h 30m, 3 hours)",
    ]


def test_retry_errors(problems, hints):
    text = """
        a: {retry: 3, script: x}
        b: {retry: {max: 5}, script: x}
        c: {retry: {max: 1, when: [script_failure, runner_failure]}, script: x}
        d: {retry: {max: 1, whenn: always}, script: x}
        e: {retry: always, script: x}
        f: {retry: {max: 1, exit_codes: [x]}, script: x}
    """
    assert problems(text) == [
        ".gitlab-ci.yml:2:12: `retry` must be 0, 1 or 2",
        ".gitlab-ci.yml:3:18: `retry:max` must be 0, 1 or 2",
        ".gitlab-ci.yml:4:27: unknown `retry:when` value `runner_failure`",
        ".gitlab-ci.yml:5:21: unknown key `whenn` in retry",
        ".gitlab-ci.yml:6:12: `retry` must be 0, 1, 2 or a mapping with `max`, `when`, `exit_codes`",
        ".gitlab-ci.yml:7:33: retry:exit_codes must be an exit code or a list of exit codes",
    ]
    assert hints(text)[2:4] == ["did you mean `runner_system_failure`?", "did you mean `when`?"]


def test_parallel_errors(problems):
    assert problems("""
        a: {parallel: 0, script: x}
        b: {parallel: 201, script: x}
        c: {parallel: many, script: x}
        d: {parallel: {matrix: []}, script: x}
        e: {parallel: {matrix: [A]}, script: x}
        f: {parallel: {matrix: [{A: []}]}, script: x}
    """) == [
        ".gitlab-ci.yml:2:15: `parallel` must be between 1 and 200",
        ".gitlab-ci.yml:3:15: `parallel` must be between 1 and 200",
        ".gitlab-ci.yml:4:15: `parallel` must be a number or `{matrix: [...]}`",
        ".gitlab-ci.yml:5:24: `matrix` must be a list of mappings of variable names to values",
        ".gitlab-ci.yml:6:25: each `matrix` entry must be a mapping of variable names to values",
        ".gitlab-ci.yml:7:29: matrix variable `A` needs at least one value",
    ]


def test_image_and_service_errors(problems, hints):
    text = """
        a:
          image: {entrypoint: [""]}
          script: x
        b:
          image: {name: ruby, pull_polcy: always}
          services: [{name: redis, alais: cache}, 42]
          script: x
        c:
          image: [ruby]
          services: redis
          script: x
    """
    assert problems(text) == [
        ".gitlab-ci.yml:3:10: `image` needs `name:`",
        ".gitlab-ci.yml:6:23: unknown key `pull_polcy` in image",
        ".gitlab-ci.yml:7:28: unknown key `alais` in service",
        ".gitlab-ci.yml:7:43: `service` must be an image name or a mapping with `name:`",
        ".gitlab-ci.yml:10:10: `image` must be an image name or a mapping with `name:`",
        ".gitlab-ci.yml:11:13: `services` must be a list",
    ]
    assert hints(text)[1:3] == ["did you mean `pull_policy`?", "did you mean `alias`?"]


def test_artifacts_cache_environment_trigger_errors(problems, hints):
    text = """
        job:
          artifacts: {paths: [a], expire: 1 day}
          cache: {key: k, path: [a]}
          environment: {name: prod, urll: x}
          script: x
        list:
          artifacts: [a]
          cache: [a]
          environment: [prod]
          script: x
        trig:
          trigger: {project: a/b, strategy: depend, brnch: main}
    """
    assert problems(text) == [
        ".gitlab-ci.yml:3:27: unknown key `expire` in artifacts",
        ".gitlab-ci.yml:4:19: unknown key `path` in cache",
        ".gitlab-ci.yml:5:29: unknown key `urll` in environment",
        ".gitlab-ci.yml:8:14: `artifacts` must be a mapping",
        ".gitlab-ci.yml:9:10: `cache` must be a mapping or a list of mappings",
        ".gitlab-ci.yml:10:16: `environment` must be a name or a mapping",
        ".gitlab-ci.yml:13:45: unknown key `brnch` in trigger",
    ]
    assert hints(text)[:3] == ["did you mean `expire_in`?", "did you mean `paths`?", "did you mean `url`?"]
    assert hints(text)[-1] == "did you mean `branch`?"


def test_at_most_four_caches(problems):
    assert problems("job:\n  cache: [{key: a}, {key: b}, {key: c}, {key: d}, {key: e}]\n  script: x\n") == [
        ".gitlab-ci.yml:2:10: at most 4 caches per job"]


def test_type_errors_of_simple_keys(problems):
    assert problems("""
        job:
          interruptible: sometimes
          resource_group: [a]
          tags: docker
          coverage: {a: b}
          script: x
    """) == [
        ".gitlab-ci.yml:3:18: interruptible must be true or false",
        ".gitlab-ci.yml:4:19: resource_group must be a string",
        ".gitlab-ci.yml:5:9: tags must be a list of strings",
        ".gitlab-ci.yml:6:13: coverage must be a string",
    ]


def test_inherit_errors(problems, hints):
    text = """
        a:
          inherit: false
          script: x
        b:
          inherit: {defaults: false}
          script: x
    """
    assert problems(text) == [
        ".gitlab-ci.yml:3:12: `inherit` must be a mapping with `default:` and/or `variables:`",
        ".gitlab-ci.yml:6:13: unknown key `defaults` in inherit",
    ]
    assert hints(text)[1] == "did you mean `default`?"


# -- rules and only/except ----------------------------------------------------------------------------


def test_rules_errors(problems, hints):
    text = """
        job:
          rules:
            - if: '$A =='
            - iff: $A
              when: manual
            - when: sometimes
            - changes: src/
            - just a string
            - if: [$A]
          script: x
    """
    assert problems(text) == [
        ".gitlab-ci.yml:4:17: invalid expression in `rules:if`: unexpected end of expression after '==' "
        "(at offset 5)",
        ".gitlab-ci.yml:5:7: unknown key `iff` in rules",
        ".gitlab-ci.yml:7:13: `when` must be one of on_success, on_failure, always, manual, delayed, never, "
        "not 'sometimes'",
        ".gitlab-ci.yml:8:16: changes must be a list of strings",
        ".gitlab-ci.yml:9:7: each entry of `rules` must be a mapping (`if:`, `changes:`, `exists:`, `when:`)",
        ".gitlab-ci.yml:10:11: `rules:if` must be an expression string",
    ]
    assert hints(text)[1] == "did you mean `if`?"


def test_rules_must_be_a_list(problems):
    assert problems("job:\n  rules: {if: $A}\n  script: x\n") == [
        ".gitlab-ci.yml:2:10: `rules` must be a list of rules"]


def test_start_in_is_at_most_one_week(problems):
    assert problems("""
        a: {when: delayed, start_in: 1 week, script: x}
        b: {when: delayed, start_in: 8 days, script: x}
    """) == [".gitlab-ci.yml:3:30: start_in must be at most one week"]


def test_rule_start_in_and_delayed_go_together(problems):
    """GitLab's rule entry: `start_in` only with `when: delayed`, which needs it."""
    assert problems("""
        job:
          rules:
            - if: $A
              when: delayed
            - if: $B
              start_in: 1 hour
            - when: delayed
              start_in: 2 weeks
          script: x
    """) == [
        ".gitlab-ci.yml:5:13: `when: delayed` needs `start_in:`",
        ".gitlab-ci.yml:7:7: `start_in` needs `when: delayed`",
        ".gitlab-ci.yml:9:17: start_in must be at most one week",
    ]


def test_only_except_start_in_and_rules_are_exclusive(problems):
    """GitLab: `only`, `except` and `start_in` "may not be used with `rules`"."""
    assert problems("""
        job:
          only: [main]
          except: [tags]
          rules: [{when: always}]
          script: x
        delayed:
          when: delayed
          start_in: 1 hour
          rules: [{if: $A}]
          script: x
        fine:
          only: null
          rules: [{when: always}]
          script: x
    """) == [
        ".gitlab-ci.yml:3:3: `only` cannot be used together with `rules`",
        ".gitlab-ci.yml:4:3: `except` cannot be used together with `rules`",
        ".gitlab-ci.yml:9:3: `start_in` cannot be used together with `rules`",
    ]


def test_expression_errors_point_at_the_fault_however_the_value_is_written(problems):
    """The column is that of the faulty character: after the quote of a quoted value, at the
    value itself for a plain one; a block scalar's text is elsewhere, so its start is given."""
    text = """
        job:
          rules:
            - if: $A == "x" &&
            - if: '$A == "x" &&'
            - if: "$A == \\"x\\" &&"
            - if: >-
                $A == "x" &&
          script: x
        other:
          only:
            variables: [$A = "x", '$A = "x"']
          script: x
    """
    assert [line.split(": invalid")[0] for line in problems(text)] == [
        ".gitlab-ci.yml:4:23",  # plain: the value starts at column 11, the fault is 12 further
        ".gitlab-ci.yml:5:24",  # quoted: one more for the quote
        ".gitlab-ci.yml:6:24",  # (an escape inside double quotes would shift it; rare)
        ".gitlab-ci.yml:7:11",  # a block scalar: where the value starts
        ".gitlab-ci.yml:12:20",
        ".gitlab-ci.yml:12:31",
    ]


def test_only_except_errors(problems, hints):
    text = """
        a:
          only: {refs: [main], varaibles: [$A]}
          script: x
        b:
          except: {variables: [$B, '$A = "x"']}
          script: x
        c:
          only: 42
          script: x
    """
    assert problems(text) == [
        ".gitlab-ci.yml:3:24: unknown key `varaibles` in only",
        ".gitlab-ci.yml:6:32: invalid expression in `except:variables`: unknown operator '='; "
        "did you mean '==' or '=~'? (at offset 3)",
        ".gitlab-ci.yml:9:9: `only` must be a list of refs or a mapping (refs, variables, changes)",
    ]
    assert hints(text)[0] == "did you mean `variables`?"


def test_changes_and_exists_errors(problems):
    assert problems("""
        job:
          rules:
            - changes: {paths: [a], compare: main}
            - exists: {path: [a]}
          script: x
    """) == [
        ".gitlab-ci.yml:4:29: unknown key `compare` in changes",
        ".gitlab-ci.yml:5:16: unknown key `path` in exists",
    ]


# -- needs ------------------------------------------------------------------------------------------------


def test_needs_errors(problems, hints):
    text = """
        stages: [build, test]
        compile: {stage: build, script: x}
        late: {stage: test, script: x}
        early:
          stage: build
          needs:
            - compil
            - late
            - {job: compile, optionl: true}
            - {artifacts: false}
            - {job: compile, optional: maybe}
            - [x, [y]]
            - 42
          script: x
        wrong: {needs: compile, script: x}
    """
    assert problems(text) == [
        ".gitlab-ci.yml:8:7: job `early` needs `compil`, which is not defined",
        ".gitlab-ci.yml:9:7: job `early` (stage build) needs `late`, which is in the later stage test",
        ".gitlab-ci.yml:10:22: unknown key `optionl` in needs",
        ".gitlab-ci.yml:11:7: a `needs` entry needs `job:`",
        ".gitlab-ci.yml:12:7: `needs:artifacts` and `needs:optional` must be true or false",
        ".gitlab-ci.yml:13:8: job `early` needs `x`, which is not defined",
        ".gitlab-ci.yml:13:12: job `early` needs `y`, which is not defined",
        ".gitlab-ci.yml:14:7: each entry of `needs` must be a job name or a mapping with `job:`",
        ".gitlab-ci.yml:16:16: `needs` must be a list of job names",
    ]
    assert hints(text)[0] == "did you mean `compile`?"
    assert hints(text)[2] == "did you mean `optional`?"


def test_an_optional_need_on_an_undefined_job_is_fine(problems):
    assert problems("job:\n  needs: [{job: nothing, optional: true}]\n  script: x\n") == []


def test_needs_in_rules_are_checked_too(problems):
    assert problems("""
        job:
          rules:
            - needs: [ghost]
          script: x
    """) == [".gitlab-ci.yml:4:15: job `job` needs `ghost`, which is not defined"]


def test_needs_on_instances_of_parallel_jobs(problems):
    """A need may name one instance of a parallel job; it must be one that job makes."""
    assert problems("""
        build:
          stage: build
          parallel: {matrix: [{OS: [linux]}]}
          script: x
        shard: {stage: build, parallel: 2, script: x}
        test:
          needs: ["build: [linux]", "build: [mac]", "build 1/2", "shard 2/2", "shard 3/2"]
          script: x
    """) == [
        ".gitlab-ci.yml:8:29: job `test` needs `build: [mac]`, which is not defined",
        ".gitlab-ci.yml:8:45: job `test` needs `build 1/2`, which is not defined",
        ".gitlab-ci.yml:8:71: job `test` needs `shard 3/2`, which is not defined",
    ]


def test_parallel_jobs_may_not_make_a_name_another_job_has(problems, hints):
    text = """
        "build: [a]": {script: x}
        build:
          parallel: {matrix: [{X: [a]}]}
          script: y
        "t 1/2": {script: x}
        t: {parallel: 2, script: x}
        m:
          parallel: {matrix: [{X: [a, b]}, {X: b}]}
          script: z
    """
    assert problems(text) == [
        ".gitlab-ci.yml:3:1: two jobs would be named `build: [a]`",
        ".gitlab-ci.yml:7:1: two jobs would be named `t 1/2`",
        ".gitlab-ci.yml:8:1: two jobs would be named `m: [b]`",
    ]
    assert hints(text)[0] == "`build` makes one with `parallel`; rename a job or change the matrix"


def test_a_job_may_not_need_the_same_job_twice(problems):
    assert problems("""
        a: {stage: build, script: x}
        b:
          needs: [a, {job: a, artifacts: false}]
          script: x
    """) == [".gitlab-ci.yml:4:20: `a` is needed twice"]


def test_needs_parallel_must_hold_matrix(problems):
    assert problems("""
        build: {stage: build, parallel: 2, script: x}
        test:
          needs: [{job: build, parallel: 2}]
          script: x
    """) == [".gitlab-ci.yml:4:34: `needs:parallel` must hold `matrix:`"]


def test_at_most_50_needs(problems):
    jobs = "".join(f"j{i}: {{stage: build, script: x}}\n" for i in range(51))
    needs = ", ".join(f"j{i}" for i in range(51))
    assert problems(f"{jobs}job:\n  needs: [{needs}]\n  script: x\n") == [
        ".gitlab-ci.yml:53:10: a job may need at most 50 jobs, not 51"]


def test_a_need_on_a_job_with_an_undefined_stage_does_not_crash(problems):
    assert problems("""
        a: {stage: nowhere, script: x}
        b: {needs: [a], script: x}
        c: {stage: nowhere, needs: [b], script: x}
    """) == [
        ".gitlab-ci.yml:2:12: job `a`: stage `nowhere` is not defined",
        ".gitlab-ci.yml:4:12: job `c`: stage `nowhere` is not defined",
    ]


def test_dependencies_must_be_needed_when_there_are_needs(problems):
    assert problems("""
        a: {stage: build, script: x}
        b: {stage: build, script: x}
        job:
          needs: [a]
          dependencies: [a, b]
          script: x
        no-needs: {needs: [], dependencies: [b], script: x}
    """) == [".gitlab-ci.yml:6:21: job `job` depends on `b` but does not need it"]


def test_circular_needs(problems):
    """Jobs of one stage that need each other would wait for ever; GitLab refuses them too."""
    assert problems("""
        a: {needs: [b], script: x}
        b: {needs: [c], script: x}
        c: {needs: [a], script: x}
    """) == [".gitlab-ci.yml:4:13: circular `needs`: a -> b -> c -> a"]


def test_a_job_needing_itself(problems):
    assert problems("job: {needs: [job], script: x}\n") == [".gitlab-ci.yml:1:15: circular `needs`: job -> job"]


def test_a_matrix_instance_needing_another_instance_of_its_job(problems):
    """Every instance has the same needs, so `build: [b]` would need itself."""
    assert problems("""
        build:
          parallel: {matrix: [{V: [a, b]}]}
          needs: ["build: [b]"]
          script: x
    """) == [".gitlab-ci.yml:4:11: circular `needs`: build -> build"]


def test_undefined_dependency(problems, hints):
    text = "build: {stage: build, script: x}\njob:\n  dependencies: [biuld]\n  script: x\n"
    assert problems(text) == [".gitlab-ci.yml:3:18: job `job`: dependency `biuld` is not defined"]
    assert hints(text) == ["did you mean `build`?"]


def test_a_dependency_in_a_later_stage(problems):
    assert problems("""
        job:
          stage: build
          dependencies: [late]
          script: x
        late: {script: x}
    """) == [".gitlab-ci.yml:4:18: job `job` (stage build) depends on `late`, which is in the later stage test"]


# -- short forms ---------------------------------------------------------------------------------------


def test_short_form_errors(problems, hints):
    text = """
        a:
          command: x
          when: {on: [push, pull_request], branchs: [main]}
        b:
          command: x
          when: {on: [tag]}
          rules: [{when: always}]
        c:
          command: [x, {y: z}]
        d:
          command: []
    """
    assert problems(text) == [
        ".gitlab-ci.yml:4:21: unknown event `pull_request` in `when:on`",
        ".gitlab-ci.yml:4:36: unknown key `branchs` in when",
        ".gitlab-ci.yml:7:9: `when: {on: ...}` cannot be used together with `rules`",
        ".gitlab-ci.yml:10:16: each entry of `command` must be a string",
        ".gitlab-ci.yml:12:12: job `d` has an empty script",
    ]
    assert hints(text)[:2] == ["events: api, merge_request, push, schedule, tag, trigger, web",
                               "did you mean `branches`?"]


# -- extends, !reference ----------------------------------------------------------------------------------


def test_extends_of_an_unknown_job(problems, hints):
    text = """
        .base: {script: x}
        job:
          extends: .bsae
    """
    assert problems(text) == [".gitlab-ci.yml:4:12: job `job` extends `.bsae`, which is not defined"]
    assert hints(text) == ["did you mean `.base`?"]


def test_circular_extends(problems):
    assert problems("""
        .a: {extends: .b}
        .b: {extends: .a}
        job: {extends: .a, script: x}
    """) == [".gitlab-ci.yml:3:15: circular `extends`: .a -> .b -> .a"]


def test_a_job_extending_itself(problems):
    assert problems("job: {extends: job, script: x}\n") == [".gitlab-ci.yml:1:16: circular `extends`: job -> job"]


def test_extends_depth_limit(problems):
    chain = "".join(f".l{i}: {{extends: .l{i + 1}}}\n" for i in range(12)) + ".l12: {script: x}\n"
    result = problems(chain + "job: {extends: .l0}\n")
    assert result == [".gitlab-ci.yml:12:17: `extends` nested too deeply "
                      "(.l0 -> .l1 -> .l2 -> .l3 -> .l4 -> .l5 -> .l6 -> .l7 -> .l8 -> .l9 -> .l10); "
                      "the limit is 11 levels"]


def test_eleven_levels_of_extends_are_fine(problems):
    chain = "".join(f".l{i}: {{extends: .l{i + 1}}}\n" for i in range(10)) + ".l10: {script: x}\n"
    assert problems(chain + "job: {extends: .l0}\n") == []


def test_extends_must_name_jobs(problems):
    assert problems("""
        .base: [a]
        a: {extends: [1, 2], script: x}
        b: {extends: .base, script: x}
    """) == [
        ".gitlab-ci.yml:3:14: `extends` must be a job name or a list of job names",
        ".gitlab-ci.yml:4:14: `.base` is not a mapping and cannot be extended",
    ]


def test_extends_of_a_global_keyword(problems):
    assert problems("variables: {A: b}\njob: {extends: variables, script: x}\n") == [
        ".gitlab-ci.yml:2:16: job `job` extends `variables`, which is not defined"]


def test_unknown_reference(problems, hints):
    text = """
        .setup:
          script: [a]
        job:
          script:
            - !reference [.setup, scripts]
    """
    assert problems(text) == [".gitlab-ci.yml:6:7: !reference [.setup, scripts]: `.setup > scripts` not found"]
    assert hints(text) == ["did you mean `script`?"]


def test_every_unknown_reference_is_reported(problems):
    assert problems("""
        job:
          script:
            - !reference [.nothing, script]
          after_script: !reference [.none, after_script]
    """) == [
        ".gitlab-ci.yml:4:7: !reference [.nothing, script]: `.nothing` not found",
        ".gitlab-ci.yml:5:17: !reference [.none, after_script]: `.none` not found",
    ]


def test_reference_loop(problems):
    assert problems("""
        .a:
          script: [!reference [.b, script]]
        .b:
          script: [!reference [.a, script]]
        job:
          script: [!reference [.a, script]]
    """) == [".gitlab-ci.yml:3:12: !reference nested more than 10 levels deep (or a reference loop)",
             ".gitlab-ci.yml:5:12: !reference nested more than 10 levels deep (or a reference loop)"]


def test_a_reference_bomb_is_refused(problems):
    lines = [".l0: [x]"] + [f".l{i}: [" + ", ".join([f"!reference [.l{i - 1}]"] * 6) + "]" for i in range(1, 9)]
    result = problems("\n".join(lines) + "\njob: {script: !reference [.l8]}\n")
    assert len(result) == 1 and result[0].endswith("!reference expands to more than 200000 nodes")


def test_references_nested_too_deeply_in_a_script(problems):
    text = "job:\n  script: " + "[" * 12 + "x" + "]" * 12 + "\n"
    assert problems(text) == [".gitlab-ci.yml:2:22: `script` is nested more than 10 levels"]


# -- include ---------------------------------------------------------------------------------------------


def test_include_of_a_missing_file(problems):
    assert problems("include:\n  - ci/missing.yml\njob: {script: x}\n") == [
        ".gitlab-ci.yml:2:5: local file 'ci/missing.yml' does not exist"]


def test_include_escaping_the_repository(problems):
    assert problems("include: ../outside.yml\njob: {script: x}\n") == [
        ".gitlab-ci.yml:1:10: included file '../outside.yml' must stay inside the repository"]


def test_include_through_a_symlink_out_of_the_repository(problems, repo, tmp_path):
    (tmp_path / "secret.yml").write_text("leak: {script: x}\n")
    (repo / "link.yml").symlink_to(tmp_path / "secret.yml")
    assert problems("include: link.yml\njob: {script: x}\n") == [
        ".gitlab-ci.yml:1:10: included file 'link.yml' must stay inside the repository"]


def test_include_of_a_file_that_is_not_yaml(problems):
    assert problems("include: ci/setup.sh\njob: {script: x}\n") == [
        ".gitlab-ci.yml:1:10: included file 'ci/setup.sh' must be a .yml or .yaml file"]


@pytest.mark.parametrize(("entry", "col", "what"), [
    ("{template: Auto-DevOps.gitlab-ci.yml}", 6, "template"),
    ("{component: gitlab.com/group/comp@1.0}", 6, "component"),
    ("{rules: [{if: $X}], component: gitlab.com/group/comp@1.0}", 25, "component"),
])
def test_template_and_component_includes_are_refused_naming_project_includes(problems, hints, entry, col, what):
    text = f"include:\n  - {entry}\njob: {{script: x}}\n"
    assert problems(text) == [f".gitlab-ci.yml:2:{col}: include `{what}` is not supported here"]
    assert hints(text) == [f"put the {what}'s file in a registered repository and include it with `project:` "
                           "(`file:`, `ref:`), or copy it into this one and use `local:`"]


@pytest.mark.parametrize(("entry", "message", "hint"), [
    ("'https://example.com/ci.yml'", "include `remote:` is not available here",
     "copy the file into the repository and include it with `local:`"),
    ("{remote: 'https://example.com/ci.yml'}", "include `remote:` is not available here",
     "copy the file into the repository and include it with `local:`"),
    ("{project: group/other, file: ci.yml}",
     "cannot include 'ci.yml' of project 'group/other': no other repository can be read here",
     "offline (`plan`, `validate`), give `--project-dir NAME=PATH`"),
])
def test_includes_from_elsewhere_without_a_reader_say_how_to_get_one(diagnostics, entry, message, hint):
    [diagnostic] = diagnostics(f"include:\n  - {entry}\njob: {{script: x}}\n")
    assert (diagnostic.format(), diagnostic.hint) == (f".gitlab-ci.yml:2:5: {message}", hint)


@pytest.mark.parametrize(("entry", "where", "message"), [
    ("{file: ci.yml}", "2:6", "include `file:` needs `project:`"),
    ("{project: group/other}", "2:6", "include `project:` needs `file:`, a path or a list of paths"),
    ("{project: group/other, file: [ci.yml, 3]}", "2:34", "include `project:` needs `file:`, a path or a list of "
                                                          "paths"),
    ("{project: group/other, file: ci.sh}", "2:34", "included file 'ci.sh' must be a .yml or .yaml file"),
    ("{project: group/other, file: ../x.yml}", "2:34", "included file '../x.yml' must stay inside project "
                                                      "'group/other'"),
    ("{project: '', file: ci.yml}", "2:15", "include `project:` must be a project path"),
    ("{project: group/other, ref: [main], file: ci.yml}", "2:33", "include `ref:` must be a branch, tag or commit"),
    ("{remote: 'ftp://example.com/ci.yml'}", "2:14", "include `remote:` must be an https URL"),
])
def test_malformed_project_and_remote_includes(problems, entry, where, message):
    assert problems(f"include:\n  - {entry}\njob: {{script: x}}\n") == [f".gitlab-ci.yml:{where}: {message}"]


def test_include_entry_errors(problems, hints):
    text = """
        include:
          - {locl: a.yml}
          - {rules: [{if: $A}]}
          - 42
          - {local: 42}
        job: {script: x}
    """
    assert problems(text) == [
        ".gitlab-ci.yml:3:6: unknown include key `locl`",
        ".gitlab-ci.yml:4:5: include entry needs `local:`, `project:` or `remote:`",
        ".gitlab-ci.yml:5:5: include entry must be a path or a mapping (`local:`, `project:`, `remote:`)",
        ".gitlab-ci.yml:6:13: include `local:` must be a path",
    ]
    assert hints(text)[0] == "did you mean `local`?"


def test_include_rules_are_validated(problems):
    assert problems("""
        include:
          - local: a.yml
            rules:
              - if: "$A =="
              - when: manual
              - changes: [x]
        job: {script: x}
    """, files={"a.yml": "a: {script: x}\n"}) == [
        ".gitlab-ci.yml:5:19: invalid expression in `include:rules:if`: unexpected end of expression after '==' "
        "(at offset 5)",
        ".gitlab-ci.yml:6:15: `when` must be one of never, always, not 'manual'",
    ]


def test_include_rules_are_validated_when_planning_too(repo):
    write(repo, "a.yml", "a: {script: x}\n")
    path = write(repo, ".gitlab-ci.yml", "include:\n  - local: a.yml\n    rules: [{when: manual}]\njob: {script: x}\n")
    with pytest.raises(PipelineError) as info:
        plan_file(path, PlanContext(branch="main"), repo, display_name=".gitlab-ci.yml")
    assert [d.format() for d in info.value.errors] == [
        ".gitlab-ci.yml:3:20: `when` must be one of never, always, not 'manual'"]


def test_include_loop(problems):
    assert problems("include: a.yml\njob: {script: x}\n", files={
        "a.yml": "include: b.yml\n", "b.yml": "include: a.yml\n"}) == [
        "b.yml:1:10: include loop: .gitlab-ci.yml -> a.yml -> b.yml -> a.yml"]


def test_include_of_the_including_file(problems):
    assert problems("include: .gitlab-ci.yml\njob: {script: x}\n") == [
        ".gitlab-ci.yml:1:10: include loop: .gitlab-ci.yml -> .gitlab-ci.yml"]


def test_include_loop_back_to_the_main_file_whatever_its_display_name(repo):
    write(repo, "ci/a.yml", "include: /ci/main.yml\na: {script: x}\n")
    path = write(repo, "ci/main.yml", "include: ci/a.yml\nmain: {script: x}\n")
    assert [d.format() for d in validate_file(path, repo)] == [
        "ci/a.yml:1:10: include loop: ci/main.yml -> ci/a.yml -> ci/main.yml"]


def test_errors_in_included_files_name_the_included_file(problems):
    assert problems("include: ci/jobs.yml\n", files={"ci/jobs.yml": "job:\n  scrpt: x\n  script: y\n"}) == [
        "ci/jobs.yml:2:3: unknown key `scrpt` in job `job`"]


def test_yaml_error_in_an_included_file(problems):
    assert problems("include: ci/jobs.yml\njob: {script: x}\n", files={"ci/jobs.yml": "a: [\n"}) == [
        "ci/jobs.yml:2:1: did not find expected node content"]


def test_included_file_must_be_a_mapping(problems):
    assert problems("include: ci/jobs.yml\njob: {script: x}\n", files={"ci/jobs.yml": "- a\n"}) == [
        "ci/jobs.yml:1:1: a pipeline file must be a mapping of keywords and jobs"]


def test_an_empty_included_file_is_fine(problems):
    assert problems("include: ci/empty.yml\njob: {script: x}\n", files={"ci/empty.yml": "# nothing\n"}) == []


def test_a_wildcard_matching_nothing_is_fine(problems):
    assert problems("include: 'ci/*.yml'\njob: {script: x}\n") == []


# -- order of the report -----------------------------------------------------------------------------------


def test_every_error_is_reported_in_position_order_warnings_first(problems):
    assert problems("""
        stages: [build]
        zeta:
          stage: biuld
          script: x
        alpha:
          scrpt: x
          script: x
          tags: docker
          retry: 9
          alpha: 1
        stages: [build, test]
    """) == [
        ".gitlab-ci.yml:12:1: warning: duplicate key 'stages' (first defined at line 2); the last one is used",
        ".gitlab-ci.yml:4:10: job `zeta`: stage `biuld` is not defined",
        ".gitlab-ci.yml:7:3: unknown key `scrpt` in job `alpha`",
        ".gitlab-ci.yml:9:9: tags must be a list of strings",
        ".gitlab-ci.yml:10:10: `retry` must be 0, 1 or 2",
        ".gitlab-ci.yml:11:3: unknown key `alpha` in job `alpha`",
    ]


def test_errors_of_included_files_and_the_main_file_together(problems):
    result = problems("include: b.yml\njob: {scrpt: x, script: y}\n",
                      files={"b.yml": "other: {tags: x, script: y}\n"})
    assert result == [".gitlab-ci.yml:2:7: unknown key `scrpt` in job `job`",
                      "b.yml:1:15: tags must be a list of strings"]


def test_diagnostics_carry_severity_hint_and_position(diagnostics):
    (diagnostic,) = diagnostics("job: {scirpt: x, script: y}\n")
    assert diagnostic.to_dict() == {"file": ".gitlab-ci.yml", "line": 1, "col": 7, "severity": "error",
                                    "message": "unknown key `scirpt` in job `job`", "hint": "did you mean `script`?"}
