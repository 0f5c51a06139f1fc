"""GitLab CI variable expressions: GitLab's documented examples and specs, every syntax error with its
offset, and property tests against a reference model of the language."""

from __future__ import annotations

import pickle
import re
import string
import time
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ci_queue.pipeline.expressions import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Equals,
    ExpressionError,
    Matches,
    Null,
    Or,
    String,
    Variable,
    evaluate,
    parse,
    variable_names,
)

# Variables of a merge request pipeline on a feature branch, plus some edge values.
ENV = {
    "CI_PIPELINE_SOURCE": "merge_request_event",
    "CI_COMMIT_BRANCH": "main",
    "CI_DEFAULT_BRANCH": "main",
    "CI_COMMIT_REF_NAME": "release/1.4",
    "CI_COMMIT_TAG": "v1.4.2",
    "CI_COMMIT_MESSAGE": "Fix flaky test\n\n[SKIP e2e]",
    "CI_MERGE_REQUEST_SOURCE_BRANCH_NAME": "feature/login",
    "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
    "RELEASE_PATTERN": r"/^release\/\d+/",
    "CASELESS_PATTERN": "/^FEATURE/i",
    "PRESENT_VARIABLE": "my variable",
    "EMPTY_VARIABLE": "",
    "BLANK_VARIABLE": "  ",
    "DOLLAR": "$CI_COMMIT_BRANCH",
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # docs: rules:if examples
        ('$CI_PIPELINE_SOURCE == "merge_request_event"', True),
        ('$CI_PIPELINE_SOURCE == "push"', False),
        ("$CI_PIPELINE_SOURCE != 'schedule'", True),
        ("$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH", True),
        ("$CI_COMMIT_BRANCH != $CI_DEFAULT_BRANCH", False),
        ('"main" == $CI_COMMIT_BRANCH', True),
        ("$CI_COMMIT_TAG", True),
        (r"$CI_COMMIT_TAG =~ /^v\d+/", True),
        (r"$CI_COMMIT_TAG !~ /^v\d+/", False),
        ("$CI_COMMIT_MESSAGE =~ /skip/i", True),
        ("$CI_COMMIT_MESSAGE =~ /skip/", False),
        ("$CI_COMMIT_MESSAGE =~ /e2e]$/", True),
        (r"$CI_COMMIT_REF_NAME =~ /^release\/.*/", True),
        ("$CI_COMMIT_REF_NAME =~ $RELEASE_PATTERN", True),
        ("$CI_MERGE_REQUEST_SOURCE_BRANCH_NAME =~ $CASELESS_PATTERN", True),
        ("$CI_MERGE_REQUEST_SOURCE_BRANCH_NAME !~ $CASELESS_PATTERN", False),
        (
            "$CI_MERGE_REQUEST_SOURCE_BRANCH_NAME =~ /^feature/ && "
            "$CI_MERGE_REQUEST_TARGET_BRANCH_NAME != $CI_DEFAULT_BRANCH",
            False,
        ),
        ('($CI_PIPELINE_SOURCE == "push" || $CI_PIPELINE_SOURCE == "web") && $CI_COMMIT_BRANCH', False),
        ('$CI_PIPELINE_SOURCE == "push" || $CI_PIPELINE_SOURCE == "web" && $CI_COMMIT_BRANCH', False),
        ("$CI_COMMIT_TAG || $UNDEFINED && $EMPTY_VARIABLE", True),  # && binds tighter
        ("($CI_COMMIT_TAG || $UNDEFINED) && $EMPTY_VARIABLE", False),
        ("$UNDEFINED == null", True),
        ("null == $UNDEFINED", True),
        ("$UNDEFINED != null", False),
        ('$UNDEFINED == ""', False),
        # GitLab's statement_spec
        ('$PRESENT_VARIABLE == "my variable"', True),
        ("$PRESENT_VARIABLE == 'no match'", False),
        ("$PRESENT_VARIABLE == null", False),
        ("$EMPTY_VARIABLE == null", False),
        ('"" == $EMPTY_VARIABLE', True),
        ("$PRESENT_VARIABLE", True),
        ("$UNDEFINED_VARIABLE", False),
        ("$EMPTY_VARIABLE", False),
        # undefined == undefined: both null
        ("$UNDEFINED_A == $UNDEFINED_B", True),
        ("$EMPTY_VARIABLE == $UNDEFINED", False),
        # GitLab's present?: whitespace only is blank
        ("$BLANK_VARIABLE", False),
        ('$BLANK_VARIABLE == "  "', True),
        # values alone and null
        ('"text"', True),
        ('""', False),
        ("null", False),
        ('$PRESENT_VARIABLE && "text"', True),
        # a blank variable is false inside && and || too (GitLab bug #321371 passes "" through)
        ("$EMPTY_VARIABLE && $PRESENT_VARIABLE", False),
        ("$EMPTY_VARIABLE || $PRESENT_VARIABLE", True),
        ("$EMPTY_VARIABLE || $UNDEFINED", False),
        # no expansion: neither in strings nor in values
        ('"$CI_COMMIT_BRANCH" == "main"', False),
        ('$DOLLAR == "$CI_COMMIT_BRANCH"', True),
        ("$DOLLAR == $CI_COMMIT_BRANCH", False),
        # quotes are literal: no escapes
        ("'say \"hi\"' == 'say \"hi\"'", True),
        (r'"a\n" == "a\n"', True),
        # whitespace between tokens is optional, and may be newlines or tabs
        ('$CI_COMMIT_BRANCH=="main"&&($CI_COMMIT_TAG)', True),
        ('$CI_COMMIT_BRANCH\n==\t"main"', True),
        ("((($CI_COMMIT_TAG)))", True),
        ('($CI_COMMIT_BRANCH) == ("main")', True),
        ("$CI_COMMIT_TAG =~ (/^v/)", True),
        # names are \w+: digits and underscores, any case
        ("$_1 == null", True),
    ],
)
def test_gitlab_examples(expression: str, expected: bool) -> None:
    assert evaluate(expression, ENV) is expected


@pytest.mark.parametrize(
    ("expression", "variables", "expected"),
    [
        # matching is a search, not a full match
        ("$V =~ /awesome.string$/", {"V": "my-awesome-string"}, True),
        ("$V =~ /something/", {"V": "my-string"}, False),
        # null (undefined) is searched as "", as GitLab's `text.to_s`
        ("$V =~ /pattern/", {}, False),
        ("null =~ /x/", {}, False),
        ("$V =~ /^$/", {}, True),
        ("$V =~ /^$/", {"V": ""}, True),
        ("$V !~ /x/", {}, True),
        # a null right side never matches
        ("$V =~ $P", {"V": "x"}, False),
        ("$V !~ $P", {"V": "x"}, True),
        ("$V =~ null", {"V": "x"}, False),
        ("null !~ null", {}, True),
        # flags: i, m (^ and $ at line breaks), s (. matches a newline), U (ungreedy)
        ("$V =~ /AWESOME/i", {"V": "My awesome content"}, True),
        ("$V =~ /^b$/", {"V": "a\nb\nc"}, False),
        ("$V =~ /^b$/m", {"V": "a\nb\nc"}, True),
        ("$V =~ /a.b/", {"V": "a\nb"}, False),
        ("$V =~ /a.b/s", {"V": "a\nb"}, True),
        ("$V =~ /^a+$/U", {"V": "aaa"}, True),
        ("$V =~ /A.B/is", {"V": "a\nb"}, True),
        # RE2 semantics: $ is the end of the text, not before a final newline
        ("$V =~ /b$/", {"V": "ab\n"}, False),
        # escaped slashes
        (r"$V =~ /some .* \/ pattern/", {"V": "some text / pattern"}, True),
        (r"$V =~ /\//", {"V": "a/b"}, True),
        (r"$V =~ /a\/b/", {"V": "a/b"}, True),
        # a one-character pattern (GitLab bug #335930 rejects it)
        ("$V =~ /a/", {"V": "cat"}, True),
        # variables holding patterns; GitLab's RubySyntax reads them
        ("$V =~ $P", {"V": "abcde", "P": "/^ab.*/"}, True),
        ("$V =~ $P", {"V": "dfg", "P": "/^ab.*/"}, False),
        ("$V =~ $P", {"V": "ABC", "P": "/abc/i"}, True),
        ("$V =~ $P", {"V": "a/b", "P": r"/^a\/b$/"}, True),
        ("$V =~ $P", {"V": "cat", "P": "/a/"}, True),
        ('$V =~ "/^ab/"', {"V": "abc"}, True),
        ("$V =~ $P", {"V": "x", "P": "notes\n/x/"}, True),  # RubySyntax's ^ and $ are line anchors
        # any other right value is compared as text: true when the left value occurs in it
        # (GitLab's `String#scan`; table of gitlab#426313)
        ("$L =~ $R", {"L": "1234", "R": "1234"}, True),
        ("$L =~ $R", {"L": "1234", "R": "23"}, False),
        ("$L =~ $R", {"L": "23", "R": "1234"}, True),
        ("$L =~ $R", {"L": "/23/", "R": "1234"}, False),
        ("$L =~ $R", {"L": "/23/", "R": "/23/"}, True),
        ("$L =~ $R", {"L": "", "R": "abc"}, True),
        ("$L =~ $R", {"R": "abc"}, True),
        ('$L =~ "main-branch"', {"L": "main"}, True),
        ("$L =~ $R", {"L": "(", "R": "/(/"}, True),  # an invalid pattern is text too
        ("$L =~ $R", {"L": "x", "R": "/(/"}, False),
        ("$L !~ $R", {"L": "23", "R": "1234"}, False),
    ],
)
def test_matching(expression: str, variables: dict[str, str], expected: bool) -> None:
    assert evaluate(expression, variables) is expected


def test_backslash_before_slash_always_escapes_it() -> None:
    # As in GitLab's Pattern lexeme, `\\/` does not end a pattern: `/a\\/` is unterminated.
    with pytest.raises(ExpressionError, match="unterminated pattern"):
        parse(r"$V =~ /a\\/")
    assert evaluate(r"$V =~ /a\\/b/", {"V": "a/b"})


def test_regex_matching_is_linear_time() -> None:
    # Catastrophic for a backtracking engine; RE2 answers at once.
    subject = "a" * 100_000 + "!"
    started = time.perf_counter()
    assert not evaluate("$V =~ /^(a+)+$/", {"V": subject})
    assert not evaluate("$V =~ $P", {"V": subject, "P": "/^(a|aa)+$/"})
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("expression", "position", "message"),
    [
        ("", 0, "empty expression"),
        ("   ", 0, "empty expression"),
        ("$VAR ==", 7, "unexpected end of expression after '=='"),
        ('$VAR == "x" &&', 14, "unexpected end of expression after '&&'"),
        ("($VAR", 0, "unbalanced parenthesis: '(' is never closed"),
        ("(($VAR)", 0, "unbalanced parenthesis"),
        ("$VAR)", 4, "unmatched ')'"),
        ("()", 0, "empty parentheses"),
        ('== "123"', 0, "expected a value before '=='"),
        ("$A && || $B", 6, "expected a value after '&&', found '||'"),
        ('$VAR "text"', 5, "expected an operator before '\"text\"'"),
        ("$A ($B)", 3, "expected an operator before '('"),
        ("($A $B)", 4, "expected an operator or ')' before '$B'"),
        ("12345", 0, "unknown token '12345'"),
        ("$A == foo", 6, "unknown token 'foo'"),
        ("true", 0, "unknown token 'true'; expressions have no booleans"),
        ("$A and $B", 3, "unknown token 'and'; use '&&'"),
        ("nullable", 0, "unknown token 'nullable'"),
        ("$A == NULL", 6, "unknown token 'NULL'"),
        ("$A == 'x' # comment", 10, "unexpected character '#'"),
        ("${VAR}", 0, "'${NAME}' is not supported"),
        ("$ == 'x'", 0, "expected a variable name after '$'"),
        ("$[[ inputs.x ]]", 0, "expected a variable name after '$'"),
        ('$A == "abc', 6, "unterminated string"),
        ("$A == 'abc\n'", 6, "unterminated string"),
        ("$A =~ /abc", 6, "unterminated pattern"),
        ("$A =~ /ab\nc/", 6, "unterminated pattern: no closing '/' on the same line"),
        ("$A =~ //", 6, "empty pattern"),
        ("$A =~ /abc/x", 11, "unknown pattern flag 'x'"),
        ("$A =~ /(abc/", 6, "invalid regular expression '/(abc/': missing )"),
        ("$A =~ /(?=lookahead)/", 6, "invalid regular expression"),
        (r"$A =~ /(a)\1/", 6, "invalid regular expression"),
        ("$A =~ /a{1001}/", 6, "invalid regular expression"),
        ("$A = 'x'", 3, "unknown operator '='; did you mean '==' or '=~'?"),
        ("!$A", 0, "unknown operator '!'"),
        ("$A & $B", 3, "unknown operator '&'; did you mean '&&'?"),
        ("$A | $B", 3, "unknown operator '|'"),
        ("$A == $B == $C", 9, "comparisons cannot be chained"),
        ("/abc/", 0, "the pattern '/abc/' can only be the right operand of '=~' or '!~'"),
        ("  /abc/ && $A", 2, "the pattern '/abc/'"),
        ("$A && /abc/", 6, "the pattern '/abc/'"),
        ("/abc/ =~ $A", 0, "the pattern '/abc/'"),
        ("$A == /abc/", 6, "the pattern '/abc/'"),
        ("($A && $B) == 'x'", 0, "the left operand of '==' must be a variable, a string or null"),
        ("$A =~ ($B == 'x')", 6, "the right operand of '=~' must be a pattern, a variable, a string or null"),
        ("$A == ($B || $C)", 6, "the right operand of '==' must be a variable, a string or null"),
        pytest.param("x" * (MAX_LENGTH + 1), MAX_LENGTH, "expression is 10001 characters long", id="long"),
        pytest.param(
            "(" * (MAX_DEPTH + 1) + "$A" + ")" * (MAX_DEPTH + 1),
            MAX_DEPTH,
            "parentheses nested deeper than 100 levels",
            id="deep",
        ),
    ],
)
def test_syntax_errors(expression: str, position: int, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse(expression)
    assert caught.value.position == position
    assert caught.value.message.startswith(message)
    assert str(caught.value) == f"{caught.value.message} (at offset {position})"


def test_error_is_a_value_error_that_pickles() -> None:
    with pytest.raises(ValueError) as caught:
        evaluate("$A ==", {})
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.message, copy.position) == (caught.value.message, caught.value.position)


def test_limits_are_inclusive_and_long_chains_do_not_recurse() -> None:
    deepest = "(" * MAX_DEPTH + "$A" + ")" * MAX_DEPTH
    assert evaluate(deepest, {"A": "x"})
    chain = " || ".join(["$A"] * 1600 + ["$B"])  # ~10,000 characters, one flat Or
    assert len(chain) <= MAX_LENGTH
    assert evaluate(chain, {"B": "x"})
    assert not evaluate(chain.replace("||", "&&"), {"B": "x"})
    nested = "(" * MAX_DEPTH + " && ".join(["$A"] * 500) + ")" * MAX_DEPTH
    assert evaluate(nested, {"A": "x"})


def test_parse_tree_shape_and_cache() -> None:
    tree = parse('$A == "x" || $B =~ /y/i && null != $C')
    assert isinstance(tree, Or)
    assert tree.operands[0] == Equals(Variable("A"), String("x"), negate=False)
    second = tree.operands[1]
    assert isinstance(second, And)
    assert isinstance(second.operands[0], Matches)
    assert second.operands[1] == Equals(Null(), Variable("C"), negate=True)
    assert parse('$A == "x"') is parse('$A == "x"')
    assert evaluate(tree, {"A": "x"})


def test_variable_names() -> None:
    assert variable_names('$A == "$NOT" && ($B =~ $C || $D !~ /$E/) || null == $A') == {"A", "B", "C", "D"}
    assert variable_names(parse("$CI_COMMIT_TAG")) == {"CI_COMMIT_TAG"}


def test_evaluation_is_fast() -> None:
    rule = '$CI_PIPELINE_SOURCE == "merge_request_event" && $CI_COMMIT_TAG =~ /^v\\d+/ || $FORCE'
    started = time.perf_counter()
    for _ in range(10_000):
        evaluate(rule, ENV)
    assert time.perf_counter() - started < 1.0  # ~ microseconds each; generous for slow CI hosts


# --- Property tests against a reference model ----------------------------------------------------

NAMES = ("A", "B", "C", "D")
VALUES = (
    "",
    " ",
    "main",
    "Main",
    "release/1.0",
    "v1.2.3",
    "feat: login",
    "ma",
    "/^rel/",
    "/MAIN/i",
    "/release\\/1/",
    "/x*/",
    "/(/",
)
PATTERNS = (  # (as written, Python equivalent, Python flags); RE2 and Python agree on ASCII one-liners
    ("/^rel/", "^rel", 0),
    ("/main$/", "main$", 0),
    ("/MAIN/i", "MAIN", re.IGNORECASE),
    ("/release\\/1/", "release/1", 0),
    ("/\\d+\\.\\d+/", r"\d+\.\d+", 0),
    ("/^$/", "^$", 0),
    ("/x*/", "x*", 0),
    ("/fe(at|ix)/", "fe(at|ix)", 0),
    ("/^v[0-9]/m", "^v[0-9]", re.MULTILINE),
    ("/a/", "a", 0),
)
SPACES = ("", " ", "  ", "\t", "\n")
# Random text never spells a pattern (no "/"), so RE2 and Python's re never have to agree on one.
TEXT = st.text(alphabet=string.ascii_letters + string.digits + " .:-_\t", max_size=6)


@dataclass(frozen=True)
class MValue:
    kind: str  # "var" | "str" | "null"
    text: str = ""
    quote: str = '"'

    def render(self) -> str:
        if self.kind == "var":
            return "$" + self.text
        return "null" if self.kind == "null" else self.quote + self.text + self.quote

    def value(self, env: dict[str, str]) -> str | None:
        if self.kind == "var":
            return env.get(self.text)
        return None if self.kind == "null" else self.text


@dataclass(frozen=True)
class MPattern:
    written: str
    regex: str
    flags: int

    def render(self) -> str:
        return self.written


@dataclass(frozen=True)
class MCompare:
    op: str
    left: MValue
    right: MValue | MPattern


@dataclass(frozen=True)
class MJoin:
    op: str  # "&&" | "||"
    left: MNode
    right: MNode


MNode = MValue | MCompare | MJoin


def ref_matches(left: MValue, right: MValue | MPattern, env: dict[str, str]) -> bool:
    subject = left.value(env) or ""
    if isinstance(right, MPattern):
        return re.search(right.regex, subject, right.flags) is not None
    target = right.value(env)
    if target is None:
        return False
    spelled = re.fullmatch(r"/(.*)/([ismU]*)", target.replace("\\/", "/"))
    if spelled:
        flags = sum({"i": re.I, "m": re.M, "s": re.S}[f] for f in spelled.group(2))
        try:
            return re.search(spelled.group(1), subject, flags) is not None
        except re.error:
            pass
    return subject in target


def ref_truth(node: MNode, env: dict[str, str]) -> bool:
    if isinstance(node, MValue):
        value = node.value(env)
        return value is not None and value.strip() != ""
    if isinstance(node, MJoin):
        if node.op == "&&":
            return ref_truth(node.left, env) and ref_truth(node.right, env)
        return ref_truth(node.left, env) or ref_truth(node.right, env)
    if node.op in ("==", "!="):
        equal = node.left.value(env) == node.right.value(env)
        return equal if node.op == "==" else not equal
    found = ref_matches(node.left, node.right, env)
    return found if node.op == "=~" else not found


LEVEL = {"||": 1, "&&": 2}


def render(node: MNode, data: st.DataObject, needed: int = 0) -> str:
    """Text for ``node`` with parentheses where precedence needs them, and sometimes where not."""

    def space() -> str:
        return data.draw(st.sampled_from(SPACES))

    def wrap(text: str, level: int) -> str:
        if level < needed or data.draw(st.integers(0, 5)) == 0:
            return f"({space()}{text}{space()})"
        return text

    if isinstance(node, MValue | MPattern):
        return wrap(node.render(), 3)
    if isinstance(node, MCompare):
        text = f"{render(node.left, data)}{space()}{node.op}{space()}{render(node.right, data)}"
        return wrap(text, 3)
    level = LEVEL[node.op]
    text = f"{render(node.left, data, level)}{space()}{node.op}{space()}{render(node.right, data, level)}"
    return wrap(text, level)


values = st.one_of(
    st.builds(MValue, st.just("var"), st.sampled_from(NAMES)),
    st.builds(MValue, st.just("str"), st.sampled_from(VALUES) | TEXT, st.sampled_from("\"'")).filter(
        lambda v: v.quote not in v.text
    ),
    st.just(MValue("null")),
)
patterns = st.sampled_from(PATTERNS).map(lambda p: MPattern(*p))
comparisons = st.one_of(
    st.builds(MCompare, st.sampled_from(("==", "!=")), values, values),
    st.builds(MCompare, st.sampled_from(("=~", "!~")), values, values | patterns),
)
trees = st.recursive(
    values | comparisons,
    lambda children: st.builds(MJoin, st.sampled_from(("&&", "||")), children, children),
    max_leaves=12,
)
environments = st.dictionaries(st.sampled_from(NAMES), st.sampled_from(VALUES) | TEXT)


@given(trees, environments, st.data())
@settings(max_examples=500)
def test_evaluation_matches_the_reference_model(tree: MNode, env: dict[str, str], data: st.DataObject) -> None:
    text = render(tree, data)
    assert evaluate(text, env) is ref_truth(tree, env), text


@given(values, values | patterns, environments)
def test_negated_operators_are_negations(left: MValue, right: MValue | MPattern, env: dict[str, str]) -> None:
    a, b = left.render(), right.render()
    if isinstance(right, MValue):
        assert evaluate(f"{a} != {b}", env) is not evaluate(f"{a} == {b}", env)
    assert evaluate(f"{a} !~ {b}", env) is not evaluate(f"{a} =~ {b}", env)


def check_garbage(text: str) -> None:
    try:
        tree = parse(text)
    except ExpressionError as error:
        assert 0 <= error.position <= len(text)
        assert error.message
        return
    for env in ({}, {"A": "", "B": "x"}, {"A": "/a/", "B": "/(/"}):
        assert isinstance(evaluate(tree, env), bool)
    assert variable_names(tree) <= set(re.findall(r"\$(\w+)", text, re.ASCII))


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_expression_error(text: str) -> None:
    check_garbage(text)


@given(st.text(alphabet=list("$AB_()=!~&|\"'/\\ \n\t{}nulimsUx0."), max_size=60))
@settings(max_examples=1000)
def test_token_soup_parses_or_raises_expression_error(text: str) -> None:
    check_garbage(text)
