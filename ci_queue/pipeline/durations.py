"""GitLab duration strings (``timeout: 1h 30m``, ``start_in: 3 hours``) to seconds.

GitLab parses these with ChronicDuration, which accepts a bare number of seconds, ``hh:mm:ss``,
and sequences of ``<number> <unit>`` with long, short and plural unit names, optionally joined
by ``and`` or commas. We accept the same forms so that real files keep their meaning.
"""

from __future__ import annotations

import re

_UNITS: dict[str, int] = {}
for _names, _seconds in (
    (("s", "sec", "secs", "second", "seconds"), 1),
    (("m", "min", "mins", "minute", "minutes"), 60),
    (("h", "hr", "hrs", "hour", "hours"), 3600),
    (("d", "day", "days"), 86400),
    (("w", "wk", "wks", "week", "weeks"), 7 * 86400),
    (("mo", "mos", "month", "months"), 30 * 86400),
    (("y", "yr", "yrs", "year", "years"), 365 * 86400),
):
    for _name in _names:
        _UNITS[_name] = _seconds

_TERM = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2})$")


class DurationError(ValueError):
    """The text is not a duration GitLab would accept."""


def parse_duration(value: object) -> int:
    """Seconds in ``value`` (an int, or a GitLab duration string); always positive.

    Raises DurationError with a message suitable for the user.
    """
    if isinstance(value, bool):
        raise DurationError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise DurationError(f"{value!r} is not a duration")
    if seconds <= 0:
        raise DurationError(f"{value!r} is not a positive duration")
    return max(1, round(seconds))


def _parse_text(text: str) -> float:
    cleaned = text.strip().lower()
    if not cleaned:
        raise DurationError("empty duration")
    clock = _CLOCK.match(cleaned)
    if clock:
        hours, minutes, secs = clock.groups()
        return int(hours or 0) * 3600 + int(minutes) * 60 + int(secs)
    cleaned = re.sub(r"\b(and)\b|,", " ", cleaned)
    total = 0.0
    pos = 0
    for match in _TERM.finditer(cleaned):
        if cleaned[pos : match.start()].strip():
            break
        number, unit = match.groups()
        if unit and unit not in _UNITS:
            raise DurationError(f"unknown unit {unit!r} in duration {text!r}")
        total += float(number) * _UNITS[unit or "s"]
        pos = match.end()
    if pos == 0 or cleaned[pos:].strip():
        raise DurationError(f"{text!r} is not a duration (examples: 90s, 1h 30m, 3 hours)")
    return total


def format_duration(seconds: int) -> str:
    """A short human form (``1h 30m``), used in plan tables."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            parts.append(f"{count}{unit}")
    return " ".join(parts) or "0s"
