r"""GitLab CI variable expressions: the language of ``rules:if``, ``only:variables`` and ``except:variables``.

We follow GitLab's implementation (``lib/gitlab/ci/pipeline/expression/``) so that a pipeline means
here what it means on GitLab:

* Lexemes: ``$NAME`` (ASCII ``\w+``; GitLab's lexer has no ``${NAME}``), ``"text"`` or ``'text'`` (no
  escapes, no variable expansion, cannot span lines), ``/pattern/flags``, ``null``, ``==`` ``!=``
  ``=~`` ``!~`` ``&&`` ``||`` and parentheses. Anything else (``true``, ``!``, a bare word) is an error.
* Precedence: comparisons, then ``&&``, then ``||``; parentheses group.
* ``==`` compares values. An undefined variable is ``null`` and equals only ``null``; a variable set to
  ``""`` equals ``""``, not ``null``.
* ``=~`` searches the left value (unanchored, like Ruby's ``=~``); ``null`` is searched as ``""``, as
  GitLab does, so ``$UNDEFINED =~ /x/`` is false but ``$UNDEFINED =~ /^$/`` is true. The right side is
  a pattern, or a variable (or string) whose value is ``/pattern/flags``. GitLab compares any other
  right value as text: ``$L =~ $R`` is then true when the value of ``$L`` occurs in the value of ``$R``.
  A ``null`` right side never matches. ``!~`` is always the negation of ``=~``.
* Patterns are RE2 regexes built as GitLab's ``UntrustedRegexp`` builds them: ``\/`` stands for ``/``,
  the flags ``i`` (ignore case), ``m`` (``^``/``$`` match at line breaks), ``s`` (``.`` matches a
  newline) and ``U`` (ungreedy) become an RE2 ``(?flags)`` prefix, and Ruby-only syntax (look-around,
  back-references) is an error. RE2 matches in linear time, so no subject is ever too long to match.
* A value alone (``$VAR``, ``"text"``) is true when it is defined and not blank (empty or whitespace
  only: GitLab's ``present?``); comparisons are true or false; ``&&`` and ``||`` combine those truths.

Where GitLab's behaviour is a bug GitLab itself tracks, we take the documented meaning: a one-character
pattern such as ``/a/`` is accepted (gitlab#335930), and a blank variable is false inside ``&&``/``||``
as it is alone (gitlab#321371). Forms GitLab tolerates but that can only be mistakes are errors: a
pattern anywhere but right of ``=~``/``!~``, chained comparisons (``$A == $B == $C``), and an
``&&``/``||`` group or a comparison used as a comparison operand.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import re2

MAX_LENGTH = 10_000
"""Longest expression accepted; rules are one-liners, so anything longer is a generated mistake."""

MAX_DEPTH = 100
"""Deepest parenthesis nesting accepted: keeps parsing and evaluation far from Python's recursion limit."""


class ExpressionError(ValueError):
    """The text is not a valid expression; ``position`` is the 0-based offset of the fault in it."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message, position)  # both in args, so the error pickles (Celery)
        self.message = message
        self.position = position

    def __str__(self) -> str:
        return f"{self.message} (at offset {self.position})"


# --- The tree ------------------------------------------------------------------------------------


class Expr:
    """A parsed expression or sub-expression; ``truthy`` decides it for a set of variables."""

    __slots__ = ()

    def truthy(self, variables: Mapping[str, str]) -> bool:
        raise NotImplementedError


def _present(value: str | None) -> bool:
    """GitLab's ``present?``: defined and not only whitespace."""
    return value is not None and value != "" and not value.isspace()


class Value(Expr):
    """An operand with a string value, or ``None`` for ``null``/undefined."""

    __slots__ = ()

    def value(self, variables: Mapping[str, str]) -> str | None:
        raise NotImplementedError

    def truthy(self, variables: Mapping[str, str]) -> bool:
        return _present(self.value(variables))


@dataclass(frozen=True, slots=True)
class Variable(Value):
    """``$NAME``: the variable's value; undefined is ``null``."""

    name: str

    def value(self, variables: Mapping[str, str]) -> str | None:
        return variables.get(self.name)


@dataclass(frozen=True, slots=True)
class String(Value):
    """A quoted string, taken literally."""

    text: str

    def value(self, variables: Mapping[str, str]) -> str | None:
        return self.text


@dataclass(frozen=True, slots=True)
class Null(Value):
    """``null``: equal to undefined variables only."""

    def value(self, variables: Mapping[str, str]) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled ``/regex/flags``. Not an ``Expr``: it can only be the right operand of ``=~``/``!~``."""

    source: str  # as written, for messages and equality
    search: Callable[[bytes], object] = field(compare=False, repr=False)

    def matches(self, subject: str) -> bool:
        # RE2 works on UTF-8; surrogatepass keeps a stray surrogate from raising.
        return self.search(subject.encode("utf-8", "surrogatepass")) is not None


@dataclass(frozen=True, slots=True)
class Equals(Expr):
    """``==``, or ``!=`` when ``negate``."""

    left: Value
    right: Value
    negate: bool

    def truthy(self, variables: Mapping[str, str]) -> bool:
        return (self.left.value(variables) == self.right.value(variables)) != self.negate


@dataclass(frozen=True, slots=True)
class Matches(Expr):
    """``=~``, or ``!~`` when ``negate``."""

    left: Value
    right: Value | Pattern
    negate: bool

    def truthy(self, variables: Mapping[str, str]) -> bool:
        subject = self.left.value(variables) or ""
        right = self.right
        if isinstance(right, Pattern):
            found = right.matches(subject)
        else:
            target = right.value(variables)
            if target is None:
                found = False
            else:
                pattern = _pattern_in_value(target)
                found = pattern.matches(subject) if pattern else subject in target
        return found != self.negate


@dataclass(frozen=True, slots=True)
class And(Expr):
    """``a && b && ...``: true when every operand is."""

    operands: tuple[Expr, ...]

    def truthy(self, variables: Mapping[str, str]) -> bool:
        return all(operand.truthy(variables) for operand in self.operands)


@dataclass(frozen=True, slots=True)
class Or(Expr):
    """``a || b || ...``: true when any operand is."""

    operands: tuple[Expr, ...]

    def truthy(self, variables: Mapping[str, str]) -> bool:
        return any(operand.truthy(variables) for operand in self.operands)


# --- Patterns ------------------------------------------------------------------------------------

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a user's bad pattern is reported as an ExpressionError, not logged
_RE2_OPTIONS.never_capture = True  # we only ask whether it matches

# GitLab's UntrustedRegexp::RubySyntax: how a variable's value is recognised as a pattern. Ruby's ^ and $
# are line anchors, hence MULTILINE.
_RUBY_SYNTAX = re.compile(r"^/(.*)/([ismU]*)$", re.MULTILINE)


def _compile(regex: str, flags: str, source: str) -> Pattern:
    """Compile as GitLab does: flags as an RE2 ``(?flags)`` prefix. Raises ``re2.error``."""
    if flags:
        regex = f"(?{flags}){regex}"
    return Pattern(source, re2.compile(regex.encode("utf-8", "surrogatepass"), _RE2_OPTIONS).search)


def compile_pattern(regex: str) -> Pattern:
    """An RE2 pattern without flags, searched (not anchored), as GitLab's ``UntrustedRegexp``
    (``spec:inputs:regex``). Raises ExpressionError with RE2's reason."""
    try:
        return _compile(regex, "", regex)
    except re2.error as error:
        raise ExpressionError(f"invalid regular expression: {_reason(error)}", 0) from None


@functools.lru_cache(maxsize=256)
def _pattern_in_value(value: str) -> Pattern | None:
    """The pattern a variable's value spells (``/^release/i``), or None when it spells none."""
    match = _RUBY_SYNTAX.search(value.replace("\\/", "/"))
    if match is None:
        return None
    try:
        return _compile(match.group(1), match.group(2), value)
    except re2.error:
        return None  # GitLab then compares the value as text


def _reason(error: re2.error) -> str:
    reason = error.args[0] if error.args else "invalid"
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)


# --- Lexer ---------------------------------------------------------------------------------------

_SPACE = frozenset(" \t\n\v\f\r")  # Ruby's \s, which GitLab's lexer skips
_NAME = re.compile(r"[A-Za-z0-9_]+")  # Ruby's \w is ASCII
_FLAGS = re.compile(r"[ismU]*")
_COMPARISONS = frozenset({"==", "!=", "=~", "!~"})
_OPERATORS = _COMPARISONS | {"&&", "||"}
_LONE_OPERATORS = {"=": "'==' or '=~'", "!": "'!=' or '!~'", "&": "'&&'", "|": "'||'"}
_WORD_HINTS = {
    "true": '; expressions have no booleans, compare with a string: $VAR == "true"',
    "false": '; expressions have no booleans, compare with a string: $VAR == "false"',
    "and": "; use '&&'",
    "or": "; use '||'",
    "nil": "; use null",
}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "value" | "op" | "(" | ")"
    pos: int
    text: str  # as written, for messages
    node: Value | Pattern | None = None


def _show(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i == n:
            return tokens
        c = text[i]
        if c in "()":
            tokens.append(_Token(c, i, c))
            i += 1
        elif c == "$":
            name = _NAME.match(text, i + 1)
            if name is None:
                if text.startswith("{", i + 1):
                    raise ExpressionError("'${NAME}' is not supported in expressions; write $NAME", i)
                raise ExpressionError("expected a variable name after '$'", i)
            tokens.append(_Token("value", i, "$" + name.group(), Variable(name.group())))
            i = name.end()
        elif c in "\"'":
            end = text.find(c, i + 1)
            if end == -1 or "\n" in text[i + 1 : end]:
                raise ExpressionError(f"unterminated string: no closing {c} on the same line", i)
            tokens.append(_Token("value", i, text[i : end + 1], String(text[i + 1 : end])))
            i = end + 1
        elif c == "/":
            token = _pattern_token(text, i)
            tokens.append(token)
            i += len(token.text)
        elif c in _LONE_OPERATORS:
            if text[i : i + 2] not in _OPERATORS:
                raise ExpressionError(f"unknown operator {c!r}; did you mean {_LONE_OPERATORS[c]}?", i)
            tokens.append(_Token("op", i, text[i : i + 2]))
            i += 2
        else:
            word = _NAME.match(text, i)
            if word is None:
                raise ExpressionError(f"unexpected character {c!r}", i)
            if word.group() != "null":
                hint = _WORD_HINTS.get(word.group().lower(), "")
                raise ExpressionError(f"unknown token {_show(word.group())}{hint}", i)
            tokens.append(_Token("value", i, "null", Null()))
            i = word.end()


def _pattern_token(text: str, start: int) -> _Token:
    """``/regex/flags`` at ``start``: it ends at the first ``/`` not preceded by ``\\``, as in GitLab."""
    end = start
    while True:
        end = text.find("/", end + 1)
        if end == -1:
            raise ExpressionError("unterminated pattern: no closing '/'", start)
        if text[end - 1] != "\\":
            break
    body = text[start + 1 : end]
    if not body:
        raise ExpressionError("empty pattern '//'", start)
    if "\n" in body:
        raise ExpressionError("unterminated pattern: no closing '/' on the same line", start)
    after = _FLAGS.match(text, end + 1).end()
    if _NAME.match(text, after):
        raise ExpressionError(f"unknown pattern flag {text[after]!r}; the flags are i, m, s and U", after)
    source = text[start:after]
    try:
        pattern = _compile(body.replace("\\/", "/"), text[end + 1 : after], source)
    except re2.error as error:
        raise ExpressionError(f"invalid regular expression {_show(source)}: {_reason(error)}", start) from None
    return _Token("value", start, source, pattern)


# --- Parser --------------------------------------------------------------------------------------


class _Parser:
    """Recursive descent: disjunction := conjunction ('||' conjunction)*,
    conjunction := comparison ('&&' comparison)*, comparison := primary (CMP primary)?,
    primary := value | pattern | '(' disjunction ')'."""

    def __init__(self, text: str, tokens: list[_Token]) -> None:
        self.text = text
        self.tokens = tokens
        self.i = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def here(self) -> int:
        token = self.peek()
        return token.pos if token else len(self.text)

    def at(self, op: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.text == op

    def parse(self) -> Expr:
        if not self.tokens:
            raise ExpressionError("empty expression", 0)
        node = self.condition(self.disjunction(0), self.tokens[0].pos)
        token = self.peek()
        if token is not None:
            if token.kind == ")":
                raise ExpressionError("unmatched ')'", token.pos)
            raise ExpressionError(f"expected an operator before {_show(token.text)}", token.pos)
        return node

    @staticmethod
    def condition(node: Expr | Pattern, pos: int) -> Expr:
        """``node`` where a truth value is needed (alone, or an operand of ``&&``/``||``)."""
        if isinstance(node, Pattern):
            raise ExpressionError(
                f"the pattern {_show(node.source)} can only be the right operand of '=~' or '!~'", pos
            )
        return node

    def disjunction(self, depth: int) -> Expr | Pattern:
        return self.chain("||", Or, self.conjunction, depth)

    def conjunction(self, depth: int) -> Expr | Pattern:
        return self.chain("&&", And, self.comparison, depth)

    def chain(
        self,
        op: str,
        kind: type[And] | type[Or],
        operand: Callable[[int], Expr | Pattern],
        depth: int,
    ) -> Expr | Pattern:
        start = self.here()
        first = operand(depth)
        if not self.at(op):
            return first
        operands = [self.condition(first, start)]
        while self.at(op):
            self.i += 1
            start = self.here()
            operands.append(self.condition(operand(depth), start))
        return kind(tuple(operands))

    def comparison(self, depth: int) -> Expr | Pattern:
        start = self.here()
        left = self.primary(depth)
        op = self.peek()
        if op is None or op.kind != "op" or op.text not in _COMPARISONS:
            return left
        if not isinstance(left, Value):
            self.condition(left, start)  # a pattern gets the pattern message
            raise ExpressionError(f"the left operand of {op.text!r} must be a variable, a string or null", start)
        self.i += 1
        right_pos = self.here()
        right = self.primary(depth)
        matching = op.text in ("=~", "!~")
        if not isinstance(right, Value) and not (matching and isinstance(right, Pattern)):
            if not matching:
                self.condition(right, right_pos)
            allowed = "a pattern, a variable, a string or null" if matching else "a variable, a string or null"
            raise ExpressionError(f"the right operand of {op.text!r} must be {allowed}", right_pos)
        following = self.peek()
        if following is not None and following.kind == "op" and following.text in _COMPARISONS:
            raise ExpressionError("comparisons cannot be chained; join them with '&&' or '||'", following.pos)
        negate = op.text[0] == "!"
        return Matches(left, right, negate) if matching else Equals(left, right, negate)

    def primary(self, depth: int) -> Expr | Pattern:
        token = self.peek()
        if token is None:
            after = _show(self.tokens[self.i - 1].text)
            raise ExpressionError(f"unexpected end of expression after {after}", len(self.text))
        self.i += 1
        if token.node is not None:
            return token.node
        if token.kind == "(":
            if depth >= MAX_DEPTH:
                raise ExpressionError(f"parentheses nested deeper than {MAX_DEPTH} levels", token.pos)
            inner = self.disjunction(depth + 1)
            close = self.peek()
            if close is None:
                raise ExpressionError("unbalanced parenthesis: '(' is never closed", token.pos)
            if close.kind != ")":
                raise ExpressionError(f"expected an operator or ')' before {_show(close.text)}", close.pos)
            self.i += 1
            return inner
        if self.i == 1:
            raise ExpressionError(f"expected a value before {_show(token.text)}", token.pos)
        previous = self.tokens[self.i - 2]
        if token.kind == ")" and previous.kind == "(":
            raise ExpressionError("empty parentheses", previous.pos)
        raise ExpressionError(f"expected a value after {_show(previous.text)}, found {_show(token.text)}", token.pos)


# --- API -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> Expr:
    """The tree of ``text``; raises ExpressionError. Cached: one rule is evaluated for many jobs."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}", MAX_LENGTH)
    return _Parser(text, _tokenize(text)).parse()


def evaluate(expression: str | Expr, variables: Mapping[str, str]) -> bool:
    """Whether ``expression`` holds for ``variables`` (values are used as given, never expanded)."""
    tree = parse(expression) if isinstance(expression, str) else expression
    return tree.truthy(variables)


def variable_names(expression: str | Expr) -> set[str]:
    """The variables ``expression`` reads, e.g. to explain which ones decided a rule."""
    stack: list[Expr | Pattern] = [parse(expression) if isinstance(expression, str) else expression]
    names: set[str] = set()
    while stack:
        node = stack.pop()
        if isinstance(node, Variable):
            names.add(node.name)
        elif isinstance(node, Equals | Matches):
            stack += (node.left, node.right)
        elif isinstance(node, And | Or):
            stack += node.operands
    return names
