"""The sweep: carry out a collection plan through a publisher, one transaction per batch.

The repository is read once per cycle, under the lock of the first batch's transaction,
and every batch is planned from that snapshot. Each later batch is confirmed under the
lock of its own transaction by re-reading only what it touches (``_confirm``), so that
an image linked again, or a layer used again, by a conversion that ran between two
batches is never removed; without such a writer, the batches carried out are exactly
those of the plan a dry run shows. Reading the repository once keeps the cost of a
removal flat as the repository grows (it used to be read again for every batch).

A sweep killed at any moment leaves whole batches: the next transaction on the
repository completes or discards the one under way, and the next cycle carries on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from unpacked import layout
from unpacked.digest import Digest
from unpacked.gc._confirm import Confirmer
from unpacked.gc._plan import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_GRACE,
    Batch,
    Plan,
    plan_collection,
)
from unpacked.gc._state import read_state
from unpacked.publish import Publisher, Transaction
from unpacked.records import origin_json
from unpacked.reference import Reference

logger = logging.getLogger(__name__)


def plan_garbage_collection(
    publisher: Publisher,
    *,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
    max_removals: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    wished: Sequence[Reference] = (),
    lock_timeout: float = 600.0,
) -> Plan:
    """What ``collect_garbage`` with the same arguments would do now; changes nothing.

    Reads under the repository lock, so that no commit is seen half-way (``_base`` N1).
    A commit a crash interrupted is completed by the sweep's first transaction, so the
    plan can differ from the sweep only then (or when another writer comes between).
    """
    with publisher.locked(lock_timeout=lock_timeout):
        state = read_state(publisher.root)
    return plan_collection(
        state,
        now=now,
        grace=grace,
        max_removals=max_removals,
        batch_size=batch_size,
        wished=wished,
    )


def collect_garbage(
    publisher: Publisher,
    *,
    now: datetime,
    grace: timedelta = DEFAULT_GRACE,
    max_removals: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    wished: Sequence[Reference] = (),
    lock_timeout: float = 600.0,
) -> Plan:
    """Run one collection cycle; return the plan with the batches actually carried out."""
    with publisher.transaction(lock_timeout=lock_timeout) as tx:
        started = time.monotonic()
        state = read_state(publisher.root)
        logger.debug("%s: repository read in %.3f s", publisher.spec, time.monotonic() - started)
        plan = plan_collection(
            state,
            now=now,
            grace=grace,
            max_removals=max_removals,
            batch_size=batch_size,
            wished=wished,
        )
        if not plan.batches:
            return plan
        apply_batch(tx, plan.batches[0])  # read under this very lock: nothing to confirm
    confirmer = Confirmer(publisher.root, state, now, grace)
    done: list[Batch] = []
    for number, planned in enumerate(plan.batches, start=1):
        batch = planned
        if number > 1:
            batch = _confirmed(publisher, confirmer, planned, number, lock_timeout)
        confirmer.committed(batch)
        if not batch.empty:
            done.append(batch)
            _log_batch(publisher, len(done), batch)
    return dataclasses.replace(plan, batches=tuple(done))


def _confirmed(
    publisher: Publisher, confirmer: Confirmer, batch: Batch, number: int, lock_timeout: float
) -> Batch:
    """Carry out what is still safe of ``batch`` in a transaction of its own; return it."""
    with publisher.transaction(lock_timeout=lock_timeout) as tx:
        confirmed = confirmer.confirm(batch)
        if confirmed != batch:
            logger.info(
                "%s: another process changed the repository; batch %d narrowed to what "
                "is still unused",
                publisher.spec,
                number,
            )
        if not confirmed.empty:
            apply_batch(tx, confirmed)
    return confirmed


def apply_batch(tx: Transaction, batch: Batch) -> None:
    """Record one batch in ``tx``: ``origin.json`` files and the schedule, then the removals."""
    for update in batch.origins:
        tx.write_file(
            layout.layer_origin_file(Digest.parse(update.layer)), origin_json(update.origins)
        )
    if batch.schedule is not None:
        tx.write_file(layout.REMOVE_SCHEDULE, batch.schedule.to_bytes())
    for image in batch.images:
        if image.flat_tree:
            tx.remove(layout.flat_dir(Digest.parse(image.image_id)))
    for layer in batch.layers:
        tx.remove(layout.layer_dir(Digest.parse(layer)))


def _log_batch(publisher: Publisher, number: int, batch: Batch) -> None:
    logger.info(
        "%s: garbage collection batch %d: %d image(s), %d layer(s) removed, "
        "%d origin.json rewritten, %d orphan(s) scheduled, %d unscheduled",
        publisher.spec,
        number,
        len(batch.images),
        len(batch.layers),
        len(batch.origins),
        len(batch.scheduled),
        len(batch.unscheduled),
    )
