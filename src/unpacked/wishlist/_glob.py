"""Go's ``filepath.Match`` patterns, which DUCC's ``ignoreErrors`` entries are written in."""

from __future__ import annotations

import re


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Translate a Go ``filepath.Match`` pattern; raise ``ValueError`` if it is malformed.

    ``*`` is any run of characters but ``/``, ``?`` one character but ``/``, ``[...]`` and
    ``[^...]`` a character class with ``a-z`` ranges, and ``\\`` escapes the next character.
    Unlike ``fnmatch``, a star never crosses a ``/``, so a pattern ignores exactly the
    images DUCC would ignore.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "[":
            regex, i = _char_class(pattern, i + 1)
            out.append(regex)
            continue
        if char == "\\":
            literal, i = _escaped(pattern, i)
            out.append(re.escape(literal))
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(char) or re.escape(char))
        i += 1
    return re.compile("".join(out))


def _escaped(pattern: str, i: int) -> tuple[str, int]:
    if i + 1 >= len(pattern):
        raise ValueError("'\\' at the end of the pattern escapes nothing")
    return pattern[i + 1], i + 2


def _char_class(pattern: str, i: int) -> tuple[str, int]:
    """The class starting after '[' at ``i``, as a regex, and the index after its ']'."""
    negated = pattern.startswith("^", i)
    i += negated
    ranges: list[str] = []
    while not (pattern.startswith("]", i) and ranges):
        low, i = _class_char(pattern, i)
        if pattern.startswith("-", i):
            high, i = _class_char(pattern, i + 1)
            if high < low:
                raise ValueError(f"character range {low}-{high} is backwards")
            ranges.append(f"{re.escape(low)}-{re.escape(high)}")
        else:
            ranges.append(re.escape(low))
    return "[" + "^" * negated + "".join(ranges) + "]", i + 1


def _class_char(pattern: str, i: int) -> tuple[str, int]:
    if i >= len(pattern):
        raise ValueError("'[' without a closing ']'")
    if pattern[i] in "-]":
        raise ValueError(f"{pattern[i]!r} in a character class must be escaped with '\\'")
    if pattern[i] == "\\":
        return _escaped(pattern, i)
    return pattern[i], i + 1
