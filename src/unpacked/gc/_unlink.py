"""Taking references out of a repository: ``delete-image`` and ``prune``.

Unlinking a reference removes its public link, its ``.multiarch`` links and its
``.metadata`` directory, and puts each image it used on the removal schedule unless
another link or status still uses it. The flat tree and the layers stay until garbage
collection finds the entry expired: jobs started from the image keep running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from unpacked import layout
from unpacked.errors import ConfigError, UnpackedError
from unpacked.gc._match import names
from unpacked.gc._state import References, read_references
from unpacked.publish import Publisher, Transaction
from unpacked.records import RemovalSchedule
from unpacked.reference import Reference
from unpacked.repository import format_time, public_name_of
from unpacked.wishlist import Wish

logger = logging.getLogger(__name__)

ListTags = Callable[[Reference], Iterable[str]]


@dataclass(frozen=True)
class Unlinked:
    """One reference taken out.

    paths:      what is removed (links, then the metadata directory)
    scheduled:  images put on the removal schedule (or already on it)
    still_used: images another link or status keeps
    """

    reference: str
    paths: tuple[PurePosixPath, ...]
    scheduled: tuple[str, ...]
    still_used: tuple[str, ...]


@dataclass(frozen=True)
class UnlinkPlan:
    """References to take out in one transaction; ``schedule`` None: unchanged."""

    unlinked: tuple[Unlinked, ...]
    schedule: RemovalSchedule | None


def plan_unlink(refs: References, targets: Sequence[Reference], *, now: datetime) -> UnlinkPlan:
    """What unlinking ``targets`` together changes. Pure."""
    index = _Index(refs)
    found = [(target, index.paths(target)) for target in targets]
    removed = {path for _, paths in found for path in paths}
    users = {image for path, image in index.images.items() if path not in removed}
    schedule = refs.schedule
    unlinked = []
    for target, paths in found:
        entry = _unlinked(target, paths, index, users)
        for image_id in entry.scheduled:
            schedule = schedule.add(image_id, str(target), format_time(now))
        unlinked.append(entry)
    changed = schedule if schedule != refs.schedule else None
    return UnlinkPlan(tuple(unlinked), changed)


def _unlinked(
    target: Reference, paths: tuple[PurePosixPath, ...], index: _Index, users: set[str]
) -> Unlinked:
    """What unlinking ``paths`` does to the images they link: orphaned or still used."""
    images = sorted({index.images[path] for path in paths})
    orphaned = tuple(i for i in images if i not in users)
    still_used = tuple(i for i in images if i in users)
    return Unlinked(target.public_name, paths, orphaned, still_used)


class _Index:
    """The links and metadata directories of each public name, and the image each uses."""

    def __init__(self, refs: References) -> None:
        self.images: dict[PurePosixPath, str] = dict(refs.links)
        self._links: dict[PurePosixPath, list[PurePosixPath]] = {}
        self._metadata: dict[PurePosixPath, list[PurePosixPath]] = {}
        for path in sorted(refs.links):
            # .multiarch/<arch>/<public name> belongs to <public name> too.
            multiarch = path.parts[0] == str(layout.MULTIARCH) and len(path.parts) > 2
            name = PurePosixPath(*path.parts[2:]) if multiarch else path
            self._links.setdefault(name, []).append(path)
        for image in sorted(refs.published, key=lambda image: image.metadata):
            self.images[image.metadata] = image.image_id
            self._metadata.setdefault(public_name_of(image.metadata), []).append(image.metadata)

    def paths(self, target: Reference) -> tuple[PurePosixPath, ...]:
        """Links first, metadata last: removals are published in call order (P4)."""
        name = layout.public_link(target)
        return (*self._links.get(name, ()), *self._metadata.get(name, ()))


def apply_unlink(tx: Transaction, plan: UnlinkPlan) -> None:
    if plan.schedule is not None:
        tx.write_file(layout.REMOVE_SCHEDULE, plan.schedule.to_bytes())
    for unlinked in plan.unlinked:
        for path in unlinked.paths:
            tx.remove(path)


def delete_image(
    publisher: Publisher, reference: Reference, *, now: datetime, lock_timeout: float = 600.0
) -> Unlinked:
    """Take ``reference`` out of the repository in one transaction (see the module docstring).

    ``ConfigError`` if the repository has no link, ``.multiarch`` link or status of it.
    """
    public_name = reference.public_name  # refuses a wildcard
    with publisher.transaction(lock_timeout=lock_timeout) as tx:
        plan = plan_unlink(read_references(publisher.root), [reference], now=now)
        if not plan.unlinked[0].paths:
            raise ConfigError(f"{public_name}: not published in {publisher.spec}")
        apply_unlink(tx, plan)
    logger.info("%s: unlinked %s", publisher.spec, public_name)
    return plan.unlinked[0]


# --- prune ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ListingFailure:
    """A wildcard whose tags could not be listed: what it could match is kept."""

    wish: Wish
    error: str
    kept: tuple[str, ...]


@dataclass(frozen=True)
class PrunePlan:
    """What ``prune`` unlinks, what the wish list keeps, and the listings that failed."""

    unlink: UnlinkPlan
    wanted: tuple[str, ...]
    failures: tuple[ListingFailure, ...]

    @property
    def failed(self) -> bool:
        """Whether a listing failed for a wish without ``ignoreErrors``."""
        return any(not failure.wish.ignore_errors for failure in self.failures)


_Listing = frozenset[str] | str  # the tags, or why they could not be listed


def plan_prune(
    publisher: Publisher,
    wishes: Sequence[Wish],
    *,
    list_tags: ListTags,
    now: datetime,
    lock_timeout: float = 600.0,
) -> PrunePlan:
    """What ``prune`` would do now; lists wildcard tags, changes nothing."""
    _check_wishes(wishes)
    listings = _list_wildcards(wishes, list_tags)
    return _decide(_read_locked(publisher, lock_timeout), wishes, listings, now=now)


def prune(
    publisher: Publisher,
    wishes: Sequence[Wish],
    *,
    list_tags: ListTags,
    now: datetime,
    lock_timeout: float = 600.0,
) -> PrunePlan:
    """Unlink every published reference ``wishes`` no longer names, in one transaction.

    Tags are listed before the repository is locked; under the lock, only references
    that were unwanted before are unlinked, so an image a conversion published in
    between (a tag newer than the listing) stays.
    """
    _check_wishes(wishes)
    listings = _list_wildcards(wishes, list_tags)
    before = _decide(_read_locked(publisher, lock_timeout), wishes, listings, now=now)
    candidates = {unlinked.reference for unlinked in before.unlink.unlinked}
    if not candidates:
        return before
    with publisher.transaction(lock_timeout=lock_timeout) as tx:
        plan = _decide(read_references(publisher.root), wishes, listings, now=now, only=candidates)
        apply_unlink(tx, plan.unlink)
    logger.info("%s: pruned %d reference(s)", publisher.spec, len(plan.unlink.unlinked))
    return plan


def _read_locked(publisher: Publisher, lock_timeout: float) -> References:
    """The references, read under the repository lock (no commit seen half-way)."""
    with publisher.locked(lock_timeout=lock_timeout):
        return read_references(publisher.root)


def _check_wishes(wishes: Sequence[Wish]) -> None:
    if not wishes:
        # An empty or truncated file would otherwise unlink every image of the repository.
        raise ConfigError(
            "the wish list names no images; refusing to unlink everything "
            "(use delete-image for that)"
        )


def _list_wildcards(wishes: Sequence[Wish], list_tags: ListTags) -> dict[Reference, _Listing]:
    listings: dict[Reference, _Listing] = {}
    for wish in wishes:
        reference = wish.reference
        if not reference.is_wildcard or reference in listings:
            continue
        try:
            listings[reference] = frozenset(list_tags(reference))
        except UnpackedError as exc:
            logger.error("%s (line %d): cannot list tags: %s", wish.text, wish.line, exc)
            listings[reference] = str(exc)
    return listings


def _decide(
    refs: References,
    wishes: Sequence[Wish],
    listings: Mapping[Reference, _Listing],
    *,
    now: datetime,
    only: set[str] | None = None,
) -> PrunePlan:
    wanted: list[str] = []
    unwanted: list[Reference] = []
    kept: dict[Reference, list[str]] = {}
    seen: set[str] = set()
    for image in refs.published:
        name = image.reference.public_name
        if name in seen:  # the same reference for another platform
            continue
        seen.add(name)
        verdict = _verdict(image.reference, wishes, listings)
        if verdict.wanted:
            wanted.append(name)
        elif verdict.kept_by is not None:
            kept.setdefault(verdict.kept_by, []).append(name)
        elif only is None or name in only:
            unwanted.append(image.reference)
    failures = []
    for wish in wishes:
        listing = listings.get(wish.reference)
        if isinstance(listing, str):
            failures.append(ListingFailure(wish, listing, tuple(kept.get(wish.reference, ()))))
    return PrunePlan(plan_unlink(refs, unwanted, now=now), tuple(wanted), tuple(failures))


@dataclass(frozen=True)
class _Verdict:
    """A wish wants the reference, or a wildcard whose listing failed might (it is kept)."""

    wanted: bool
    kept_by: Reference | None = None


def _verdict(
    reference: Reference, wishes: Sequence[Wish], listings: Mapping[Reference, _Listing]
) -> _Verdict:
    kept_by: Reference | None = None
    for wish in wishes:
        if not names(wish.reference, reference):
            continue
        if not wish.reference.is_wildcard:
            return _Verdict(wanted=True)
        listing = listings[wish.reference]
        if isinstance(listing, str):
            kept_by = kept_by or wish.reference
        elif reference.tag in listing:
            return _Verdict(wanted=True)
    return _Verdict(wanted=False, kept_by=kept_by)
