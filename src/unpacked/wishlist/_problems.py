"""Problems found in a wish list: one per entry, with file and line, collected before raising."""

from __future__ import annotations

from dataclasses import dataclass, field

from unpacked.errors import Problem, WishlistError

__all__ = ["Findings", "Problem", "WishlistError", "quoted"]

_QUOTED_MAX = 120


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
