"""The one timestamp format of ci-queue: ISO 8601 UTC with milliseconds and ``Z``.

Run records, job attempts, step times and log lines all use it, so they sort and compare as text.
"""

from __future__ import annotations

from datetime import UTC, datetime


def now_iso() -> str:
    """Now, as ``2024-05-01T12:00:01.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_from_epoch(seconds: float) -> str:
    """``seconds`` since the epoch in the same format (times computed on Redis's clock)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
