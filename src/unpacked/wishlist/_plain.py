"""OSG's plain-text wish list (``docker_images.txt``): one image reference per line."""

from __future__ import annotations

import re

from unpacked.errors import InvalidReferenceError
from unpacked.platform import DEFAULT
from unpacked.reference import parse
from unpacked.wishlist._model import Listed, Wish
from unpacked.wishlist._problems import Findings, quoted

# A comment starts at a '#' that begins the line or follows whitespace; "repo#x" is not
# a comment but a bad reference, and is reported as one.
_COMMENT = re.compile(r"(?:^|\s)#.*")
_YAML_LINE = re.compile(r"-(?:\s|$)|[^\s:]+:(?:\s|$)")


def meaningful_lines(text: str) -> list[tuple[int, str]]:
    """(line number, content) of every line that is not blank or a comment."""
    lines = []
    for number, raw in enumerate(text.split("\n"), start=1):
        content = _COMMENT.sub("", raw, count=1).strip()
        if content:
            lines.append((number, content))
    return lines


def is_plain(text: str) -> bool:
    """Whether every meaningful line is a single word, as in a plain list."""
    return all(len(content.split()) == 1 for _, content in meaningful_lines(text))


def looks_like_yaml(text: str) -> bool:
    """Whether some line is a YAML ``key:`` or ``- item``, as no plain list line can be."""
    return any(_YAML_LINE.match(content) for _, content in meaningful_lines(text))


def read_plain(text: str, findings: Findings) -> list[Listed]:
    """The wishes of a plain list in file order, duplicates kept; problems go to findings."""
    listed = []
    for line, content in meaningful_lines(text):
        words = content.split()
        if len(words) > 1:
            # The words are not shown: one of them may be a URL with a password in it.
            findings.error(line, None, _several_words(words))
            continue
        try:
            reference = parse(content)
        except InvalidReferenceError as exc:
            findings.error(line, quoted(exc.text), f"invalid image reference: {exc.reason}")
            continue
        listed.append(Listed(quoted(content), Wish(reference, content, line, (DEFAULT,))))
    return listed


def _several_words(words: list[str]) -> str:
    message = f"expected one image reference per line, found {len(words)} words"
    if words[0] == "-" or words[0].endswith(":"):
        message += " (a YAML recipe is a mapping: 'version: 1', then 'input:' and its list)"
    return message
