"""Secrets a job names (``secrets: [NAME, ...]``), resolved on the build host.

A value comes from the worker's environment, else from the secrets file (``CIQ_SECRETS_FILE``).
Values are never stored (not in Redis, not in a job's result) and are masked in its log.

The secrets file holds ``KEY=VALUE`` lines: blank lines and lines starting with ``#`` are
ignored, an optional ``export `` prefix is allowed, spaces around the key are dropped, and a
value wholly inside matching single or double quotes loses them (nothing else is interpreted:
no escapes, no ``$`` expansion). A variable set in the environment wins, even if empty.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretsFileError(Exception):
    """The secrets file cannot be read, or a line of it is not ``KEY=VALUE``."""


class MissingSecrets(Exception):
    """Secrets the job needs that this worker does not have."""

    def __init__(self, names: list[str], where: str) -> None:
        self.names = names
        super().__init__(f"secret{'s' * (len(names) != 1)} {', '.join(names)} not found in {where}")


def parse_secrets_file(path: str | os.PathLike) -> dict[str, str]:
    """The ``KEY=VALUE`` pairs of a secrets file; raises SecretsFileError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretsFileError(f"cannot read the secrets file {path}: {exc}") from exc
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.match(name):
            raise SecretsFileError(f"{path}:{number}: not a KEY=VALUE line")
        value = raw.split("=", 1)[1].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def resolve_secrets(names: Iterable[str], *, environ: Mapping[str, str] | None = None,
                    secrets_file: str | os.PathLike | None = None) -> dict[str, str]:
    """The value of every named secret; raises MissingSecrets naming those not found.

    The file is read only when a secret is not in the environment.
    """
    environ = os.environ if environ is None else environ
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in dict.fromkeys(names):
        if name in environ:
            found[name] = environ[name]
        else:
            missing.append(name)
    if not missing:
        return found
    if not secrets_file:
        raise MissingSecrets(missing, "the worker's environment (and no secrets file is set: CIQ_SECRETS_FILE)")
    try:
        from_file = parse_secrets_file(secrets_file)
    except SecretsFileError as exc:
        raise MissingSecrets(missing, f"the worker's environment, and {exc}") from None
    still_missing = [name for name in missing if name not in from_file]
    if still_missing:
        raise MissingSecrets(still_missing, f"the worker's environment or in the secrets file {secrets_file}")
    found.update({name: from_file[name] for name in missing})
    return found
