"""``spec: inputs:`` and ``$[[ inputs.name ]]`` interpolation, as GitLab does them.

A pipeline file may start with a header document (``spec: {inputs: {...}}`` then ``---``) that
declares its inputs: ``type`` (``string``, ``number``, ``boolean``, ``array``), ``default`` (none:
the input is required), ``options``, ``regex`` (strings) and ``description``. The values come
from the ``include:`` entry that includes the file (``inputs:``), or for the top-level file from
the trigger (API ``inputs``, ``--input NAME=VALUE``). Each is checked against its declaration
with GitLab's rules and messages (``Interpolation::Inputs``), then every ``$[[ inputs.name |
function | ... ]]`` block in the file's keys and string values is replaced
(``Interpolation::Template``): a string that is one block alone takes the input's typed value
(a list, a boolean, a number), a block inside longer text its text. Functions: ``expand_vars``,
``truncate(offset, length)``, ``posix_escape`` (at most 3 per block). A file without a header is
not interpolated, and giving it inputs is an error, as in GitLab.

Every error is a :class:`Diagnostic` at the declaration, the given value or the block at fault.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ci_queue.pipeline.errors import Diagnostic, Mark
from ci_queue.pipeline.expressions import ExpressionError, compile_pattern
from ci_queue.pipeline.loader import YList, YMap, key_mark, value_mark
from ci_queue.pipeline.schema import did_you_mean
from ci_queue.pipeline.variables import expand_text

INPUT_TYPES = ("string", "number", "boolean", "array")
INPUT_KEYS = frozenset({"default", "description", "options", "regex", "type", "rules"})
SPEC_KEYS = frozenset({"inputs", "component", "include"})
MAX_FUNCTIONS = 3  # GitLab's Interpolation::Block::MAX_FUNCTIONS
MAX_BLOCKS = 10_000  # GitLab's Interpolation::Template::MAX_BLOCKS
MAX_OPTIONS = 50  # GitLab's limit of `options` per input
MAX_ACCESS_BYTES = 1024  # GitLab's Interpolation::Access::MAX_ACCESS_BYTESIZE

BLOCK = re.compile(r"\$\[\[\s*(\S.*?\S)\s*\]\]")
"""GitLab's ``Template::BLOCK_PATTERN``: ``$[[`` and ``]]`` around at least two characters."""
_TRUNCATE = re.compile(r"truncate\(\s*(\d+)\s*,\s*(\d+)\s*\)?")  # as GitLab's (the `)` is optional there)
_SHELL_SAFE = re.compile(r"[^A-Za-z0-9_\-.,:+/@\n]")


@dataclass(frozen=True)
class InputValues:
    """The inputs given to one file, and where: ``mark`` is the ``inputs:`` of an include (None
    for the trigger's), ``marks`` where each value is written. ``text``: the values are command
    line text, read by the type of their input (``--input count=3`` is the number 3)."""

    values: Mapping[str, Any]
    mark: Mark | None = None
    marks: Mapping[str, Mark] = field(default_factory=dict)
    text: bool = False

    def key(self) -> str:
        """A stable text of the values: the same file included with other inputs is another file."""
        return json.dumps(self.values, sort_keys=True, default=str)


@dataclass
class _Declared:
    name: str
    type: str
    mark: Mark | None
    has_default: bool = False
    default: Any = None
    default_mark: Mark | None = None
    options: list[Any] | None = None
    regex: str | None = None


class Interpolation:
    """Interpolates one file: ``Interpolation(file_mark, variables).apply(header, content, given)``;
    ``errors`` holds what went wrong. ``variables`` are what ``expand_vars`` may expand (the
    pipeline's predefined and trigger variables, not the YAML ones: GitLab's context variables)."""

    def __init__(self, file_mark: Mark, variables: Mapping[str, str] | None = None) -> None:
        self.file_mark = file_mark
        self.variables = variables or {}
        self.errors: list[Diagnostic] = []
        self.blocks = 0

    def apply(self, header: Any, content: Any, given: InputValues | None) -> Any:
        """``content`` with its blocks replaced (unchanged without a header); None on errors."""
        if header is None:
            if given is not None and given.values:
                self.errors.append(Diagnostic(given.mark or self.file_mark,
                                              "given inputs are not defined in the `spec` section of the "
                                              "included configuration file",
                                              "declare them in a `spec: inputs:` header before `---`"))
                return None
            return content
        declared = self.declarations(header)
        if self.errors:
            return None
        values = self.values(declared, given or InputValues({}))
        if self.errors:
            return None
        result = self.replace(content, values)
        return None if self.errors else result

    # -- the header -------------------------------------------------------------------------------

    def declarations(self, header: Any) -> dict[str, _Declared]:
        """The inputs the header declares, each checked (keys, type, options, regex)."""
        spec = header.get("spec") if isinstance(header, dict) else None
        spec_mark = value_mark(header, "spec") or self.file_mark
        if spec is None:
            return {}
        if not isinstance(spec, dict):
            self.error(spec_mark, "`spec` must be a mapping (`inputs:`)")
            return {}
        for key in spec:
            if key not in SPEC_KEYS:
                self.error(key_mark(spec, key) or spec_mark, f"unknown key `{key}` in `spec`",
                           did_you_mean(str(key), SPEC_KEYS))
        inputs = spec.get("inputs")
        if inputs is None:
            return {}
        inputs_mark = value_mark(spec, "inputs") or spec_mark
        if not isinstance(inputs, dict):
            self.error(inputs_mark, "`spec:inputs` must be a mapping of input names")
            return {}
        return {str(name): self.declaration(str(name), definition, key_mark(inputs, name) or inputs_mark,
                                            value_mark(inputs, name) or inputs_mark)
                for name, definition in inputs.items()}

    def declaration(self, name: str, definition: Any, mark: Mark, where: Mark) -> _Declared:
        declared = _Declared(name, "string", mark)
        if definition is None:
            return declared
        if not isinstance(definition, dict):
            self.error(where, f"input `{name}` must be a mapping (`default`, `type`, ...) or empty")
            return declared
        for key in definition:
            if key not in INPUT_KEYS:
                self.error(key_mark(definition, key) or mark, f"unknown key `{key}` in input `{name}`",
                           did_you_mean(str(key), INPUT_KEYS))
        kind = definition.get("type", "string")
        if kind not in INPUT_TYPES:
            self.error(value_mark(definition, "type") or mark,
                       f"unknown input specification for `{name}` (valid types: {', '.join(INPUT_TYPES)})")
            return declared
        declared.type = kind
        if "default" in definition:
            declared.has_default = True
            declared.default = definition["default"]
            declared.default_mark = value_mark(definition, "default") or mark
        if "options" in definition:
            options = definition["options"]
            where = value_mark(definition, "options") or mark
            if not isinstance(options, list) or not options:
                self.error(where, f"input `{name}`: `options` must be a non-empty list")
            elif len(options) > MAX_OPTIONS:
                self.error(where, f"input `{name}`: `options` can have at most {MAX_OPTIONS} values")
            elif kind not in ("string", "number"):
                self.error(where, f"input `{name}`: `options` can only be used with string and number inputs")
            else:
                declared.options = options
        if "regex" in definition:
            regex = definition["regex"]
            where = value_mark(definition, "regex") or mark
            if kind != "string":
                self.error(where, f"input `{name}`: `regex` can only be used with string inputs")
            elif not isinstance(regex, str):
                self.error(where, f"input `{name}`: `regex` must be a string")
            else:
                declared.regex = regex
        return declared

    # -- the values -------------------------------------------------------------------------------

    def values(self, declared: dict[str, _Declared], given: InputValues) -> dict[str, Any]:
        """Each declared input's value (given, else its default), checked as GitLab checks it."""
        unknown = [name for name in given.values if name not in declared]
        if unknown:
            where = given.marks.get(unknown[0]) or given.mark or self.file_mark
            hint = did_you_mean(unknown[0], declared) if len(unknown) == 1 else None
            self.error(where, f"unknown input arguments: {', '.join(unknown)}",
                       hint or (f"the inputs of this file: {', '.join(declared)}" if declared else
                                "this file declares no inputs"))
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            where = given.marks.get(name) or given.mark or spec.mark
            if name in given.values and given.values[name] is not None:
                value = given.values[name]
                if given.text:
                    value = _from_text(value, spec.type)
                values[name] = self.checked(spec, value, "provided", where)
                if spec.has_default and not _has_type(spec.default, spec.type):  # GitLab checks it anyway
                    self.checked(spec, spec.default, "default", spec.default_mark or spec.mark)
            elif spec.has_default:
                values[name] = self.checked(spec, spec.default, "default", spec.default_mark or spec.mark)
            else:
                self.error(where, f"`{name}` input: required value has not been provided",
                           f"give `{name}` in the include's `inputs:`" if given.mark is not None else
                           f"give it with the trigger's `inputs` (`--input {name}=VALUE`), or declare a `default`")
        return values

    def checked(self, spec: _Declared, value: Any, which: str, mark: Mark | None) -> Any:
        """``value`` if it is valid for ``spec``, with an error at ``mark`` otherwise."""
        article = "an" if spec.type == "array" else "a"
        if not _has_type(value, spec.type):
            self.error(mark, f"`{spec.name}` input: {which} value is not {article} {spec.type}")
            return value
        if spec.options is not None and value not in spec.options:
            self.error(mark, f"`{spec.name}` input: `{_text(value)}` cannot be used because it is not in the "
                             "list of allowed options", f"allowed: {', '.join(_text(o) for o in spec.options)}")
        if spec.regex is not None:
            try:
                pattern = compile_pattern(spec.regex)
            except ExpressionError as exc:
                self.error(mark, f"`{spec.name}` input: {exc.message}")
                return value
            if not pattern.matches(value):
                self.error(mark, f"`{spec.name}` input: {which} value does not match required RegEx pattern",
                           f"the pattern: {spec.regex}")
        return value

    # -- the blocks -------------------------------------------------------------------------------

    def replace(self, node: Any, values: dict[str, Any], mark: Mark | None = None) -> Any:
        """``node`` with the blocks of its keys and strings replaced: a copy where something
        changed, the node itself where nothing did (most of a file: no copy, no allocation)."""
        if isinstance(node, str):
            return self.text(node, values, mark) if "$[[" in node else node
        if isinstance(node, YMap):
            return self._replace_map(node, values)
        if isinstance(node, YList):
            items = [self.replace(item, values, node.item_mark(i) if isinstance(item, str) else None)
                     for i, item in enumerate(node)]
            if all(new is old for new, old in zip(items, node, strict=True)):
                return node
            result_list = YList(items)
            result_list.mark, result_list.item_marks = node.mark, list(node.item_marks)
            return result_list
        return node

    def _replace_map(self, node: YMap, values: dict[str, Any]) -> YMap:
        pairs = []
        changed = False
        for key, value in node.items():
            new_key = self.replace(key, values, node.key_mark(key)) if isinstance(key, str) and "$[[" in key else key
            if not _hashable(new_key):
                self.error(node.key_mark(key), "an input that is a list cannot be a key")
                new_key = key
            new_value = self.replace(value, values, node.value_mark(key) if isinstance(value, str) else None)
            changed = changed or new_key is not key or new_value is not value
            pairs.append((key, new_key, new_value))
        if not changed:
            return node
        result = YMap()
        result.mark = node.mark
        for key, new_key, new_value in pairs:
            result[new_key] = new_value
            result.key_marks[new_key] = node.key_mark(key)
            result.value_marks[new_key] = node.value_mark(key)
        return result

    def text(self, text: str, values: dict[str, Any], mark: Mark | None) -> Any:
        """One string: its typed value when it is a single block, else the text with each block's text."""
        whole = BLOCK.fullmatch(text)
        if whole is not None:
            return self.block(whole, text, values, mark)
        pieces: list[str] = []
        end = 0
        for match in BLOCK.finditer(text):
            value = self.block(match, text, values, mark)
            pieces.append(text[end:match.start()])
            pieces.append(match.group(0) if value is _KEEP else _text(value))
            end = match.end()
        pieces.append(text[end:])
        return "".join(pieces)

    def block(self, match: re.Match[str], text: str, values: dict[str, Any], mark: Mark | None) -> Any:
        """The value of one ``$[[ access | function ... ]]`` block (an error: the block as written)."""
        self.blocks += 1
        where = mark.within(match.start(), text) if mark else self.file_mark
        if self.blocks > MAX_BLOCKS:
            if self.blocks == MAX_BLOCKS + 1:
                self.error(where, f"too many interpolation blocks (more than {MAX_BLOCKS})")
            return match.group(0)
        access, *functions = (part.strip() for part in match.group(1).split("|"))
        context = access.split(".", 1)[0]
        if context == "matrix":  # GitLab leaves `$[[ matrix.X ]]` to a later stage
            return _KEEP if BLOCK.fullmatch(text) is None else match.group(0)
        parts = access.split(".", 4)
        if len(parts) <= 1:
            self.error(where, f"invalid interpolation access pattern `{access}`", "write `$[[ inputs.NAME ]]`")
            return match.group(0)
        if len(access.encode()) > MAX_ACCESS_BYTES:
            self.error(where, "maximum interpolation expression size exceeded")
            return match.group(0)
        if parts[0] != "inputs" or len(parts) != 2 or parts[1] not in values:
            unknown = parts[0] if parts[0] != "inputs" else ".".join(parts[1:])
            hint = did_you_mean(parts[1], values) if parts[0] == "inputs" and len(parts) == 2 else None
            self.error(where, f"unknown interpolation key: `{unknown}`", hint)
            return match.group(0)
        if len(functions) > MAX_FUNCTIONS:
            self.error(where, "too many functions in interpolation block")
            return match.group(0)
        value = values[parts[1]]
        for expression in functions:
            function = self.function(expression, where)
            if function is None:
                return match.group(0)
            if not isinstance(value, str):
                name = expression.split("(", 1)[0]
                self.error(where, f"error in `{name}` function: invalid input type: {name} can only be used "
                                  "with string inputs")
                return match.group(0)
            value = function(value)
        return value

    def function(self, expression: str, where: Mark | None) -> Callable[[str], str] | None:
        """The function an expression of a block names, or None (with an error)."""
        if expression == "expand_vars":
            return self.expand_vars
        if expression == "posix_escape":
            return posix_escape
        truncate = _TRUNCATE.fullmatch(expression)
        if truncate is not None:
            offset, length = int(truncate.group(1)), int(truncate.group(2))
            return lambda value: value[offset:offset + length]
        self.error(where, f"no function matching `{expression}`: check that the function name, arguments, "
                          "and types are correct", "the functions: expand_vars, truncate(offset, length), "
                                                   "posix_escape")
        return None

    def expand_vars(self, value: str) -> str:
        """GitLab's ``ExpandVariables.expand_existing``: known variables expanded, anything else
        (unknown names, ``$$``) kept as written."""
        return expand_text(value.replace("$$", "$$$$"), self.variables)

    def error(self, mark: Mark | None, message: str, hint: str | None = None) -> None:
        self.errors.append(Diagnostic(mark or self.file_mark, message, hint))


_KEEP = object()  # a block left as written inside longer text


def posix_escape(text: str) -> str:
    """Ruby's ``Shellwords.shellescape``, which GitLab's ``posix_escape`` is."""
    if not text:
        return "''"
    return _SHELL_SAFE.sub(lambda m: "\\" + m.group(0), text).replace("\n", "'\n'")


def parse_input_pairs(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs of the command line; raises ValueError naming a bad one."""
    values: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--input {pair!r}: expected NAME=VALUE")
        values[name] = value
    return values


def _from_text(value: Any, kind: str) -> Any:
    """A command line's text as the type of its input (left as it is when it does not read as one:
    the type check then reports it)."""
    if not isinstance(value, str) or kind == "string":
        return value
    if kind == "boolean":
        return {"true": True, "false": False}.get(value, value)
    if kind == "number":
        try:
            return int(value)
        except ValueError:
            try:
                number = float(value)
            except ValueError:
                return value
            return number if math.isfinite(number) else value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, list) else value


def _has_type(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, list)


def _text(value: Any) -> str:
    """A value inside longer text, as Ruby's ``to_s`` writes it (lists as ``["a", "b"]``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    return str(value)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
