"""Wish lists in, validated wishes out. No network; the only I/O is reading the file.

Two formats are read, chosen by content (the file name plays no part):

**DUCC recipe v1** (YAML), as DUCC reads it::

    version: 1                      # required; no other version exists
    user: cvmfsunpacker             # optional: account for pushing thin images
    cvmfs_repo: unpacked.cern.ch    # optional: same as "repository: cvmfs:unpacked.cern.ch"
    output_format: '$(scheme)://registry.example.org/thin/$(image)'   # optional
    ignoreErrors: ['https://ghcr.io/org/*']   # optional: DUCC's Go filepath.Match patterns
    input:                          # a list, possibly empty
      - 'https://registry.hub.docker.com/library/centos:centos7'
      - ubuntu:22.04                # any form the reference parser takes

``output_format`` may use ``$(scheme) $(registry) $(repository) $(tag) $(digest)
$(reference) $(image)``, with DUCC's meanings (see :func:`render_output_format`); an
empty one means DUCC's default, :data:`DEFAULT_OUTPUT_FORMAT`. A wish whose name as written
or URL form matches an ``ignoreErrors`` pattern gets ``Wish.ignore_errors``.

Our additions to the recipe, all optional:

- ``repository: dir:/absolute/path`` or ``repository: cvmfs:name[/lease/path]``: where the
  images go. ``cvmfs_repo: name`` means ``cvmfs:name``; giving both is allowed only when
  they name the same repository.
- ``platforms: [linux/amd64, linux/arm64]``: the platforms unpacked from multi-platform
  images (default ``linux/amd64``; the order is kept).
- an ``input`` entry may be a mapping instead of a string::

      - image: ghcr.io/org/app:1.2
        platforms: [linux/arm64]    # replaces the top-level platforms for this image
        skip-flat: true             # as the CLI's --skip-flat, for this image only
        skip-layers: false          # as the CLI's --skip-layers, for this image only

**Plain list** (OSG's ``docker_images.txt``): one reference per line; ``#`` starts a
comment at the beginning of a line or after whitespace; blank lines are ignored. Every
image gets ``linux/amd64``.

Format choice: a text that YAML reads as a mapping is a recipe, unless none of its keys
is a recipe key and every line is a single word (``ubuntu:`` alone is a plain list with a
bad reference, not a recipe). Anything else is a plain list. A text YAML cannot read is a
YAML syntax error if a line looks like YAML (``key:`` or ``- item``), else a plain list
(whose lines are then checked one by one).

Validation collects every problem of a file (unknown keys with a "did you mean", wrong
types, bad references, bad platforms, ...) and raises one :class:`WishlistError` that lists
them all, each with its line. Entries naming the same image (``ubuntu`` and
``docker.io/library/ubuntu:latest``) collapse into the first, with a warning naming both
lines, or an error when their options differ. Warnings are returned in
``WishList.warnings``; ``strict=True`` makes them errors.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, ScalarNode

from unpacked.platform import DEFAULT
from unpacked.wishlist._duplicates import collapse
from unpacked.wishlist._model import Listed, Wish, WishList
from unpacked.wishlist._output_format import (
    DEFAULT_OUTPUT_FORMAT,
    PLACEHOLDERS,
    render_output_format,
)
from unpacked.wishlist._plain import is_plain, looks_like_yaml, read_plain
from unpacked.wishlist._problems import Findings, Problem, WishlistError
from unpacked.wishlist._recipe import RECIPE_KEYS, read_recipe

__all__ = [
    "DEFAULT_OUTPUT_FORMAT",
    "PLACEHOLDERS",
    "Problem",
    "Wish",
    "WishList",
    "WishlistError",
    "load",
    "load_bytes",
    "loads",
    "render_output_format",
]

logger = logging.getLogger(__name__)


def load(path: Path, *, strict: bool = False) -> WishList:
    """Read and validate the wish list in ``path`` (UTF-8); raise ``WishlistError``."""
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WishlistError(
            [Problem(source, None, None, f"cannot read: {exc.strerror or exc}")]
        ) from exc
    return load_bytes(data, source=source, strict=strict)


def load_bytes(data: bytes, *, source: str, strict: bool = False) -> WishList:
    """Validate the wish list ``data`` (UTF-8) read from ``source`` (a pipe, standard input)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (byte {data[exc.start]:#04x})"
        raise WishlistError([Problem(source, line, None, message)]) from None
    return loads(text, source=source, strict=strict)


def loads(text: str, *, source: str = "<string>", strict: bool = False) -> WishList:
    """Validate the wish list ``text``; ``source`` names it in messages."""
    findings = Findings(source)
    settings, listed = _read(text.removeprefix("\ufeff"), findings)
    wishes = collapse(listed, findings)
    if not listed and not findings.errors:
        findings.warn(None, None, "lists no images")
    findings.raise_if_errors(strict=strict)
    logger.debug(
        "%s: %s, %d wishes, %d warnings",
        source,
        settings.format,
        len(wishes),
        len(findings.warnings),
    )
    return replace(settings, wishes=wishes, warnings=findings.warning_texts())


def _read(text: str, findings: Findings) -> tuple[WishList, list[Listed]]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        if not looks_like_yaml(text):
            return _plain_settings(findings), read_plain(text, findings)
        findings.error(_yaml_error_line(exc, text), None, _yaml_error_message(exc))
        return _plain_settings(findings), []
    if isinstance(root, MappingNode) and (_names_recipe_key(root) or not is_plain(text)):
        return read_recipe(root, findings)
    return _plain_settings(findings), read_plain(text, findings)


def _names_recipe_key(root: MappingNode) -> bool:
    return any(isinstance(key, ScalarNode) and key.value in RECIPE_KEYS for key, _ in root.value)


def _plain_settings(findings: Findings) -> WishList:
    return WishList(
        source=findings.source,
        format="plain",
        version=None,
        user=None,
        repository=None,
        output_format=None,
        platforms=(DEFAULT,),
        wishes=(),
        warnings=(),
    )


def _yaml_error_line(exc: yaml.YAMLError | RecursionError, text: str) -> int | None:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        return int(exc.problem_mark.line) + 1
    if isinstance(exc, yaml.reader.ReaderError):
        return text.count("\n", 0, exc.position) + 1
    return None


def _yaml_error_message(exc: yaml.YAMLError | RecursionError) -> str:
    if isinstance(exc, RecursionError):  # PyYAML's composer recurses once per nesting level
        return "YAML nested too deeply to read"
    if isinstance(exc, yaml.reader.ReaderError):
        character = exc.character
        shown = f"U+{character:04X}" if isinstance(character, int) else repr(character)
        return f"YAML does not allow the character {shown}"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"not valid YAML: {exc}"
    message = f"YAML syntax error: {exc.problem or 'unreadable'}"
    if exc.context and exc.context_mark is not None:
        message += f" ({exc.context}, from line {exc.context_mark.line + 1})"
    return message
