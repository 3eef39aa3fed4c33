"""Which published references a wish names, decided without asking a registry."""

from __future__ import annotations

from unpacked.reference import Reference


def same_repository(a: Reference, b: Reference) -> bool:
    return a.registry == b.registry and a.repository == b.repository


def names(wish: Reference, reference: Reference) -> bool:
    """Whether ``wish`` names ``reference``: the same public name, or a tag its pattern matches.

    For a wildcard this says only that the pattern *could* select the tag; whether the
    registry still has it takes a tag listing.
    """
    if not same_repository(wish, reference):
        return False
    if wish.is_wildcard:
        return reference.tag is not None and wish.matches_tag(reference.tag)
    return wish.public_name == reference.public_name
