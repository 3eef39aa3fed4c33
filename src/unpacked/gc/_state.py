"""What garbage collection needs to know about a repository, read from disk in one pass.

This is the only I/O of the mark phase. Everything the repository says about which
images are in use is read strictly: a ``status.json``, ``manifest.json`` or
``remove-schedule.json`` that cannot be read stops garbage collection (``PublishError``
naming the file), because guessing there could delete an image someone uses. An
unreadable ``origin.json`` concerns one layer only: that layer is kept and reported.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from unpacked import layout
from unpacked.digest import Digest
from unpacked.errors import PublishError, UnpackedError
from unpacked.manifest import parse_manifest
from unpacked.records import ImageStatus, RemovalSchedule, parse_origin
from unpacked.reference import Reference
from unpacked.reference import parse as parse_reference

logger = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9a-f]{64}")
# A public link's target, wherever the repository is mounted: the last three components
# name the flat tree. Matching only the tail keeps absolute links (made by hand) live too.
_FLAT_TARGET = re.compile(r"(?:^|/)\.flat/([0-9a-f]{2})/([0-9a-f]{64})/?$")
_STATUS = "status.json"
_MANIFEST = "manifest.json"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_MULTIARCH = str(layout.MULTIARCH)


def format_time(when: datetime) -> str:
    """The repository's time stamp format (UTC, seconds), as convert writes it."""
    return when.astimezone(UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """A time stamp of the repository's records; naive ones are UTC. ``ValueError`` if bad."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PublishedImage:
    """A ``status.json``: its reference, its directory, its image.

    A reference published for several platforms has one per platform: the default one
    in ``.metadata/<name>``, the others in ``.metadata/.multiarch/<arch>/<name>``.
    """

    reference: Reference
    metadata: PurePosixPath
    image_id: str


@dataclass(frozen=True)
class References:
    """Everything that keeps images alive, and the removal schedule.

    links:       public and ``.multiarch`` links → the image id their target names
    published:   the references with a ``status.json``, sorted by metadata path
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
    return RepositoryState(read_references(root), _flat_trees(root), _layers(root))


def read_references(root: Path) -> References:
    """Links, statuses, live layers and the schedule; ``PublishError`` for unreadable records."""
    published, live_layers = _metadata(root)
    return References(_links(root), published, live_layers, read_schedule(root))


def read_schedule(root: Path) -> RemovalSchedule:
    path = root / layout.REMOVE_SCHEDULE
    try:
        schedule = RemovalSchedule.from_bytes(_read_optional(path))
        for entry in schedule.entries:
            parse_time(entry.unlinked)
    except (OSError, ValueError) as exc:
        raise PublishError(f"{path}: unreadable removal schedule: {exc}") from exc
    return schedule


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


# --- links ---------------------------------------------------------------------------


def _links(root: Path) -> dict[PurePosixPath, str]:
    links: dict[PurePosixPath, str] = {}
    for path in _symlinks(root):
        target = os.readlink(root / path)
        image_id = flat_target_image(path, target)
        if image_id is not None:
            links[path] = image_id
        else:
            logger.debug("%s -> %s: not a link to a flat tree; ignored", path, target)
    return links


def flat_target_image(link: PurePosixPath, target: str) -> str | None:
    """The image id a link's target names (``.../.flat/<c2>/<c>``), or None."""
    joined = os.path.normpath(os.path.join(str(link.parent), target))
    match = _FLAT_TARGET.search(joined)
    if match is None or match[2][:2] != match[1]:
        return None
    return f"sha256:{match[2]}"


def _symlinks(root: Path) -> Iterator[PurePosixPath]:
    """Symbolic links outside dot-directories and ``podmanStore``, plus under ``.multiarch``."""
    for top in sorted(os.listdir(root)):
        if top == str(layout.PODMAN_STORE) or (top.startswith(".") and top != _MULTIARCH):
            continue
        path = root / top
        if os.path.islink(path):
            yield PurePosixPath(top)
        elif os.path.isdir(path):
            yield from _symlinks_under(root, PurePosixPath(top))


def _symlinks_under(root: Path, top: PurePosixPath) -> Iterator[PurePosixPath]:
    keep_dots = top == layout.MULTIARCH
    for directory, subdirs, files in os.walk(root / top):
        # os.walk lists symlinks to directories among subdirs and never follows them.
        subdirs[:] = sorted(d for d in subdirs if keep_dots or not d.startswith("."))
        relative = PurePosixPath(directory).relative_to(root)
        for name in sorted([*subdirs, *files]):
            if os.path.islink(os.path.join(directory, name)):
                yield relative / name


# --- metadata ------------------------------------------------------------------------


def _metadata(root: Path) -> tuple[tuple[PublishedImage, ...], frozenset[str]]:
    published: list[PublishedImage] = []
    live_layers: set[str] = set()
    top = root / layout.METADATA
    for directory, subdirs, files in os.walk(top):
        subdirs.sort()
        relative = PurePosixPath(directory).relative_to(root)
        if _STATUS in files:
            published.append(_published(root, relative))
        if _MANIFEST in files:
            live_layers |= _manifest_layers(root / relative / _MANIFEST)
    return tuple(published), frozenset(live_layers)


def _published(root: Path, metadata: PurePosixPath) -> PublishedImage:
    path = root / metadata / _STATUS
    try:
        status = ImageStatus.from_bytes(path.read_bytes())
        reference = parse_reference(status.reference)
    except (OSError, ValueError) as exc:
        raise PublishError(f"{path}: unreadable image status: {exc}") from exc
    if public_name_of(metadata) != layout.public_link(reference):
        raise PublishError(f"{path}: records {reference}, which belongs in another directory")
    return PublishedImage(reference, metadata, status.image_id)


def public_name_of(metadata: PurePosixPath) -> PurePosixPath:
    """The public name a metadata directory belongs to.

    ``.metadata/<name>``, or ``.metadata/.multiarch/<arch>/<name>`` for the image of a
    further platform (published with a ``.multiarch`` link only).
    """
    parts = metadata.parts[1:]
    if parts and parts[0] == _MULTIARCH:
        parts = parts[2:]
    return PurePosixPath(*parts)


def _manifest_layers(path: Path) -> frozenset[str]:
    try:
        manifest = parse_manifest(path.read_bytes(), what=str(path))
    except (OSError, UnpackedError) as exc:
        raise PublishError(f"{path}: unreadable manifest: {exc}") from exc
    return frozenset(str(layer.digest) for layer in manifest.layers)


# --- flat trees and layers -------------------------------------------------------------


def _fanout(top: Path) -> Iterator[tuple[str, Path]]:
    """``(hex, path)`` of each ``<top>/<h2>/<hex>`` directory; anything else is skipped."""
    try:
        supers = sorted(os.listdir(top))
    except FileNotFoundError:
        return
    for prefix in supers:
        if len(prefix) != 2 or not os.path.isdir(top / prefix):
            continue
        for name in sorted(os.listdir(top / prefix)):
            path = top / prefix / name
            if _HEX.fullmatch(name) and name[:2] == prefix and _is_dir(path):
                yield name, path


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _flat_trees(root: Path) -> frozenset[str]:
    return frozenset(f"sha256:{hexdigest}" for hexdigest, _ in _fanout(root / layout.FLAT))


def _layers(root: Path) -> dict[str, frozenset[str] | None]:
    layers: dict[str, frozenset[str] | None] = {}
    for hexdigest, _ in _fanout(root / layout.LAYERS):
        origin = root / layout.layer_origin_file(Digest("sha256", hexdigest))
        try:
            layers[f"sha256:{hexdigest}"] = parse_origin(_read_optional(origin), what=str(origin))
        except (OSError, ValueError) as exc:
            logger.warning("%s: unreadable, the layer is kept: %s", origin, exc)
            layers[f"sha256:{hexdigest}"] = None
    return layers
