"""Problems found in a wish list: one per entry, with file and line, collected before raising."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from unpacked.errors import UnpackedError

_QUOTED_MAX = 120


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a wish list, located as precisely as we can."""

    source: str
    line: int | None
    entry: str | None  # "input[3] 'ubuntu:22.04 x'", "platforms[1] 'linux'", a key, ...
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return (
            f"{where}: {self.entry}: {self.message}" if self.entry else f"{where}: {self.message}"
        )


class WishlistError(UnpackedError):
    """A wish list cannot be used; ``problems`` lists everything wrong with it, in file order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(sorted(problems, key=_line))
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass
class Findings:
    """Errors and warnings collected while reading one wish list."""

    source: str
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, line: int | None, entry: str | None, message: str) -> None:
        self.errors.append(Problem(self.source, line, entry, message))

    def warn(self, line: int | None, entry: str | None, message: str) -> None:
        self.warnings.append(Problem(self.source, line, entry, message))

    def raise_if_errors(self, *, strict: bool) -> None:
        """Raise ``WishlistError`` for the errors, and for the warnings too when ``strict``."""
        problems = self.errors + self.warnings if strict else self.errors
        if problems:
            raise WishlistError(problems)

    def warning_texts(self) -> tuple[str, ...]:
        return tuple(str(problem) for problem in sorted(self.warnings, key=_line))


def quoted(text: str) -> str:
    """``text`` quoted for a message, shortened so that one hostile line stays one line."""
    return repr(text if len(text) <= _QUOTED_MAX else text[: _QUOTED_MAX - 3] + "...")


def _line(problem: Problem) -> int:
    return problem.line or 0
