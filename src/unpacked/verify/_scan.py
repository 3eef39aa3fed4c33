"""scan: the only I/O of the check, a read-only walk of the repository (never following a
link) into a ``Snapshot``.

The walk is the read-side view's (``unpacked.repository``): the same fan-outs, links and
images as garbage collection sees. Records are read here in a third way, neither strict
nor tolerant: a broken one becomes a ``Broken`` value, which the checks report.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from unpacked import layout, repository
from unpacked.digest import Digest
from unpacked.errors import UnpackedError
from unpacked.manifest import Manifest, parse_manifest
from unpacked.publish import PrivateArea
from unpacked.records import (
    ImageStatus,
    RemovalSchedule,
    parse_origin,
    read_layer_records,
)
from unpacked.verify._model import (
    AreaEntry,
    Broken,
    ImageEntry,
    LayerEntry,
    LinkEntry,
    Snapshot,
)

# What apptainer._sandbox names a file while replacing it; only ever in staging, so one
# in a published flat tree is a leftover.
_TEMP_SUFFIX = ".unpacked-new"
_APPTAINER_DIRS = (".singularity.d", ".singularity.d/env", ".singularity.d/actions")


def scan(root: Path, *, private: PrivateArea | None = None) -> Snapshot:
    """Walk the repository at ``root`` (never following a link).

    ``private``: the publisher's private area, whose staging is listed too.
    """
    flat = repository.fanout(root, layout.FLAT)
    layers_fanout = repository.fanout(root, layout.LAYERS)
    flat_parents, flat_ids = list(flat.parents), list(flat.digests)
    layer_parents = list(layers_fanout.parents)
    layers = tuple(_layer_entry(root, hexdigest) for hexdigest in layers_fanout.digests)
    return Snapshot(
        links=tuple(_links(root)),
        images=tuple(_image_entry(root, name) for name in _metadata_names(root)),
        flat_trees=frozenset(f"sha256:{c}" for c in flat_ids),
        layers=layers,
        schedule=_schedule(root),
        catalog_dirs=_catalog_dirs(root, flat_parents, flat_ids, layer_parents, layers),
        temp_files=tuple(path for c in flat_ids for path in _temp_files(root, c)),
        areas=tuple(_areas(root, private)) if private is not None else (),
    )


def _links(root: Path) -> Iterator[LinkEntry]:
    real_root = os.path.realpath(root)
    for link in repository.links(root):
        # A link right in .multiarch is a uname -m alias of an architecture directory.
        alias = link.path.parent == layout.MULTIARCH
        yield _link_entry(root, real_root, link.path, link.target, alias=alias)


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _link_entry(
    root: Path, real_root: str, path: PurePosixPath, target: str, *, alias: bool = False
) -> LinkEntry:
    real = os.path.realpath(root / path)
    inside = os.path.commonpath([real, real_root]) == real_root and real != real_root
    resolved = PurePosixPath(os.path.relpath(real, real_root)) if inside else None
    if resolved is not None and not os.path.isdir(real):
        resolved = None
    return LinkEntry(path, target, resolved, alias)


def _metadata_names(root: Path) -> Iterator[str]:
    """The names (relative to ``.metadata``) of the images and of the directories named like
    one that lack a ``status.json`` (reported as such), in the order of a sorted walk.

    Images of further platforms live under ``.multiarch/<arch>/``; their names keep that
    prefix.
    """
    tree = repository.metadata_tree(root)
    for path in sorted((*tree.images, *tree.unrecorded)):
        yield str(path.relative_to(layout.METADATA))


def _read(path: Path) -> bytes | Broken:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return Broken("missing")
    except OSError as exc:
        return Broken(f"unreadable: {exc.strerror or exc}")


def _image_entry(root: Path, name: str) -> ImageEntry:
    directory = root / layout.METADATA / name
    raw = _read(directory / layout.MANIFEST_NAME)
    status = _read(directory / layout.STATUS_NAME)
    what = f"{name}/{layout.MANIFEST_NAME}"
    return ImageEntry(
        name,
        raw if isinstance(raw, Broken) else _parsed_manifest(raw, what),
        None if isinstance(raw, Broken) else str(Digest.of(raw)),
        status if isinstance(status, Broken) else _parsed_status(status),
    )


def _parsed_manifest(raw: bytes, what: str) -> Manifest | Broken:
    try:
        return parse_manifest(raw, what=what)
    except UnpackedError as exc:
        return Broken(str(exc).removeprefix(f"{what}: "))


def _parsed_status(raw: bytes) -> ImageStatus | Broken:
    try:
        return ImageStatus.from_bytes(raw)
    except ValueError as exc:
        return Broken(str(exc))


def _layer_entry(root: Path, hexdigest: str) -> LayerEntry:
    digest = Digest("sha256", hexdigest)
    origin = _read(root / layout.layer_origin_file(digest))
    records = _read(root / layout.layer_record_file(digest))
    return LayerEntry(
        str(digest),
        repository.is_real_dir(root / layout.layerfs_dir(digest)),
        origin if isinstance(origin, Broken) else _parsed_origin(origin),
        records if isinstance(records, Broken) else _records_problem(records),
    )


def _parsed_origin(raw: bytes) -> frozenset[str] | Broken:
    try:
        return parse_origin(raw, what=layout.ORIGIN_NAME)
    except ValueError as exc:
        return Broken(str(exc).removeprefix(f"{layout.ORIGIN_NAME}: "))


def _records_problem(raw: bytes) -> Broken | None:
    try:
        read_layer_records(raw, what=layout.LAYER_RECORDS_NAME)
    except ValueError as exc:
        return Broken(str(exc).removeprefix(f"{layout.LAYER_RECORDS_NAME}: "))
    return None


def _schedule(root: Path) -> RemovalSchedule | Broken:
    raw = _read(root / layout.REMOVE_SCHEDULE)
    if isinstance(raw, Broken):
        return RemovalSchedule() if raw.reason == "missing" else raw
    try:
        return RemovalSchedule.from_bytes(raw)
    except ValueError as exc:
        return Broken(str(exc))


def _catalog_dirs(
    root: Path,
    flat_parents: list[str],
    flat_ids: list[str],
    layer_parents: list[str],
    layers: tuple[LayerEntry, ...],
) -> tuple[tuple[PurePosixPath, bool], ...]:
    wanted = [layout.FLAT, layout.LAYERS, layout.PODMAN_STORE]
    wanted += [layout.PODMAN_STORE / sub for sub in layout.PODMAN_SUBDIRS]
    wanted += [layout.FLAT / c2 for c2 in flat_parents]
    wanted += [layout.flat_dir(Digest("sha256", c)) for c in flat_ids]
    wanted += [layout.LAYERS / l2 for l2 in layer_parents]
    wanted += [
        layout.layerfs_dir(Digest.parse(layer.digest)) for layer in layers if layer.has_layerfs
    ]
    return tuple(
        (directory, os.path.lexists(root / directory / layout.CATALOG_MARKER))
        for directory in sorted(wanted)
        if repository.is_real_dir(root / directory)
    )


def _temp_files(root: Path, hexdigest: str) -> Iterator[PurePosixPath]:
    flat = layout.flat_dir(Digest("sha256", hexdigest))
    for directory in _APPTAINER_DIRS:
        for entry in _entries(root / flat / directory):
            if entry.name.endswith(_TEMP_SUFFIX) and not entry.is_dir(follow_symlinks=False):
                yield flat / directory / entry.name


def _areas(root: Path, private: PrivateArea) -> Iterator[AreaEntry]:
    for entry in _entries(root / private.staging):
        committing = os.path.lexists(Path(entry.path) / private.journal)
        yield AreaEntry(private.staging / entry.name, committing)
