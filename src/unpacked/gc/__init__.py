"""Garbage collection: plan (pure) then sweep (through a publisher); unlinking references.

Mark. An image is live when a public link (``<registry>/<repository>:<tag>`` anywhere
outside dot-directories and ``podmanStore``, or under ``.multiarch``) points at its
flat tree, or a ``.metadata/**/status.json`` names it (an image published with
``--skip-flat`` has no link but is live). A layer is live when a ``manifest.json``
under ``.metadata`` lists it. The mark phase reads through the read-side view
(``unpacked.repository``), which holds these rules for verify and stats too.

Plan (``plan_collection``, a pure function of a ``RepositoryState``, the time, the grace
period and ``max_removals``):

- scheduled images whose grace period has passed and that are not live are removed
  (flat tree, schedule entry, and their id from every ``origin.json``), oldest first,
  at most ``max_removals`` per cycle counting layers too;
- scheduled images that are live again are taken off the schedule;
- flat trees neither live nor scheduled (orphans) are scheduled now;
- a layer whose ``origin.json`` is left empty (removed images and ids that exist
  nowhere dropped) and that no live manifest lists is removed; a layer of a scheduled
  image that has not expired stays, as its ``origin.json`` still names that image.
- with a wish list, an expired image stays scheduled while the wish list names the
  reference that left it and nothing is published under that reference: the next
  conversion would link it again.

Sweep (``collect_garbage``): the repository is read once per cycle, then one
transaction per batch of removals, each complete in itself (flat trees, ``origin.json``
rewrites, layers, ``remove-schedule.json``), so a large backlog is worked off in bounded
transactions and a crash loses at most the batch under way. Each later batch is
confirmed under its own lock by re-reading only what it touches (``_confirm``).
``plan_garbage_collection`` returns exactly the plan the sweep would carry out, for
``--dry-run``.

``delete_image`` and ``prune`` take references out (link, ``.multiarch`` links,
metadata) and schedule the images nothing else uses; the sweep removes them after the
grace period. Removing trees with read-only directories or unreadable files is the
publisher's business (``publish._base``, N6), not this package's.
"""

from __future__ import annotations

from unpacked.gc._plan import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_GRACE,
    Batch,
    ImageRemoval,
    OriginUpdate,
    Plan,
    plan_collection,
)
from unpacked.gc._state import (
    References,
    RepositoryState,
    read_references,
    read_state,
)
from unpacked.gc._sweep import apply_batch, collect_garbage, plan_garbage_collection
from unpacked.gc._unlink import (
    ListingFailure,
    ListTags,
    PrunePlan,
    Unlinked,
    UnlinkPlan,
    delete_image,
    plan_prune,
    plan_unlink,
    prune,
)
from unpacked.repository import ORPHAN, PublishedImage

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_GRACE",
    "ORPHAN",
    "Batch",
    "ImageRemoval",
    "ListTags",
    "ListingFailure",
    "OriginUpdate",
    "Plan",
    "PrunePlan",
    "PublishedImage",
    "References",
    "RepositoryState",
    "UnlinkPlan",
    "Unlinked",
    "apply_batch",
    "collect_garbage",
    "delete_image",
    "plan_collection",
    "plan_garbage_collection",
    "plan_prune",
    "plan_unlink",
    "prune",
    "read_references",
    "read_state",
]
