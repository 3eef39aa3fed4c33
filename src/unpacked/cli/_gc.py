"""Commands that take images out of a repository: garbage-collection, delete-image, prune."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from unpacked.cli import EXIT_FAILURE, EXIT_OK
from unpacked.cli import _render as render
from unpacked.cli._context import publisher_for
from unpacked.cli._context import registry_options as client_options
from unpacked.cli._source import read_wishlist
from unpacked.gc import (
    ORPHAN,
    Batch,
    Plan,
    PrunePlan,
    Unlinked,
    collect_garbage,
    delete_image,
    plan_garbage_collection,
    plan_prune,
    prune,
)
from unpacked.records import ScheduledRemoval
from unpacked.reference import Reference
from unpacked.reference import parse as parse_reference
from unpacked.registry import RegistryClient
from unpacked.repository import format_time, parse_time
from unpacked.wishlist import WishList

logger = logging.getLogger("unpacked")
_SHORT_GRACE = timedelta(minutes=1)


def _now() -> datetime:
    return datetime.now(UTC)


def _load_wishlist(path: str) -> WishList:
    wishlist = read_wishlist(path)
    for warning in wishlist.warnings:
        logger.warning("%s", warning)
    return wishlist


# --- handlers --------------------------------------------------------------------------


def garbage_collection(args: argparse.Namespace) -> int:
    publisher = publisher_for(args.repo, create=False)
    wished: tuple[Reference, ...] = ()
    if args.wishlist:
        wished = tuple(wish.reference for wish in _load_wishlist(args.wishlist).wishes)
    grace = timedelta(seconds=args.grace)
    if grace < _SHORT_GRACE:
        logger.warning(
            "grace period %s: images unlinked since less than that are removed now, "
            "even while jobs still run in them",
            _seconds_text(grace),
        )
    run = plan_garbage_collection if args.dry_run else collect_garbage
    plan = run(
        publisher,
        now=_now(),
        grace=grace,
        max_removals=args.max_removals,
        wished=wished,
    )
    if args.json:
        render.print_json(plan_json(plan))
    else:
        render.print_text(plan_text(plan, publisher.spec, dry_run=args.dry_run))
    for problem in plan.problems:
        logger.error("%s", problem)
    return EXIT_FAILURE if plan.problems else EXIT_OK


def delete(args: argparse.Namespace) -> int:
    publisher = publisher_for(args.repo, create=False)
    unlinked = delete_image(publisher, parse_reference(args.reference), now=_now())
    if args.json:
        render.print_json(unlinked_json(unlinked))
    else:
        render.print_text(unlinked_text(unlinked, dry_run=False))
    return EXIT_OK


def prune_command(args: argparse.Namespace) -> int:
    wishlist = _load_wishlist(args.wishlist)
    publisher = publisher_for(args.repo, wishlist.repository, create=False)
    run = plan_prune if args.dry_run else prune
    with RegistryClient(client_options(args)) as client:
        plan = run(publisher, wishlist.wishes, list_tags=client.list_tags, now=_now())
    if args.json:
        render.print_json(prune_json(plan))
    else:
        render.print_text(prune_text(plan, dry_run=args.dry_run))
    return EXIT_FAILURE if plan.failed else EXIT_OK


# --- rendering -------------------------------------------------------------------------


def _entry_json(entry: ScheduledRemoval) -> dict[str, Any]:
    return {"imageId": entry.image_id, "reference": entry.reference, "unlinked": entry.unlinked}


def _batch_json(batch: Batch) -> dict[str, Any]:
    return {
        "images": [
            {
                "imageId": image.image_id,
                "reference": image.reference,
                "unlinked": image.unlinked,
                "flatTree": image.flat_tree,
            }
            for image in batch.images
        ],
        "layers": list(batch.layers),
        "origins": [{"layer": u.layer, "origin": list(u.origins)} for u in batch.origins],
        "scheduled": list(batch.scheduled),
        "unscheduled": [_entry_json(entry) for entry in batch.unscheduled],
        "scheduleWritten": batch.schedule is not None,
    }


def plan_json(plan: Plan) -> dict[str, Any]:
    """The plan (``--dry-run``) or what was done, in the same shape."""
    return {
        "now": format_time(plan.now),
        "graceSeconds": plan.grace.total_seconds(),
        "maxRemovals": plan.max_removals,
        "removals": plan.removals,
        "batches": [_batch_json(batch) for batch in plan.batches],
        "waiting": [
            {**_entry_json(e), "expires": format_time(parse_time(e.unlinked) + plan.grace)}
            for e in plan.waiting
        ],
        "deferred": [_entry_json(entry) for entry in plan.deferred],
        "deferredLayers": list(plan.deferred_layers),
        "kept": [_entry_json(entry) for entry in plan.kept],
        "problems": list(plan.problems),
    }


def _was(reference: str) -> str:
    return "orphan" if reference == ORPHAN else f"was {reference}"


def plan_text(plan: Plan, spec: str, *, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    lines = [
        f"garbage collection of {spec} at {format_time(plan.now)} "
        f"(grace {_seconds_text(plan.grace)}):",
        f"  {verb} {len(plan.images)} image(s) and {len(plan.layers)} layer(s) "
        f"in {len(plan.batches)} transaction(s)",
    ]
    lines += [
        f"    image {i.image_id} ({_was(i.reference)}, unlinked {i.unlinked})" for i in plan.images
    ]
    lines += [f"    layer {layer}" for layer in plan.layers]
    return "\n".join([*lines, *_bookkeeping_text(plan, dry_run=dry_run)])


def _bookkeeping_text(plan: Plan, *, dry_run: bool) -> list[str]:
    """The plan's lines beyond the removals: records, schedule, what waits, problems."""
    lines = []
    if plan.origins:
        lines.append(
            f"  origin.json {'to rewrite' if dry_run else 'rewritten'}: {len(plan.origins)}"
        )
    lines += [f"  orphaned flat tree scheduled: {image}" for image in plan.scheduled]
    lines += [f"  linked again, unscheduled: {e.image_id}" for e in plan.unscheduled]
    return lines + _later_text(plan)


def _later_text(plan: Plan) -> list[str]:
    """What the plan leaves for later cycles, and what it cannot do."""
    lines = []
    if plan.waiting:
        first = min(parse_time(e.unlinked) for e in plan.waiting) + plan.grace
        lines.append(
            f"  waiting: {len(plan.waiting)} image(s); the next expires at {format_time(first)}"
        )
    if plan.deferred or plan.deferred_layers:
        lines.append(
            f"  left for the next cycle (--max-removals): {len(plan.deferred)} image(s), "
            f"{len(plan.deferred_layers)} layer(s)"
        )
    lines += [f"  kept, the wish list names {e.reference}: {e.image_id}" for e in plan.kept]
    lines += [f"  problem: {problem}" for problem in plan.problems]
    return lines


def _seconds_text(grace: timedelta) -> str:
    seconds = grace.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def unlinked_json(unlinked: Unlinked) -> dict[str, Any]:
    return {
        "reference": unlinked.reference,
        "removed": [str(path) for path in unlinked.paths],
        "scheduled": list(unlinked.scheduled),
        "stillUsed": list(unlinked.still_used),
    }


def unlinked_text(unlinked: Unlinked, *, dry_run: bool) -> str:
    lines = [f"{unlinked.reference}: {'would unlink' if dry_run else 'unlinked'}"]
    lines += [f"  scheduled for removal: {image}" for image in unlinked.scheduled]
    lines += [f"  still used by another reference: {image}" for image in unlinked.still_used]
    return "\n".join(lines)


def prune_json(plan: PrunePlan) -> dict[str, Any]:
    return {
        "unlinked": [unlinked_json(unlinked) for unlinked in plan.unlink.unlinked],
        "wanted": list(plan.wanted),
        "listingFailures": [
            {
                "wish": failure.wish.text,
                "line": failure.wish.line,
                "error": failure.error,
                "kept": list(failure.kept),
                "ignoreErrors": failure.wish.ignore_errors,
            }
            for failure in plan.failures
        ],
        "failed": plan.failed,
    }


def prune_text(plan: PrunePlan, *, dry_run: bool) -> str:
    unlinked = plan.unlink.unlinked
    verb = "would unlink" if dry_run else "unlinked"
    lines = [f"{len(plan.wanted)} image(s) still wanted, {len(unlinked)} {verb}"]
    lines += [unlinked_text(item, dry_run=dry_run) for item in unlinked]
    for failure in plan.failures:
        lines.append(
            f"  FAILED to list tags of {failure.wish.text} (line {failure.wish.line}): "
            f"{failure.error}; kept {len(failure.kept)} image(s) it could match"
        )
    return "\n".join(lines)
