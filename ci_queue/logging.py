"""Service logging through loguru, configured once.

Human-readable lines on a terminal, JSON lines (one object per line, ready for a log
collector) with ``CIQ_LOG_FORMAT=json`` or when stderr is not a terminal in ``auto`` mode.
``run_id``, ``job`` and ``step`` are bound with :func:`bind` wherever they are known, so every
line says which run it belongs to.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import Any

from loguru import logger

from ci_queue.redis_urls import scrub, settings_secrets
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
    sink = ScrubbedStream(sys.stderr, hidden(settings))
    if fmt == "json":
        logger.add(sink, level=settings.log_level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(sink, level=settings.log_level, format=_HUMAN_FORMAT, diagnose=False)
    _configured = True


def hidden(settings: Settings) -> tuple[str, ...]:
    """The strings no log line may contain: the Redis passwords of the settings, as written and
    as they appear inside a JSON string."""
    found = settings_secrets(settings)
    return tuple(dict.fromkeys([*found, *(json.dumps(s)[1:-1] for s in found)]))


class ScrubbedStream:
    """A text stream that masks ``hidden`` strings in everything written through it: the net
    under log lines whose text is not ours (a library's exception, a traceback), so a password
    of ``CIQ_REDIS_URL`` never reaches a log even when some message carries it."""

    def __init__(self, stream: Any, hidden: Iterable[str]) -> None:
        self.stream, self.hidden = stream, tuple(hidden)

    def write(self, text: str) -> int:
        return self.stream.write(scrub(text, self.hidden))

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:  # loguru colours a terminal's lines
        return self.stream.isatty()


class _ScrubbedFormatter(logging.Formatter):
    """Another formatter's lines (tracebacks included), with ``hidden`` strings masked."""

    def __init__(self, inner: logging.Formatter, hidden: tuple[str, ...]) -> None:
        super().__init__()
        self.inner, self.hidden = inner, hidden

    def format(self, record: logging.LogRecord) -> str:
        return scrub(self.inner.format(record), self.hidden)


def scrub_handlers(target: logging.Logger, settings: Settings | None = None) -> None:
    """Mask the settings' Redis passwords in every line the handlers of the standard-library
    logger ``target`` write (Celery's and gunicorn's logs do not go through loguru)."""
    secrets = hidden(settings or get_settings())
    for handler in target.handlers:
        if secrets and not isinstance(handler.formatter, _ScrubbedFormatter):
            handler.setFormatter(_ScrubbedFormatter(handler.formatter or logging.Formatter(), secrets))


def bind(run_id: str | None = None, job: str | None = None, step: str | None = None, **extra: Any):
    """A logger with the run / job / step context bound (None values are left out)."""
    context = {k: v for k, v in (("run_id", run_id), ("job", job), ("step", step)) if v is not None}
    return logger.bind(**context, **extra)


def scrub_celery_logs(settings: Settings) -> None:
    """Once Celery has set up its log handlers (root and task loggers), mask the settings' Redis
    passwords in them too. (Celery masks the password in its banner and its "Connected to" lines
    itself; this covers every other line, whoever formats it.)"""
    from celery.signals import after_setup_logger, after_setup_task_logger

    def on_setup(logger: logging.Logger, **_: Any) -> None:
        scrub_handlers(logger, settings)

    after_setup_logger.connect(on_setup, weak=False)
    after_setup_task_logger.connect(on_setup, weak=False)
