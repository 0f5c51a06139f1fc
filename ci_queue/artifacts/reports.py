"""The reports jobs upload, read as GitLab reads them: ``artifacts:reports:dotenv`` and ``:junit``.

The control plane runs these on bytes a job produced, so everything here treats its input as
hostile: sizes are bounded before anything is decoded, and XML is parsed incrementally by expat
(see ``summarize_junit`` for why that is safe against entity tricks).

Sources (GitLab's code, read for this module):

- dotenv: ``app/services/ci/parse_dotenv_artifact_service.rb`` (``Ci::ParseDotenvArtifactService``),
  the key validation of ``app/models/concerns/ci/has_variable.rb``, the limits ``dotenv_size`` /
  ``dotenv_variables`` of ``plan_limits`` (column defaults 5120 and 20; GitLab.com raises the
  count per tier, gitlab-org/gitlab#411139), ``lib/gitlab/encoding_helper.rb``.
- JUnit: ``lib/gitlab/ci/parsers/test/junit.rb``, ``lib/gitlab/ci/reports/test_case.rb`` and
  ``test_suite.rb``, ``gems/gitlab-utils/lib/gitlab/xml_converter.rb`` (the 30 MB limit).
"""

from __future__ import annotations

import hashlib
import pyexpat
import re
import zlib
from collections.abc import Iterable
from typing import BinaryIO
from xml.etree import ElementTree

# GitLab's defaults (plan_limits columns `dotenv_size integer DEFAULT 5120`, `dotenv_variables
# integer DEFAULT 20`). Self-managed instances can change them; GitLab.com allows more variables
# on paid tiers.
DOTENV_MAX_BYTES = 5 * 1024
DOTENV_MAX_VARIABLES = 20
# Ours, not GitLab's: a gzip upload (GitLab stores dotenv reports gzipped and measures the limit on
# the compressed file) may not inflate beyond this, so a zip bomb cannot make us allocate much.
DOTENV_MAX_INFLATED_BYTES = 1 << 20
DOTENV_KEY_MAX_LENGTH = 255  # HasVariable: `length: { maximum: 255 }`

JUNIT_MAX_BYTES = 30 << 20  # Gitlab::XmlConverter::MAX_XML_SIZE = 30.megabytes, per file
JUNIT_MAX_FAILING = 100
JUNIT_MESSAGE_CHARS = 500

# billion laughs / quadratic blowup protection arrived in expat 2.4.0 and was completed in 2.4.1
# (Python's "XML vulnerabilities" table: not vulnerable with expat >= 2.4.1).
MIN_SAFE_EXPAT = (2, 4, 1)


class ReportError(ValueError):
    """A report GitLab would refuse; the message is for the job log and the API (GitLab's
    wording where it has one)."""


# -- dotenv ----------------------------------------------------------------------------------------

# Ruby's String#strip removes ASCII whitespace and NUL ("null, horizontal tab, line feed, vertical
# tab, form feed, carriage return, space"); not Unicode spaces, so str.strip() would be wrong.
_RUBY_STRIP = " \t\n\v\f\r\0"
_KEY_FORMAT = re.compile(r"[a-zA-Z0-9_]+")  # HasVariable: /\A[a-zA-Z0-9_]+\z/
_DOTENV_LINE = re.compile(r"(.*?)=(.*)")  # GitLab: line.scan(/^(.*?)=(.*)$/).last; `.` stops at \n


def parse_dotenv(data: bytes, *, max_bytes: int = DOTENV_MAX_BYTES,
                 max_variables: int = DOTENV_MAX_VARIABLES) -> dict[str, str]:
    """The variables of a ``reports:dotenv`` file, by ``Ci::ParseDotenvArtifactService``'s rules.

    - the file must be *smaller* than ``max_bytes`` (GitLab: ``file.size < dotenv_size``);
    - every line, blank lines and ``#`` comments included, must hold a ``=``; the key is what
      comes before the first ``=``, the value the rest; both are stripped of ASCII whitespace
      (so ``KEY = v`` is ``KEY``/``v`` and CRLF files work). Nothing else is interpreted:
      quotes stay part of the value, there are no escapes, no ``${}`` expansion, no multi-line
      values, and ``export KEY=v`` has the key ``export KEY``, which is invalid;
    - a key repeated later overrides the earlier value (a Ruby hash, keyed by name);
    - at most ``max_variables`` distinct keys;
    - keys are ASCII letters, digits and ``_``, at most 255 characters (checked last, as GitLab
      validates the records only when it inserts them);
    - bytes that are not UTF-8: a UTF-16 file with a byte order mark (what Windows PowerShell
      writes, the case GitLab's comment names) is decoded as UTF-16; anything else has its
      invalid bytes replaced by U+FFFD. GitLab guesses legacy encodings with ICU
      (CharlockHolmes) first; we do not guess, so e.g. Latin-1 values differ from GitLab's;
    - a leading UTF-8 byte order mark is dropped;
    - a gzip stream (how GitLab stores these reports; each member is one file) is inflated
      first, its compressed size measured against ``max_bytes`` as GitLab measures the stored
      file.

    Raises ReportError with GitLab's message.
    """
    if not len(data) < max_bytes:
        raise ReportError(f"Dotenv Artifact Too Big. Maximum Allowable Size: {max_bytes}")
    variables: dict[str, str] = {}
    line_number = 0
    for blob in _gzip_members(data) if data[:2] == b"\x1f\x8b" else [data]:
        text = _decode_dotenv(blob).removeprefix("\ufeff")
        lines = text.split("\n")  # Ruby's each_line: "\n" only; no empty line after a final "\n"
        if lines[-1] == "":
            lines.pop()
        for line in lines:
            line_number += 1
            match = _DOTENV_LINE.match(line)
            if match is None:
                raise ReportError(f"Invalid Format (line {line_number})")
            variables[match.group(1).strip(_RUBY_STRIP)] = match.group(2).strip(_RUBY_STRIP)
    if len(variables) > max_variables:
        raise ReportError(f"Dotenv files cannot have more than {max_variables} variables")
    for key in variables:
        problems = []
        if not key:
            problems.append("Key can't be blank")
        if len(key) > DOTENV_KEY_MAX_LENGTH:
            problems.append(f"Key is too long (maximum is {DOTENV_KEY_MAX_LENGTH} characters)")
        if not _KEY_FORMAT.fullmatch(key):
            problems.append("Key can contain only letters, digits and '_'.")
        if problems:  # ActiveRecord::RecordInvalid's message
            raise ReportError(f"Validation failed: {', '.join(problems)}")
    return variables


def _gzip_members(data: bytes) -> list[bytes]:
    """Each member of a (multi-member) gzip stream, inflated within DOTENV_MAX_INFLATED_BYTES."""
    members = []
    budget = DOTENV_MAX_INFLATED_BYTES
    rest = data
    while rest:
        inflater = zlib.decompressobj(wbits=31)
        try:
            member = inflater.decompress(rest, budget + 1)
        except zlib.error as exc:
            raise ReportError(f"invalid gzip stream: {exc}") from None
        if len(member) > budget or inflater.unconsumed_tail:
            raise ReportError(f"Dotenv file inflates to more than {DOTENV_MAX_INFLATED_BYTES} bytes")
        if not inflater.eof:
            raise ReportError("invalid gzip stream: truncated")
        budget -= len(member)
        members.append(member)
        rest = inflater.unused_data
    return members


def _decode_dotenv(blob: bytes) -> str:
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if blob[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return blob.decode("utf-16")  # consumes the byte order mark
        except UnicodeDecodeError:
            pass
    return blob.decode("utf-8", errors="replace")


# -- JUnit -------------------------------------------------------------------------------------------

def summarize_junit(files: Iterable[tuple[str, BinaryIO]], *, max_bytes: int = JUNIT_MAX_BYTES) -> dict:
    """Counts and the first failures of JUnit XML reports, with GitLab's parser semantics.

    Returns ``{"total", "passed", "failed", "errors", "skipped", "duration", "failing"}`` plus
    ``"failing_truncated": True`` when more than 100 tests failed. ``failing`` lists failed and
    errored tests in document order: ``{"suite", "name", "classname", "kind": "failed"|"error",
    "message"}``, the message being the ``message`` attribute of the ``<failure>``/``<error>``
    element, else its text, cut to 500 characters.

    GitLab's semantics (``Gitlab::Ci::Parsers::Test::Junit``, ``Reports::TestSuite``):

    - the root is ``<testsuites>`` or ``<testsuite>``; test cases count directly under either
      and under ``<testsuite>`` elements nested in them at any depth (PHPUnit), but not under
      any other element (a ``<testsuites>`` inside a suite, ``<properties>``...). Another root
      element is no error, just no tests;
    - a case's status: a ``failure`` child (or attribute: ActiveSupport's Hash.from_xml merges
      both) makes it failed, else ``error``, else ``skipped``, else it passed;
    - a case is counted once per status and ``"<suite>_<classname>_<name>"`` key, across all
      files of the job (TestSuite keys its hash by that string), so a test reported twice with
      the same outcome counts once; ``duration`` is the sum of every case's ``time`` (read as
      Ruby's ``to_f``: ``"1.5s"`` is 1.5, ``"abc"`` 0), duplicates included; the suites'
      own ``time`` attributes are not used;
    - a case without attributes or children is dropped (Hash.from_xml makes it nil);
    - a file that is empty or only whitespace has no tests and is no error;
    - each file may hold at most ``max_bytes`` (GitLab: 30 MB, "The XML file must be less than
      30 MB."); a file that is not well-formed XML fails the whole report, as in GitLab, where
      the suite error hides every count. The error names the file.

    The files are parsed incrementally and every element is dropped once read, so memory stays
    bounded by the largest single test case, not the file. Untrusted XML: ElementTree never
    loads external entities or DTDs (a reference to one is an error), and expat >= 2.4.1 stops
    entity amplification (billion laughs, quadratic blowup) after a few megabytes. The check of
    the expat version below makes that assumption explicit rather than pulling in defusedxml.
    """
    _require_safe_expat()
    summary = _JunitSummary()
    for name, stream in files:
        summary.parse(name, stream, max_bytes)
    return summary.result()


def _require_safe_expat() -> None:
    if pyexpat.version_info < MIN_SAFE_EXPAT:
        raise ReportError(f"JUnit reports need expat >= {'.'.join(map(str, MIN_SAFE_EXPAT))} "
                          f"(entity-expansion limits); this Python has {pyexpat.EXPAT_VERSION}")


_SUITE_TAGS = ("testsuites", "testsuite")
_CHUNK = 1 << 16
# Ruby's String#to_f: leading whitespace, then the longest decimal number ("1_000.5", ".5", "2e3")
_RUBY_FLOAT = re.compile(r"[ \t\n\v\f\r]*([+-]?(?:\d+(?:_\d+)*(?:\.\d+(?:_\d+)*)?|\.\d+(?:_\d+)*)(?:[eE][+-]?\d+)?)")


def ruby_to_f(text: str | None) -> float:
    """Ruby's ``String#to_f``: the longest leading decimal number, else 0.0 (never an error)."""
    match = _RUBY_FLOAT.match(text or "")
    return float(match.group(1).replace("_", "")) if match else 0.0


class _JunitSummary:
    def __init__(self) -> None:
        self.seen: dict[str, set[int]] = {"success": set(), "failed": set(), "error": set(), "skipped": set()}
        self.duration = 0.0
        self.failing: list[dict] = []
        self.failing_truncated = False

    def parse(self, name: str, stream: BinaryIO, max_bytes: int) -> None:
        parser = ElementTree.XMLPullParser(events=("start", "end"))
        elements: list[ElementTree.Element] = []  # the open elements, root first
        size = 0
        started = False  # any non-whitespace byte yet? (GitLab: a blank file has no tests)
        try:
            while chunk := stream.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ReportError(f"{name}: JUnit data parsing failed: The XML file must be less "
                                      f"than {_size_text(max_bytes)}.")
                if not started:
                    if not chunk.strip():
                        continue
                    started = True
                parser.feed(chunk)
                self._drain(parser, elements)
            if started:
                parser.close()
                self._drain(parser, elements)
        except ElementTree.ParseError as exc:
            raise ReportError(f"{name}: JUnit XML parsing failed: {exc}") from None

    def _drain(self, parser: ElementTree.XMLPullParser, elements: list[ElementTree.Element]) -> None:
        for event, elem in parser.read_events():
            if event == "start":
                elements.append(elem)
                continue
            elements.pop()
            parent = elements[-1] if elements else None
            if parent is not None and parent.tag == "testcase":
                continue  # a case's <failure>, <system-out>...: read with the case
            if elem.tag == "testcase" and _counted(elements):
                self._test_case(elem, parent)
            if parent is not None:  # done with it: drop it, so the tree never grows
                parent.remove(elem)
            elem.clear()

    def _test_case(self, case: ElementTree.Element, suite: ElementTree.Element | None) -> None:
        if not case.attrib and len(case) == 0:
            return  # Hash.from_xml gives nil for an empty element; GitLab's each_case compacts it away
        status, outcome = "success", None
        for tag, kind in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            child = case.find(tag)
            if child is not None or tag in case.attrib:
                status, outcome = kind, child
                break
        suite_name = suite.get("name") if suite is not None else None
        classname, test_name = case.get("classname"), case.get("name")
        self.duration += ruby_to_f(case.get("time"))
        # TestCase#key: sha256("#{suite_name}_#{classname}_#{name}"), suite_name falling back to the
        # job's (the same for every unnamed suite); one entry per key in each status.
        key = f"{chr(0) if suite_name is None else suite_name}_{classname or ''}_{test_name or ''}"
        digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest())
        if digest in self.seen[status]:
            return
        self.seen[status].add(digest)
        if status not in ("failed", "error"):
            return
        if len(self.failing) >= JUNIT_MAX_FAILING:
            self.failing_truncated = True
            return
        message = ""
        if outcome is not None:
            message = outcome.get("message") or (outcome.text or "").strip()
        self.failing.append({"suite": suite_name or "", "name": test_name or "", "classname": classname or "",
                             "kind": status, "message": message[:JUNIT_MESSAGE_CHARS]})

    def result(self) -> dict:
        counts = {status: len(keys) for status, keys in self.seen.items()}
        result = {
            "total": sum(counts.values()),
            "passed": counts["success"],
            "failed": counts["failed"],
            "errors": counts["error"],
            "skipped": counts["skipped"],
            "duration": self.duration,
            "failing": self.failing,
        }
        if self.failing_truncated:
            result["failing_truncated"] = True
        return result


def _counted(ancestors: list[ElementTree.Element]) -> bool:
    """Does GitLab read a <testcase> under these elements (root first)? Its ``all_cases`` takes
    the root <testsuites> or <testsuite>, then only <testsuite> children, recursively."""
    return (bool(ancestors) and ancestors[0].tag in _SUITE_TAGS
            and all(elem.tag == "testsuite" for elem in ancestors[1:]))


def _size_text(size: int) -> str:
    return f"{size >> 20} MB" if size % (1 << 20) == 0 else f"{size} bytes"
