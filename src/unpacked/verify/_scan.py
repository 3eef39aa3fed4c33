"""scan: the only I/O of the check, a read-only walk of the repository (never following a
link) into a ``Snapshot``."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from unpacked import layout
from unpacked.digest import Digest
from unpacked.errors import UnpackedError
from unpacked.manifest import Manifest, parse_manifest
from unpacked.publish import PrivateArea
from unpacked.records import (
    ImageStatus,
    RemovalSchedule,
    parse_layer_records,
    parse_origin,
)
from unpacked.verify._model import (
    HEX64,
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
    flat_parents, flat_ids = _fanout(root, layout.FLAT)
    layer_parents, layer_hexes = _fanout(root, layout.LAYERS)
    layers = tuple(_layer_entry(root, hexdigest) for hexdigest in layer_hexes)
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


def _real_dirs(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(
                (entry for entry in entries if entry.is_dir(follow_symlinks=False)),
                key=lambda entry: entry.name,
            )
    except (FileNotFoundError, NotADirectoryError):
        return []


def _fanout(root: Path, top: PurePosixPath) -> tuple[list[str], list[str]]:
    """The ``<d2>`` directories of a fan-out, and the ``<d>`` hex digests under them."""
    parents, digests = [], []
    for sub in _real_dirs(root / top):
        if len(sub.name) != 2:
            continue
        parents.append(sub.name)
        digests += [
            entry.name
            for entry in _real_dirs(Path(sub.path))
            if HEX64.fullmatch(entry.name) and entry.name.startswith(sub.name)
        ]
    return parents, digests


def _links(root: Path) -> Iterator[LinkEntry]:
    real_root = os.path.realpath(root)
    for entry in _entries(root):
        if entry.name.startswith(".") or entry.name == str(layout.PODMAN_STORE):
            continue
        if entry.is_symlink():
            yield _link_entry(root, real_root, PurePosixPath(entry.name))
        elif entry.is_dir(follow_symlinks=False):
            yield from _links_under(root, real_root, PurePosixPath(entry.name))
    for entry in _entries(root / layout.MULTIARCH):
        relative = layout.MULTIARCH / entry.name
        if entry.is_symlink():
            yield _link_entry(root, real_root, relative, alias=True)
        elif entry.is_dir(follow_symlinks=False):
            yield from _links_under(root, real_root, relative)


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _links_under(root: Path, real_root: str, relative: PurePosixPath) -> Iterator[LinkEntry]:
    for entry in _entries(root / relative):
        path = relative / entry.name
        if entry.is_symlink():
            yield _link_entry(root, real_root, path)
        elif entry.is_dir(follow_symlinks=False):
            yield from _links_under(root, real_root, path)


def _link_entry(
    root: Path, real_root: str, path: PurePosixPath, *, alias: bool = False
) -> LinkEntry:
    target = os.readlink(root / path)
    real = os.path.realpath(root / path)
    inside = os.path.commonpath([real, real_root]) == real_root and real != real_root
    resolved = PurePosixPath(os.path.relpath(real, real_root)) if inside else None
    if resolved is not None and not os.path.isdir(real):
        resolved = None
    return LinkEntry(path, target, resolved, alias)


def _metadata_names(root: Path) -> Iterator[str]:
    """The ``<registry>/<repository>:<tag>`` names with a directory under ``.metadata``.

    Below the registry level a ``:`` or ``@`` can only be the tag or digest separator
    (repository components cannot contain them), so such a directory is an image's.
    Images of further platforms live under ``.multiarch/<arch>/`` (whose ``<arch>`` may
    contain a ``:`` too, as in ``arm64:v8``); their names keep that prefix.
    """
    stack = [PurePosixPath()]
    while stack:
        relative = stack.pop()
        for entry in reversed(_real_dirs(root / layout.METADATA / relative)):
            path = relative / entry.name
            name_parts = path.parts[2:] if path.parts[0] == str(layout.MULTIARCH) else path.parts
            if len(name_parts) >= 2 and (":" in entry.name or "@" in entry.name):
                yield str(path)
            else:
                stack.append(path)


def _read(path: Path) -> bytes | Broken:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return Broken("missing")
    except OSError as exc:
        return Broken(f"unreadable: {exc.strerror or exc}")


def _image_entry(root: Path, name: str) -> ImageEntry:
    directory = root / layout.METADATA / name
    raw = _read(directory / "manifest.json")
    status = _read(directory / "status.json")
    return ImageEntry(
        name,
        raw if isinstance(raw, Broken) else _parsed_manifest(raw, f"{name}/manifest.json"),
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
        _is_real_dir(root / layout.layerfs_dir(digest)),
        origin if isinstance(origin, Broken) else _parsed_origin(origin),
        records if isinstance(records, Broken) else _records_problem(records),
    )


def _parsed_origin(raw: bytes) -> frozenset[str] | Broken:
    try:
        return parse_origin(raw, what="origin.json")
    except ValueError as exc:
        return Broken(str(exc).removeprefix("origin.json: "))


def _records_problem(raw: bytes) -> Broken | None:
    try:
        parse_layer_records(raw, what="layers.json")
    except ValueError as exc:
        return Broken(str(exc).removeprefix("layers.json: "))
    return None


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


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
    wanted += [layout.PODMAN_STORE / sub for sub in ("overlay", "overlay-images", "overlay-layers")]
    wanted += [layout.FLAT / c2 for c2 in flat_parents]
    wanted += [layout.flat_dir(Digest("sha256", c)) for c in flat_ids]
    wanted += [layout.LAYERS / l2 for l2 in layer_parents]
    wanted += [
        layout.layerfs_dir(Digest.parse(layer.digest)) for layer in layers if layer.has_layerfs
    ]
    return tuple(
        (directory, os.path.lexists(root / directory / layout.CATALOG_MARKER))
        for directory in sorted(wanted)
        if _is_real_dir(root / directory)
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
