"""The job log: every output line of a job, numbered, timestamped, masked and capped.

A runner turns a step's raw output into lines through :meth:`JobLog.stream` (one
:class:`LineStream` per step and stream); ci-queue's own messages go through
:meth:`JobLog.system`. Every stored line becomes a :class:`LogLine` handed to a
:class:`LogSink` (Redis on a worker, the terminal for ``ci-queue exec``, a list in tests).

What the log guarantees, whatever the job prints:

- lines are split on ``\\n`` (a trailing ``\\r`` is dropped); a line longer than
  ``max_line_bytes`` is stored as several lines (never inside a UTF-8 character);
- invalid UTF-8 is replaced by U+FFFD, never fatal;
- every non-empty secret value (each line of a multi-line one) is replaced by ``[MASKED]``, also
  when it arrives split over two reads or straddles the forced split of a long line (the split
  is moved before the secret rather than through it);
- the stored text is capped at ``max_bytes`` (UTF-8 bytes of the text plus one per line end):
  the line that crosses the cap is cut there and followed by one system line saying so; later
  output is counted (:attr:`JobLog.bytes_dropped`) and dropped at once, so the producer is
  never slowed and memory stays flat (a stream buffers at most about one line);
- line numbers start at 1 and grow by 1 per stored line; timestamps (UTC, milliseconds, ``Z``)
  never decrease; two streams may be fed from two threads.

System lines always carry the ``[ci-queue] `` prefix (added when missing), so that they stand
out in a plain-text rendering of the log. They are stored after truncation too (they are few,
and say why a job ended), within a small extra allowance of ``SYSTEM_ALLOWANCE`` bytes.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Protocol, TextIO

from loguru import logger

from ci_queue.clock import now_iso

MASK = "[MASKED]"
SYSTEM_PREFIX = "[ci-queue] "
SYSTEM_ALLOWANCE = 64 * 1024  # bytes of system lines still stored once the log is truncated
STREAMS = ("out", "err", "system")


@dataclass(frozen=True, slots=True)
class LogLine:
    """One stored line of a job log."""

    run_id: str
    job: str
    step: str
    number: int  # 1-based, per job log
    stream: str  # "out" | "err" | "system"
    text: str
    timestamp: str  # ISO 8601 UTC, milliseconds, "Z"

    def to_dict(self) -> dict:
        return asdict(self)


class LogSink(Protocol):
    """Where a job's lines go. ``write`` is called under the log's lock, in line-number order."""

    def write(self, line: LogLine) -> None: ...

    def close(self) -> None: ...


@dataclass
class MemorySink:
    """Keeps every line in a list (tests)."""

    lines: list[LogLine] = field(default_factory=list)
    closed: bool = False

    def write(self, line: LogLine) -> None:
        self.lines.append(line)

    def close(self) -> None:
        self.closed = True

    def texts(self, stream: str | None = None) -> list[str]:
        return [line.text for line in self.lines if stream is None or line.stream == stream]


_MARKS = {"out": "|", "err": "!", "system": "*"}
_COLORS = {"err": "\x1b[31m", "system": "\x1b[36m"}


class TerminalSink:
    """Prints lines the way ``ci-queue exec`` and a worker's terminal show them::

        12:00:01.123 script       | $ make test
        12:00:01.456 script       ! warning: something on stderr
        12:00:02.001 script       * [ci-queue] step exceeded its timeout of 2s

    (time of day in UTC, step, ``|`` stdout / ``!`` stderr / ``*`` ci-queue's own line, text).
    Colours only when the stream is a terminal (``color=None``).
    """

    def __init__(self, stream: TextIO | None = None, *, color: bool | None = None, step_width: int = 12) -> None:
        self.stream = stream if stream is not None else sys.stdout
        if color is None:
            isatty = getattr(self.stream, "isatty", None)
            color = bool(isatty and isatty())
        self.color = color
        self.step_width = step_width
        self.broken = False

    def format(self, line: LogLine) -> str:
        mark = _MARKS.get(line.stream, "?")
        text = line.text
        if self.color and line.stream in _COLORS:
            mark = f"{_COLORS[line.stream]}{mark}\x1b[0m"
            if line.stream == "system":
                text = f"{_COLORS['system']}{text}\x1b[0m"
        return f"{line.timestamp[11:23]} {line.step:<{self.step_width}} {mark} {text}"

    def write(self, line: LogLine) -> None:
        if self.broken:
            return
        text = self.format(line) + "\n"
        try:
            try:
                self.stream.write(text)
            except UnicodeEncodeError:
                encoding = getattr(self.stream, "encoding", None) or "ascii"
                self.stream.write(text.encode(encoding, "backslashreplace").decode(encoding, "replace"))
            self.stream.flush()
        except BrokenPipeError:  # the reader went away (`| head`): the job goes on, unseen
            self.broken = True

    def close(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self.broken = True


def _secret_patterns(secrets: Iterable[str]) -> list[bytes]:
    """The byte strings to mask: each non-empty line of each secret, longest first."""
    found: set[bytes] = set()
    for value in secrets or ():
        if not value:
            continue
        for part in str(value).split("\n"):
            part = part.rstrip("\r")
            if part:
                found.add(part.encode("utf-8", "surrogateescape"))
    return sorted(found, key=lambda s: (-len(s), s))


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _cut_utf8(data: bytes | bytearray, start: int, cut: int) -> int:
    """Move ``cut`` back (at most 3 bytes) so that it does not split a UTF-8 character; forward
    past the character when it starts the piece (a limit under 4 bytes)."""
    if cut >= len(data):
        return cut
    moved = cut
    while moved > start and cut - moved < 3 and (data[moved] & 0xC0) == 0x80:
        moved -= 1
    if moved > start:
        return moved
    while cut < len(data) and cut - start < 4 and (data[cut] & 0xC0) == 0x80:
        cut += 1
    return cut


class JobLog:
    """The log of one job. See the module docstring for what it guarantees."""

    def __init__(self, sink: LogSink, *, run_id: str, job: str, max_bytes: int, secrets: Iterable[str] = (),
                 max_line_bytes: int = 16384) -> None:
        if max_bytes <= 0 or max_line_bytes <= 0:
            raise ValueError("max_bytes and max_line_bytes must be positive")
        self.sink = sink
        self.run_id = run_id
        self.job = job
        self.max_bytes = max_bytes
        self.max_line_bytes = max_line_bytes
        patterns = _secret_patterns(secrets)
        self._pattern = re.compile(b"|".join(re.escape(p) for p in patterns)) if patterns else None
        self._text_secrets = [p.decode("utf-8", "surrogateescape") for p in patterns]
        # A partial line is held back this much so that a secret split over two reads is whole.
        self._holdback = max((len(p) for p in patterns), default=1) - 1
        self._lock = threading.Lock()
        self._number = 0
        self._bytes = 0
        self._system_extra = 0
        self._dropped = 0
        self._truncated = False
        self._last_ts = ""
        self._streams: list[LineStream] = []
        self._sink_failed = False

    # -- public API -----------------------------------------------------------------------------

    @property
    def truncated(self) -> bool:
        return self._truncated

    @property
    def bytes_logged(self) -> int:
        """Bytes of stored text (UTF-8, plus one per line end), system lines included."""
        return self._bytes

    @property
    def bytes_dropped(self) -> int:
        """Bytes of output discarded after the cap."""
        return self._dropped

    @property
    def lines_logged(self) -> int:
        return self._number

    def stream(self, step: str, stream: str) -> LineStream:
        """A line splitter for one stream (``out`` / ``err``) of one step."""
        if stream not in ("out", "err"):
            raise ValueError(f"stream must be 'out' or 'err', not {stream!r}")
        line_stream = LineStream(self, step, stream)
        with self._lock:
            self._streams.append(line_stream)
        return line_stream

    def system(self, step: str, text: str) -> None:
        """Store ci-queue's own line(s) (prefixed ``[ci-queue] ``, masked, one per text line)."""
        lines = []
        for part in str(text).split("\n"):
            part = part.rstrip("\r")
            lines.append(self.mask_text(part if part.startswith(SYSTEM_PREFIX) else SYSTEM_PREFIX + part))
        with self._lock:
            timestamp = self._timestamp()
            for line in lines:
                size = _utf8_len(line) + 1
                if self._truncated:
                    if self._system_extra + size > SYSTEM_ALLOWANCE:
                        continue
                    self._system_extra += size
                self._bytes += size
                self._emit(step, "system", line, timestamp)

    def mask_text(self, text: str) -> str:
        """``text`` with every secret replaced by ``[MASKED]``."""
        for secret in self._text_secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def close(self) -> None:
        """Flush the partial last line of every stream, then close the sink."""
        with self._lock:
            streams = list(self._streams)
        for line_stream in streams:
            line_stream.close()
        try:
            self.sink.close()
        except Exception as exc:
            logger.warning("closing the job log sink failed: {}: {}", type(exc).__name__, exc)

    # -- internals ------------------------------------------------------------------------------

    def _timestamp(self) -> str:
        timestamp = now_iso()
        if timestamp < self._last_ts:  # the clock stepped back: keep the log's order
            timestamp = self._last_ts
        self._last_ts = timestamp
        return timestamp

    def _emit(self, step: str, stream: str, text: str, timestamp: str) -> None:
        self._number += 1
        try:
            self.sink.write(LogLine(self.run_id, self.job, step, self._number, stream, text, timestamp))
        except Exception as exc:  # a failing sink must not kill the job; say it once
            if not self._sink_failed:
                self._sink_failed = True
                logger.error("job log sink failed, lines are lost: {}: {}", type(exc).__name__, exc)

    def _drop(self, size: int) -> None:
        with self._lock:
            self._dropped += size

    def _store(self, step: str, stream: str, texts: list[str]) -> None:
        with self._lock:
            timestamp = self._timestamp()
            for index, text in enumerate(texts):
                if self._truncated:
                    self._dropped += sum(_utf8_len(t) + 1 for t in texts[index:])
                    return
                size = _utf8_len(text) + 1
                if self._bytes + size <= self.max_bytes:
                    self._bytes += size
                    self._emit(step, stream, text, timestamp)
                    continue
                # This line crosses the cap: keep what fits, say so once, drop the rest.
                room = self.max_bytes - self._bytes - 1
                if room > 0:
                    data = text.encode("utf-8")
                    kept = data[:_cut_utf8(data, 0, room)].decode("utf-8", "replace")
                    self._bytes += _utf8_len(kept) + 1
                    self._dropped += size - _utf8_len(kept) - 1
                    self._emit(step, stream, kept, timestamp)
                else:
                    self._dropped += size
                self._truncated = True
                marker = (f"{SYSTEM_PREFIX}log truncated at {self.max_bytes} bytes; "
                          "the job keeps running and its output is discarded")
                marker_size = _utf8_len(marker) + 1
                self._system_extra += marker_size
                self._bytes += marker_size
                self._emit(step, "system", marker, timestamp)

    def _decode(self, data: bytes | bytearray) -> str:
        if self._pattern is not None:
            data = self._pattern.sub(MASK.encode(), data)
        return data.decode("utf-8", "replace")


class LineStream:
    """Turns the raw bytes of one stream of one step into lines of a :class:`JobLog`.

    ``feed`` as data arrives, ``close`` at the end (stores a last line without ``\\n``).
    Memory: at most about ``max_line_bytes`` plus the longest secret plus one read is buffered.
    """

    def __init__(self, log: JobLog, step: str, stream: str) -> None:
        self.log = log
        self.step = step
        self.stream = stream
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._closed = False

    def feed(self, data: bytes) -> None:
        if not data:
            return
        log = self.log
        with self._lock:
            if self._closed:
                raise ValueError("feed() on a closed LineStream")
            if log._truncated:  # fast path: count and drop, never slow the producer
                if self._buf:
                    data = bytes(self._buf) + data
                    self._buf.clear()
                log._drop(len(data))
                return
            self._buf += data
            texts = self._split(final=False)
        if texts:
            log._store(self.step, self.stream, texts)

    def close(self) -> None:
        """Store the partial last line, if any; later ``close`` calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.log._truncated:
                if self._buf:
                    self.log._drop(len(self._buf))
                    self._buf.clear()
                return
            texts = self._split(final=True)
        if texts:
            self.log._store(self.step, self.stream, texts)

    def _split(self, final: bool) -> list[str]:
        log = self.log
        buf = self._buf
        limit = log.max_line_bytes
        hold = log._holdback
        texts: list[str] = []
        start = 0
        size = len(buf)
        while start < size:
            newline = buf.find(b"\n", start)
            if newline != -1:
                end = newline - 1 if newline > start and buf[newline - 1] == 0x0D else newline
                if end - start <= limit:
                    texts.append(log._decode(buf[start:end]))
                    start = newline + 1
                    continue
                text, start = self._chunk(buf, start, end, complete=True)
                texts.append(text)
                continue
            # No newline yet: a partial line, emitted only when final or too long to wait for.
            if final:
                end = size - 1 if buf[size - 1] == 0x0D else size
                if end - start <= limit:
                    texts.append(log._decode(buf[start:end]))
                    start = size
                    continue
                text, start = self._chunk(buf, start, end, complete=True)
                texts.append(text)
                continue
            if size - start <= limit + hold + 1:
                break
            text, start = self._chunk(buf, start, size, complete=False)
            texts.append(text)
        del buf[:start]
        return texts

    def _chunk(self, buf: bytearray, start: int, end: int, complete: bool) -> tuple[str, int]:
        """The first piece (at most ``max_line_bytes`` before masking) of the long line at
        ``buf[start:end]``; returns its text and where the rest starts."""
        log = self.log
        cut = start + log.max_line_bytes
        pattern = log._pattern
        if pattern is not None:
            window_end = end if complete else min(end, cut + log._holdback)
            for match in pattern.finditer(buf, start, window_end):
                if match.start() >= cut:
                    break
                if match.end() > cut:  # the secret straddles the cut: never split a secret
                    cut = match.start() if match.start() > start else match.end()
                    return log._decode(buf[start:cut]), cut
        cut = _cut_utf8(buf, start, cut)
        return log._decode(buf[start:cut]), cut
