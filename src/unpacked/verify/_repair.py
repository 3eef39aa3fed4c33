"""repair: a pure plan from the findings, applied in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from unpacked import layout
from unpacked.publish import Transaction
from unpacked.records import RemovalSchedule
from unpacked.verify._model import (
    ORPHAN_REFERENCE,
    Broken,
    Change,
    Finding,
    Remove,
    Schedule,
    SetLink,
    Snapshot,
    WriteFile,
)

logger = logging.getLogger(__name__)


def plan_repair(snapshot: Snapshot, findings: Iterable[Finding], when: str) -> tuple[Change, ...]:
    """The changes that fix the repairable ``findings`` of ``snapshot``; ``when`` is now."""
    findings = list(findings)
    changes: list[Change] = [
        f.fix for f in findings if isinstance(f.fix, WriteFile | SetLink | Remove)
    ]
    orphans = [f.fix.image_id for f in findings if isinstance(f.fix, Schedule)]
    schedule = snapshot.schedule
    if orphans or isinstance(schedule, Broken):
        updated = RemovalSchedule() if isinstance(schedule, Broken) else schedule
        for image_id in orphans:
            updated = updated.add(image_id, ORPHAN_REFERENCE, when)
        changes.append(WriteFile(layout.REMOVE_SCHEDULE, updated.to_bytes()))
    return tuple(changes)


def apply(changes: Iterable[Change], tx: Transaction) -> None:
    """Record ``changes`` in ``tx``."""
    for change in changes:
        logger.info("repair: %s", describe(change))
        match change:
            case WriteFile(path, data):
                tx.write_file(path, data)
            case SetLink(path, target):
                tx.set_symlink(path, target)
            case Remove(path):
                tx.remove(path)


def describe(change: Change) -> str:
    """One line saying what ``change`` does."""
    match change:
        case WriteFile(path, _):
            return f"write {path}"
        case SetLink(path, target):
            return f"link {path} -> {target}"
        case Remove(path):
            return f"remove {path}"
    raise AssertionError(change)  # pragma: no cover - the union is closed
