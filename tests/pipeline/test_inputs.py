"""`spec: inputs:` and `$[[ inputs.name ]]` interpolation (issue #13), with GitLab's rules and
messages (lib/gitlab/ci/config/interpolation): types, defaults, options, regex, functions, the
inputs of `include:` entries and of the trigger, and every error at a file, line and column."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ci_queue.pipeline.errors import Mark, PipelineError
from ci_queue.pipeline.inputs import InputValues, Interpolation, parse_input_pairs, posix_escape
from ci_queue.pipeline.loader import load_document
from ci_queue.pipeline.model import PlanContext
from ci_queue.pipeline.planner import plan_file, validate_file
from tests.pipeline.conftest import write

HEADER = """\
spec:
  inputs:
    stage: {default: test}
    count: {type: number, default: 2}
    verbose: {type: boolean, default: false}
    targets: {type: array, default: [linux, mac]}
    env: {options: [staging, production], default: staging}
    version: {regex: '^v\\d+\\.\\d+$', default: v1.0}
---
"""


def plan(repo: Path, text: str, files: dict[str, str] | None = None, **ctx_fields):
    for name, content in (files or {}).items():
        write(repo, name, content)
    path = write(repo, ".gitlab-ci.yml", text)
    return plan_file(path, PlanContext(**{"kind": "push", "branch": "main", **ctx_fields}), repo,
                     display_name=".gitlab-ci.yml")


def errors(repo: Path, text: str, files: dict[str, str] | None = None, **ctx_fields) -> list[str]:
    with pytest.raises(PipelineError) as info:
        plan(repo, text, files, **ctx_fields)
    return [d.format() for d in info.value.errors]


# -- values and types --------------------------------------------------------------------------------


def test_defaults_are_interpolated_with_their_types(repo):
    result = plan(repo, HEADER + """\
job-$[[ inputs.env ]]:
  stage: $[[ inputs.stage ]]
  parallel: $[[ inputs.count ]]
  variables: {VERBOSE: '$[[ inputs.verbose ]]', LINE: "n=$[[ inputs.count ]] v=$[[ inputs.verbose ]]"}
  script:
    - echo $[[ inputs.version ]] $[[ inputs.targets ]]
  tags: $[[ inputs.targets ]]
""")
    job = result.jobs[0]
    assert [j.name for j in result.jobs] == ["job-staging 1/2", "job-staging 2/2"]
    assert job.stage == "test" and job.tags == ["linux", "mac"]  # a whole block keeps the list
    assert job.variables["VERBOSE"] == "false"  # a boolean variable, as GitLab writes it
    assert job.variables["LINE"] == "n=2 v=false"
    assert job.script == ['echo v1.0 ["linux", "mac"]']  # inside text: Ruby's to_s of the list


def test_the_triggers_inputs_replace_the_defaults_and_text_reads_as_the_inputs_type(repo):
    result = plan(repo, HEADER + "job:\n  parallel: $[[ inputs.count ]]\n  script: [x]\n"
                                 "  tags: $[[ inputs.targets ]]\n",
                  inputs={"count": "3", "targets": '["arm"]', "env": "production"})
    assert [j.name for j in result.jobs] == ["job 1/3", "job 2/3", "job 3/3"]
    assert result.jobs[0].tags == ["arm"]


def test_include_inputs_go_to_the_included_file_and_each_set_of_inputs_is_its_own_include(repo):
    template = "spec:\n  inputs:\n    name:\n    stage: {default: test}\n---\n" \
               "build-$[[ inputs.name ]]:\n  stage: $[[ inputs.stage ]]\n  script: make $[[ inputs.name ]]\n"
    result = plan(repo, """\
include:
  - local: tpl.yml
    inputs: {name: linux}
  - local: tpl.yml
    inputs: {name: mac, stage: build}
  - local: tpl.yml
    inputs: {name: linux}
""", files={"tpl.yml": template})
    assert [(j.name, j.stage, j.script) for j in result.jobs] == [
        ("build-mac", "build", ["make mac"]), ("build-linux", "test", ["make linux"])]


def test_inputs_pass_down_through_nested_includes(repo):
    result = plan(repo, "include: {local: a.yml, inputs: {who: world}}\n", files={
        "a.yml": "spec: {inputs: {who: }}\n---\n"
                 "include: {local: b.yml, inputs: {greeting: 'hello $[[ inputs.who ]]'}}\n",
        "b.yml": "spec: {inputs: {greeting: }}\n---\nhi: {script: 'echo $[[ inputs.greeting ]]'}\n",
    })
    assert result.jobs[0].script == ["echo hello world"]


def test_a_file_without_header_is_not_interpolated(repo):
    result = plan(repo, "job:\n  script: echo '$[[ inputs.x ]]'\n")
    assert result.jobs[0].script == ["echo '$[[ inputs.x ]]'"]


def test_matrix_blocks_are_left_for_later_as_gitlab_leaves_them(repo):
    result = plan(repo, "spec: {inputs: {a: {default: x}}}\n---\n"
                        "job: {script: 'echo $[[ matrix.OS ]] $[[ inputs.a ]]'}\n")
    assert result.jobs[0].script == ["echo $[[ matrix.OS ]] x"]


# -- functions --------------------------------------------------------------------------------------


def test_functions_expand_vars_truncate_and_posix_escape(repo):
    result = plan(repo, """\
spec:
  inputs:
    path: {default: '$CI_COMMIT_REF_NAME/$UNKNOWN'}
    title: {default: "it's a long title"}
---
job:
  script:
    - echo $[[ inputs.path | expand_vars ]]
    - echo $[[ inputs.title | truncate(5, 6) ]]
    - echo $[[ inputs.title | posix_escape ]]
    - echo $[[ inputs.path | expand_vars | truncate(0, 4) | posix_escape ]]
""", branch="feature")
    assert result.jobs[0].script == [
        "echo feature/$UNKNOWN",  # known variables only, as GitLab's expand_existing
        "echo a long",
        "echo it\\'s\\ a\\ long\\ title",
        "echo feat",
    ]


@pytest.mark.parametrize(("block", "message"), [
    ("inputs.a | upcase", "no function matching `upcase`: check that the function name, arguments, and types "
                          "are correct"),
    ("inputs.a | truncate(1)", "no function matching `truncate(1)`: check that the function name, arguments, "
                               "and types are correct"),
    ("inputs.a | posix_escape | posix_escape | posix_escape | posix_escape",
     "too many functions in interpolation block"),
    ("inputs.n | truncate(0, 1)", "error in `truncate` function: invalid input type: truncate can only be used "
                                  "with string inputs"),
    ("inputs.nope", "unknown interpolation key: `nope`"),
    ("inputs", "invalid interpolation access pattern `inputs`"),
    ("secrets.a", "unknown interpolation key: `secrets`"),
])
def test_block_errors_point_at_the_block(repo, block, message):
    text = f"spec: {{inputs: {{a: {{default: x}}, n: {{type: number, default: 1}}}}}}\n---\njob:\n" \
           f"  script: echo '$[[ {block} ]]'\n"
    assert errors(repo, text) == [f".gitlab-ci.yml:4:17: {message}"]  # where `$[[` is


# -- the errors GitLab reports ------------------------------------------------------------------------


def test_a_missing_required_input_is_an_error_at_the_include_or_at_the_declaration(repo):
    template = "spec:\n  inputs:\n    name:\n---\njob: {script: 'echo $[[ inputs.name ]]'}\n"
    assert errors(repo, "include:\n  - local: tpl.yml\n", files={"tpl.yml": template}) == [
        ".gitlab-ci.yml:2:5: `name` input: required value has not been provided"]
    assert errors(repo, template) == [".gitlab-ci.yml:3:5: `name` input: required value has not been provided"]


def test_unknown_inputs_are_errors_at_the_value_given(repo):
    template = "spec:\n  inputs:\n    name: {default: x}\n---\njob: {script: x}\n"
    assert errors(repo, "include:\n  - local: tpl.yml\n    inputs:\n      nmae: y\n",
                  files={"tpl.yml": template}) == [".gitlab-ci.yml:4:13: unknown input arguments: nmae"]
    assert errors(repo, template, inputs={"other": "1"}) == [".gitlab-ci.yml:1:1: unknown input arguments: other"]


def test_inputs_given_to_a_file_without_header_are_an_error(repo):
    assert errors(repo, "include:\n  - local: a.yml\n    inputs: {x: 1}\n", files={"a.yml": "a: {script: x}\n"}) == [
        ".gitlab-ci.yml:3:13: given inputs are not defined in the `spec` section of the included configuration file"]


@pytest.mark.parametrize(("declaration", "value", "message"), [
    ("{options: [a, b]}", "c", "`x` input: `c` cannot be used because it is not in the list of allowed options"),
    ("{type: number, options: [1, 2]}", "3", "`x` input: `3` cannot be used because it is not in the list of "
                                             "allowed options"),
    ("{regex: '^v[0-9]+$'}", "x1", "`x` input: provided value does not match required RegEx pattern"),
    ("{type: number}", "three", "`x` input: provided value is not a number"),
    ("{type: boolean}", "'yes'", "`x` input: provided value is not a boolean"),
    ("{type: array}", "a", "`x` input: provided value is not an array"),
    ("{type: string}", "[a]", "`x` input: provided value is not a string"),
])
def test_provided_values_are_checked_at_the_value(repo, declaration, value, message):
    template = f"spec:\n  inputs:\n    x: {declaration}\n---\njob: {{script: x}}\n"
    text = f"include:\n  - local: tpl.yml\n    inputs:\n      x: {value}\n"
    assert errors(repo, text, files={"tpl.yml": template}) == [f".gitlab-ci.yml:4:10: {message}"]


@pytest.mark.parametrize(("declaration", "col", "message"), [
    ("{type: number, default: x}", 32, "`x` input: default value is not a number"),
    ("{regex: '^a', default: b}", 31, "`x` input: default value does not match required RegEx pattern"),
    ("{regex: '(', default: b}", 30, "`x` input: invalid regular expression: missing ): ("),
    ("{type: integer}", 15, "unknown input specification for `x` (valid types: string, number, boolean, array)"),
    ("{defualt: 1}", 9, "unknown key `defualt` in input `x`"),
    ("{type: boolean, options: [true]}", 33, "input `x`: `options` can only be used with string and number "
                                             "inputs"),
    ("{type: number, regex: '1'}", 30, "input `x`: `regex` can only be used with string inputs"),
    ("[a]", 8, "input `x` must be a mapping (`default`, `type`, ...) or empty"),
])
def test_declarations_are_checked(repo, declaration, col, message):
    assert errors(repo, f"spec:\n  inputs:\n    x: {declaration}\n---\njob: {{script: x}}\n") == [
        f".gitlab-ci.yml:3:{col}: {message}"]


def test_a_default_of_the_wrong_type_is_an_error_even_when_a_value_is_given(repo):
    text = "spec:\n  inputs:\n    n: {type: number, default: many}\n---\njob: {script: x}\n"
    assert errors(repo, text, inputs={"n": "2"}) == [".gitlab-ci.yml:3:32: `n` input: default value is not a number"]


def test_errors_of_an_included_file_name_that_file(repo):
    template = "spec:\n  inputs:\n    x: {default: 1, type: number}\n---\njob: {script: '$[[ inputs.y ]]'}\n"
    assert errors(repo, "include: tpl.yml\n", files={"tpl.yml": template}) == [
        "tpl.yml:5:16: unknown interpolation key: `y`"]


def test_validate_checks_inputs_too(repo):
    path = write(repo, ".gitlab-ci.yml", "spec: {inputs: {x: }}\n---\njob: {script: '$[[ inputs.x ]]'}\n")
    assert [d.format() for d in validate_file(path, repo, ".gitlab-ci.yml")] == [
        ".gitlab-ci.yml:1:17: `x` input: required value has not been provided"]
    assert validate_file(path, repo, ".gitlab-ci.yml", inputs={"x": "y"}) == []


def test_the_real_corpus_file_with_inputs_interpolates_its_defaults():
    """CZ-NIC/bird declares boolean, number and string inputs and uses them in rules and scripts."""
    from tests.pipeline.test_gitlab_corpus import checkout, oracle_context

    repo = checkout("004-CZ-NIC-bird", Path(__import__("tempfile").mkdtemp(prefix="bird-")))
    result = plan_file(repo / ".gitlab-ci.yml", oracle_context(repo), repo)
    scripts = [line for job in result.jobs for line in job.script if "Netlab:" in line]
    assert scripts and all("$[[" not in line for job in result.jobs for line in job.script)
    assert any("echo \"Netlab: false\"" in line for line in scripts)


def test_input_pairs_of_the_command_line():
    assert parse_input_pairs(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        parse_input_pairs(["novalue"])


# -- properties ---------------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
# what can be written inside a double-quoted YAML scalar on one line, unescaped
LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Cn", "Zl", "Zp"),
                                  blacklist_characters="\ufeff"), max_size=40)


def interpolate(header: str, content: str, values: dict | None = None, text: bool = False):
    head, data, _ = load_document(header + "---\n" + content, "f.yml")
    interpolation = Interpolation(Mark("f.yml", 1, 1), {"KNOWN": "k"})
    result = interpolation.apply(head, data, InputValues(values or {}, text=text))
    return result, [d.format() for d in interpolation.errors]


def quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


@settings(max_examples=150, deadline=None)
@given(value=TEXT, prefix=LINE_TEXT.filter(lambda t: "$[[" not in t), suffix=LINE_TEXT.filter(lambda t: "$[[" not in t))
def test_a_string_input_comes_out_exactly_as_given(value, prefix, suffix):
    """Alone, a block is the value itself; inside text, the text around it is untouched."""
    content = f"a: $[[ inputs.s ]]\nb: {quoted(prefix + '$[[ inputs.s ]]' + suffix)}\n"
    result, problems = interpolate("spec: {inputs: {s: }}\n", content, {"s": value})
    assert problems == []
    assert result == {"a": value, "b": prefix + value + suffix}


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.lists(TEXT, max_size=4)))
def test_a_whole_block_keeps_the_type_of_its_value(value):
    kind = {bool: "boolean", int: "number", list: "array"}[type(value)]
    result, problems = interpolate(f"spec: {{inputs: {{v: {{type: {kind}}}}}}}\n", "a: '$[[ inputs.v ]]'\n",
                                   {"v": value})
    assert problems == [] and result == {"a": value} and type(result["a"]) is type(value)


@settings(max_examples=150, deadline=None)
@given(value=TEXT)
def test_posix_escape_gives_one_shell_word_that_reads_back_as_the_value(value):
    assert shlex.split(posix_escape(value)) == [value]


@settings(max_examples=100, deadline=None)
@given(value=TEXT, offset=st.integers(0, 50), length=st.integers(0, 50))
def test_truncate_is_a_slice(value, offset, length):
    result, problems = interpolate("spec: {inputs: {s: }}\n", f"a: '$[[ inputs.s | truncate({offset}, {length}) ]]'\n",
                                   {"s": value})
    assert problems == [] and result == {"a": value[offset:offset + length]}


@settings(max_examples=200, deadline=None)
@given(block=st.text(st.sampled_from("inputs.sxy |()0,1 expand_varstruncateposix_escape$[]"), max_size=40))
def test_any_block_text_interpolates_or_gives_positioned_errors(block):
    """Whatever is written between `$[[` and `]]`, the result is a value or errors with positions."""
    result, problems = interpolate("spec: {inputs: {s: {default: x}}}\n", f"a: {quoted('$[[' + block + ']]')}\n")
    assert (result is None) == bool(problems)
    assert all(p.startswith("f.yml:") for p in problems)
