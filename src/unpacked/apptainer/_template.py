"""The part of Go's text/template that Apptainer's OCI runscript template uses.

Supported: ``{{ .Field }}``, ``{{ if .Field }}``, ``{{ else if .Field }}``,
``{{ else }}``, ``{{ end }}``, and the ``{{-`` / ``-}}`` markers that trim the
white space (space, tab, CR, LF) before or after an action. A field is true
when its string is not empty, as in Go. Anything else raises ``ValueError``:
the template is a constant of this package, so that is a programming error.

Rendering the template text copied verbatim, instead of re-typing its output
by hand, keeps the runscript byte-identical to Apptainer's, blank lines and
stray tabs included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_ACTION = re.compile(r"\{\{(- )?\s*(.*?)\s*( -)?\}\}", re.DOTALL)
_SPACE = " \t\r\n"

Piece = tuple[bool, str]
"""``(is_action, text)``: literal text, or the words of one action."""


@dataclass
class _Branch:
    outer: bool  # whether output was enabled where the ``if`` stands
    taken: bool  # whether one of its branches has been chosen already
    active: bool  # whether the current branch writes output


def render(template: str, data: Mapping[str, str]) -> str:
    """Execute ``template`` with the string fields in ``data``."""
    out: list[str] = []
    stack: list[_Branch] = []
    for is_action, text in _pieces(template):
        enabled = stack[-1].active if stack else True
        if not is_action:
            if enabled:
                out.append(text)
        elif text.startswith("."):
            if enabled:
                out.append(data[text[1:]])
        else:
            _control(text.split(), data, stack, enabled)
    if stack:
        raise ValueError("template: missing {{ end }}")
    return "".join(out)


def _pieces(template: str) -> list[Piece]:
    pieces: list[Piece] = []
    position = 0
    trim_next = False
    for match in _ACTION.finditer(template):
        text = template[position : match.start()]
        if trim_next:
            text = text.lstrip(_SPACE)
        if match.group(1):
            text = text.rstrip(_SPACE)
        pieces += [(False, text), (True, match.group(2))]
        trim_next = match.group(3) is not None
        position = match.end()
    tail = template[position:]
    pieces.append((False, tail.lstrip(_SPACE) if trim_next else tail))
    return pieces


def _control(
    words: list[str], data: Mapping[str, str], stack: list[_Branch], enabled: bool
) -> None:
    if len(words) == 2 and words[0] == "if":
        condition = _truth(words[1], data)
        stack.append(_Branch(outer=enabled, taken=condition, active=enabled and condition))
    elif stack and words[0] in ("else", "end"):
        _continue_branch(words, data, stack)
    else:
        raise ValueError(f"template: unsupported action {{{{ {' '.join(words)} }}}}")


def _continue_branch(words: list[str], data: Mapping[str, str], stack: list[_Branch]) -> None:
    branch = stack[-1]
    if len(words) == 3 and words[:2] == ["else", "if"]:
        condition = not branch.taken and _truth(words[2], data)
        branch.active = branch.outer and condition
        branch.taken = branch.taken or condition
    elif words == ["else"]:
        branch.active = branch.outer and not branch.taken
        branch.taken = True
    elif words == ["end"]:
        stack.pop()
    else:
        raise ValueError(f"template: unsupported action {{{{ {' '.join(words)} }}}}")


def _truth(field: str, data: Mapping[str, str]) -> bool:
    if not field.startswith("."):
        raise ValueError(f"template: unsupported condition {field!r}")
    return bool(data[field[1:]])
