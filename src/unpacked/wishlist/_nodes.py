"""Reading typed values out of a composed YAML node tree, reporting each mismatch with its line.

Working on nodes rather than on ``yaml.safe_load``'s Python values keeps every value's
line number, and sees what loading hides: duplicate keys (PyYAML keeps the last one).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from unpacked.wishlist._problems import Findings, quoted

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"

_SCALAR_KINDS = {
    INT: "the integer",
    BOOL: "the boolean",
    "tag:yaml.org,2002:float": "the number",
    "tag:yaml.org,2002:timestamp": "the date",
}


def line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def is_null(node: Node | None) -> bool:
    """Whether ``node`` is absent or an empty value (``key:`` with nothing after it)."""
    return node is None or (isinstance(node, ScalarNode) and node.tag == NULL)


def describe(node: Node) -> str:
    """What a node is, for "expected X, got Y" messages."""
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    if node.tag == NULL:
        return "an empty value"
    if node.tag == STR:
        return f"a string {quoted(node.value)}"
    return f"{_SCALAR_KINDS.get(node.tag, 'the value')} {node.value}"


def fields(
    mapping: MappingNode, known: Sequence[str], prefix: str, findings: Findings
) -> dict[str, tuple[Node, Node]]:
    """The known keys of ``mapping`` -> (key node, value node); report the others.

    Unknown keys get a "did you mean" suggestion; a repeated key is an error, because
    YAML loaders silently keep only one of the two values.
    """
    found: dict[str, tuple[Node, Node]] = {}
    for key_node, value_node in mapping.value:
        if not (isinstance(key_node, ScalarNode) and key_node.tag == STR):
            findings.error(line(key_node), prefix or None, f"unexpected key {describe(key_node)}")
            continue
        key = key_node.value
        entry = f"{prefix}.{key}" if prefix else key
        if key in found:
            first = line(found[key][0])
            findings.error(line(key_node), entry, f"key given twice (first at line {first})")
        elif key not in known:
            findings.error(line(key_node), entry, unknown_key(key, known))
        else:
            found[key] = (key_node, value_node)
    return found


def unknown_key(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return "unknown key; expected one of: " + ", ".join(known)


def string(node: Node, entry: str, findings: Findings) -> str | None:
    """The node's text if it is a YAML string, else report it and return None."""
    if isinstance(node, ScalarNode) and node.tag == STR:
        return str(node.value)
    findings.error(line(node), entry, f"expected a string, got {describe(node)}")
    return None


def boolean(node: Node, entry: str, findings: Findings) -> bool | None:
    if isinstance(node, ScalarNode) and node.tag == BOOL:
        return str(node.value).lower() in ("true", "yes", "on")
    findings.error(line(node), entry, f"expected true or false, got {describe(node)}")
    return None


def string_items(node: Node, entry: str, findings: Findings) -> list[tuple[str, int, str]]:
    """(entry, line, text) of each string in a YAML list; report the list or items that are not.

    ``entry`` names the item for messages: ``platforms[1] 'linux'``.
    """
    if not isinstance(node, SequenceNode):
        findings.error(line(node), entry, f"expected a list, got {describe(node)}")
        return []
    items = []
    for index, item in enumerate(node.value):
        text = string(item, f"{entry}[{index}]", findings)
        if text is not None:
            items.append((f"{entry}[{index}] {quoted(text)}", line(item), text))
    return items
