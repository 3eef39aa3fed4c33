"""``Link`` headers (RFC 8288), as registries use them to paginate tag lists."""

from __future__ import annotations

import re

import httpx

_LINK = re.compile(
    r"""\s*<(?P<target>[^>]*)>(?P<params>(?:\s*;\s*[^\s=;,]+(?:\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^\s;,"]*))?)*)\s*(?:,|$)"""
)
_PARAM = re.compile(
    r"""\s*;\s*(?P<name>[^\s=;,]+)(?:\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^\s;,"]*)))?"""
)


def parse_links(value: str) -> list[tuple[str, dict[str, str]]]:
    """``[(target, params)]`` of one ``Link`` value; ``ValueError`` if malformed."""
    links: list[tuple[str, dict[str, str]]] = []
    pos = 0
    value = value.strip()
    while pos < len(value):
        match = _LINK.match(value, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"malformed Link header {value!r} at {pos}")
        params = {}
        for param in _PARAM.finditer(match["params"]):
            text = param["quoted"]
            text = re.sub(r"\\(.)", r"\1", text) if text is not None else param["token"] or ""
            params[param["name"].lower()] = text
        links.append((match["target"], params))
        pos = match.end()
    return links


def next_link(values: list[str], base: httpx.URL) -> httpx.URL | None:
    """The absolute ``rel="next"`` target among ``Link`` header values, if any."""
    for value in values:
        for target, params in parse_links(value):
            if "next" in params.get("rel", "").lower().split():
                return base.join(target)
    return None
