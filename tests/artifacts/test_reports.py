"""``reports:dotenv`` and ``reports:junit`` read as GitLab reads them.

dotenv: ``Ci::ParseDotenvArtifactService`` (app/services/ci/parse_dotenv_artifact_service.rb) and the
key validation of ``Ci::HasVariable``. JUnit: ``Gitlab::Ci::Parsers::Test::Junit``
(lib/gitlab/ci/parsers/test/junit.rb), ``Reports::TestSuite`` / ``TestCase`` and
``Gitlab::XmlConverter``. Each quirk of GitLab's that we keep has a test saying where it comes from.
"""

from __future__ import annotations

import gzip
import io
import pyexpat
import string
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ci_queue.artifacts.reports import (
    DOTENV_MAX_BYTES,
    DOTENV_MAX_INFLATED_BYTES,
    DOTENV_MAX_VARIABLES,
    ReportError,
    parse_dotenv,
    ruby_to_f,
    summarize_junit,
)

# -- dotenv: the format -------------------------------------------------------------------------------


def test_dotenv_reads_key_value_lines():
    assert parse_dotenv(b"VERSION=1.2.3\nDEPLOY_URL=https://example.com/?a=b\n") == {
        "VERSION": "1.2.3", "DEPLOY_URL": "https://example.com/?a=b"}


def test_dotenv_splits_at_the_first_equals_sign():
    # /^(.*?)=(.*)$/: the key is lazy, the value takes every later "="
    assert parse_dotenv(b"A=b=c==\n") == {"A": "b=c=="}


def test_dotenv_strips_ascii_whitespace_around_key_and_value():
    # result.each(&:strip!): both sides, so "KEY = value" and CRLF files work
    assert parse_dotenv(b"  A =  one two \t\r\nB\t=\v2\f\r\n") == {"A": "one two", "B": "2"}


def test_dotenv_keeps_unicode_spaces_which_ruby_strip_does_not_remove():
    assert parse_dotenv("A=\u00a0x\u2003\n".encode()) == {"A": "\u00a0x\u2003"}


def test_dotenv_keeps_quotes_and_does_not_expand_or_unescape():
    # GitLab's docs: no quote handling, no variable substitution, no escapes
    data = b"A=\"quoted value\"\nB='single'\nC=${A}\nD=a\\nb\n"
    assert parse_dotenv(data) == {"A": '"quoted value"', "B": "'single'", "C": "${A}", "D": "a\\nb"}


def test_dotenv_value_may_be_empty():
    assert parse_dotenv(b"A=\nB=   \n") == {"A": "", "B": ""}


def test_dotenv_last_line_needs_no_newline_and_empty_file_is_empty():
    assert parse_dotenv(b"A=1\nB=2") == {"A": "1", "B": "2"}
    assert parse_dotenv(b"") == {}


def test_dotenv_later_duplicate_wins_and_counts_once():
    # variables[key] = ...: a hash keyed by name; the limit counts distinct keys
    lines = [f"V{i}=x" for i in range(DOTENV_MAX_VARIABLES)] + ["V0=again"]
    result = parse_dotenv("\n".join(lines).encode())
    assert len(result) == DOTENV_MAX_VARIABLES
    assert result["V0"] == "again"
    assert next(iter(result)) == "V0"  # keeps the position of its first line, as a Ruby hash does


@pytest.mark.parametrize("line", [b"", b"   ", b"# a comment", b"just text"])
def test_dotenv_refuses_lines_without_equals_blank_lines_and_comments_included(line):
    with pytest.raises(ReportError, match=r"^Invalid Format \(line 2\)$"):
        parse_dotenv(b"A=1\n" + line + b"\nB=2\n")


@pytest.mark.parametrize(("line", "message"), [
    (b"export A=1", "Key can contain only letters, digits and '_'."),  # no `export` support
    (b"# A=1", "Key can contain only letters, digits and '_'."),  # a comment with "=" is a key
    (b"MY-VAR=1", "Key can contain only letters, digits and '_'."),
    ("CAF\u00c9=1".encode(), "Key can contain only letters, digits and '_'."),  # ASCII letters only
    (b"=1", "Key can't be blank, Key can contain only letters, digits and '_'."),
    (b"K" * 256 + b"=1", "Key is too long (maximum is 255 characters)"),
])
def test_dotenv_key_validation_has_gitlab_record_messages(line, message):
    with pytest.raises(ReportError) as info:
        parse_dotenv(line + b"\n")
    assert str(info.value) == f"Validation failed: {message}"


def test_dotenv_key_of_255_characters_and_digits_first_are_valid():
    assert parse_dotenv(b"K" * 255 + b"=1\n9LIVES=yes\n_x=1\n") == {"K" * 255: "1", "9LIVES": "yes", "_x": "1"}


# -- dotenv: the limits --------------------------------------------------------------------------------


def test_dotenv_limits_are_gitlabs_defaults():
    # plan_limits: `dotenv_size integer DEFAULT 5120`, `dotenv_variables integer DEFAULT 20`
    assert (DOTENV_MAX_BYTES, DOTENV_MAX_VARIABLES) == (5120, 20)


def test_dotenv_must_be_smaller_than_the_size_limit():
    # validate!: `artifact.file.size < dotenv_size_limit`, strictly
    line = b"A=" + b"x" * (DOTENV_MAX_BYTES - 4) + b"\n"
    assert len(line) == DOTENV_MAX_BYTES - 1
    assert parse_dotenv(line)["A"] == "x" * (DOTENV_MAX_BYTES - 4)
    with pytest.raises(ReportError, match=r"^Dotenv Artifact Too Big\. Maximum Allowable Size: 5120$"):
        parse_dotenv(line + b"\n")


def test_dotenv_limits_can_be_raised_like_plan_limits():
    lines = "".join(f"V{i}=1\n" for i in range(50)).encode()
    assert len(parse_dotenv(lines, max_variables=50)) == 50
    with pytest.raises(ReportError, match=r"Maximum Allowable Size: 100$"):
        parse_dotenv(b"A=1\n" * 30, max_bytes=100)


def test_dotenv_variable_count_limit():
    ok = "".join(f"V{i}=1\n" for i in range(DOTENV_MAX_VARIABLES)).encode()
    assert len(parse_dotenv(ok)) == DOTENV_MAX_VARIABLES
    with pytest.raises(ReportError, match=r"^Dotenv files cannot have more than 20 variables$"):
        parse_dotenv(ok + b"ONE_MORE=1\n")


def test_dotenv_checks_in_gitlabs_order():
    # size, then each line's format while parsing, then the count, then the keys (validated by
    # bulk_insert! after the count check)
    too_many_with_bad_key = "".join(f"V{i}=1\n" for i in range(DOTENV_MAX_VARIABLES)).encode() + b"BAD KEY=1\n"
    with pytest.raises(ReportError, match="more than 20 variables"):
        parse_dotenv(too_many_with_bad_key)
    with pytest.raises(ReportError, match="Invalid Format"):
        parse_dotenv(too_many_with_bad_key + b"no equals\n")
    with pytest.raises(ReportError, match="Too Big"):
        parse_dotenv(too_many_with_bad_key + b"no equals\n" + b"#" * DOTENV_MAX_BYTES)


# -- dotenv: encodings and gzip ------------------------------------------------------------------------------


def test_dotenv_utf16_with_bom_from_powershell_is_decoded():
    # GitLab's comment: "Windows powershell may output UTF-16LE files"
    assert parse_dotenv("A=caf\u00e9\r\nB=2\r\n".encode("utf-16")) == {"A": "caf\u00e9", "B": "2"}
    assert parse_dotenv(b"\xfe\xff" + "A=1\n".encode("utf-16-be")) == {"A": "1"}


def test_dotenv_utf8_bom_is_dropped():
    # strip_bom(...): else the first key would hold U+FEFF and fail validation
    assert parse_dotenv(b"\xef\xbb\xbfA=1\n") == {"A": "1"}


def test_dotenv_invalid_utf8_becomes_replacement_characters():
    # encode_utf8_with_replacement_character; GitLab may first guess a legacy encoding (ICU), we do not
    assert parse_dotenv(b"A=ok\xff\xfe!\n") == {"A": "ok\ufffd\ufffd!"}


def test_dotenv_gzip_members_are_files_and_the_limit_is_on_the_compressed_size():
    # GitLab stores dotenv reports gzipped (job_artifact file_format gzip) and compares the stored
    # file's size with the limit; each gzip member is one blob (GzipStream#each_blob).
    data = gzip.compress(b"A=1\nB=x\n") + gzip.compress(b"B=2\r\n")
    assert parse_dotenv(data) == {"A": "1", "B": "2"}
    roomy = b"A=" + b"x" * 10_000 + b"\n"  # 10 kB inflated, a few dozen bytes compressed
    assert len(gzip.compress(roomy)) < DOTENV_MAX_BYTES
    assert parse_dotenv(gzip.compress(roomy))["A"] == "x" * 10_000


def test_dotenv_gzip_bomb_and_broken_gzip_are_refused():
    with pytest.raises(ReportError, match="inflates to more than"):
        parse_dotenv(gzip.compress(b"A=" + b"x" * (DOTENV_MAX_INFLATED_BYTES + 10)))
    with pytest.raises(ReportError, match="invalid gzip stream"):
        parse_dotenv(gzip.compress(b"A=1\n")[:-6])
    with pytest.raises(ReportError, match="invalid gzip stream"):
        parse_dotenv(b"\x1f\x8bnot really gzip")


# -- dotenv: a round trip -------------------------------------------------------------------------------

_STRIPPED = " \t\n\v\f\r\0"
keys = st.text(alphabet=string.ascii_letters + string.digits + "_", min_size=1, max_size=40)
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=40).filter(
    lambda v: v == v.strip(_STRIPPED))
padding = st.sampled_from(["", " ", "\t", "  \t"])


@settings(max_examples=200, deadline=None)
@given(variables=st.dictionaries(keys, values, max_size=DOTENV_MAX_VARIABLES), data=st.data())
def test_dotenv_round_trip(variables, data):
    """Any valid set of variables, written one per line with any spacing and line ending, reads back."""
    lines = []
    for key, value in variables.items():
        before, around, after = (data.draw(padding) for _ in range(3))
        ending = data.draw(st.sampled_from(["\n", "\r\n"]))
        lines.append(f"{before}{key}{around}={around}{value}{after}{ending}")
    encoded = "".join(lines).encode()
    if len(encoded) >= DOTENV_MAX_BYTES:
        with pytest.raises(ReportError, match="Too Big"):
            parse_dotenv(encoded)
    else:
        assert parse_dotenv(encoded) == variables


# -- JUnit: real-world shapes ------------------------------------------------------------------------------

PYTEST = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests"><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5"
 time="3.210" timestamp="2024-05-01T10:00:00.000000" hostname="runner-1">
<properties><property name="python" value="3.11"/></properties>
<testcase classname="tests.test_math" name="test_add" time="0.001"/>
<testcase classname="tests.test_math" name="test_div[0-0]" time="0.012">
<failure message="ZeroDivisionError: division by zero">a = 0

    def test_div(a):
&gt;       1 / a
E       ZeroDivisionError: division by zero</failure></testcase>
<testcase classname="tests.test_io" name="test_read" time="0.5">
<error message="failed on setup with &quot;fixture 'tmp' not found&quot;">file /x.py, line 3</error></testcase>
<testcase classname="tests.test_io" name="test_slow" time="0.000">
<skipped type="pytest.skip" message="slow">/x.py:9: slow</skipped></testcase>
<testcase classname="tests.test_io" name="test_write" time="1.2">
<system-out>written</system-out><system-err>warn</system-err></testcase>
</testsuite></testsuites>
"""

SUREFIRE = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
 xsi:noNamespaceSchemaLocation="https://maven.apache.org/surefire/maven-surefire-plugin/xsd/surefire-test-report.xsd"
 version="3.0" name="com.example.CalculatorTest" time="0.052" tests="4" errors="0" skipped="1" failures="1">
  <properties>
    <property name="java.version" value="17.0.9"/>
    <property name="user.dir" value="/builds/group/project"/>
  </properties>
  <testcase name="addsNumbers" classname="com.example.CalculatorTest" time="0.004"/>
  <testcase name="dividesByZero" classname="com.example.CalculatorTest" time="0.011">
    <failure message="expected: &lt;1&gt; but was: &lt;2&gt;"
     type="org.opentest4j.AssertionFailedError"><![CDATA[org.opentest4j.AssertionFailedError: expected: <1> but was: <2>
	at com.example.CalculatorTest.dividesByZero(CalculatorTest.java:21)
]]></failure>
    <system-out><![CDATA[computing 1/0
]]></system-out>
  </testcase>
  <testcase name="flaky" classname="com.example.CalculatorTest" time="0.020">
    <flakyFailure message="timeout" type="java.util.concurrent.TimeoutException">
      <stackTrace>...</stackTrace></flakyFailure>
  </testcase>
  <testcase name="ignored" classname="com.example.CalculatorTest" time="0">
    <skipped message="@Disabled"/>
  </testcase>
</testsuite>
"""

JEST = b"""<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="jest tests" tests="3" failures="1" errors="0" time="2.718">
  <testsuite name="src/sum.test.js" errors="0" failures="1" skipped="0" timestamp="2024-05-01T10:00:00"
   time="1.1" tests="3">
    <testcase classname="sum adds 1 + 2 to equal 3" name="sum adds 1 + 2 to equal 3" time="0.003">
    </testcase>
    <testcase classname="sum handles negatives" name="sum handles negatives" time="0.001">
      <failure>Error: expect(received).toBe(expected) // Object.is equality

Expected: -3
Received: 3
    at Object.&lt;anonymous&gt; (src/sum.test.js:9:22)</failure>
    </testcase>
    <testcase classname="sum is pure" name="sum is pure" time="0.0005">
    </testcase>
  </testsuite>
</testsuites>
"""


def summarize(*reports: bytes | tuple[str, bytes], **options) -> dict:
    files = [r if isinstance(r, tuple) else (f"report{i}.xml", r) for i, r in enumerate(reports)]
    return summarize_junit([(name, io.BytesIO(data)) for name, data in files], **options)


def test_pytest_report():
    result = summarize(PYTEST)
    assert {k: result[k] for k in ("total", "passed", "failed", "errors", "skipped")} == {
        "total": 5, "passed": 2, "failed": 1, "errors": 1, "skipped": 1}
    assert result["duration"] == pytest.approx(0.001 + 0.012 + 0.5 + 0.0 + 1.2)
    assert result["failing"] == [
        {"suite": "pytest", "name": "test_div[0-0]", "classname": "tests.test_math", "kind": "failed",
         "message": "ZeroDivisionError: division by zero"},
        {"suite": "pytest", "name": "test_read", "classname": "tests.test_io", "kind": "error",
         "message": "failed on setup with \"fixture 'tmp' not found\""},
    ]
    assert "failing_truncated" not in result


def test_surefire_report_with_a_testsuite_root():
    result = summarize(SUREFIRE)
    # flakyFailure is not a failure: GitLab looks for `failure`, `error`, `skipped` only
    assert (result["total"], result["passed"], result["failed"], result["skipped"]) == (4, 2, 1, 1)
    assert result["failing"][0]["message"] == "expected: <1> but was: <2>"
    assert result["failing"][0]["suite"] == "com.example.CalculatorTest"
    assert result["duration"] == pytest.approx(0.035)  # the cases' times; the suite says 0.052


def test_jest_junit_report_failure_text_without_message_attribute():
    result = summarize(JEST)
    assert (result["total"], result["passed"], result["failed"]) == (3, 2, 1)
    message = result["failing"][0]["message"]
    assert message.startswith("Error: expect(received).toBe(expected)")
    assert "(src/sum.test.js:9:22)" in message


def test_several_files_add_up():
    result = summarize(PYTEST, SUREFIRE, JEST)
    assert result["total"] == 12
    assert (result["failed"], result["errors"]) == (3, 1)
    assert [f["suite"] for f in result["failing"]] == [
        "pytest", "pytest", "com.example.CalculatorTest", "src/sum.test.js"]


# -- JUnit: GitLab's structure rules -----------------------------------------------------------------------


def test_nested_testsuites_are_read_at_any_depth():
    # junit.rb: "we allow multiple nested 'testsuite' (eg. PHPUnit)"
    report = b"""<testsuites><testsuite name="all"><testsuite name="unit">
        <testsuite name="Foo"><testcase name="a"/><testcase name="b"><failure/></testcase></testsuite>
        <testcase name="c"/></testsuite></testsuite></testsuites>"""
    result = summarize(report)
    assert (result["total"], result["failed"]) == (3, 1)
    assert result["failing"] == [{"suite": "Foo", "name": "b", "classname": "", "kind": "failed", "message": ""}]


def test_testcases_directly_under_testsuites_count():
    # all_cases: the top-level <testsuites> node gets each_case too
    result = summarize(b'<testsuites name="top"><testcase name="a"><error message="x"/></testcase></testsuites>')
    assert result["total"] == 1
    assert result["failing"][0]["suite"] == "top"


@pytest.mark.parametrize("report", [
    b"<testsuite><properties><testcase name='hidden'/></properties><testcase name='seen'/></testsuite>",
    # only one top-level testsuites: a testsuites below the root is not descended into
    b"<testsuite><testsuites><testcase name='hidden'/></testsuites><testcase name='seen'/></testsuite>",
    b"<testsuites><testsuites><testcase name='hidden'/></testsuites><testcase name='seen'/></testsuites>",
])
def test_testcases_outside_the_suite_chain_do_not_count(report):
    result = summarize(report)
    assert result["total"] == 1


def test_other_root_elements_hold_no_tests_and_are_no_error():
    assert summarize(b"<report><testcase name='a'/></report>")["total"] == 0
    assert summarize(b"<testcase name='alone'/>")["total"] == 0  # "at least one level of testsuites"


def test_empty_and_blank_files_hold_no_tests():
    # XmlConverter: `return unless xml.present?`
    result = summarize(b"", b"  \n\t ", PYTEST)
    assert result["total"] == 5


def test_status_precedence_failure_error_skipped():
    report = b"""<testsuite>
      <testcase name="both"><skipped/><error/><failure/></testcase>
      <testcase name="err_skip"><skipped/><error/></testcase>
      <testcase name="attr" failure="yes"/>
    </testsuite>"""
    result = summarize(report)
    # create_test_case checks data.key?('failure'), then 'error', then 'skipped'; Hash.from_xml puts
    # attributes and child elements in one hash, so a `failure` attribute counts too
    assert (result["failed"], result["errors"], result["skipped"]) == (2, 1, 0)
    assert [(f["name"], f["kind"]) for f in result["failing"]] == [
        ("both", "failed"), ("err_skip", "error"), ("attr", "failed")]


def test_empty_testcase_element_is_dropped():
    # Hash.from_xml turns <testcase/> into nil and each_case compacts it away
    assert summarize(b"<testsuite><testcase/><testcase></testcase><testcase name='x'/></testsuite>")["total"] == 1


def test_duplicate_cases_count_once_per_status_but_all_their_time():
    # TestSuite#add_test_case: test_cases[status][key] = case, key = sha256("suite_classname_name");
    # total_time += each case's time
    report = b"""<testsuite name="s">
      <testcase classname="c" name="t" time="1"/>
      <testcase classname="c" name="t" time="2"/>
      <testcase classname="c" name="t" time="4"><failure message="flaky"/></testcase>
      <testcase classname="c" name="t" time="8"><failure message="again"/></testcase>
    </testsuite>"""
    result = summarize(report)
    assert (result["total"], result["passed"], result["failed"]) == (2, 1, 1)
    assert result["duration"] == 15.0
    assert [f["message"] for f in result["failing"]] == ["flaky"]


def test_duplicates_across_files_count_once():
    # every file of a job goes into one TestSuite
    assert summarize(PYTEST, PYTEST)["total"] == 5


def test_case_key_is_the_joined_string_so_underscores_can_collide():
    # "#{suite_name}_#{classname}_#{name}": ("a_b", "c") and ("a", "b_c") are one key in GitLab
    report = b'<testsuite name="s"><testcase classname="a_b" name="c"/><testcase classname="a" name="b_c"/></testsuite>'
    assert summarize(report)["total"] == 1


def test_time_is_read_like_ruby_to_f():
    report = b"""<testsuite><testcase name="a" time="1.5s"/><testcase name="b" time="abc"/>
      <testcase name="c" time="1,234"/><testcase name="d"/><testcase name="e" time=" 2e1"/></testsuite>"""
    assert summarize(report)["duration"] == 1.5 + 0 + 1 + 0 + 20


@pytest.mark.parametrize(("text", "value"), [
    ("1.5", 1.5), ("1.5s", 1.5), ("  3", 3.0), ("abc", 0.0), ("", 0.0), (None, 0.0), ("1_000.5", 1000.5),
    (".5", 0.5), ("-2", -2.0), ("1e3", 1000.0), ("1e", 1.0), ("5.", 5.0), ("1,5", 1.0), ("0x1A", 0.0),
])
def test_ruby_to_f(text, value):
    assert ruby_to_f(text) == value


def test_failing_list_is_capped_at_100():
    cases = "".join(f'<testcase name="t{i}"><failure message="m{i}"/></testcase>' for i in range(150))
    result = summarize(f"<testsuite>{cases}</testsuite>".encode())
    assert result["failed"] == 150
    assert len(result["failing"]) == 100
    assert result["failing"][-1]["name"] == "t99"
    assert result["failing_truncated"] is True


def test_message_is_cut_to_500_characters():
    result = summarize(f'<testsuite><testcase name="x"><failure>{"y" * 2000}</failure></testcase></testsuite>'.encode())
    assert result["failing"][0]["message"] == "y" * 500


def test_declared_encodings_are_honoured():
    report = ('<?xml version="1.0" encoding="ISO-8859-1"?>'
              '<testsuite name="caf\u00e9"><testcase name="\u00fc"><failure/></testcase></testsuite>')
    result = summarize(report.encode("latin-1"))
    assert result["failing"][0]["suite"] == "caf\u00e9"
    assert result["failing"][0]["name"] == "\u00fc"


# -- JUnit: bad and hostile input -------------------------------------------------------------------------


@pytest.mark.parametrize("report", [
    b"<testsuite><testcase name='a'></testsuite>",
    b"<testsuite><testcase name='a'/>",  # truncated: the error comes at the end
    b"not xml at all",
    b"<testsuite name='a' name='b'/>",
])
def test_malformed_xml_fails_the_whole_report_naming_the_file(report):
    with pytest.raises(ReportError, match=r"^broken\.xml: JUnit XML parsing failed: "):
        summarize(("good.xml", PYTEST), ("broken.xml", report))


def test_file_size_limit_is_per_file():
    # XmlConverter::MAX_XML_SIZE: "The XML file must be less than 30 MB."
    report = b"<testsuite>" + b"<testcase name='a'/>" * 100 + b"</testsuite>"
    assert summarize(report, report, max_bytes=len(report))["total"] == 1
    with pytest.raises(ReportError, match=r"^big\.xml: JUnit data parsing failed: The XML file must be less than"):
        summarize(("big.xml", report + b" "), max_bytes=len(report))


def test_bundled_expat_has_entity_amplification_protection():
    # We rely on expat >= 2.4.1 instead of defusedxml; summarize_junit checks this too.
    assert pyexpat.version_info >= (2, 4, 1), pyexpat.EXPAT_VERSION


def billion_laughs(levels: int = 10) -> bytes:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels)]
    return (f'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n{chr(10).join(entities)}\n]>\n'
            f'<testsuite name="x"><testcase name="&lol{levels - 1};"/></testsuite>').encode()


@pytest.mark.timeout(30)
def test_billion_laughs_fails_fast_without_eating_memory():
    report = billion_laughs()  # 10**9 "lol"s: 3 GB if expanded
    tracemalloc.start()
    try:
        with pytest.raises(ReportError, match=r"^lol\.xml: JUnit XML parsing failed: .*amplification"):
            summarize(("lol.xml", report))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


@pytest.mark.timeout(30)
def test_quadratic_blowup_fails_fast_without_eating_memory():
    report = (b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "' + b"A" * 50_000 + b'">]><testsuite>'
              b'<testcase name="x"><failure>' + b"&a;" * 50_000 + b"</failure></testcase></testsuite>")
    tracemalloc.start()
    try:
        with pytest.raises(ReportError, match="amplification"):
            summarize(("q.xml", report))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20  # the expansion would be 2.5 GB


def test_external_entities_are_never_loaded(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    report = (f'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file://{secret}">]>'
              '<testsuite><testcase name="a"><failure>&x;</failure></testcase></testsuite>').encode()
    with pytest.raises(ReportError, match="undefined entity") as info:
        summarize(("xxe.xml", report))
    assert "TOP-SECRET" not in str(info.value)


def test_internal_entities_of_modest_size_still_work():
    report = (b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY app "my-app">]>'
              b'<testsuite name="&app;"><testcase name="a"><failure/></testcase></testsuite>')
    assert summarize(report)["failing"][0]["suite"] == "my-app"


@pytest.mark.timeout(120)
def test_20_mib_report_is_parsed_in_bounded_memory(tmp_path: Path):
    path = tmp_path / "big.xml"
    traceback = "Traceback (most recent call last):\n  File x.py, line 1\n" * 10
    cases = 0
    with path.open("w") as out:
        out.write('<?xml version="1.0" encoding="utf-8"?>\n<testsuites name="pytest">\n')
        suite = 0
        while out.tell() < 20 << 20:
            out.write(f'<testsuite name="tests.test_mod{suite}" tests="100">\n')
            for i in range(100):
                if i % 10 == 0:
                    out.write(f'<testcase classname="tests.test_mod{suite}" name="test_{i}" time="0.25">'
                              f'<failure message="assert {i} == 0">{traceback}</failure>'
                              f'<system-out>{"captured " * 40}</system-out></testcase>\n')
                else:
                    out.write(f'<testcase classname="tests.test_mod{suite}" name="test_{i}" time="0.25"/>\n')
                cases += 1
            out.write("</testsuite>\n")
            suite += 1
        out.write("</testsuites>\n")
    size = path.stat().st_size
    assert size >= 20 << 20
    tracemalloc.start()
    try:
        with path.open("rb") as stream:
            result = summarize_junit([("big.xml", stream)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result["total"] == cases
    assert result["failed"] == cases // 10
    assert result["duration"] == pytest.approx(cases * 0.25)
    assert len(result["failing"]) == 100 and result["failing_truncated"] is True
    # An ElementTree of this file takes about 130 MiB; reading it whole, 20. What stays is the
    # set of seen test keys (8-byte digests) and one test case at a time.
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB report"
