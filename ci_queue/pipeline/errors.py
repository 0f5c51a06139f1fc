"""Diagnostics of the pipeline language: every problem points at a file, line and column.

A user fixes a pipeline file by reading ``FILE:LINE:COL: message`` lines, so every error and
warning carries the position of the key or value at fault (1-based, as editors count).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mark:
    """A position in a source file (1-based line and column)."""

    file: str
    line: int
    col: int
    # For a scalar value: columns from the mark to its text's first character (0 plain, 1 after a
    # quote), None when the text does not start on this line (block scalars). Lets a message point
    # inside the value (an expression's fault); not part of the position's identity.
    text_offset: int | None = field(default=0, compare=False, repr=False)

    def within(self, offset: int, text: str) -> Mark:
        """The position of character ``offset`` of a one-line scalar ``text`` written at this mark
        (this mark itself when that cannot be known: multi-line or block text)."""
        if self.text_offset is None or "\n" in text:
            return self
        return Mark(self.file, self.line, self.col + self.text_offset + offset)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a pipeline file."""

    mark: Mark | None
    message: str
    hint: str | None = None
    severity: str = "error"  # "error" | "warning"

    def format(self) -> str:
        """The one-line form ``FILE:LINE:COL: message`` (``warning:`` prefixed for warnings)."""
        where = str(self.mark) if self.mark else "<pipeline>"
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{where}: {prefix}{self.message}"

    def to_dict(self) -> dict:
        return {
            "file": self.mark.file if self.mark else None,
            "line": self.mark.line if self.mark else None,
            "col": self.mark.col if self.mark else None,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass
class PipelineError(Exception):
    """Raised when a pipeline file cannot be planned; holds every error found."""

    diagnostics: list[Diagnostic] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        """The diagnostics that are errors (warnings may travel along)."""
        return [d for d in self.diagnostics if d.severity == "error"]


def error(mark: Mark | None, message: str, hint: str | None = None) -> PipelineError:
    """Build a PipelineError with a single diagnostic."""
    return PipelineError([Diagnostic(mark, message, hint)])
