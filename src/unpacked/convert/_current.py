"""Is the published image current? Recording checks and failures in status.json."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from unpacked import layout, repository
from unpacked.convert._model import ConvertOptions, Placement, placement
from unpacked.digest import Digest
from unpacked.errors import UnpackedError
from unpacked.manifest import Descriptor
from unpacked.platform import Platform
from unpacked.publish import Publisher
from unpacked.records import ImageStatus
from unpacked.reference import Reference

logger = logging.getLogger(__name__)


def is_current(
    root: Path,
    place: Placement,
    head: Descriptor,
    status: ImageStatus,
    options: ConvertOptions,
) -> bool:
    """Whether the published image is the one the registry serves now, and complete."""
    if status.digest != str(head.digest):
        return False
    if not options.platform.matches(Platform.parse(status.platform)):
        return False
    flat = layout.flat_dir(Digest.parse(status.image_id))
    if place.links and not (root / flat).is_dir():
        return False
    if not all(_link_points_to(root, link, flat) for link in place.links):
        return False
    if not _metadata_consistent(root, place, status):
        return False
    return options.skip_layers or _layers_present(root, place)


def _link_points_to(root: Path, link: PurePosixPath, flat: PurePosixPath) -> bool:
    return repository.link_target(root, link) == str(layout.relative_target(link, flat))


def _metadata_consistent(root: Path, place: Placement, status: ImageStatus) -> bool:
    """manifest.json is the manifest status.json names, of the image it names."""
    found = repository.find_manifest(root, place.manifest_file)
    if found is None:
        return False
    raw, manifest = found
    return (
        str(Digest.of(raw)) == status.manifest_digest
        and str(manifest.config.digest) == status.image_id
    )


def _layers_present(root: Path, place: Placement) -> bool:
    found = repository.find_manifest(root, place.manifest_file)
    if found is None:
        return False
    return all((root / layout.layerfs_dir(layer.digest)).is_dir() for layer in found[1].layers)


def record_checks(
    publisher: Publisher,
    checked: Sequence[tuple[Reference, ConvertOptions]],
    when: str,
    lock_timeout: float = 600.0,
) -> None:
    """Set lastCheck (and clear lastError) of these unchanged images, in one transaction.

    One transaction for a whole batch: on CVMFS every transaction is a publish, and a
    no-op run should not cost one per image.
    """
    updates = []
    for reference, options in checked:
        status_file = placement(reference, options).status_file
        status = repository.find_status(publisher.root, status_file, reference)
        if status is not None:
            fields = {**status.__dict__, "last_check": when, "last_error": None}
            updates.append((status_file, ImageStatus(**fields).to_bytes()))
    if not updates:
        return
    with publisher.transaction(lock_timeout=lock_timeout) as tx:
        for status_file, data in updates:
            tx.write_file(status_file, data)


def record_failure(
    publisher: Publisher,
    reference: Reference,
    error: BaseException,
    options: ConvertOptions = ConvertOptions(),
    when: str | None = None,
) -> None:
    """Note ``error`` in the status of an image that was published before.

    Never raises: a failure to record a failure is logged, and the original error is
    what the caller reports.
    """
    status_file = placement(reference, options).status_file
    status = repository.find_status(publisher.root, status_file, reference)
    if status is None:
        return
    when = when or repository.utc_now()
    updated = ImageStatus(**{**status.__dict__, "last_check": when, "last_error": str(error)})
    try:
        with publisher.transaction(lock_timeout=60) as tx:
            tx.write_file(status_file, updated.to_bytes())
    except UnpackedError as exc:
        logger.warning("%s: could not record the failure in status.json: %s", reference, exc)
