"""What a backend keeps for itself inside the repository root (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class PrivateArea:
    """The backend's own part of the root: never published, skipped by readers.

    ``staging`` holds one directory per transaction. One that holds ``journal`` is a
    commit that was interrupted (the next transaction completes it); any other is the
    staging of a transaction that never committed (the next transaction deletes it).
    Paths are relative to the root.
    """

    directory: PurePosixPath
    staging: PurePosixPath
    journal: str
