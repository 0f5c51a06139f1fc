"""Settings of ci-queue, read once from ``CIQ_*`` environment variables.

Every tunable of the system lives here, with a safe default, so that an operator finds all of
them in one place (the README lists them) and code never reads ``os.environ`` on its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache

PREFIX = "CIQ_"


class SettingsError(ValueError):
    """A ``CIQ_*`` variable holds a value of the wrong kind."""


@dataclass(frozen=True)
class Settings:
    """All configuration; field ``x_y`` is read from ``CIQ_X_Y``."""

    log_format: str = "auto"  # auto (human on a terminal, JSON otherwise) | human | json
    log_level: str = "INFO"
    pipeline_max_bytes: int = 4 * 1024 * 1024  # larger pipeline files are refused
    default_branch: str = "main"  # used when an event does not say which branch is the default

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: the process environment)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw, type(f.default))
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse values that would only fail later, far from their cause."""
        if self.log_format not in ("auto", "human", "json"):
            raise SettingsError(f"CIQ_LOG_FORMAT must be auto, human or json, not {self.log_format!r}")
        if self.pipeline_max_bytes <= 0:
            raise SettingsError("CIQ_PIPELINE_MAX_BYTES must be positive")


def _convert(name: str, raw: str, kind: type) -> object:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{PREFIX}{name.upper()} must be a boolean (1/0, true/false), not {raw!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{PREFIX}{name.upper()} must be a number, not {raw!r}") from None
    return raw


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings.from_env()
