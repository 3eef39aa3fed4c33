"""What verify reports and what its walk saw: findings, the changes a repair records, the
snapshot of a repository."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from unpacked import layout
from unpacked.manifest import Manifest
from unpacked.records import ImageStatus, RemovalSchedule
from unpacked.repository import ORPHAN

HEX64 = re.compile(r"[0-9a-f]{64}")
ORPHAN_REFERENCE = ORPHAN
"""The ``reference`` of a schedule entry for a flat tree nothing referenced (gc's, one marker)."""


class Kind(enum.StrEnum):
    """What is wrong; stable names for scripts reading ``--json``."""

    LINK_ABSOLUTE = "link-absolute"
    LINK_DANGLING = "link-dangling"
    LINK_MISMATCH = "link-mismatch"
    METADATA_MISSING = "metadata-missing"
    MANIFEST_INVALID = "manifest-invalid"
    STATUS_INVALID = "status-invalid"
    MANIFEST_MISMATCH = "manifest-mismatch"
    LAYER_MISSING = "layer-missing"
    LAYERFS_MISSING = "layerfs-missing"
    LAYER_RECORD_INVALID = "layer-record-invalid"
    ORIGIN_INVALID = "origin-invalid"
    ORIGIN_MISMATCH = "origin-mismatch"
    LAYER_ORPHAN = "layer-orphan"
    FLAT_ORPHAN = "flat-orphan"
    SCHEDULE_INVALID = "schedule-invalid"
    CATALOG_MISSING = "catalog-missing"
    TRANSACTION_STALE = "transaction-stale"
    TEMP_FILE = "temp-file"


class Remedy(enum.StrEnum):
    """Who can fix a finding: ``verify --repair``, a re-conversion, or a person."""

    REPAIR = "repair"
    RECONVERT = "reconvert"
    MANUAL = "manual"


@dataclass(frozen=True)
class WriteFile:
    path: PurePosixPath
    data: bytes


@dataclass(frozen=True)
class SetLink:
    path: PurePosixPath
    target: str


@dataclass(frozen=True)
class Remove:
    path: PurePosixPath


Change = WriteFile | SetLink | Remove
"""One change a repair records in its transaction."""


@dataclass(frozen=True)
class Schedule:
    """Put ``image_id`` on the removal schedule (merged into one write by ``plan_repair``)."""

    image_id: str


@dataclass(frozen=True)
class Finding:
    """One problem: its kind, the path (relative to the root) and a message naming the culprit.

    ``references`` are the images a re-conversion must cover; ``fix`` is what
    ``--repair`` records for it (None: nothing, or the publisher's recovery).
    """

    kind: Kind
    path: PurePosixPath
    message: str
    remedy: Remedy
    references: tuple[str, ...] = ()
    fix: Change | Schedule | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": str(self.kind),
            "path": str(self.path),
            "message": self.message,
            "remedy": str(self.remedy),
            "references": list(self.references),
        }


@dataclass(frozen=True)
class VerifyOptions:
    skip_layers: bool = False
    """The repository is published with ``--skip-layers``: do not expect layer directories."""


# --- the snapshot: what the read-only walk saw -----------------------------------------


@dataclass(frozen=True)
class Broken:
    """A record that is missing or cannot be parsed, and why."""

    reason: str


@dataclass(frozen=True)
class LinkEntry:
    """A symbolic link of the public area or of ``.multiarch``.

    ``resolved`` is the existing directory inside the repository it leads to (None:
    nowhere, or outside). ``alias`` marks a ``.multiarch/<uname -m>`` architecture alias.
    """

    path: PurePosixPath
    target: str
    resolved: PurePosixPath | None
    alias: bool = False

    @property
    def reference(self) -> str:
        """The image name of the link (the part after ``.multiarch/<arch>/`` for those)."""
        if self.path.parts[0] == str(layout.MULTIARCH):
            return str(PurePosixPath(*self.path.parts[2:]))
        return str(self.path)


@dataclass(frozen=True)
class ImageEntry:
    """One ``.metadata/<name>/`` directory; ``manifest_digest`` is sha256 of the bytes."""

    name: str
    manifest: Manifest | Broken
    manifest_digest: str | None
    status: ImageStatus | Broken


@dataclass(frozen=True)
class LayerEntry:
    """One ``.layers/<l2>/<l>`` directory."""

    digest: str
    has_layerfs: bool
    origin: frozenset[str] | Broken
    records: Broken | None


@dataclass(frozen=True)
class AreaEntry:
    """A staging area of the publisher (``PrivateArea``); ``committing``: it holds a journal."""

    path: PurePosixPath
    committing: bool


@dataclass(frozen=True)
class Snapshot:
    links: tuple[LinkEntry, ...]
    images: tuple[ImageEntry, ...]
    flat_trees: frozenset[str]
    """Image ids (``sha256:<c>``) of the ``.flat/<c2>/<c>`` directories."""
    layers: tuple[LayerEntry, ...]
    schedule: RemovalSchedule | Broken
    catalog_dirs: tuple[tuple[PurePosixPath, bool], ...]
    """Directories that want a ``.cvmfscatalog`` marker, and whether they have one."""
    temp_files: tuple[PurePosixPath, ...]
    areas: tuple[AreaEntry, ...]
