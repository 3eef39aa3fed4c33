"""The collection plan: a pure function of a repository snapshot, the time and the limits.

Removal units, in the order they are taken:

1. layers that are garbage already (no image in their ``origin.json`` once ids that
   exist nowhere are dropped, and no live manifest lists them), by digest;
2. each expired image, oldest first (by unlinking time, then id), followed by the
   layers its removal leaves without origin, by digest.

``max_removals`` cuts this sequence; a layer cut off after its image stays, with an
empty ``origin.json``, and is the first thing the next cycle removes. The taken units
are split into batches of ``batch_size``; each batch is one transaction that removes
its images and layers, rewrites the ``origin.json`` of every layer that listed one of
its images, and writes the schedule without them. The first batch also does the
bookkeeping: it takes images that are live again off the schedule, schedules orphaned
flat trees (they get the whole grace period) and drops ids that exist nowhere from
``origin.json`` files.

The order makes the plan stable under its own execution: planning again after the
first batch, with the removals it made taken off ``max_removals``, gives the remaining
batches. So the sweep may carry out every batch of one plan, confirming each under its
lock (``_confirm``), and the next cycle carries on where a cut or a crash left off.
Orphans scheduled by a cycle are never removed by it, whatever the grace period (zero
included): a cycle removes only what its snapshot had scheduled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath

from unpacked import layout
from unpacked.errors import ConfigError
from unpacked.gc._match import names
from unpacked.gc._state import RepositoryState
from unpacked.records import RemovalSchedule, ScheduledRemoval
from unpacked.reference import Reference
from unpacked.reference import parse as parse_reference
from unpacked.repository import ORPHAN, format_time, parse_time, public_name_of

DEFAULT_GRACE = timedelta(days=7)
DEFAULT_BATCH_SIZE = 50


@dataclass(frozen=True)
class ImageRemoval:
    """An expired image: its flat tree goes (if there is one) and it leaves the schedule."""

    image_id: str
    reference: str
    unlinked: str
    flat_tree: bool


@dataclass(frozen=True)
class OriginUpdate:
    """The new content of a layer's ``origin.json``."""

    layer: str
    origins: tuple[str, ...]


@dataclass(frozen=True)
class Batch:
    """The changes of one transaction.

    schedule: the ``remove-schedule.json`` to write, or None when it does not change
    """

    images: tuple[ImageRemoval, ...] = ()
    layers: tuple[str, ...] = ()
    origins: tuple[OriginUpdate, ...] = ()
    scheduled: tuple[str, ...] = ()
    unscheduled: tuple[ScheduledRemoval, ...] = ()
    schedule: RemovalSchedule | None = None

    @property
    def removals(self) -> int:
        """What counts toward ``max_removals``: images and layer directories."""
        return len(self.images) + len(self.layers)

    @property
    def empty(self) -> bool:
        return self == Batch()


@dataclass(frozen=True)
class Plan:
    """What one garbage-collection cycle does, batch by batch, and what it leaves.

    waiting:         scheduled, still within the grace period
    deferred:        expired, left for the next cycle by ``max_removals``
    deferred_layers: layers left without origin for the next cycle by ``max_removals``
    kept:            expired, but the wish list names their reference again (it is not
                     published now, and the next conversion would link the image again)
    problems:        what was left alone because it could not be read
    """

    now: datetime
    grace: timedelta
    max_removals: int | None
    batches: tuple[Batch, ...]
    waiting: tuple[ScheduledRemoval, ...] = ()
    deferred: tuple[ScheduledRemoval, ...] = ()
    deferred_layers: tuple[str, ...] = ()
    kept: tuple[ScheduledRemoval, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def images(self) -> tuple[ImageRemoval, ...]:
        return tuple(image for batch in self.batches for image in batch.images)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(layer for batch in self.batches for layer in batch.layers)

    @property
    def origins(self) -> tuple[OriginUpdate, ...]:
        return tuple(update for batch in self.batches for update in batch.origins)

    @property
    def scheduled(self) -> tuple[str, ...]:
        return tuple(image for batch in self.batches for image in batch.scheduled)

    @property
    def unscheduled(self) -> tuple[ScheduledRemoval, ...]:
        return tuple(entry for batch in self.batches for entry in batch.unscheduled)

    @property
    def removals(self) -> int:
        return sum(batch.removals for batch in self.batches)


_Unit = ImageRemoval | str  # an image, or a layer digest


def plan_collection(
    state: RepositoryState,
    *,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
    max_removals: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    wished: Sequence[Reference] = (),
) -> Plan:
    """Plan one cycle (see the module docstring). ``wished``: the wish list's references."""
    _check_limits(now, grace, max_removals, batch_size)
    live = state.references.live_images()
    pending, expired, kept = _due(state, live, now=now, grace=grace, wished=wished)
    origins, users = _layer_users(state, live)
    units = _removal_order(expired, origins, users, state.references.live_layers, state.flat_trees)
    cut = len(units) if max_removals is None else min(max_removals, len(units))
    first, schedule = _bookkeeping(state, live, now)
    writer = _BatchWriter(state, origins, users, schedule)
    deferred = {u.image_id for u in units[cut:] if isinstance(u, ImageRemoval)}
    gone = {e.image_id for e in (*expired, *kept)}
    return Plan(
        now=now,
        grace=grace,
        max_removals=max_removals,
        batches=_batches(writer, first, units[:cut], batch_size),
        waiting=tuple(e for e in pending if e.image_id not in gone),
        deferred=tuple(e for e in expired if e.image_id in deferred),
        deferred_layers=_spilled(units[cut:]),
        kept=tuple(kept),
        problems=_problems(state),
    )


def _batches(
    writer: _BatchWriter, first: Batch, units: Sequence[_Unit], batch_size: int
) -> tuple[Batch, ...]:
    """``units`` in batches of ``batch_size``; the first also carries the bookkeeping."""
    chunks = [units[i : i + batch_size] for i in range(0, len(units), batch_size)] or [[]]
    batches = [writer.batch(chunk, first if i == 0 else Batch()) for i, chunk in enumerate(chunks)]
    return tuple(b for b in batches if not b.empty)


def _due(
    state: RepositoryState,
    live: frozenset[str],
    *,
    now: datetime,
    grace: timedelta,
    wished: Sequence[Reference],
) -> tuple[list[ScheduledRemoval], list[ScheduledRemoval], list[ScheduledRemoval]]:
    """Scheduled images nothing links (oldest first); those past their grace period; and
    of those, the ones the wish list keeps (it names them and nothing is published there)."""
    refs = state.references
    pending = sorted((e for e in refs.schedule.entries if e.image_id not in live), key=_age)
    expired = [e for e in pending if parse_time(e.unlinked) + grace <= now]
    published = frozenset(public_name_of(image.metadata) for image in refs.published)
    kept = [e for e in expired if _wished_again(e, wished, published)]
    return pending, [e for e in expired if e not in kept], kept


def _layer_users(
    state: RepositoryState, live: frozenset[str]
) -> tuple[dict[str, frozenset[str]], dict[str, list[str]]]:
    """Each readable layer's users that still exist, and each image's layers."""
    existing = live | state.references.schedule.image_ids() | state.flat_trees
    origins = {layer: ids & existing for layer, ids in state.layers.items() if ids is not None}
    users: dict[str, list[str]] = {}
    for layer in sorted(origins):
        for image_id in origins[layer]:
            users.setdefault(image_id, []).append(layer)
    return origins, users


def _problems(state: RepositoryState) -> tuple[str, ...]:
    return tuple(
        f"layer {layer}: origin.json unreadable; the layer is kept"
        for layer, ids in sorted(state.layers.items())
        if ids is None
    )


def _bookkeeping(
    state: RepositoryState, live: frozenset[str], now: datetime
) -> tuple[Batch, RemovalSchedule]:
    """The first batch's extra work, and the schedule it starts from.

    Images live again leave the schedule; orphaned flat trees join it as of ``now``.
    """
    schedule = state.references.schedule
    orphans = tuple(sorted(state.flat_trees - live - schedule.image_ids()))
    unscheduled = tuple(e for e in schedule.entries if e.image_id in live)
    start = schedule.without(live)
    entries = [ScheduledRemoval(image_id, ORPHAN, format_time(now)) for image_id in orphans]
    start = RemovalSchedule((*start.entries, *entries))
    return Batch(scheduled=orphans, unscheduled=unscheduled), start


def _check_limits(
    now: datetime, grace: timedelta, max_removals: int | None, batch_size: int
) -> None:
    if now.tzinfo is None:
        raise ConfigError("garbage collection needs a time with a time zone")
    if grace < timedelta(0):
        # Zero is allowed: orphans scheduled by a cycle still wait for the next one,
        # since a cycle removes only what its snapshot had scheduled.
        raise ConfigError(f"grace period must not be negative, not {grace}")
    if max_removals is not None and max_removals < 1:
        raise ConfigError(f"max removals must be at least 1, not {max_removals}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, not {batch_size}")


def _age(entry: ScheduledRemoval) -> tuple[datetime, str]:
    return parse_time(entry.unlinked), entry.image_id


def _wished_again(
    entry: ScheduledRemoval, wished: Sequence[Reference], published: frozenset[PurePosixPath]
) -> bool:
    """Whether the wish list names the entry's reference and nothing is published under it.

    Then the next conversion links the image again (unless the tag moved meanwhile);
    removing it now would only make that conversion download it again. A reference
    published with another image (a moved tag) does not protect the old one.
    """
    if not wished:
        return False
    try:
        reference = parse_reference(entry.reference)
    except ValueError:
        return False  # an orphan, or a reference no wish can name
    if not any(names(wish, reference) for wish in wished):
        return False
    return layout.public_link(reference) not in published


def _removal_order(
    expired: Iterable[ScheduledRemoval],
    origins: Mapping[str, frozenset[str]],
    users: Mapping[str, Sequence[str]],
    live_layers: frozenset[str],
    flat_trees: frozenset[str],
) -> list[_Unit]:
    # Users left per layer: counting, not set differences, keeps this linear when one
    # base layer is shared by thousands of images (each image appears once in ``expired``).
    left = {layer: len(ids) for layer, ids in origins.items()}
    units: list[_Unit] = [
        layer for layer in sorted(left) if not left[layer] and layer not in live_layers
    ]
    counted: set[str] = set()
    for entry in expired:
        image_id = entry.image_id
        units.append(
            ImageRemoval(image_id, entry.reference, entry.unlinked, image_id in flat_trees)
        )
        if image_id in counted:  # a schedule edited by hand may name an image twice
            continue
        counted.add(image_id)
        freed = []
        for layer in users.get(image_id, ()):
            left[layer] -= 1
            if not left[layer] and layer not in live_layers:
                freed.append(layer)
        units.extend(sorted(freed))
    return units


def _spilled(rest: Sequence[_Unit]) -> tuple[str, ...]:
    """The layers cut off before the next image: left without origin until the next cycle."""
    spilled = []
    for unit in rest:
        if isinstance(unit, ImageRemoval):
            break
        spilled.append(unit)
    return tuple(spilled)


class _BatchWriter:
    """Turns chunks of removal units into batches, tracking what each one leaves written."""

    def __init__(
        self,
        state: RepositoryState,
        origins: Mapping[str, frozenset[str]],
        users: Mapping[str, Sequence[str]],
        schedule: RemovalSchedule,
    ) -> None:
        self._origins = origins
        self._users = users
        self._written = {layer: ids for layer, ids in state.layers.items() if ids is not None}
        self._removed: set[str] = set()
        self._gone: set[str] = set()
        self._schedule = schedule
        self._schedule_written = state.references.schedule
        self._first = True

    def batch(self, chunk: Sequence[_Unit], bookkeeping: Batch) -> Batch:
        images = tuple(u for u in chunk if isinstance(u, ImageRemoval))
        layers = tuple(u for u in chunk if isinstance(u, str))
        self._removed |= {image.image_id for image in images}
        self._gone |= set(layers)
        touched = set(self._origins) if self._first else set()
        for image in images:
            touched.update(self._users.get(image.image_id, ()))
        self._first = False
        self._schedule = self._schedule.without(image.image_id for image in images)
        schedule = None
        if self._schedule != self._schedule_written:
            schedule = self._schedule_written = self._schedule
        return Batch(
            images,
            layers,
            self._updates(touched),
            bookkeeping.scheduled,
            bookkeeping.unscheduled,
            schedule,
        )

    def _updates(self, touched: set[str]) -> tuple[OriginUpdate, ...]:
        updates = []
        for layer in sorted(touched - self._gone):
            wanted = self._origins[layer] - self._removed
            if wanted != self._written[layer]:
                updates.append(OriginUpdate(layer, tuple(sorted(wanted))))
                self._written[layer] = wanted
        return tuple(updates)
