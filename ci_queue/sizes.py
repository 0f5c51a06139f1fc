"""Byte sizes as operators write them in settings: ``512m``, ``2g``, ``1.5GiB``, ``1073741824``.

The syntax is Docker's (``docker run --memory``, GitLab runner's ``memory``): a number, then an
optional unit ``k``, ``m``, ``g``, ``t`` or ``p`` (powers of 1024), optionally followed by ``i``
and/or ``b``, case-insensitive. One parser, so that a value means the same in ci-queue as in the
``docker`` command an operator would compare it with.
"""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_size(text: str) -> int:
    """The number of bytes ``text`` names; ``ValueError`` saying what is accepted otherwise."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a size (a number of bytes, or with a unit: 512m, 2g, 1.5GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])

