"""The job log: splitting, numbering, timestamps, masking, truncation, threads, terminal format."""

from __future__ import annotations

import io
import re
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from workers.logs import MASK, JobLog, LogLine, MemorySink, TerminalSink

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MARKER = re.compile(r"^\[ci-queue\] log truncated at (\d+) bytes; the job keeps running and its output is discarded$")


def make_log(max_bytes: int = 1 << 20, secrets=(), max_line_bytes: int = 16384) -> tuple[JobLog, MemorySink]:
    sink = MemorySink()
    return JobLog(
        sink, run_id="run-1", job="build", max_bytes=max_bytes, secrets=secrets, max_line_bytes=max_line_bytes
    ), sink


def feed_all(log: JobLog, chunks, step: str = "script", stream: str = "out") -> None:
    line_stream = log.stream(step, stream)
    for chunk in chunks:
        line_stream.feed(chunk)
    line_stream.close()


def test_lines_are_split_numbered_and_described():
    log, sink = make_log()
    feed_all(log, [b"first\nsec", b"ond\r\n", b"\n", b"last without newline"])
    assert sink.texts() == ["first", "second", "", "last without newline"]
    assert [line.number for line in sink.lines] == [1, 2, 3, 4]
    line = sink.lines[0]
    assert (line.run_id, line.job, line.step, line.stream) == ("run-1", "build", "script", "out")
    assert ISO_UTC.match(line.timestamp)
    assert line.to_dict() == {
        "run_id": "run-1",
        "job": "build",
        "step": "script",
        "number": 1,
        "stream": "out",
        "text": "first",
        "timestamp": line.timestamp,
    }


def test_close_flushes_once_and_a_trailing_carriage_return_is_dropped():
    log, sink = make_log()
    stream = log.stream("script", "err")
    stream.feed(b"partial\r")
    assert sink.lines == []
    stream.close()
    stream.close()
    assert sink.texts() == ["partial"]
    assert sink.lines[0].stream == "err"


def test_invalid_utf8_is_replaced_not_fatal():
    log, sink = make_log()
    feed_all(log, [b"ok \xff\xfe end\n", "caf\u00e9\n".encode()[:4], "caf\u00e9\n".encode()[4:]])
    assert sink.texts() == ["ok \ufffd\ufffd end", "caf\u00e9"]


def test_long_lines_are_split_and_never_inside_a_utf8_character():
    log, sink = make_log(max_line_bytes=10)
    feed_all(log, [b"a" * 25 + b"\n"])
    assert sink.texts() == ["a" * 10, "a" * 10, "a" * 5]

    log, sink = make_log(max_line_bytes=10)
    text = "\u00e9" * 12  # 24 bytes of two-byte characters
    feed_all(log, [text.encode()[i : i + 3] for i in range(0, 24, 3)] + [b"\n"])
    assert "".join(sink.texts()) == text
    assert all("\ufffd" not in t and len(t.encode()) <= 10 for t in sink.texts())


def test_a_partial_line_without_newline_is_split_as_it_grows():
    log, sink = make_log(max_line_bytes=100)
    stream = log.stream("script", "out")
    for _ in range(50):
        stream.feed(b"x" * 100)  # 5000 bytes, no newline yet
    assert len(sink.lines) >= 45  # emitted while it grows: memory stays bounded
    stream.close()
    assert "".join(sink.texts()) == "x" * 5000


def test_secrets_are_masked_longest_first_and_in_system_lines():
    log, sink = make_log(secrets=["hunter2", "hunter2-long", "", "multi\nline-secret"])
    feed_all(log, [b"token=hunter2-long and hunter2; multi line-secret\n"])
    log.system("script", "the value hunter2 appears")
    assert sink.texts() == [f"token={MASK} and {MASK}; {MASK} {MASK}", f"[ci-queue] the value {MASK} appears"]


def test_a_secret_split_over_chunks_is_masked():
    log, sink = make_log(secrets=["s3cr3t-value"])
    data = b"before s3cr3t-value after\nand s3cr3t-value\n"
    feed_all(log, [data[i : i + 1] for i in range(len(data))])
    assert sink.texts() == [f"before {MASK} after", f"and {MASK}"]


def test_a_secret_straddling_a_forced_split_is_masked():
    secret = "0123456789abcdef"
    log, sink = make_log(secrets=[secret], max_line_bytes=20)
    line = "x" * 12 + secret + "y" * 30  # the secret crosses byte 20, where the line must be split
    feed_all(log, [line.encode()[i : i + 7] for i in range(0, len(line), 7)] + [b"\n"])
    assert all(secret[:4] not in t and secret[-4:] not in t for t in sink.texts()), sink.texts()
    assert "".join(sink.texts()) == "x" * 12 + MASK + "y" * 30


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.sampled_from(["S3CR3T!", "S3C", "abc", "\n", "\r\n", "xyzw" * 5, "\u00e9", " "]), max_size=60),
    cuts=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=30),
    max_line=st.integers(min_value=1, max_value=24),
)
def test_no_chunking_or_line_length_ever_leaks_a_secret(parts, cuts, max_line):
    secret = "S3CR3T!"
    data = "".join(parts).encode()
    chunks, i, k = [], 0, 0
    while i < len(data):
        n = cuts[k % len(cuts)]
        chunks.append(data[i : i + n])
        i, k = i + n, k + 1
    log, sink = make_log(secrets=[secret], max_line_bytes=max_line)
    feed_all(log, chunks)
    joined = "".join(sink.texts())
    assert secret not in joined
    expected = "".join(parts).replace("\r\n", "\n").replace(secret, MASK).replace("\n", "")
    assert joined == expected


def test_truncation_stores_up_to_the_cap_one_marker_and_counts_the_rest():
    log, sink = make_log(max_bytes=1000)
    stream = log.stream("script", "out")
    total = 0
    for i in range(2000):
        data = f"line {i:05d} {'z' * 40}\n".encode()
        total += len(data)
        stream.feed(data)
    stream.close()
    markers = [line for line in sink.lines if MARKER.match(line.text)]
    assert len(markers) == 1 and markers[0].stream == "system"
    assert MARKER.match(markers[0].text).group(1) == "1000"
    output = [line for line in sink.lines if line.stream == "out"]
    stored = sum(len(line.text.encode()) + 1 for line in output)
    assert stored <= 1000
    assert log.truncated
    assert stored + log.bytes_dropped == total
    assert sink.lines[-1] is markers[0]  # nothing of the output after the marker
    assert [line.number for line in sink.lines] == list(range(1, len(sink.lines) + 1))
    # ci-queue's own lines still get through (they say why the job ended)
    log.system("script", "Job succeeded")
    assert sink.lines[-1].text == "[ci-queue] Job succeeded"
    # a second stream after truncation is dropped as well
    feed_all(log, [b"more\n"], stream="err")
    assert sink.lines[-1].text == "[ci-queue] Job succeeded"


def test_two_threads_feeding_two_streams():
    log, sink = make_log()
    count = 5000

    def produce(stream_name: str) -> None:
        stream = log.stream("script", stream_name)
        for i in range(count):
            stream.feed(f"{stream_name} {i}\n".encode())
        stream.close()

    threads = [threading.Thread(target=produce, args=(name,)) for name in ("out", "err")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [line.number for line in sink.lines] == list(range(1, 2 * count + 1))
    for name in ("out", "err"):
        assert sink.texts(name) == [f"{name} {i}" for i in range(count)]
    stamps = [line.timestamp for line in sink.lines]
    assert stamps == sorted(stamps)


def test_a_failing_sink_does_not_break_the_log():
    class Broken:
        def write(self, line: LogLine) -> None:
            raise ConnectionError("redis is down")

        def close(self) -> None:
            raise ConnectionError("still down")

    log = JobLog(Broken(), run_id="r", job="j", max_bytes=1000)
    feed_all(log, [b"a\nb\n"])
    log.system("script", "hello")
    log.close()
    assert log.lines_logged == 3


def test_terminal_format():
    out = io.StringIO()
    sink = TerminalSink(out)
    log = JobLog(sink, run_id="r", job="j", max_bytes=1000)
    feed_all(log, [b"hello\n"])
    feed_all(log, [b"oops\n"], stream="err")
    log.system("after_script", "note")
    log.close()
    lines = out.getvalue().splitlines()
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} script       \| hello$", lines[0]), lines
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} script       ! oops$", lines[1]), lines
    assert re.match(r"^\d\d:\d\d:\d\d\.\d{3} after_script \* \[ci-queue\] note$", lines[2]), lines
    assert "\x1b[" not in out.getvalue()  # not a terminal: no colours
