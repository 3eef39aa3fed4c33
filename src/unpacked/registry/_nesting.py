"""Indexes whose entries are indexes: measured, so that the error can say how deep.

The OCI image spec lets an index list other indexes. Images are read from one level of
index only (as DUCC, docker and podman do); an index that offers nothing else used to be
reported as having no platforms at all, which sends a user looking in the wrong place.
"""

from __future__ import annotations

from collections.abc import Callable

from unpacked import mediatype
from unpacked.digest import Digest
from unpacked.errors import NotFoundError
from unpacked.manifest import Descriptor, Index, Manifest
from unpacked.platform import Platform

MAX_PROBED_DEPTH = 8
"""Levels followed to measure a chain; a deeper one is reported as "more than" this."""

FetchEntry = Callable[[Descriptor], Index | Manifest]


def nested_indexes(index: Index) -> tuple[Descriptor, ...]:
    return tuple(d for d in index.manifests if d.media_type in mediatype.INDEX_TYPES)


def check_not_only_nested(
    index: Index, digest: Digest, what: str, platform: Platform, fetch: FetchEntry
) -> None:
    """Raise ``NotFoundError`` naming the depth if ``index`` offers only nested indexes.

    ``fetch`` reads one entry (verified against its descriptor); the chain is followed
    through the first nested index of each level, at most ``MAX_PROBED_DEPTH`` levels.
    """
    if index.images() or not nested_indexes(index):
        return
    depth = _depth(index, fetch)
    shown = f"more than {MAX_PROBED_DEPTH}" if depth is None else str(depth)
    raise NotFoundError(
        f"{what}: index {digest} nests too deeply for platform {platform}: its entries are "
        f"themselves indexes ({shown} levels of index before an image), and images are "
        "read from one level of index only"
    )


def _depth(index: Index, fetch: FetchEntry) -> int | None:
    """Levels of index down to the first one that lists an image (or lists nothing more)."""
    level = index
    for depth in range(1, MAX_PROBED_DEPTH + 1):
        inner = nested_indexes(level)
        if level.images() or not inner:
            return depth
        content = fetch(inner[0])
        if not isinstance(content, Index):
            return depth + 1  # the entry claimed to be an index but is an image manifest
        level = content
    return None
