"""One wish per image: entries naming the same image collapse, unless their options differ."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from unpacked.reference import Reference
from unpacked.wishlist._model import Listed, Wish
from unpacked.wishlist._problems import Findings

_Identity = tuple[str, str, str | None, str | None]


def collapse(listed: Sequence[Listed], findings: Findings) -> tuple[Wish, ...]:
    """The first wish for each image, in file order; later ones are warnings or errors.

    Two entries name the same image when their references agree after normalisation
    (``ubuntu`` and ``docker.io/library/ubuntu:latest``); the scheme is an option of the
    wish, not part of the image. A wildcard and a tag it matches are different entries.
    """
    first: dict[_Identity, Listed] = {}
    for item in listed:
        identity = _identity(item.wish.reference)
        seen = first.get(identity)
        if seen is None:
            first[identity] = item
            continue
        where = f"{seen.entry} at line {seen.wish.line}"
        differences = _differences(seen.wish, item.wish)
        if differences:
            findings.error(
                item.wish.line,
                item.entry,
                f"same image as {where}, but with different {'; '.join(differences)}",
            )
        else:
            findings.warn(item.wish.line, item.entry, f"duplicate of {where}; listed once")
        if item.wish.ignore_errors and not seen.wish.ignore_errors:
            # Patterns match the text as written, so one spelling may match and the other
            # not; ignoring errors for the image is what the list asked for.
            first[identity] = Listed(seen.entry, replace(seen.wish, ignore_errors=True))
    return tuple(item.wish for item in first.values())


def _identity(reference: Reference) -> _Identity:
    return (reference.registry, reference.repository, reference.tag, reference.digest)


def _differences(a: Wish, b: Wish) -> list[str]:
    pairs = {
        "scheme": (a.reference.scheme or "https", b.reference.scheme or "https"),
        "platforms": (_platforms(a), _platforms(b)),
        "skip-flat": (a.skip_flat, b.skip_flat),
        "skip-layers": (a.skip_layers, b.skip_layers),
    }
    return [f"{name} ({_text(x)} vs {_text(y)})" for name, (x, y) in pairs.items() if x != y]


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _platforms(wish: Wish) -> str:
    return ", ".join(str(platform) for platform in wish.platforms)
