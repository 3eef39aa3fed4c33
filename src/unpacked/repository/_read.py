"""Listing and reading what a repository publishes: the I/O of the read-side view.

Every name comes from ``layout`` and every rule from ``_model``. Nothing here follows a
symbolic link while listing. Two ways of reading a record, chosen by the caller:

- strict (``read_status``, ``read_manifest_layers``, ``read_schedule``,
  ``published_images``): a record that exists but cannot be read raises ``PublishError``
  naming the file. Garbage collection reads so: guessing could delete what is used.
- tolerant (``find_status``, ``list_statuses``, ``find_manifest``): an unreadable
  record is logged (statuses) and skipped. Status display and convert's up-to-date
  check read so.

``read_origin`` and ``read_layer_records`` raise ``ValueError``/``OSError`` and leave the
choice to the caller (garbage collection keeps a layer with an unreadable ``origin.json``).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from unpacked import layout
from unpacked.digest import Digest
from unpacked.errors import PublishError, UnpackedError
from unpacked.manifest import Manifest, parse_manifest
from unpacked.records import (
    ImageStatus,
    LayerRecord,
    RemovalSchedule,
    parse_origin,
    read_layer_records,
)
from unpacked.reference import Reference
from unpacked.reference import parse as parse_reference
from unpacked.repository._model import (
    HEX,
    Fanout,
    Link,
    MetadataTree,
    belongs_in,
    flat_target_image,
    is_image,
    is_image_name,
    parse_time,
)

logger = logging.getLogger(__name__)
_MULTIARCH = str(layout.MULTIARCH)


def is_real_dir(path: Path) -> bool:
    """A directory, not a link to one (and False for anything missing)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def read_optional(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


# --- fan-outs --------------------------------------------------------------------------


def _real_dirs(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def fanout(root: Path, top: PurePosixPath) -> Fanout:
    """The ``.flat`` or ``.layers`` fan-out under ``root`` (see ``Fanout``)."""
    parents: list[str] = []
    digests: list[str] = []
    for prefix in _real_dirs(root / top):
        if len(prefix) != 2:
            continue
        parents.append(prefix)
        digests += [
            name
            for name in _real_dirs(root / top / prefix)
            if HEX.fullmatch(name) and name[:2] == prefix
        ]
    return Fanout(tuple(parents), tuple(digests))


def flat_trees(root: Path) -> frozenset[str]:
    """Image ids with a ``.flat/<c2>/<c>`` directory."""
    return fanout(root, layout.FLAT).ids()


# --- links -----------------------------------------------------------------------------


def links(root: Path) -> tuple[Link, ...]:
    """Every symbolic link outside dot-directories and ``podmanStore``, and under
    ``.multiarch``: those of the public area first, each part sorted by path."""
    found = []
    for path in sorted(_symlinks(root), key=lambda p: (p.parts[0] == _MULTIARCH, p)):
        target = os.readlink(root / path)
        found.append(Link(path, target, flat_target_image(path, target)))
    return tuple(found)


def _symlinks(root: Path) -> Iterator[PurePosixPath]:
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


# --- metadata --------------------------------------------------------------------------


def metadata_tree(root: Path) -> MetadataTree:
    """The images, image-named directories without a status, and manifests of ``.metadata``."""
    images: list[PurePosixPath] = []
    unrecorded: list[PurePosixPath] = []
    manifests: list[PurePosixPath] = []
    for directory, subdirs, files in os.walk(root / layout.METADATA):
        subdirs.sort()
        relative = PurePosixPath(directory).relative_to(root)
        if is_image(files):
            images.append(relative)
        elif is_image_name(relative):
            unrecorded.append(relative)
        if layout.MANIFEST_NAME in files:
            manifests.append(relative / layout.MANIFEST_NAME)
    return MetadataTree(tuple(images), tuple(unrecorded), tuple(manifests))


@dataclass(frozen=True)
class PublishedImage:
    """An image (a ``status.json``): its reference, its directory, its image id.

    A reference published for several platforms has one per platform: the default one
    in ``.metadata/<name>``, the others in ``.metadata/.multiarch/<arch>/<name>``.
    """

    reference: Reference
    metadata: PurePosixPath
    image_id: str


def read_status(root: Path, metadata: PurePosixPath) -> ImageStatus:
    """Strict: the status of the image in ``metadata``; ``PublishError`` if unreadable."""
    path = root / metadata / layout.STATUS_NAME
    try:
        return ImageStatus.from_bytes(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PublishError(f"{path}: unreadable image status: {exc}") from exc


def published_image(root: Path, metadata: PurePosixPath) -> PublishedImage:
    """Strict: the image in ``metadata``, whose status must name a reference that lives there."""
    path = root / metadata / layout.STATUS_NAME
    status = read_status(root, metadata)
    try:
        reference = parse_reference(status.reference)
    except ValueError as exc:
        raise PublishError(f"{path}: unreadable image status: {exc}") from exc
    if not belongs_in(metadata, reference):
        raise PublishError(f"{path}: records {reference}, which belongs in another directory")
    return PublishedImage(reference, metadata, status.image_id)


def published_images(root: Path, tree: MetadataTree) -> tuple[PublishedImage, ...]:
    """Strict: every image of ``tree``, in its order."""
    return tuple(published_image(root, metadata) for metadata in tree.images)


def find_status(root: Path, status_file: PurePosixPath, what: object) -> ImageStatus | None:
    """Tolerant: the status at ``status_file``, or None (missing, or unreadable: logged)."""
    path = root / status_file
    try:
        return ImageStatus.from_bytes(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s: ignoring unreadable %s: %s", what, path, exc)
        return None


def list_statuses(root: Path) -> list[ImageStatus]:
    """Tolerant: the status of every image, sorted by reference; unreadable ones logged."""
    statuses = []
    for metadata in metadata_tree(root).images:
        path = root / metadata / layout.STATUS_NAME
        try:
            statuses.append(ImageStatus.from_bytes(path.read_bytes()))
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable %s: %s", path, exc)
    return sorted(statuses, key=lambda status: status.reference)


def read_manifest_layers(root: Path, manifest_file: PurePosixPath) -> frozenset[str]:
    """Strict: the layer digests a ``manifest.json`` lists."""
    path = root / manifest_file
    try:
        manifest = parse_manifest(path.read_bytes(), what=str(path))
    except (OSError, UnpackedError) as exc:
        raise PublishError(f"{path}: unreadable manifest: {exc}") from exc
    return frozenset(str(layer.digest) for layer in manifest.layers)


def find_manifest(root: Path, manifest_file: PurePosixPath) -> tuple[bytes, Manifest] | None:
    """Tolerant: a ``manifest.json``'s bytes and what they say, or None (missing or unreadable)."""
    try:
        raw = (root / manifest_file).read_bytes()
        return raw, parse_manifest(raw)
    except (OSError, UnpackedError):
        return None


def link_target(root: Path, link: PurePosixPath) -> str | None:
    """The text of the symbolic link at ``link``, or None (missing, or not a link)."""
    try:
        return os.readlink(root / link)
    except OSError:
        return None


def live_layers(root: Path, tree: MetadataTree) -> frozenset[str]:
    """Strict: the layers of every manifest of ``tree``."""
    layers: set[str] = set()
    for manifest_file in tree.manifests:
        layers |= read_manifest_layers(root, manifest_file)
    return frozenset(layers)


# --- layers and the schedule -----------------------------------------------------------


def read_origin(root: Path, layer: Digest) -> frozenset[str]:
    """The layer's ``origin.json`` set (empty when missing); ``ValueError``/``OSError``."""
    path = root / layout.layer_origin_file(layer)
    return parse_origin(read_optional(path), what=str(path))


def layer_records(root: Path, layer: Digest) -> tuple[LayerRecord, ...]:
    """The layer's ``layers.json`` records, typed (empty when missing).

    ``ValueError`` or ``OSError`` when unreadable."""
    path = root / layout.layer_record_file(layer)
    return read_layer_records(read_optional(path), what=str(path))


def read_schedule(root: Path) -> RemovalSchedule:
    """Strict: ``remove-schedule.json`` (empty when missing), every entry's time checked."""
    path = root / layout.REMOVE_SCHEDULE
    try:
        schedule = RemovalSchedule.from_bytes(read_optional(path))
        for entry in schedule.entries:
            parse_time(entry.unlinked)
    except (OSError, ValueError) as exc:
        raise PublishError(f"{path}: unreadable removal schedule: {exc}") from exc
    return schedule
