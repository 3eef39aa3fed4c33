"""Where the images go: ``repository: dir:/path | cvmfs:name`` and DUCC's ``cvmfs_repo``.

The backends and how each writes its location are ``publish``'s table; a wish list may
name a known backend that is not implemented yet (the spec is checked all the same).
"""

from __future__ import annotations

from unpacked.publish import canonical_spec, cvmfs_location


def repository_spec(text: str) -> str:
    """The canonical form of a ``dir:`` / ``cvmfs:`` spec; ``ValueError`` says what is wrong."""
    return canonical_spec(text)


def cvmfs_repository(text: str) -> str:
    """``name[/lease/path]`` checked, without a trailing ``/``; ``ValueError`` if malformed."""
    return cvmfs_location(text)
