"""Service logging through loguru, configured once.

Human-readable lines on a terminal, JSON lines (one object per line, ready for a log
collector) with ``CIQ_LOG_FORMAT=json`` or when stderr is not a terminal in ``auto`` mode.
``run_id``, ``job`` and ``step`` are bound with :func:`bind` wherever they are known, so every
line says which run it belongs to.
"""

from __future__ import annotations

import sys
from typing import Any

from loguru import logger

from ci_queue.settings import Settings, get_settings

_HUMAN_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[context]}</cyan>{message}"
)
_CONTEXT_KEYS = ("run_id", "job", "step")
_configured = False


def _with_context(record: dict[str, Any]) -> None:
    """Render bound run/job/step as a short ``[run=.. job=..] `` prefix for human output."""
    extra = record["extra"]
    parts = [f"{k}={extra[k]}" for k in _CONTEXT_KEYS if extra.get(k) is not None]
    extra["context"] = f"[{' '.join(parts)}] " if parts else ""


def configure(settings: Settings | None = None, *, force: bool = False) -> None:
    """Install the one loguru sink of this process (idempotent unless ``force``)."""
    global _configured
    if _configured and not force:
        return
    settings = settings or get_settings()
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "human" if sys.stderr.isatty() else "json"
    logger.remove()
    logger.configure(patcher=_with_context)
    if fmt == "json":
        logger.add(sys.stderr, level=settings.log_level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=settings.log_level, format=_HUMAN_FORMAT, diagnose=False)
    _configured = True


def bind(run_id: str | None = None, job: str | None = None, step: str | None = None, **extra: Any):
    """A logger with the run / job / step context bound (None values are left out)."""
    context = {k: v for k, v in (("run_id", run_id), ("job", job), ("step", step)) if v is not None}
    return logger.bind(**context, **extra)
