"""The per-layer records, catalog markers and removal schedule a conversion writes."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from unpacked import layout
from unpacked.contentindex import write_index
from unpacked.convert._model import LayerResult
from unpacked.digest import Digest
from unpacked.errors import PublishError
from unpacked.publish import Transaction
from unpacked.records import (
    ImageStatus,
    LayerRecord,
    RemovalSchedule,
    Whiteouts,
    merge_layer_records,
    origin_json,
    parse_layer_records,
    parse_origin,
    storage_layer_ids,
)
from unpacked.reference import Reference
from unpacked.registry import ResolvedImage
from unpacked.status import list_statuses


def stored_layer(tx: Transaction, digest: Digest) -> bool:
    """Whether the repository holds the layer; an incomplete layer directory is an error."""
    if not tx.exists(layout.layer_dir(digest)):
        return False
    if not tx.exists(layout.layerfs_dir(digest)):
        raise PublishError(
            f"layer {digest}: {layout.layer_dir(digest)} exists without its layerfs; "
            "run 'unpacked verify --repair' to remove it, then convert again"
        )
    return True


def touch_marker(directory: Path) -> None:
    """An empty ``.cvmfscatalog`` (0644 whatever the umask, like every published file)."""
    marker = directory / layout.CATALOG_MARKER
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)


def stored_layer_facts(tx: Transaction, digest: Digest, name: str) -> tuple[str, int]:
    """Whiteout form and diff size of a layer the repository holds, from its layers.json."""
    path = tx.read_path(layout.layer_record_file(digest))
    try:
        records = parse_layer_records(path.read_bytes(), what=str(path))
        sizes = {int(record["diff-size"]) for record in records}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PublishError(f"layer {name}: stored layer record unusable: {exc}") from exc
    modes = {record.get("unpacked-whiteouts", "overlay") for record in records}
    return ("wh-files" if "wh-files" in modes else "overlay"), max(sizes, default=0)


def write_layer_records(
    tx: Transaction,
    image: ResolvedImage,
    layers: Sequence[LayerResult],
    when: str,
    *,
    index_content: bool = True,
) -> None:
    """origin.json (this image added) and layers.json (this image's layer ids) of each layer,
    and the content index of each new one (``index_content``; only benchmarks turn it off).

    A layer may stand at several positions of one image (empty layers do): its records
    are collected first and each file is written once.
    """
    ids = storage_layer_ids(image.config.diff_ids)
    records: dict[Digest, list[LayerRecord]] = {}
    first: dict[Digest, LayerResult] = {}
    for layer in layers:
        item = layer.plan
        digest = item.descriptor.digest
        first.setdefault(digest, layer)
        records.setdefault(digest, []).append(
            LayerRecord(
                ids[item.index],
                when,
                str(digest),
                str(item.diff_id),
                layer.diff_size,
                Whiteouts(layer.whiteouts),
            )
        )
    image_id = str(image.image_id)
    for digest, layer in first.items():
        if not layer.reused:
            metadata = layer.tree.parent / layout.LAYER_METADATA
            (metadata / layout.ORIGIN_NAME).write_bytes(origin_json([image_id]))
            (metadata / layout.LAYER_RECORDS_NAME).write_bytes(
                merge_layer_records([], records[digest]) or b"[]"
            )
            if index_content:
                # The layer is complete here, and the index is published with it.
                write_index(layer.tree, metadata / layout.CONTENT_INDEX)
        else:
            _update_layer_metadata(tx, digest, records[digest], image_id)


def _update_layer_metadata(
    tx: Transaction, digest: Digest, records: list[LayerRecord], image_id: str
) -> None:
    try:
        _merge_layer_metadata(tx, digest, records, image_id)
    except ValueError as exc:  # a malformed origin.json or layers.json
        raise PublishError(
            f"layer {digest}: {exc}; run 'unpacked verify --repair', then convert again"
        ) from exc


def _merge_layer_metadata(
    tx: Transaction, digest: Digest, records: list[LayerRecord], image_id: str
) -> None:
    origin_path = layout.layer_origin_file(digest)
    origins = parse_origin(_read_optional(tx.read_path(origin_path)), what=str(origin_path))
    if image_id not in origins:
        tx.write_file(origin_path, origin_json(origins | {image_id}))
    records_path = layout.layer_record_file(digest)
    existing = parse_layer_records(
        _read_optional(tx.read_path(records_path)), what=str(records_path)
    )
    updated = merge_layer_records(existing, records)
    if updated is not None:
        tx.write_file(records_path, updated)


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def update_schedule(
    tx: Transaction,
    root: Path,
    *,
    reference: Reference,
    previous: ImageStatus | None,
    image_id: str,
    when: str,
) -> None:
    """Schedule the image this reference leaves, if nothing else uses it; unschedule ours.

    The replaced flat tree stays (jobs may still be running in it) until garbage
    collection removes it after the grace period.
    """
    path = tx.read_path(layout.REMOVE_SCHEDULE)
    try:
        schedule = RemovalSchedule.from_bytes(_read_optional(path))
    except ValueError as exc:
        raise PublishError(f"{path}: {exc}") from exc
    updated = schedule.without([image_id])
    if previous is not None and previous.image_id != image_id:
        users = {
            status.image_id for status in list_statuses(root) if status.reference != str(reference)
        }
        if previous.image_id not in users:
            updated = updated.add(previous.image_id, str(reference), when)
    if updated != schedule:
        tx.write_file(layout.REMOVE_SCHEDULE, updated.to_bytes())


def flat_catalog_dirs(image: ResolvedImage) -> set[PurePosixPath]:
    """The directories above the image's flat tree that hold a ``.cvmfscatalog``."""
    return {layout.FLAT, layout.flat_dir(image.image_id).parent}


def layer_catalog_dirs(image: ResolvedImage) -> set[PurePosixPath]:
    """The directories above the image's layer directories that hold a ``.cvmfscatalog``."""
    return {layout.LAYERS} | {layout.layer_dir(layer.digest).parent for layer in image.layers}


def write_catalog_markers(tx: Transaction, dirs: Iterable[PurePosixPath]) -> None:
    """The top-level and super-directory ``.cvmfscatalog`` markers (DESIGN.md section 8).

    Only for the trees this conversion writes (each writer names its own): a marker in an
    otherwise empty directory would make an empty nested catalog.
    """
    for directory in sorted(dirs):
        marker = directory / layout.CATALOG_MARKER
        if not tx.exists(marker):
            tx.write_file(marker, b"")
