"""Safe YAML loading that keeps source positions.

Pipeline files are read with YAML 1.1 semantics, as GitLab reads them through Ruby's Psych: the
scalar types are those of ``yaml.safe_load`` (``on``/``yes`` are booleans), merge keys ``<<`` work,
and ``!reference [job, key]`` is the only custom tag. Every mapping and list remembers where it,
its keys and its items were written, so later stages can report ``FILE:LINE:COL: message``.

Parsing goes through libyaml when PyYAML has it: Psych is a libyaml binding, so the same text
is accepted (tabs included) and it is several times faster than the pure-Python scanner. The
node graph is composed and constructed here, in Python, to keep marks and enforce the limits.

Hostile input (huge files, deep nesting, alias bombs, invalid UTF-8) is refused quickly and in
bounded memory. Nothing but :class:`PipelineError` escapes :func:`load_yaml`.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from ci_queue.pipeline.errors import Diagnostic, Mark, PipelineError, error

try:
    from yaml.cyaml import CParser
except ImportError:  # PyYAML built without libyaml
    CParser = None

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_NODES",
    "MULTIPLE_DOCUMENTS",
    "Reference",
    "YList",
    "YMap",
    "copy_node",
    "item_mark",
    "key_mark",
    "load_document",
    "load_file",
    "load_yaml",
    "node_mark",
    "read_file",
    "value_mark",
]

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
"""Largest accepted file, in bytes of UTF-8 text (GitLab's own limit is smaller, about 2 MB)."""

DEFAULT_MAX_DEPTH = 100
"""Deepest accepted nesting of mappings and lists, counted through aliases (GitLab's limit)."""

DEFAULT_MAX_NODES = 2_000_000
"""Most nodes a document may expand to once every alias is replaced by a copy of its anchor.

Real pipelines are far below it (the largest of the test corpus, 330 jobs, expands to 15,000
nodes); a "billion laughs" document is far above it."""

MULTIPLE_DOCUMENTS = "multiple YAML documents; only a `spec:` header document may come before the pipeline"

_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_STR_TAG = "tag:yaml.org,2002:str"
_VALUE_TAG = "tag:yaml.org,2002:value"
_STANDARD_TAG_PREFIX = "tag:yaml.org,2002:"
_REFERENCE_TAG = "!reference"
# Tags whose constructor turns a scalar node into a value (not a generator, as collections have).
_SCALAR_TAGS = frozenset(
    _STANDARD_TAG_PREFIX + name
    for name in ("null", "bool", "int", "float", "binary", "timestamp", "str", "merge", "value")
)

# Psych's patterns of a time and a date (ScalarScanner::TIME and the date case of #tokenize). A
# plain scalar that matches one is a Time or a Date for Psych, classes GitLab's `YAML.safe_load`
# does not permit: the whole file is refused. Anything else, even what PyYAML's resolver would
# take for a timestamp (2024-13-01), is a string there.
_PSYCH_TIME = re.compile(
    r"-?\d{4}-\d{1,2}-\d{1,2}(?:[Tt]|\s+)\d{1,2}:\d\d:\d\d(?:\.\d*)?(?:\s*(?:Z|[-+]\d{1,2}:?(?:\d\d)?))?",
    re.ASCII)
_PSYCH_DATE = re.compile(r"\d{4}-(?:1[012]|0\d|\d)-(?:[12]\d|3[01]|0\d|\d)", re.ASCII)

# Characters YAML forbids anywhere in a stream (both parsers refuse them, without a line number).
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class YMap(dict):
    """A YAML mapping: a plain dict that also knows where it, its keys and its values were written.

    Marks are a snapshot of the source; code that builds new maps sets them itself. ``key_mark``
    and ``value_mark`` fall back to the mark of the mapping, so a message always has a position.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mark: Mark | None = None
        self.key_marks: dict[Any, Mark] = {}
        self.value_marks: dict[Any, Mark] = {}

    def key_mark(self, key: Any) -> Mark | None:
        """Where ``key`` is written (or where the mapping starts)."""
        return self.key_marks.get(key, self.mark)

    def value_mark(self, key: Any) -> Mark | None:
        """Where the value of ``key`` is written (or where the mapping starts)."""
        return self.value_marks.get(key, self.mark)

    def __copy__(self) -> YMap:
        new = YMap(self)
        new.mark, new.key_marks, new.value_marks = self.mark, dict(self.key_marks), dict(self.value_marks)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> YMap:
        new = YMap()
        memo[id(self)] = new
        for key, value in self.items():
            new[copy.deepcopy(key, memo)] = copy.deepcopy(value, memo)
        new.mark, new.key_marks, new.value_marks = self.mark, dict(self.key_marks), dict(self.value_marks)
        return new


class YList(list):
    """A YAML sequence: a plain list that also knows where it and each of its items were written."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.mark: Mark | None = None
        self.item_marks: list[Mark] = []

    def item_mark(self, index: int) -> Mark | None:
        """Where item ``index`` is written (or where the list starts)."""
        try:
            return self.item_marks[index]
        except IndexError:
            return self.mark

    def __copy__(self) -> YList:
        new = YList(self)
        new.mark, new.item_marks = self.mark, list(self.item_marks)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> YList:
        new = YList()
        memo[id(self)] = new
        new.extend(copy.deepcopy(item, memo) for item in self)
        new.mark, new.item_marks = self.mark, list(self.item_marks)
        return new


def key_mark(mapping: Any, key: Any) -> Mark | None:
    """Where ``key`` is written in ``mapping`` (or the mapping itself, or None)."""
    getter = getattr(mapping, "key_mark", None)
    return getter(key) if getter else None


def value_mark(mapping: Any, key: Any) -> Mark | None:
    """Where the value of ``key`` is written in ``mapping``."""
    getter = getattr(mapping, "value_mark", None)
    return getter(key) if getter else None


def item_mark(items: Any, index: int) -> Mark | None:
    """Where item ``index`` of a list is written."""
    getter = getattr(items, "item_mark", None)
    return getter(index) if getter else None


def node_mark(node: Any) -> Mark | None:
    """Where a mapping or list starts."""
    return getattr(node, "mark", None)


@dataclass(frozen=True)
class Reference:
    """GitLab's ``!reference [job, key, ...]``: a path into the configuration, resolved later.

    Like YMap and YList, it compares by content: the mark is not part of equality.
    """

    path: tuple[str, ...]
    mark: Mark = field(compare=False)


def copy_node(x: Any) -> Any:
    """Copy loaded data deeply, keeping the marks of every YMap and YList.

    Unlike ``copy.deepcopy`` nothing stays shared: each use of an alias gets its own copy, so
    code that merges into the result (``extends:``) cannot change another job through an
    anchor. The size of the result is bounded by the loader's ``max_nodes``.
    """
    if isinstance(x, YMap):
        new_map = YMap((key, copy_node(value)) for key, value in x.items())
        new_map.mark, new_map.key_marks, new_map.value_marks = x.mark, dict(x.key_marks), dict(x.value_marks)
        return new_map
    if isinstance(x, YList):
        new_list = YList(copy_node(item) for item in x)
        new_list.mark, new_list.item_marks = x.mark, list(x.item_marks)
        return new_list
    if isinstance(x, dict):
        return {key: copy_node(value) for key, value in x.items()}
    if isinstance(x, list):
        return [copy_node(item) for item in x]
    if x is None or isinstance(x, (str, int, float, bytes, Reference)):
        return x
    return copy.deepcopy(x)


def load_yaml(
    text: str | bytes,
    file: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> tuple[Any, list[Diagnostic]]:
    """Load one pipeline file; return ``(data, warnings)`` or raise :class:`PipelineError`.

    ``file`` is the name used in marks. An empty file gives ``None``. A ``spec:`` header
    document before ``---`` is skipped. Warnings (duplicate keys) come sorted by position.
    """
    _, data, warnings = load_document(text, file, max_bytes=max_bytes, max_depth=max_depth, max_nodes=max_nodes)
    return data, warnings


def load_document(
    text: str | bytes,
    file: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> tuple[Any, Any, list[Diagnostic]]:
    """Like :func:`load_yaml`, with the ``spec:`` header: ``(header or None, data, warnings)``."""
    source = _decode(text, file, max_bytes)
    loader = _LOADER_CLASS(source, file, max_depth, max_nodes)
    try:
        data = loader.load_stream()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, file, source, max_depth) from None
    except RecursionError:
        raise error(Mark(file, 1, 1), "the document is nested too deeply to load") from None
    warnings = sorted(loader.warnings, key=lambda d: (d.mark.line, d.mark.col) if d.mark else (0, 0))
    return loader.header, data, warnings


def load_file(
    path: str | os.PathLike[str],
    display_name: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> tuple[Any, list[Diagnostic]]:
    """Load a pipeline file from disk, named ``display_name`` (default: the path) in marks.

    A file over ``max_bytes`` is refused from its size, before being read.
    """
    name = display_name if display_name is not None else os.fspath(path)
    data = read_file(path, name, max_bytes)
    return load_yaml(data, name, max_bytes=max_bytes, max_depth=max_depth, max_nodes=max_nodes)


def read_file(path: str | os.PathLike[str], name: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a pipeline file on disk (``name`` in errors); one over ``max_bytes`` is
    refused from its size, before being read."""
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > max_bytes:
                raise _too_large(name, size, max_bytes)
            return stream.read(max_bytes + 1)  # the file may grow while it is read
    except OSError as exc:
        raise error(Mark(name, 1, 1), f"cannot read the file: {exc.strerror or exc}") from None


# -- text checks ---------------------------------------------------------------------------------


def _too_large(file: str, size: int, limit: int) -> PipelineError:
    """The error for a file over ``max_bytes`` (placed at 1:1: the whole file is at fault)."""
    return error(Mark(file, 1, 1), f"file is too large ({size} bytes, the limit is {limit})")


def _decode(text: str | bytes, file: str, max_bytes: int) -> str:
    """Check size, encoding and characters; return the text without its byte order mark.

    Done before parsing so that the errors carry a position (the parsers' reader errors do not)
    and so that a str and its UTF-8 bytes load the same way.
    """
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(data) > max_bytes:
        raise _too_large(file, len(data), max_bytes)
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        col = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        mark = Mark(file, data.count(b"\n", 0, exc.start) + 1, col)
        raise error(mark, f"file is not valid UTF-8 (byte offset {exc.start})") from None
    source = source.removeprefix("\ufeff")
    bad = _NON_PRINTABLE.search(source)
    if bad:
        line_start = source.rfind("\n", 0, bad.start()) + 1
        mark = Mark(file, source.count("\n", 0, bad.start()) + 1, bad.start() - line_start + 1)
        raise error(mark, f"character U+{ord(bad.group()):04X} is not allowed in YAML")
    return source


def _yaml_error(exc: yaml.YAMLError, file: str, source: str, max_depth: int) -> PipelineError:
    """Turn PyYAML's multi-line error into one diagnostic: position, problem, and context as hint.

    An error on a tab gets a hint about tabs, since libyaml's message does not name the character.
    libyaml 0.2.6 and later refuse deep nesting themselves while scanning ahead, before our own
    depth check sees the events: that is the same problem and gets the same message.
    """
    if not isinstance(exc, yaml.MarkedYAMLError):
        return error(Mark(file, 1, 1), str(exc).splitlines()[0] if str(exc) else "invalid YAML")
    where = exc.problem_mark or exc.context_mark
    mark = Mark(file, where.line + 1, where.column + 1) if where else Mark(file, 1, 1)
    message = " ".join((exc.problem or exc.context or "invalid YAML").split())
    if "max" in message and "nesting depth" in message:
        return error(mark, f"nesting is deeper than {max_depth} levels", "aliases count as copies of their anchor")
    hint = None
    if exc.problem and exc.context:
        hint = " ".join(exc.context.split())
        context = exc.context_mark
        if context is not None and (context.line, context.column) != (where.line, where.column):
            hint += f" (from line {context.line + 1}, column {context.column + 1})"
    if where is not None and _char_at(source, where) == "\t":
        hint = "YAML does not allow a tab here (in indentation, or before `-`, `?` or a key): use spaces"
    return error(mark, message, hint)


def _char_at(source: str, mark: yaml.Mark) -> str:
    """The character at a parser mark ('' past the end), to recognise errors on tabs."""
    lines = source.split("\n", mark.line + 1)
    return lines[mark.line][mark.column : mark.column + 1] if mark.line < len(lines) else ""


def _pretty_tag(tag: str) -> str:
    """A tag as it is written in files: ``!!int`` rather than ``tag:yaml.org,2002:int``."""
    return "!!" + tag.removeprefix(_STANDARD_TAG_PREFIX) if tag.startswith(_STANDARD_TAG_PREFIX) else tag


def _kind(value: Any) -> str:
    """How a message names the type of a loaded value."""
    if isinstance(value, dict):
        return "mapping"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _is_spec_header(data: Any) -> bool:
    """GitLab's ``spec:`` header: a first document that is a mapping with the single key ``spec``."""
    return isinstance(data, dict) and len(data) == 1 and "spec" in data


# -- composing and constructing ------------------------------------------------------------------


class _Frame:
    """A mapping or list being composed, with the expanded size and height of its finished part."""

    __slots__ = ("anchored", "height", "key", "node", "size")

    def __init__(self, node: Node, anchored: bool) -> None:
        self.node = node
        self.anchored = anchored
        self.size = 1  # expanded nodes, this one included
        self.height = 1  # nesting levels, this one included
        self.key: Node | None = None  # mappings: a key waiting for its value


class _Builder(SafeConstructor, Resolver):
    """Composes parser events into nodes and constructs YMap/YList/Reference from them.

    Mixed into an event source (libyaml's CParser or PyYAML's Parser). Composing is iterative,
    so no input reaches Python's recursion limit, and it measures every node as if aliases were
    copied: depth and expanded size are known, and limited, before anything is constructed.
    """

    def __init__(self, file: str, max_depth: int, max_nodes: int) -> None:
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.file = file
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.warnings: list[Diagnostic] = []
        self.header: Any = None  # the `spec:` header document, when the stream has one
        self._flat_pairs: dict[Node, dict[Any, tuple[Node, Node]]] = {}
        self._resolved: dict[tuple[str, tuple[bool, bool]], str] = {}

    def _mark(self, mark: yaml.Mark) -> Mark:
        """PyYAML's 0-based mark as a 1-based Mark in this file, as editors count."""
        return Mark(self.file, mark.line + 1, mark.column + 1)

    def _value_mark(self, node: Node) -> Mark:
        """Where a value starts, and for a scalar where its text starts (see ``Mark.text_offset``)."""
        mark = node.start_mark
        if type(node) is not ScalarNode or not node.style:
            return Mark(self.file, mark.line + 1, mark.column + 1)
        offset = 1 if node.style in ("'", '"') else None
        return Mark(self.file, mark.line + 1, mark.column + 1, offset)

    # -- stream and documents

    def load_stream(self) -> Any:
        """Return the pipeline document; refuse any document but a leading ``spec:`` header."""
        self.get_event()  # StreamStartEvent
        if self.check_event(StreamEndEvent):
            return None
        data = self.construct_document(self._compose_document())
        if self.check_event(StreamEndEvent):
            return data
        if _is_spec_header(data):
            self.header = data
            data = self.construct_document(self._compose_document())
            if self.check_event(StreamEndEvent):
                return data
        raise error(self._mark(self.peek_event().start_mark), MULTIPLE_DOCUMENTS)

    def _compose_document(self) -> Node:
        """Compose one document into a node graph, checking depth and expanded size as it grows.

        An anchor may be redefined (later aliases use the latest definition), as in Psych; an
        alias to a node that is not finished yet would be recursive and is refused.
        """
        get_event = self.get_event
        get_event()  # DocumentStartEvent
        anchors: dict[str, Node] = {}
        finished: dict[int, tuple[int, int]] = {}  # id(anchored node) -> (expanded size, height)
        stack: list[_Frame] = []
        node: Node
        while True:
            event = get_event()
            kind = type(event)
            if kind is ScalarEvent:
                tag = event.tag
                if tag is None or tag == "!":
                    tag = self._resolve_scalar(event.value, event.implicit)
                node = ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
                size, height, where = 1, 0, event.start_mark
                if event.anchor is not None:
                    anchors[event.anchor] = node
                    finished[id(node)] = (size, height)
            elif kind is SequenceStartEvent or kind is MappingStartEvent:
                if len(stack) >= self.max_depth:
                    raise self._too_deep(event)
                node_kind = SequenceNode if kind is SequenceStartEvent else MappingNode
                tag = event.tag
                if tag is None or tag == "!":
                    tag = self.resolve(node_kind, None, event.implicit)
                node = node_kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
                if event.anchor is not None:
                    anchors[event.anchor] = node
                stack.append(_Frame(node, event.anchor is not None))
                continue
            elif kind is SequenceEndEvent or kind is MappingEndEvent:
                frame = stack.pop()
                node, size, height, where = frame.node, frame.size, frame.height, frame.node.start_mark
                node.end_mark = event.end_mark
                if frame.anchored:
                    finished[id(node)] = (size, height)
            elif kind is AliasEvent:
                node, where = self._alias_target(event, anchors, finished), event.start_mark
                size, height = finished[id(node)]
                if len(stack) + height > self.max_depth:
                    raise self._too_deep(event)
            else:  # pragma: no cover - the parser only emits well-formed documents
                raise error(self._mark(event.start_mark), f"unexpected {kind.__name__}")
            if not stack:
                get_event()  # DocumentEndEvent
                return node
            # Add the finished node to the collection being composed.
            frame = stack[-1]
            frame.size += size
            if frame.size > self.max_nodes:
                raise error(self._mark(where),
                            f"document expands to more than {self.max_nodes} nodes (alias bomb?)",
                            "every alias counts as a full copy of its anchor")
            if height >= frame.height:
                frame.height = height + 1
            if frame.node.__class__ is SequenceNode:
                frame.node.value.append(node)
            elif frame.key is None:
                frame.key = node
            else:
                frame.node.value.append((frame.key, node))
                frame.key = None

    def _resolve_scalar(self, value: str, implicit: tuple[bool, bool]) -> str:
        """The implicit tag of a scalar (``!!int`` for ``12``...), cached: many values repeat.

        Dates and times are Psych's (``_PSYCH_DATE``, ``_PSYCH_TIME``), not YAML 1.1's.
        """
        tag = self._resolved.get((value, implicit))
        if tag is None:
            tag = self.resolve(ScalarNode, value, implicit)
            if implicit[0] and (_PSYCH_DATE.fullmatch(value) or _PSYCH_TIME.fullmatch(value)):
                tag = _TIMESTAMP_TAG
            elif tag == _TIMESTAMP_TAG:
                tag = _STR_TAG
            self._resolved[value, implicit] = tag
        return tag

    def _alias_target(self, event: AliasEvent, anchors: dict[str, Node], finished: dict[int, Any]) -> Node:
        node = anchors.get(event.anchor)
        mark = self._mark(event.start_mark)
        if node is None:
            raise error(mark, f"unknown alias '*{event.anchor}'",
                        f"define the anchor '&{event.anchor}' before using it")
        if id(node) not in finished:
            raise error(mark, f"alias '*{event.anchor}' is used inside its own anchor (recursive alias)")
        return node

    def _too_deep(self, event: Event) -> PipelineError:
        """The error for nesting over ``max_depth``, at the node that goes over."""
        return error(self._mark(event.start_mark), f"nesting is deeper than {self.max_depth} levels",
                     "aliases count as copies of their anchor")

    # -- construction

    def construct_document(self, node: Node) -> Any:
        """PyYAML's, with the merge memo reset: it is keyed by nodes of one document."""
        self._flat_pairs = {}
        return super().construct_document(node)

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """PyYAML's construct_object, with scalars constructed directly and their errors placed.

        Scalars are immutable and never recursive, so they skip the memo and the recursion checks
        (most nodes are scalars). A scalar that does not fit its tag (``!!int x``) is reported at
        its position instead of escaping as a ValueError.
        """
        if type(node) is not ScalarNode or node.tag not in _SCALAR_TAGS:
            return super().construct_object(node, deep)
        try:
            return self.yaml_constructors[node.tag](self, node)
        except (ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
            detail = f" ({exc})" if type(exc) is ValueError else ""  # others say nothing useful
            message = f"cannot read {node.value!r} as {_pretty_tag(node.tag)}{detail}"
            raise error(self._mark(node.start_mark), message, "quote the value to keep it a string") from None

    def construct_ymap(self, node: Node) -> Iterator[YMap]:
        """A mapping as a YMap with its marks; a generator, as PyYAML fills collections later."""
        if not isinstance(node, MappingNode):
            raise error(self._mark(node.start_mark), f"tag {_pretty_tag(node.tag)} needs a mapping")
        data = YMap()
        data.mark = self._mark(node.start_mark)
        yield data
        for key, (key_node, value_node) in self._pairs(node).items():
            data[key] = self.construct_object(value_node)
            data.key_marks[key] = self._mark(key_node.start_mark)
            data.value_marks[key] = self._value_mark(value_node)

    def construct_ylist(self, node: Node) -> Iterator[YList]:
        """A sequence as a YList with the mark of each item."""
        if not isinstance(node, SequenceNode):
            raise error(self._mark(node.start_mark), f"tag {_pretty_tag(node.tag)} needs a sequence")
        data = YList()
        data.mark = self._mark(node.start_mark)
        yield data
        for child in node.value:
            data.append(self.construct_object(child))
            data.item_marks.append(self._value_mark(child))

    def construct_reference(self, node: Node) -> Reference:
        """``!reference [job, key, ...]``: a non-empty list of strings, as GitLab requires."""
        mark = self._mark(node.start_mark)
        if not isinstance(node, SequenceNode) or not node.value:
            raise error(mark, "!reference needs a non-empty list of names",
                        "write `!reference [job, key, ...]`")
        path = []
        for item in node.value:
            name = self.construct_object(item, deep=True)
            if not isinstance(name, str):
                message = f"!reference items must be strings, not {_kind(name)}"
                raise error(self._mark(item.start_mark), message)
            path.append(name)
        return Reference(tuple(path), mark)

    def construct_refused_timestamp(self, node: Node) -> Any:
        """An unquoted date or time: GitLab's loader refuses the file (``YAML.safe_load`` permits
        no Date or Time class), so it is an error here too rather than a string or a date."""
        kind = "Date" if _PSYCH_DATE.fullmatch(node.value) else "Time"
        raise error(self._mark(node.start_mark),
                    f"unquoted {kind.lower()} {node.value!r}: GitLab refuses it "
                    f"(Tried to load unspecified class: {kind})",
                    f"quote it to keep it a string: '{node.value}'")

    def construct_unknown(self, node: Node) -> Any:
        """Any other tag is an error: GitLab would refuse it too, and it must not run code."""
        raise error(self._mark(node.start_mark), f"unknown tag '{_pretty_tag(node.tag)}'",
                    "the only custom tag of GitLab CI is !reference")

    def _pairs(self, node: MappingNode) -> dict[Any, tuple[Node, Node]]:
        """The (key node, value node) of each key of a mapping, merge keys applied (memoized per node).

        Pairs apply in the order they are written, as Psych's ``revive_hash`` applies them (GitLab
        loads pipelines with Psych): a key replaces what an earlier ``<<`` brought, and a ``<<``
        replaces the keys written before it (with a warning: it surprises). In ``<<: [*a, *b]``
        the earlier mapping wins. A key written twice keeps its last value, as in GitLab, with a
        warning. Keys keep the place where they first appear (Ruby's and Python's hashes agree).
        """
        cached = self._flat_pairs.get(node)
        if cached is not None:
            return cached
        pairs: dict[Any, tuple[Node, Node]] = {}
        first_line: dict[Any, int] = {}  # keys written in this mapping (not merged): their first line
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                entry: dict[Any, tuple[Node, Node]] = {}
                for source in self._merge_sources(value_node):
                    for key, pair in self._pairs(source).items():
                        entry.setdefault(key, pair)
                for key in (k for k in entry if k in first_line):
                    self.warnings.append(Diagnostic(
                        self._mark(key_node.start_mark),
                        f"merge key '<<' replaces {key!r} written before it (line {first_line[key]}), "
                        "as GitLab does; write '<<' first to keep your own value",
                        severity="warning",
                    ))
                pairs.update(entry)
                continue
            key = self._construct_key(key_node)
            if key in first_line:
                self.warnings.append(Diagnostic(
                    self._mark(key_node.start_mark),
                    f"duplicate key {key!r} (first defined at line {first_line[key]}); the last one is used",
                    severity="warning",
                ))
            else:
                first_line[key] = key_node.start_mark.line + 1
            pairs[key] = (key_node, value_node)
        self._flat_pairs[node] = pairs
        return pairs

    def _merge_sources(self, value_node: Node) -> list[MappingNode]:
        """The mappings a ``<<`` value names: one mapping, or a list of them (earlier ones win)."""
        items = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
        for item in items:
            if not isinstance(item, MappingNode):
                raise error(self._mark(item.start_mark),
                            "merge key '<<' needs a mapping or a list of mappings",
                            "write `<<: *anchor` or `<<: [*first, *second]`")
        return items

    def _construct_key(self, key_node: Node) -> Any:
        """A mapping key, which must be hashable (a scalar) to be a dict key."""
        key = self.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise error(self._mark(key_node.start_mark), f"a {_kind(key)} cannot be a mapping key") from None
        return key


_Builder.add_constructor("tag:yaml.org,2002:map", _Builder.construct_ymap)
_Builder.add_constructor("tag:yaml.org,2002:seq", _Builder.construct_ylist)
_Builder.add_constructor(_REFERENCE_TAG, _Builder.construct_reference)
_Builder.add_constructor(_TIMESTAMP_TAG, _Builder.construct_refused_timestamp)
_Builder.add_constructor(None, _Builder.construct_unknown)
# Plain `<<` and `=` outside a key are strings (as in Psych); PyYAML would have no constructor.
_Builder.add_constructor(_MERGE_TAG, SafeConstructor.construct_yaml_str)
_Builder.add_constructor(_VALUE_TAG, SafeConstructor.construct_yaml_str)


class _TabTolerantScanner(Scanner):
    """PyYAML's scanner with libyaml's tab rules, for when PyYAML has no libyaml.

    libyaml (hence GitLab) takes a tab as separation wherever no simple key can start (after a
    scalar, after ``key:``, inside flow collections) and keeps tabs between the words of a plain
    scalar (``- apk add<TAB>git``); PyYAML refuses any tab outside quoted and block scalars. Tabs
    in indentation stay errors. The text is not rewritten, so marks and values are unchanged.
    Not ported, being rare: a tab right after a tag (``!!str<TAB>x``) or a block scalar
    indicator (``|<TAB>``), which libyaml accepts.
    """

    def scan_to_next_token(self) -> None:
        """PyYAML's version, skipping tabs where libyaml does."""
        if self.index == 0 and self.peek() == "\ufeff":
            self.forward()
        while True:
            separating_tab = self.flow_level or not self.allow_simple_key
            while self.peek() == " " or (self.peek() == "\t" and separating_tab):
                self.forward()
            if self.peek() == "#":
                while self.peek() not in "\0\r\n\x85\u2028\u2029":
                    self.forward()
            if not self.scan_line_break():
                return
            if not self.flow_level:
                self.allow_simple_key = True

    def scan_plain_spaces(self, indent: int, start_mark: yaml.Mark) -> list[str] | None:
        """PyYAML's version, with tabs accepted between words and after the indentation."""
        chunks = []
        length = 0
        while self.peek(length) in " \t":
            length += 1
        whitespaces = self.prefix(length)
        self.forward(length)
        ch = self.peek()
        if ch in "\r\n\x85\u2028\u2029":
            line_break = self.scan_line_break()
            self.allow_simple_key = True
            if self._at_document_marker():
                return None
            breaks = []
            while self.peek() in " \r\n\x85\u2028\u2029" or (self.peek() == "\t" and self.column >= indent):
                if self.peek() in " \t":
                    self.forward()
                else:
                    breaks.append(self.scan_line_break())
                    if self._at_document_marker():
                        return None
            if line_break != "\n":
                chunks.append(line_break)
            elif not breaks:
                chunks.append(" ")
            chunks.extend(breaks)
        elif whitespaces:
            chunks.append(whitespaces)
        return chunks

    def _at_document_marker(self) -> bool:
        """Whether a ``---`` or ``...`` line starts here (it ends a plain scalar)."""
        return self.prefix(3) in ("---", "...") and self.peek(3) in "\0 \t\r\n\x85\u2028\u2029"


class _PyLoader(Reader, _TabTolerantScanner, Parser, _Builder):
    """Pure-Python event source, used when PyYAML was built without libyaml."""

    def __init__(self, source: str, file: str, max_depth: int, max_nodes: int) -> None:
        Reader.__init__(self, source)
        _TabTolerantScanner.__init__(self)
        Parser.__init__(self)
        _Builder.__init__(self, file, max_depth, max_nodes)


_LOADER_CLASS: type[_Builder] = _PyLoader

if CParser is not None:

    class _CLoader(CParser, _Builder):  # type: ignore[misc, valid-type]
        """libyaml event source: the parser of GitLab's Psych, and several times faster."""

        def __init__(self, source: str, file: str, max_depth: int, max_nodes: int) -> None:
            CParser.__init__(self, source)
            _Builder.__init__(self, file, max_depth, max_nodes)

    _LOADER_CLASS = _CLoader
