"""What garbage collection needs to know about a repository, read in one pass through the view.

This is the only I/O of the mark phase, and it reads through ``unpacked.repository``,
so gc and verify agree on what an image, a link and a fan-out are. Everything the
repository says about which images are in use is read strictly: a ``status.json``,
``manifest.json`` or ``remove-schedule.json`` that cannot be read stops garbage
collection (``PublishError`` naming the file), because guessing there could delete an
image someone uses. An unreadable ``origin.json`` concerns one layer only: that layer
is kept and reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from unpacked import layout, repository
from unpacked.digest import Digest
from unpacked.records import RemovalSchedule
from unpacked.repository import PublishedImage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class References:
    """Everything that keeps images alive, and the removal schedule.

    links:       public and ``.multiarch`` links → the image id their target names
    published:   the images (``repository.is_image``), sorted by metadata path
    live_layers: the layers of every ``manifest.json`` under ``.metadata``
    schedule:    ``remove-schedule.json`` (every entry's time checked)
    """

    links: Mapping[PurePosixPath, str]
    published: tuple[PublishedImage, ...]
    live_layers: frozenset[str]
    schedule: RemovalSchedule

    def live_images(self) -> frozenset[str]:
        """Images a link or a status uses: never removed, taken off the schedule."""
        return frozenset(self.links.values()) | {image.image_id for image in self.published}


@dataclass(frozen=True)
class RepositoryState:
    """A snapshot of the repository for planning a collection.

    flat_trees: image ids with a ``.flat/<c2>/<c>`` directory
    layers:     layer digest → its ``origin.json`` set (empty if the file is missing;
                None if it is unreadable, which keeps the layer)
    """

    references: References
    flat_trees: frozenset[str]
    layers: Mapping[str, frozenset[str] | None]


def read_state(root: Path) -> RepositoryState:
    """Read everything garbage collection plans from (see the module docstring)."""
    return RepositoryState(read_references(root), repository.flat_trees(root), _layers(root))


def read_references(root: Path) -> References:
    """Links, statuses, live layers and the schedule; ``PublishError`` for unreadable records."""
    tree = repository.metadata_tree(root)
    return References(
        _links(root),
        repository.published_images(root, tree),
        repository.live_layers(root, tree),
        repository.read_schedule(root),
    )


def _links(root: Path) -> dict[PurePosixPath, str]:
    links: dict[PurePosixPath, str] = {}
    for link in repository.links(root):
        if link.image_id is not None:
            links[link.path] = link.image_id
        else:
            logger.debug("%s -> %s: not a link to a flat tree; ignored", link.path, link.target)
    return links


def _layers(root: Path) -> dict[str, frozenset[str] | None]:
    layers: dict[str, frozenset[str] | None] = {}
    for hexdigest in repository.fanout(root, layout.LAYERS).digests:
        digest = Digest("sha256", hexdigest)
        try:
            layers[str(digest)] = repository.read_origin(root, digest)
        except (OSError, ValueError) as exc:
            logger.warning(
                "%s: unreadable, the layer is kept: %s",
                root / layout.layer_origin_file(digest),
                exc,
            )
            layers[str(digest)] = None
    return layers
