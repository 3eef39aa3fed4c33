"""DUCC's ``output_format``: the name of the thin image pushed for each converted image."""

from __future__ import annotations

import difflib
import re

from unpacked.errors import ConfigError, InvalidReferenceError
from unpacked.reference import Reference

DEFAULT_OUTPUT_FORMAT = "$(scheme)://$(registry)/$(repository)_thin:$(tag)"
"""What DUCC uses when a recipe has no ``output_format``."""

PLACEHOLDERS = ("scheme", "registry", "repository", "tag", "digest", "reference", "image")

_PLACEHOLDER = re.compile(r"\$\(([^()]*)\)")


def output_format_problems(template: str) -> list[str]:
    """Everything wrong with ``template``'s ``$(...)`` placeholders; empty when it is usable."""
    problems = [
        _unknown(match.group(1))
        for match in _PLACEHOLDER.finditer(template)
        if match.group(1) not in PLACEHOLDERS
    ]
    if "$(" in _PLACEHOLDER.sub("", template):
        problems.append("'$(' without a closing ')'")
    return problems


def render_output_format(template: str, reference: Reference) -> str:
    """Fill in ``template`` for ``reference`` the way DUCC does (``formatOutputImage``).

    ``$(scheme)`` is the reference's scheme or ``https``; ``$(tag)`` and ``$(digest)`` are
    empty when absent; ``$(reference)`` is DUCC's ``GetReference()``: ``:tag``,
    ``@digest`` or ``:tag@digest``, separator included; ``$(image)`` is
    ``$(repository)$(reference)``. Unlike DUCC, every occurrence is replaced (DUCC stops
    after five) in one pass, so a value can never be mistaken for a placeholder.
    """
    problems = output_format_problems(template)
    if problems:
        raise ConfigError(f"output_format {template!r}: {'; '.join(problems)}")
    if reference.is_wildcard:
        raise InvalidReferenceError(
            str(reference), "a wildcard reference names no thin image; expand its tag first"
        )
    values = _values(reference)
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _values(reference: Reference) -> dict[str, str]:
    tag = f":{reference.tag}" if reference.tag is not None else ""
    digest = f"@{reference.digest}" if reference.digest is not None else ""
    return {
        "scheme": reference.scheme or "https",
        "registry": reference.registry,
        "repository": reference.repository,
        "tag": reference.tag or "",
        "digest": reference.digest or "",
        "reference": tag + digest,
        "image": reference.repository + tag + digest,
    }


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, PLACEHOLDERS, n=1)
    hint = (
        f"did you mean $({close[0]})?"
        if close
        else "known: " + " ".join(f"$({known})" for known in PLACEHOLDERS)
    )
    return f"unknown placeholder $({name}); {hint}"
