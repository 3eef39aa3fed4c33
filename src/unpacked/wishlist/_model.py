"""The validated result of reading a wish list: frozen values, no behaviour beyond naming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unpacked.platform import Platform
from unpacked.reference import Reference


@dataclass(frozen=True)
class Wish:
    """One image the wish list asks for.

    ``reference`` may be a wildcard (its tags are expanded later through the registry).
    ``ignore_errors`` is set when a DUCC ``ignoreErrors`` pattern names this wish: a failure
    to convert it is then reported but does not fail the run.
    """

    reference: Reference
    text: str
    line: int
    platforms: tuple[Platform, ...]
    skip_flat: bool = False
    skip_layers: bool = False
    ignore_errors: bool = False


@dataclass(frozen=True)
class WishList:
    """A whole wish list, validated; duplicates collapsed, warnings kept as text."""

    source: str
    format: Literal["recipe-v1", "plain"]
    version: int | None
    user: str | None
    repository: str | None  # "dir:/path" / "cvmfs:name[/lease/path]" or None
    output_format: str | None
    platforms: tuple[Platform, ...]
    wishes: tuple[Wish, ...]
    warnings: tuple[str, ...]
    ignore_errors: tuple[str, ...] = ()  # DUCC ignoreErrors patterns, as written


@dataclass(frozen=True)
class Listed:
    """A wish with the name of the entry it came from, for messages about duplicates."""

    entry: str
    wish: Wish
