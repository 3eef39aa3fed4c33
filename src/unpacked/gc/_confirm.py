"""Confirming a planned batch under the lock of its own transaction, reading only what it touches.

The sweep reads the repository once per cycle (``read_state``) and plans every batch
from that snapshot. Between two batches another process may commit: a conversion can
only add uses (a link, a ``status.json``, its id in ``origin.json`` files, its image
taken off the schedule), ``delete-image`` and ``prune`` only schedule images, another
collection only removes. So a batch stays safe when, just before it commits:

- each image to remove is still on the schedule, with an unlinking time past the grace
  period, and the reference that left it neither links it nor records it again (a
  conversion of the image takes it off the schedule, so this sees every new use);
- each layer to remove has, in its ``origin.json`` read now, no id but those this
  cycle removed or found existing nowhere;
- ``origin.json`` files and the schedule are rewritten from their content now, with
  exactly the changes the plan makes, so that what another process added stays.

Without another writer the confirmed batch is the planned one. What is no longer safe
is left out and left for the next cycle, which reads the repository again.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from unpacked import layout
from unpacked.digest import Digest
from unpacked.errors import PublishError
from unpacked.gc._plan import Batch, ImageRemoval, OriginUpdate
from unpacked.gc._state import RepositoryState
from unpacked.records import ImageStatus, RemovalSchedule, ScheduledRemoval, parse_origin
from unpacked.reference import parse as parse_reference
from unpacked.repository import flat_target_image, parse_time, read_optional, read_schedule


@dataclass
class Confirmer:
    """What one cycle planned from, and what its committed batches removed so far.

    Call ``confirm`` under the lock of the transaction that will carry the batch out,
    and ``committed`` once that transaction has committed.
    """

    root: Path
    state: RepositoryState
    now: datetime
    grace: timedelta
    removed: set[str] = field(default_factory=set)
    _unknown: frozenset[str] | None = None

    def confirm(self, batch: Batch) -> Batch:
        """The part of ``batch`` that is still safe, rewritten against the records as they are."""
        schedule = read_schedule(self.root)
        entries = {entry.image_id: entry for entry in schedule.entries}
        images = tuple(
            checked
            for image in batch.images
            if (checked := self._still_due(image, entries.get(image.image_id))) is not None
        )
        gone = self.removed | {image.image_id for image in images}
        droppable = gone | self._nowhere(schedule)
        origins, layers = self._layers(batch, droppable)
        return Batch(
            images,
            layers,
            origins,
            batch.scheduled,
            batch.unscheduled,
            _schedule(schedule, batch, images),
        )

    def committed(self, batch: Batch) -> None:
        self.removed |= {image.image_id for image in batch.images}

    # --- images -----------------------------------------------------------------------

    def _still_due(
        self, image: ImageRemoval, entry: ScheduledRemoval | None
    ) -> ImageRemoval | None:
        if entry is None or parse_time(entry.unlinked) + self.grace > self.now:
            return None  # linked again (a conversion unschedules it), or unlinked again
        if _used_by(self.root, entry.reference, image.image_id):
            return None
        flat = self.root / layout.flat_dir(Digest.parse(image.image_id))
        # Another collection may have removed the tree: then only the entry goes.
        present = image.flat_tree and os.path.isdir(flat) and not os.path.islink(flat)
        return ImageRemoval(image.image_id, entry.reference, entry.unlinked, present)

    def _nowhere(self, schedule: RemovalSchedule) -> set[str]:
        """Ids the plan drops from ``origin.json`` as existing nowhere, if they still do."""
        if self._unknown is None:
            refs = self.state.references
            existing = refs.live_images() | refs.schedule.image_ids() | self.state.flat_trees
            named = {i for ids in self.state.layers.values() if ids is not None for i in ids}
            self._unknown = frozenset(named - existing)
        scheduled = schedule.image_ids()
        return {
            image_id
            for image_id in self._unknown
            if image_id not in scheduled
            and not os.path.lexists(self.root / layout.flat_dir(Digest.parse(image_id)))
        }

    # --- layers -----------------------------------------------------------------------

    def _layers(
        self, batch: Batch, droppable: set[str]
    ) -> tuple[tuple[OriginUpdate, ...], tuple[str, ...]]:
        updates: list[OriginUpdate] = []
        layers: list[str] = []
        planned = {update.layer: frozenset(update.origins) for update in batch.origins}
        for layer in sorted({*planned, *batch.layers}):
            current = self._origin(layer)
            if current is None:
                continue  # removed by another collection meanwhile
            before = self.state.layers.get(layer) or frozenset()
            dropped = (before - planned.get(layer, frozenset())) & droppable
            wanted = current - dropped
            if layer in batch.layers and not wanted:
                layers.append(layer)
            elif wanted != current:
                updates.append(OriginUpdate(layer, tuple(sorted(wanted))))
        return tuple(updates), _in_order(layers, batch.layers)

    def _origin(self, layer: str) -> frozenset[str] | None:
        """The layer's ``origin.json`` now (empty if missing); None if the layer is gone."""
        digest = Digest.parse(layer)
        if not os.path.isdir(self.root / layout.layer_dir(digest)):
            return None
        path = self.root / layout.layer_origin_file(digest)
        try:
            return parse_origin(read_optional(path), what=str(path))
        except (OSError, ValueError) as exc:
            raise PublishError(f"{path}: unreadable, garbage collection stops: {exc}") from exc


def _in_order(kept: Iterable[str], planned: Iterable[str]) -> tuple[str, ...]:
    keep = set(kept)
    return tuple(layer for layer in planned if layer in keep)


def _used_by(root: Path, reference: str, image_id: str) -> bool:
    """Whether the reference that left the image links it or records it again."""
    try:
        parsed = parse_reference(reference)
    except ValueError:
        return False  # an orphan's entry names no reference
    link = layout.public_link(parsed)
    try:
        if flat_target_image(link, os.readlink(root / link)) == image_id:
            return True
    except OSError:
        pass  # no link (or not a link) there
    status = root / layout.status_file(parsed)
    raw = read_optional(status)
    try:
        return raw is not None and ImageStatus.from_bytes(raw).image_id == image_id
    except ValueError as exc:
        raise PublishError(f"{status}: unreadable image status: {exc}") from exc


def _schedule(
    current: RemovalSchedule, batch: Batch, images: tuple[ImageRemoval, ...]
) -> RemovalSchedule | None:
    """The schedule as it is now, with this batch's changes; None when that changes nothing."""
    unscheduled = set(batch.unscheduled)
    entries = [e for e in current.entries if e not in unscheduled]
    updated = RemovalSchedule(tuple(entries)).without(image.image_id for image in images)
    for entry in _orphan_entries(batch):
        updated = updated.add(entry.image_id, entry.reference, entry.unlinked)
    return updated if updated != current else None


def _orphan_entries(batch: Batch) -> Iterable[ScheduledRemoval]:
    if batch.schedule is None:
        return ()
    orphans = set(batch.scheduled)
    return (e for e in batch.schedule.entries if e.image_id in orphans)
