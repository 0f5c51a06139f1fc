"""Helpers of the pipeline tests: a repository directory and files written into it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


def write(root: Path, name: str, text: str) -> Path:
    """Write ``text`` (dedented) to ``root/name``, creating directories."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """An empty repository tree for the pipeline under test."""
    root = tmp_path / "repo"
    root.mkdir()
    return root
