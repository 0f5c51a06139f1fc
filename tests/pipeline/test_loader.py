"""The YAML loader: marks on every key, value and item, merge keys, duplicate keys, `!reference`,
the `spec:` header, GitLab's tab tolerance, the real-world corpus, and hostile input refused fast.

Most tests run on both event sources: libyaml (the default when PyYAML has it, as GitLab's Psych
uses it) and the pure-Python fallback.
"""

from __future__ import annotations

import copy
import os
import pickle
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ci_queue.pipeline import loader
from ci_queue.pipeline.errors import Diagnostic, Mark, PipelineError
from ci_queue.pipeline.loader import (
    DEFAULT_MAX_BYTES,
    MULTIPLE_DOCUMENTS,
    Reference,
    YList,
    YMap,
    copy_node,
    load_file,
    load_yaml,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
CORPUS = FIXTURES / "gitlab-ci" / "corpus"

BACKENDS = [
    pytest.param(cls, id=name)
    for name, cls in (("libyaml", getattr(loader, "_CLoader", None)), ("python", loader._PyLoader))
    if cls is not None
]


@pytest.fixture(params=BACKENDS, scope="module")
def backend(request: pytest.FixtureRequest) -> type:
    """The event source to load with (module-scoped so that hypothesis tests may use it)."""
    return request.param


def load(backend: type, text: str | bytes, file: str = "f.yml", **limits: int) -> tuple[Any, list[Diagnostic]]:
    """load_yaml with the given event source."""
    with mock.patch.object(loader, "_LOADER_CLASS", backend):
        return load_yaml(text, file, **limits)


def load_error(backend: type, text: str | bytes, **limits: int) -> Diagnostic:
    """The single diagnostic of the PipelineError that loading ``text`` must raise."""
    with pytest.raises(PipelineError) as info:
        load(backend, text, **limits)
    [diagnostic] = info.value.diagnostics
    assert "\n" not in diagnostic.message
    return diagnostic


def m(line: int, col: int, file: str = "f.yml") -> Mark:
    return Mark(file, line, col)


def fixture_path(*parts: str) -> Path:
    """A file of the shared fixtures: skipped when they are absent, a failure when CI=true."""
    path = FIXTURES.joinpath(*parts)
    if not path.exists():
        reason = f"shared fixtures not found: {path}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (they are required when CI=true)")
        pytest.skip(reason)
    return path


def test_fixture_path_skips_or_fails_when_fixtures_are_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        fixture_path("no-such-fixture")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        fixture_path("no-such-fixture")


def strings(data: Any) -> list[str]:
    """Every string value in loaded data."""
    if isinstance(data, dict):
        return [s for value in data.values() for s in strings(value)]
    if isinstance(data, list):
        return [s for item in data for s in strings(item)]
    return [data] if isinstance(data, str) else []


def test_libyaml_is_used_when_available() -> None:
    expected = getattr(loader, "_CLoader", None) if yaml.__with_libyaml__ else loader._PyLoader
    assert loader._LOADER_CLASS is expected


# -- marks ---------------------------------------------------------------------------------------

NESTED = """\
stages: [build, test]
job:
  script:
    - echo one
    - "echo two"
  variables:
    A: 1
"""


def test_marks_on_nested_maps_and_lists(backend: type) -> None:
    data, warnings = load(backend, NESTED)
    assert warnings == []
    assert data == {"stages": ["build", "test"], "job": {"script": ["echo one", "echo two"], "variables": {"A": 1}}}
    assert type(data) is YMap and type(data["stages"]) is YList
    assert data.mark == m(1, 1)
    assert data.key_mark("job") == m(2, 1)
    assert data.value_mark("stages") == m(1, 9)
    assert data["stages"].item_marks == [m(1, 10), m(1, 17)]
    job = data["job"]
    assert job.mark == data.value_mark("job") == m(3, 3)
    assert job.key_mark("variables") == m(6, 3)
    assert job["script"].mark == m(4, 5)
    assert job["script"].item_mark(1) == m(5, 7)
    assert job["variables"].value_mark("A") == m(7, 8)


def test_missing_marks_fall_back_to_the_container(backend: type) -> None:
    data, _ = load(backend, "a: [x]\n")
    assert data.key_mark("nope") == data.value_mark("nope") == m(1, 1)
    assert data["a"].item_mark(5) == m(1, 4)
    assert YMap().key_mark("x") is None and YMap().value_mark("x") is None
    assert YList().item_mark(0) is None


def test_ymap_and_ylist_behave_as_dict_and_list() -> None:
    assert YMap({"a": 1}, b=2) == {"a": 1, "b": 2}
    assert YList([1, 2]) == [1, 2]
    assert YMap().mark is None and YMap().key_marks == {} and YList().item_marks == []


@pytest.mark.parametrize(
    ("text", "key", "item_marks"),
    [
        ("é: [ü, x]\n", "é", [m(1, 5), m(1, 8)]),  # columns count characters, not bytes
        ("\ufeffk: [x]\n", "k", [m(1, 5)]),  # a byte order mark is not a column
        (b"\xef\xbb\xbfk: [x]\n", "k", [m(1, 5)]),
        ("a: 1\r\nk: [x]\r\n", "k", [m(2, 5)]),
    ],
)
def test_columns_and_lines(backend: type, text: str | bytes, key: str, item_marks: list[Mark]) -> None:
    data, _ = load(backend, text)
    assert data[key].item_marks == item_marks


def test_scalars_follow_yaml_1_1(backend: type) -> None:
    text = "a: on\nb: yes\nc: off\nd: ~\ne: 1.5\nf: 0x10\ng: 'yes'\nh: !!str 12\ni: 012\nj: null\n"
    data, _ = load(backend, text)
    assert data == yaml.safe_load(text)
    assert data == {"a": True, "b": True, "c": False, "d": None, "e": 1.5, "f": 16, "g": "yes", "h": "12",
                    "i": 10, "j": None}


def test_merge_and_value_indicators_outside_keys_are_strings(backend: type) -> None:
    assert load(backend, "a: <<\nb: =\nc: [<<, =]\n")[0] == {"a": "<<", "b": "=", "c": ["<<", "="]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: !!str 1\nb: !!int '2'\nc: !!float 3\nd: !!bool yes\ne: !!null ''\n",
         {"a": "1", "b": 2, "c": 3.0, "d": True, "e": None}),
        ("a: !!binary aGk=\n", {"a": b"hi"}),
        ("a: !!set {x, y}\nb: !!omap [c: 1, d: 2]\n", {"a": {"x", "y"}, "b": [("c", 1), ("d", 2)]}),
    ],
)
def test_standard_tags_work_as_in_safe_load(backend: type, text: str, expected: dict) -> None:
    assert load(backend, text)[0] == expected == yaml.safe_load(text)


# -- merge keys ----------------------------------------------------------------------------------

MERGE = """\
.base: &base
  image: alpine
  script: [base]
.extra: &extra
  script: [extra]
  tags: [docker]
one:
  <<: *base
  script: [own]
two:
  <<: [*extra, *base]
three:
  <<: *base
  <<: *extra
four:
  script: [own]
  <<: *base
.deeper: &deeper
  <<: *base
  when: manual
five: {<<: *deeper, image: debian}
"""


def test_merge_keys(backend: type) -> None:
    data, warnings = load(backend, MERGE)
    # overriding a merged key is normal and silent; a `<<` replacing a key written before it
    # (job `four`) is what Psych does, hence GitLab, and deserves a warning
    assert [w.format() for w in warnings] == [
        "f.yml:17:3: warning: merge key '<<' replaces 'script' written before it (line 16), as GitLab does; "
        "write '<<' first to keep your own value"]
    assert data["one"] == {"image": "alpine", "script": ["own"]}  # a key after `<<` wins
    assert data["two"] == {"script": ["extra"], "tags": ["docker"], "image": "alpine"}  # earlier map wins
    assert data["three"] == {"image": "alpine", "script": ["extra"], "tags": ["docker"]}  # later `<<` wins
    assert data["four"] == {"script": ["base"], "image": "alpine"}  # `<<` after a key wins, in its place
    assert data["five"] == {"image": "debian", "script": ["base"], "when": "manual"}
    assert list(data["one"]) == ["image", "script"]


def test_merged_keys_keep_the_marks_of_their_anchor(backend: type) -> None:
    data, _ = load(backend, MERGE)
    one = data["one"]
    assert one.key_mark("image") == m(2, 3)
    assert one.value_mark("image") == m(2, 10)
    assert one.key_mark("script") == m(9, 3)
    assert data["five"].key_mark("when") == m(20, 3)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("b:\n  <<: 3\n", m(2, 7)),
        ("a: &a {x: 1}\nb:\n  <<: [*a, 3]\n", m(3, 12)),
    ],
)
def test_merge_needs_mappings(backend: type, text: str, where: Mark) -> None:
    diagnostic = load_error(backend, text)
    assert diagnostic.mark == where
    assert diagnostic.message == "merge key '<<' needs a mapping or a list of mappings"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: 2024-13-01\n", "2024-13-01"),  # no date for Psych (PyYAML would refuse it as a timestamp)
        ("a: '2024-01-05'\n", "2024-01-05"),
        ("a: v2024-01-05\n", "v2024-01-05"),
        ("a: 20240105\n", 20240105),
    ],
)
def test_what_psych_does_not_read_as_a_date_stays_a_value(backend: type, text: str, expected: object) -> None:
    assert load(backend, text)[0] == {"a": expected}


@pytest.mark.parametrize(
    ("text", "where", "kind"),
    [
        ("a: 2024-1-5\n", m(1, 4), "Date"),  # Psych's date pattern, wider than YAML 1.1's
        ("a: [x, 2024-01-05]\n", m(1, 8), "Date"),
        ("2024-01-05: x\n", m(1, 1), "Date"),
        ("a: 2024-01-05 10:30:00\n", m(1, 4), "Time"),
        ("a: 2001-12-14t21:59:43.10-05:00\n", m(1, 4), "Time"),
    ],
)
def test_unquoted_dates_and_times_are_refused_as_gitlab_refuses_them(backend: type, text: str, where: Mark,
                                                                     kind: str) -> None:
    """GitLab loads with ``YAML.safe_load(permitted_classes: [Symbol])``: Psych makes a Date or
    Time of such a scalar, which is not permitted, and the file is refused."""
    diagnostic = load_error(backend, text)
    assert diagnostic.mark == where
    assert diagnostic.message.endswith(f"GitLab refuses it (Tried to load unspecified class: {kind})")
    assert diagnostic.hint.startswith("quote it to keep it a string")


# -- duplicate keys ------------------------------------------------------------------------------


def test_duplicate_key_keeps_the_last_and_warns(backend: type) -> None:
    data, warnings = load(backend, "job:\n  script: [a]\n  image: x\n  script: [b]\n  script: [c]\n")
    job = data["job"]
    assert job == {"script": ["c"], "image": "x"}
    assert list(job) == ["script", "image"]
    assert job.key_mark("script") == m(5, 3)
    assert job.value_mark("script") == m(5, 11)
    assert [w.format() for w in warnings] == [
        "f.yml:4:3: warning: duplicate key 'script' (first defined at line 2); the last one is used",
        "f.yml:5:3: warning: duplicate key 'script' (first defined at line 2); the last one is used",
    ]
    assert {w.severity for w in warnings} == {"warning"}


def test_duplicate_warnings_are_sorted_and_given_once_per_anchor(backend: type) -> None:
    text = "a:\n  x: 1\n  x: 2\nb: &b {y: 1, y: 2}\nc: {<<: *b}\nd: {<<: *b}\nb: 3\n"
    data, warnings = load(backend, text)
    assert data["c"] == data["d"] == {"y": 2}
    assert [(w.mark.line, w.mark.col) for w in warnings] == [(3, 3), (4, 14), (7, 1)]


# -- !reference and other tags -------------------------------------------------------------------


def test_reference_tag(backend: type) -> None:
    text = "job:\n  script:\n    - !reference [.setup, script]\n    - echo\n  after_script: !reference [.a, 'b', c]\n"
    data, _ = load(backend, text)
    ref = data["job"]["script"][0]
    assert ref == Reference((".setup", "script"), m(3, 7))
    assert ref.mark == data["job"]["script"].item_mark(0) == m(3, 7)
    assert data["job"]["after_script"].path == (".a", "b", "c")
    assert data["job"]["after_script"].mark == m(5, 17)
    assert Reference(("a",), m(1, 1)) == Reference(("a",), m(2, 2))  # compared by path, like YMap


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("a: !reference foo\n", m(1, 4), "!reference needs a non-empty list of names"),
        ("a: !reference []\n", m(1, 4), "!reference needs a non-empty list of names"),
        ("a: !reference {x: y}\n", m(1, 4), "!reference needs a non-empty list of names"),
        ("a: !reference [x, 1]\n", m(1, 19), "!reference items must be strings, not int"),
        ("a: !reference [x, [y]]\n", m(1, 19), "!reference items must be strings, not list"),
        ("a: !foo 1\n", m(1, 4), "unknown tag '!foo'"),
        ("a:\n  - !Ref [x]\n", m(2, 5), "unknown tag '!Ref'"),
        ("a: !!python/object:os.system x\n", m(1, 4), "unknown tag '!!python/object:os.system'"),
        ("a: !!int x\n", m(1, 4), "cannot read 'x' as !!int (invalid literal for int() with base 10: 'x')"),
        ("a: !!int ''\n", m(1, 4), "cannot read '' as !!int"),
        ("a: !!bool x\n", m(1, 4), "cannot read 'x' as !!bool"),
        ("a: !!set x\n", m(1, 4), "expected a mapping node, but found scalar"),
        ("a: 2024-01-05\n", m(1, 4), "unquoted date '2024-01-05': GitLab refuses it "
                                     "(Tried to load unspecified class: Date)"),
        ("a: !!map [x]\n", m(1, 4), "tag !!map needs a mapping"),
        ("a: !!seq x\n", m(1, 4), "tag !!seq needs a sequence"),
        ("? [a]\n: 1\n", m(1, 3), "a list cannot be a mapping key"),
        ("{{a: 1}: 1}\n", m(1, 2), "a mapping cannot be a mapping key"),
    ],
)
def test_tag_and_construction_errors(backend: type, text: str, where: Mark, message: str) -> None:
    diagnostic = load_error(backend, text)
    assert (diagnostic.mark, diagnostic.message) == (where, message)


# -- documents -----------------------------------------------------------------------------------


def test_spec_header_document_is_skipped(backend: type) -> None:
    text = "spec:\n  inputs:\n    x: {default: 1}\n---\njob:\n  script: [a]\n"
    data, _ = load(backend, text)
    assert data == {"job": {"script": ["a"]}}
    assert data.key_mark("job") == m(5, 1)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a: 1\n---\nb: 2\n", m(2, 1)),
        ("spec: {}\nother: 1\n---\na: 1\n", m(3, 1)),
        ("spec: {}\n---\na: 1\n---\nb: 2\n", m(4, 1)),
        ("---\n---\n", m(2, 1)),
    ],
)
def test_other_multiple_documents_are_refused(backend: type, text: str, where: Mark) -> None:
    diagnostic = load_error(backend, text)
    assert (diagnostic.mark, diagnostic.message) == (where, MULTIPLE_DOCUMENTS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", None), ("# just a comment\n", None), ("---\n", None), ("---\na: 1\n...\n", {"a": 1}), ("x", "x")],
)
def test_single_and_empty_documents(backend: type, text: str, expected: Any) -> None:
    assert load(backend, text) == (expected, [])


# -- tabs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a:\tb", {"a": "b"}),  # separation after `key:`
        ("a: b\t\n", {"a": "b"}),  # trailing whitespace
        ("a: b\t# comment\n", {"a": "b"}),
        ("a: [1]\t\n", {"a": [1]}),
        ("a\t: b", {"a": "b"}),
        ("a: [b,\tc]", {"a": ["b", "c"]}),  # flow collections
        ("a: {b:\tc,\td: e}", {"a": {"b": "c", "d": "e"}}),
        ("- apk add\tgit\n", ["apk add\tgit"]),  # kept inside a plain scalar
        ("a: b  \t  c", {"a": "b  \t  c"}),
        ("a: b\n  \tc\n", {"a": "b c"}),  # after the indentation of a continuation line
        ("a: 'x\ty'\nb: \"x\\ty\"\n", {"a": "x\ty", "b": "x\ty"}),  # quoted
        ("a: |\n  x\t\n", {"a": "x\t\n"}),  # block scalar content
        ("a: &x\tb\nc: *x\n", {"a": "b", "c": "b"}),
    ],
)
def test_tabs_tolerated_like_gitlab(backend: type, text: str, expected: Any) -> None:
    assert load(backend, text)[0] == expected


@pytest.mark.parametrize(
    ("text", "where"),
    [("a:\n\t- b\n", m(2, 1)), ("\ta: b\n", m(1, 1)), ("a: b\n\tc\n", m(2, 1)), ("- a\n-\tb\n", m(2, 2))],
)
def test_tabs_in_indentation_are_errors(backend: type, text: str, where: Mark) -> None:
    diagnostic = load_error(backend, text)
    assert diagnostic.mark == where
    assert "tab" in (diagnostic.hint or "") or "tab" in diagnostic.message


@pytest.mark.fixtures
def test_nheko_tab_separated_command(backend: type) -> None:
    path = fixture_path("gitlab-ci", "corpus", "040-Nheko-Reborn-nheko.yml")
    with mock.patch.object(loader, "_LOADER_CLASS", backend):
        data, _ = load_file(path, "nheko.yml")
    assert any(s.startswith("apk add\tasciidoctor cmake") for s in strings(data))


@pytest.mark.fixtures
def test_bird_spec_header(backend: type) -> None:
    path = fixture_path("gitlab-ci", "corpus", "004-CZ-NIC-bird.yml")
    with mock.patch.object(loader, "_LOADER_CLASS", backend):
        data, _ = load_file(path, "bird.yml")
    assert "spec" not in data and len(data) > 10
    assert min(mark.line for mark in data.key_marks.values()) > 91  # all after the `---` line


class ReferenceSafeLoader(yaml.SafeLoader):
    """PyYAML's safe_load, plus `!reference` (with a dummy mark) and Psych's merge order, to
    compare against: pairs apply as written, so a `<<` replaces the keys written before it
    (PyYAML would keep them; GitLab reads with Psych)."""

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        pairs = []
        for key_node, value_node in node.value:
            if key_node.tag != "tag:yaml.org,2002:merge":
                pairs.append((key_node, value_node))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in reversed(sources):  # the earlier mapping of `<<: [*a, *b]` wins
                self.flatten_mapping(source)
                pairs.extend(source.value)
        node.value = pairs


ReferenceSafeLoader.add_constructor(
    "!reference", lambda loader_, node: Reference(tuple(loader_.construct_sequence(node)), m(0, 0))
)


CORPUS_FILES = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*.yml")) if CORPUS.is_dir() else []


@pytest.mark.fixtures
@pytest.mark.parametrize("name", CORPUS_FILES or ["<corpus missing>"])
def test_corpus_file_loads(backend: type, name: str) -> None:
    path = fixture_path("gitlab-ci", "corpus", name)
    with mock.patch.object(loader, "_LOADER_CLASS", backend):
        data, warnings = load_file(path, name)
    assert isinstance(data, YMap) and data
    assert all(w.severity == "warning" and w.mark.file == name for w in warnings)
    try:  # the same data as PyYAML's safe_load, where that can read the file
        *_, expected = yaml.load_all(path.read_text(), Loader=ReferenceSafeLoader)
    except yaml.YAMLError:
        return
    assert data == expected


JOB = """\
build:{0}:
  <<: *defaults
  stage: build
  image: registry.example.com/build/debian-12:{0}
  variables: {{TARGET: linux-{0}, CMAKE_BUILD_TYPE: Release}}
  script:
    - cmake -B build -S . -G Ninja -DCMAKE_BUILD_TYPE=$CMAKE_BUILD_TYPE -DTARGET=$TARGET
    - ninja -C build -j$(nproc) && ctest --test-dir build --output-on-failure
  rules:
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH || $CI_PIPELINE_SOURCE == "merge_request_event"
  artifacts: {{paths: [build/], expire_in: 1 week}}

"""


def test_a_300_kb_file_loads_in_well_under_a_second() -> None:
    text = ".defaults: &defaults\n  retry: 2\n  tags: [docker]\n" + "".join(JOB.format(i) for i in range(650))
    assert len(text) > 300_000
    timings = []
    for _ in range(3):  # the best of three, in CPU time: a busy machine must not fail this test
        start = time.process_time()
        data, _ = load_yaml(text, "big.yml")
        timings.append(time.process_time() - start)
    assert min(timings) < 1.0
    assert data["build:649"]["retry"] == 2


# -- hostile input -------------------------------------------------------------------------------

LOL = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_billion_laughs_is_refused_quickly(backend: type) -> None:
    start = time.perf_counter()
    diagnostic = load_error(backend, LOL)
    assert time.perf_counter() - start < 1.0
    assert diagnostic.message == "document expands to more than 2000000 nodes (alias bomb?)"
    assert diagnostic.mark.line == 7


def test_max_nodes_counts_every_alias_as_a_copy(backend: type) -> None:
    text = "a: &a [1, 2, 3, 4]\nb: [*a, *a]\n"  # map, 2 keys, [1, 2, 3, 4], [*a, *a]: 1 + 2 + 5 + 11 nodes
    assert load(backend, text, max_nodes=19)[0] == {"a": [1, 2, 3, 4], "b": [[1, 2, 3, 4]] * 2}
    diagnostic = load_error(backend, text, max_nodes=18)
    assert (diagnostic.mark, diagnostic.message) == (m(2, 4), "document expands to more than 18 nodes (alias bomb?)")


@pytest.mark.parametrize(
    ("text", "where"),
    [("a: &a [1, *a]\n", m(1, 11)), ("a: &a {b: *a}\n", m(1, 11))],
)
def test_recursive_alias_is_refused(backend: type, text: str, where: Mark) -> None:
    diagnostic = load_error(backend, text)
    message = "alias '*a' is used inside its own anchor (recursive alias)"
    assert (diagnostic.mark, diagnostic.message) == (where, message)


def test_unknown_alias(backend: type) -> None:
    diagnostic = load_error(backend, "a: 1\nb: *nope\n")
    assert (diagnostic.mark, diagnostic.message) == (m(2, 4), "unknown alias '*nope'")


def test_an_anchor_may_be_redefined(backend: type) -> None:
    assert load(backend, "a: &x 1\nb: *x\nc: &x 2\nd: *x\n")[0] == {"a": 1, "b": 1, "c": 2, "d": 2}


@pytest.mark.parametrize("text", ["[" * 100_000, "{a: " * 100_000, "- " * 100_000, "[{a: " * 50_000])
def test_deep_nesting_is_refused_without_recursion(backend: type, text: str) -> None:
    start = time.perf_counter()
    diagnostic = load_error(backend, text)
    assert time.perf_counter() - start < 2.0
    assert diagnostic.message == "nesting is deeper than 100 levels"
    assert diagnostic.mark.line == 1


def test_depth_limit_is_exact(backend: type) -> None:
    assert load(backend, "[" * 100 + "]" * 100)[0] is not None
    assert load_error(backend, "[" * 101 + "]" * 101).mark == m(1, 101)
    assert load_error(backend, "[[[x]]]", max_depth=2).mark == m(1, 3)


def test_depth_counts_through_aliases(backend: type) -> None:
    def text(levels: int) -> str:
        return "a: &a [[[x]]]\nb: " + "[" * levels + "*a" + "]" * levels + "\n"

    assert load(backend, text(96))[0]["a"] == [[["x"]]]  # root map + 96 + 3 = 100 levels
    diagnostic = load_error(backend, text(97))
    assert (diagnostic.mark, diagnostic.message) == (m(2, 101), "nesting is deeper than 100 levels")


@pytest.mark.parametrize("text", ["a" * (5 * 1024 * 1024), b"a" * (5 * 1024 * 1024)])
def test_too_large_is_refused(backend: type, text: str | bytes) -> None:
    diagnostic = load_error(backend, text)
    assert diagnostic.format() == "f.yml:1:1: file is too large (5242880 bytes, the limit is 4194304)"


def test_size_is_counted_in_utf8_bytes(backend: type) -> None:
    diagnostic = load_error(backend, "é" * 3_000_000)
    assert diagnostic.message == f"file is too large (6000000 bytes, the limit is {DEFAULT_MAX_BYTES})"
    assert load_error(backend, "a: é\n", max_bytes=5).message == "file is too large (6 bytes, the limit is 5)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"a: 1\nb: caf\xe9\n", "f.yml:2:7: file is not valid UTF-8 (byte offset 11)"),
        (b"\xff", "f.yml:1:1: file is not valid UTF-8 (byte offset 0)"),
        ("a: \ud800\n", "f.yml:1:4: file is not valid UTF-8 (byte offset 3)"),  # lone surrogate
        ("a: 1\nb: \x00\n", "f.yml:2:4: character U+0000 is not allowed in YAML"),
        ("a: é\x7f\n", "f.yml:1:5: character U+007F is not allowed in YAML"),
    ],
)
def test_invalid_text(backend: type, text: str | bytes, expected: str) -> None:
    assert load_error(backend, text).format() == expected


@pytest.mark.parametrize(
    ("text", "prefix", "hint"),
    [
        ("a: 1\nb: 2\nc:  @x\n", "f.yml:3:5: found character", "while scanning for the next token"),
        ("a: 1\nb:\n  c: d: e\n", "f.yml:3:7: mapping values are not allowed", None),
        ("a: 1\nb: 2\nc:  'x\n", "f.yml:4:1: found unexpected end of stream",
         "while scanning a quoted scalar (from line 3, column 5)"),
        ("a: 1\nb: [1,\nc: 2\n", "f.yml:4:1: ", "while parsing a flow sequence (from line 2, column 4)"),
    ],
)
def test_syntax_errors_are_one_line_with_a_position(backend: type, text: str, prefix: str, hint: str | None) -> None:
    diagnostic = load_error(backend, text)
    assert diagnostic.format().startswith(prefix)
    assert diagnostic.hint == hint


# -- load_file -----------------------------------------------------------------------------------


def test_load_file_names_marks(tmp_path: Path) -> None:
    path = tmp_path / ".gitlab-ci.yml"
    path.write_text("job:\n  script: [x]\n")
    data, _ = load_file(path, "ci/main.yml")
    assert data.value_mark("job") == Mark("ci/main.yml", 2, 3)
    data, _ = load_file(str(path))
    assert data.mark == Mark(str(path), 1, 1)


def test_load_file_refuses_a_large_file_from_its_size(tmp_path: Path) -> None:
    path = tmp_path / "big.yml"
    with open(path, "wb") as stream:
        stream.truncate(1 << 30)  # sparse: cheap to make, and never read
    with pytest.raises(PipelineError) as info:
        load_file(path, "big.yml")
    assert str(info.value) == "big.yml:1:1: file is too large (1073741824 bytes, the limit is 4194304)"
    path.write_bytes(b"#" * (5 * 1024 * 1024))
    with pytest.raises(PipelineError) as info:
        load_file(path, "big.yml")
    assert str(info.value) == "big.yml:1:1: file is too large (5242880 bytes, the limit is 4194304)"


def test_load_file_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as info:
        load_file(tmp_path / "nope.yml", "nope.yml")
    assert str(info.value).startswith("nope.yml:1:1: cannot read the file: ")


# -- copies --------------------------------------------------------------------------------------


def test_copies_keep_marks(backend: type) -> None:
    data, _ = load(backend, "a: &x\n  b: [1, 2]\n  r: !reference [j, k]\nc: *x\n")
    assert data["a"] is data["c"]  # aliases share their object, as with safe_load
    assert data.value_mark("c") == data.value_mark("a")  # an alias points where its anchor is written
    for copied in (copy.deepcopy(data), copy_node(data), pickle.loads(pickle.dumps(data)), copy.copy(data)):
        assert copied == data and copied is not data
        assert type(copied) is YMap and type(copied["a"]["b"]) is YList
        assert copied.key_mark("c") == m(4, 1)
        assert copied["a"].value_mark("b") == m(2, 6)
        assert copied["a"]["b"].item_marks == [m(2, 7), m(2, 10)]
        assert copied["a"]["r"].mark == m(3, 6)
    assert copy.copy(data["a"]["b"]).item_marks == data["a"]["b"].item_marks


def test_copy_node_unshares_aliases(backend: type) -> None:
    data, _ = load(backend, "a: &x\n  b: [1, 2]\nc: *x\n")
    deep = copy.deepcopy(data)
    assert deep["a"] is deep["c"]
    own = copy_node(data)
    assert own["a"] is not own["c"] and own["a"]["b"] is not data["a"]["b"]
    own["a"]["b"].append(3)
    assert own["c"]["b"] == data["a"]["b"] == [1, 2]
    assert own["c"]["b"].mark == data["c"]["b"].mark


def test_copy_node_of_plain_values() -> None:
    ref = Reference(("a",), m(1, 1))
    assert copy_node(ref) is ref
    plain = {"a": [1, {"b": {2}}]}
    copied = copy_node(plain)
    assert copied == plain and copied["a"][1]["b"] is not plain["a"][1]["b"]


# -- properties ----------------------------------------------------------------------------------

KEYS = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
VALUES = st.recursive(
    st.integers(0, 999),
    lambda children: st.lists(children, min_size=1, max_size=3)
    | st.dictionaries(KEYS, children, min_size=1, max_size=3),
    max_leaves=12,
)


def check_marks(data: Any, lines: list[str]) -> None:
    """Keys and integer values must be written where their marks say."""

    def at(mark: Mark) -> str:
        return lines[mark.line - 1][mark.col - 1 :]

    if isinstance(data, YMap):
        for key, value in data.items():
            assert at(data.key_mark(key)).startswith((key, f"'{key}'"))
            if isinstance(value, int):
                assert at(data.value_mark(key)).startswith(str(value))
            check_marks(value, lines)
    elif isinstance(data, YList):
        for index, item in enumerate(data):
            if isinstance(item, int):
                assert at(data.item_mark(index)).startswith(str(item))
            check_marks(item, lines)


@settings(max_examples=100, deadline=None)
@given(value=st.dictionaries(KEYS, VALUES, min_size=1, max_size=4), flow=st.booleans())
def test_marks_point_at_the_source(backend: type, value: dict, flow: bool) -> None:
    text = yaml.safe_dump(value, default_flow_style=flow, width=60)
    data, _ = load(backend, text)
    assert data == value
    check_marks(data, text.split("\n"))


TOKENS = [
    ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "&b ", "*b", "<<: ", "!reference ", "!foo ",
    "!!str ", "!!int ", "? ", "#", "|", ">", "'", '"', "\n", " ", "  ", "\t", "key", "word", "0", "1.5", "yes",
    "~", "---\n", "...\n", "spec:", "%YAML 1.1\n", "\\", "2024-13-45", "é", "\r\n",
]


def check_load_or_error(backend: type, text: str | bytes) -> None:
    """Loading returns data and warnings, or raises PipelineError with positions; nothing else."""
    try:
        data, warnings = load(backend, text)
    except PipelineError as exc:
        assert exc.diagnostics and all(d.mark and d.mark.line >= 1 and d.mark.col >= 1 for d in exc.diagnostics)
    else:
        assert all(isinstance(w, Diagnostic) and w.severity == "warning" for w in warnings)
        copy_node(data)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_random_text(backend: type, text: str | bytes) -> None:
    check_load_or_error(backend, text)


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_fuzz_yaml_tokens(backend: type, text: str) -> None:
    check_load_or_error(backend, text)
