"""``WWW-Authenticate`` challenges (RFC 7235 section 4.1), parsed without I/O.

A header may hold several challenges separated by commas, and commas also
separate a challenge's parameters, so the parser looks ahead: after a comma, a
``name=`` continues the current challenge and a bare token starts a new one.
Quoted strings may contain commas and backslash escapes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_OWS = re.compile(r"[ \t]*")


@dataclass(frozen=True)
class Challenge:
    """One challenge: scheme (lower case), parameters (names lower case), or a token68."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    token68: str | None = None

    def get(self, name: str) -> str | None:
        return self.params.get(name.lower())


def parse_challenges(header: str) -> tuple[Challenge, ...]:
    """Every challenge in one ``WWW-Authenticate`` value; ``ValueError`` if malformed."""
    return _Parser(header).challenges()


class _Parser:
    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def challenges(self) -> tuple[Challenge, ...]:
        found: list[Challenge] = []
        while True:
            self._skip_list_separators()
            if self._at_end():
                return tuple(found)
            found.append(self._challenge())

    def _challenge(self) -> Challenge:
        scheme = self._expect(_TOKEN, "an authentication scheme")
        if not self._skip_spaces_before_content():
            return Challenge(scheme.lower())
        token68 = self._token68()
        if token68 is not None:
            return Challenge(scheme.lower(), token68=token68)
        return Challenge(scheme.lower(), MappingProxyType(self._params()))

    def _params(self) -> dict[str, str]:
        params: dict[str, str] = {}
        while True:
            name = self._expect(_TOKEN, "a parameter name").lower()
            self._skip(_OWS)
            if self._peek() != "=":
                raise self._error(f"expected '=' after parameter {name!r}")
            self._pos += 1
            self._skip(_OWS)
            if name in params:
                raise self._error(f"parameter {name!r} given twice")
            params[name] = self._value()
            if not self._next_is_param():
                return params

    def _next_is_param(self) -> bool:
        """After a value: consume a following comma if another parameter comes next."""
        self._skip(_OWS)
        if self._at_end():
            return False
        if self._peek() != ",":
            raise self._error("expected ',' between parameters")
        start = self._pos
        self._skip_list_separators()
        name = _TOKEN.match(self._text, self._pos)
        if name is not None:
            after = _OWS.match(self._text, name.end())
            if after is not None and self._text.startswith("=", after.end()):
                return True
        # A new challenge (or the end): leave its separator for challenges().
        self._pos = start
        return False

    def _value(self) -> str:
        if self._peek() == '"':
            return self._quoted()
        return self._expect(_TOKEN, "a parameter value")

    def _quoted(self) -> str:
        out: list[str] = []
        pos = self._pos + 1
        while pos < len(self._text):
            char = self._text[pos]
            if char == '"':
                self._pos = pos + 1
                return "".join(out)
            if char == "\\":
                pos += 1
                if pos == len(self._text):
                    break
                char = self._text[pos]
            out.append(char)
            pos += 1
        raise self._error("unterminated quoted string")

    def _token68(self) -> str | None:
        match = _TOKEN68.match(self._text, self._pos)
        if match is None:
            return None
        rest = _OWS.match(self._text, match.end())
        end = rest.end() if rest is not None else match.end()
        if end != len(self._text) and self._text[end] != ",":
            return None  # "name=value": parameters, not a token68
        self._pos = end
        return match.group()

    def _skip_spaces_before_content(self) -> bool:
        """Skip the spaces after a scheme; False if the challenge ends there."""
        self._skip(_OWS)
        return not self._at_end() and self._peek() != ","

    def _skip_list_separators(self) -> None:
        while not self._at_end() and self._peek() in " \t,":
            self._pos += 1

    def _skip(self, pattern: re.Pattern[str]) -> None:
        match = pattern.match(self._text, self._pos)
        if match is not None:
            self._pos = match.end()

    def _expect(self, pattern: re.Pattern[str], what: str) -> str:
        match = pattern.match(self._text, self._pos)
        if match is None:
            raise self._error(f"expected {what}")
        self._pos = match.end()
        return match.group()

    def _peek(self) -> str:
        return self._text[self._pos]

    def _at_end(self) -> bool:
        return self._pos >= len(self._text)

    def _error(self, problem: str) -> ValueError:
        return ValueError(f"malformed WWW-Authenticate {self._text!r} at {self._pos}: {problem}")
