"""Committing a ``dir:`` transaction: run its steps under a journal, roll back, recover.

``commit`` runs the steps ``_changes.plan`` made and rolls back on failure; ``recover``
completes or discards what a dead process left behind; ``discard`` removes a finished
area.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from unpacked.errors import PublishError
from unpacked.publish import _journal as journal
from unpacked.publish._fs import fsync_dir, is_real_dir, lexists, remove_tree, sync_filesystem
from unpacked.publish._journal import Area, Step

logger = logging.getLogger(__name__)


# --- commit and rollback --------------------------------------------------------


def _flush(area: Area, steps: Iterable[Step], created: Iterable[Path]) -> None:
    dirs = journal.touched_dirs(steps, area)
    dirs.update(directory.parent for directory in created)
    for directory in sorted(dirs):
        # A rollback may have removed it, or a foreign writer made it a file (N5).
        if is_real_dir(directory):
            fsync_dir(directory)


def commit(area: Area, steps: Sequence[Step], spec: str) -> None:
    """Run ``steps``; on any failure, undo those that ran and re-raise.

    An ``OSError`` becomes ``PublishError``; other exceptions (``KeyboardInterrupt``)
    propagate as they are, after the rollback.
    """
    created: list[Path] = []
    tried = 0
    try:
        # Everything staged must be on disk before the journal makes it reachable.
        sync_filesystem(area.directory)
        journal.write(area, steps)
        for step in steps:
            tried += 1
            journal.redo(step, area, created)
        _flush(area, steps, created)
    except OSError as error:
        failure = f"cannot publish {_culprit(steps, tried)}: {_describe(error)}"
        _roll_back(area, steps[:tried], created, spec, failure)
        raise PublishError(f"{spec}: {failure}; the repository was restored") from error
    except BaseException as error:
        _roll_back(area, steps[:tried], created, spec, f"interrupted by {error!r}")
        raise
    try:
        journal.remove(area)
    except OSError as error:
        # Everything is published; a leftover journal only makes the next transaction
        # replay steps that all find themselves done.
        logger.warning("%s: published, but cannot remove %s: %s", spec, area.journal, error)


def _roll_back(
    area: Area, tried: Sequence[Step], created: Sequence[Path], spec: str, failure: str
) -> None:
    try:
        for step in reversed(tried):
            journal.undo(step, area)
        for directory in reversed(created):
            os.rmdir(directory)
        _flush(area, tried, created)
        journal.remove(area)
    except OSError as error:
        logger.error("%s: %s; rolling back failed too: %s", spec, failure, error)
        raise PublishError(
            f"{spec}: {failure}; rolling it back failed too ({_describe(error)}); "
            f"the next transaction will complete the commit recorded in {area.journal}"
        ) from error
    logger.warning("%s: %s; rolled back %d step(s)", spec, failure, len(tried))


def _culprit(steps: Sequence[Step], tried: int) -> str:
    if 0 < tried <= len(steps):
        return str(steps[tried - 1].target)
    return "the transaction"


def _describe(error: OSError) -> str:
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or error}{where}"


# --- after a crash, and after a transaction ------------------------------------------


def _complete(area: Area, spec: str) -> None:
    try:
        steps = journal.read(area)
    except journal.JournalFormatError as error:
        raise PublishError(
            f"{spec}: cannot read the journal {area.journal} of an interrupted commit: {error}; "
            "move that directory away after checking the tree by hand"
        ) from error
    if steps is None:
        logger.info("%s: discarding %s, a transaction that never committed", spec, area.directory)
        return
    logger.warning(
        "%s: completing the commit interrupted in %s (%d steps)", spec, area.directory, len(steps)
    )
    created: list[Path] = []
    for step in steps:
        journal.redo(step, area, created)
    _flush(area, steps, created)
    journal.remove(area)


def recover(transactions: Path, root: Path, spec: str) -> None:
    """Complete every interrupted commit under ``transactions`` and discard the rest.

    Called with the repository lock held, so no area in there belongs to a live process.
    """
    try:
        leftovers = sorted(transactions.iterdir())
    except OSError as error:
        raise PublishError(f"{spec}: cannot list {transactions}: {_describe(error)}") from error
    for directory in leftovers:
        try:
            _complete(Area(root, directory), spec)
        except OSError as error:
            raise PublishError(
                f"{spec}: cannot recover the interrupted transaction in {directory}: "
                f"{_describe(error)}"
            ) from error
        try:
            remove_tree(directory)
        except OSError as error:
            # Leftovers without a journal are invisible to readers: not worth stopping
            # every publication for.
            logger.warning("%s: cannot delete %s: %s", spec, directory, _describe(error))


def discard(area: Area, spec: str) -> None:
    """Delete a transaction's area (staging leftovers, trash), unless its commit must complete."""
    if lexists(area.journal):
        logger.error(
            "%s: keeping %s: the next transaction will complete its commit", spec, area.directory
        )
        return
    try:
        remove_tree(area.directory)
    except OSError as error:
        logger.warning(
            "%s: cannot delete %s (the next transaction will): %s", spec, area.directory, error
        )
