"""The commit journal of the ``dir:`` backend: what one commit does, written before it starts.

A commit is a list of steps, each one rename (plus the parent directories it needs).
The list is written to ``journal.json`` and flushed before the first step runs, and
deleted after the last one is durable. Each step decides from the file system alone
whether it has already run, so

- after a crash, the next transaction runs the whole list again (roll forward): steps
  that ran are skipped, the rest complete the commit;
- after an error inside the committing process, the steps are undone in reverse (roll
  back), and a rollback interrupted in turn can still be rolled forward.

The state a step looks at lives in the transaction's private area::

    <area>/journal.json   the steps, present exactly while a commit is under way
    <area>/new/<name>     staged trees, files and symlinks, until placed
    <area>/old/<name>     removed trees and backups of replaced files, until deleted

Names in ``new`` and ``old`` are unique within the transaction and never reused, which
is what makes "is it still in ``new``?" and "is it already in ``old``?" reliable.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from unpacked.publish._fs import fsync_dir, lexists, make_parents

FORMAT = 1
JOURNAL_NAME = "journal.json"


@dataclass(frozen=True)
class Area:
    """The private directory of one transaction, and the repository root it commits to."""

    root: Path
    directory: Path

    @property
    def new(self) -> Path:
        return self.directory / "new"

    @property
    def old(self) -> Path:
        return self.directory / "old"

    @property
    def journal(self) -> Path:
        return self.directory / JOURNAL_NAME


@dataclass(frozen=True)
class Place:
    """Rename the staged entry ``new/<source>`` to ``target``.

    A file or link already at ``target`` is replaced by the rename itself (no moment
    without one), after being hard-linked to ``old/<backup>`` so a rollback can swap
    it back. The step has run once ``new/<source>`` is gone.
    """

    source: str
    target: PurePosixPath
    backup: str


@dataclass(frozen=True)
class Trash:
    """Rename ``target`` to ``old/<name>``; it is deleted once the commit is durable.

    The step has run once ``old/<name>`` exists (or if ``target`` was already absent).
    """

    target: PurePosixPath
    name: str


Step = Place | Trash


def redo(step: Step, area: Area, created: list[Path]) -> None:
    """Run ``step`` unless it has run; directories it creates are appended to ``created``."""
    if isinstance(step, Place):
        _place(step, area, created)
    else:
        _trash(step, area)


def undo(step: Step, area: Area) -> None:
    """Reverse ``step`` if it has run, leaving the state in which ``redo`` would run it again."""
    if isinstance(step, Place):
        _unplace(step, area)
    else:
        _untrash(step, area)


def _place(step: Place, area: Area, created: list[Path]) -> None:
    source = area.new / step.source
    if not lexists(source):
        return
    make_parents(area.root, step.target.parent, created)
    target = area.root / step.target
    backup = area.old / step.backup
    try:
        replaced = os.lstat(target)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISDIR(replaced.st_mode) and not lexists(backup):
            os.link(target, backup, follow_symlinks=False)
    os.rename(source, target)


def _unplace(step: Place, area: Area) -> None:
    source = area.new / step.source
    target = area.root / step.target
    if lexists(source) or not lexists(target):
        return
    backup = area.old / step.backup
    if lexists(backup):
        # Keep the new content staged, then swap the old one back in: readers never
        # miss the path, and a later roll forward still finds the step's source.
        os.link(target, source, follow_symlinks=False)
        os.rename(backup, target)
    else:
        os.rename(target, source)


def _trash(step: Trash, area: Area) -> None:
    trashed = area.old / step.name
    target = area.root / step.target
    if not lexists(trashed) and lexists(target):
        os.rename(target, trashed)


def _untrash(step: Trash, area: Area) -> None:
    trashed = area.old / step.name
    target = area.root / step.target
    if lexists(trashed) and not lexists(target):
        os.rename(trashed, target)


def touched_dirs(steps: Iterable[Step], area: Area) -> set[Path]:
    """The directories whose entries the steps change, to be flushed after they ran."""
    dirs = {area.new, area.old}
    for step in steps:
        dirs.add(area.root / step.target.parent)
    return dirs


# --- the journal file -----------------------------------------------------------


def encode(steps: Sequence[Step]) -> bytes:
    records: list[dict[str, str]] = []
    for step in steps:
        if isinstance(step, Place):
            records.append(
                {
                    "op": "place",
                    "source": step.source,
                    "target": str(step.target),
                    "backup": step.backup,
                }
            )
        else:
            records.append({"op": "trash", "target": str(step.target), "name": step.name})
    return json.dumps({"format": FORMAT, "steps": records}, indent=1).encode()


class JournalFormatError(ValueError):
    """A journal file that this version cannot read; the message says what is wrong."""


def _name(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise JournalFormatError(f"step field {key!r} is not a plain file name: {value!r}")
    return value


def _target(record: dict[str, Any]) -> PurePosixPath:
    value = record.get("target")
    if not isinstance(value, str):
        raise JournalFormatError(f"step target is not a string: {value!r}")
    path = PurePosixPath(value)
    if path.is_absolute() or not path.parts or ".." in path.parts:
        raise JournalFormatError(f"step target is not a relative path inside the tree: {value!r}")
    return path


def _step(record: object) -> Step:
    if not isinstance(record, dict):
        raise JournalFormatError(f"step is not an object: {record!r}")
    op = record.get("op")
    if op == "place":
        return Place(_name(record, "source"), _target(record), _name(record, "backup"))
    if op == "trash":
        return Trash(_target(record), _name(record, "name"))
    raise JournalFormatError(f"unknown step operation {op!r}")


def decode(data: bytes) -> list[Step]:
    try:
        document = json.loads(data)
    except ValueError as error:
        raise JournalFormatError(f"not JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise JournalFormatError(f"not a format {FORMAT} journal")
    steps = document.get("steps")
    if not isinstance(steps, list):
        raise JournalFormatError("no list of steps")
    return [_step(record) for record in steps]


def write(area: Area, steps: Sequence[Step]) -> None:
    """Write the journal durably: once this returns, a crash rolls the commit forward."""
    temporary = area.directory / (JOURNAL_NAME + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        data = encode(steps)
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)
    # The rename makes the journal appear whole or not at all: a torn journal is impossible.
    os.rename(temporary, area.journal)
    fsync_dir(area.directory)


def read(area: Area) -> list[Step] | None:
    """The steps of the commit under way in ``area``, or None if it never started one."""
    try:
        data = area.journal.read_bytes()
    except FileNotFoundError:
        return None
    return decode(data)


def remove(area: Area) -> None:
    """Mark the commit finished (or never started): from now on a crash does not replay it."""
    try:
        os.unlink(area.journal)
    except FileNotFoundError:
        return
    fsync_dir(area.directory)
