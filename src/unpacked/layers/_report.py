"""What applying one layer did: the public ``ApplyReport`` and the bounded collector behind it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# A layer with a million device nodes must not make the report a million tuples
# long; past this many items per list only the count is kept, and a warning says so.
MAX_LISTED = 1000


class Target(enum.Enum):
    """How a layer is laid out on disk."""

    FLAT = "flat"
    """Layers applied in order into one root file system; whiteouts resolved."""

    LAYERFS = "layerfs"
    """One layer on its own, as overlayfs reads a lower directory."""


@dataclass(frozen=True)
class PendingLower:
    """LAYERFS: what a layer still takes from the layers below it once they are ready.

    ``complete_layer`` applies it; ``apply_layer`` does so itself when given ``lower``.
    """

    implicit_dirs: tuple[tuple[str, ...], ...] = ()
    """Directories the layer created only as parents of its entries: they take the
    metadata of the directory below, as overlayfs would show it."""
    root_opaque: bool = False
    """The layer has an opaque marker in its root, to be spelled out against the lower root."""

    def __bool__(self) -> bool:
        return bool(self.implicit_dirs) or self.root_opaque


@dataclass(frozen=True)
class ApplyReport:
    """What applying one layer did, for logs, records and tests.

    ``skipped`` and ``permission_fixes`` list at most ``MAX_LISTED`` items each;
    a warning gives the number left out.
    """

    entries: int
    """Tar entries processed (whiteouts included)."""
    bytes_written: int
    """Bytes of regular-file content written (holes of sparse files excluded)."""
    skipped: tuple[tuple[str, str], ...]
    """``(path, reason)`` of entries not created, e.g. device nodes when unprivileged."""
    permission_fixes: tuple[tuple[str, int, int], ...]
    """``(path, mode in tar, mode on disk)`` where the mode was widened to stay usable."""
    owners_not_applied: int
    """Entries whose uid/gid differs from the owner they got on disk (unprivileged)."""
    whiteouts: str
    """``"resolved"`` (FLAT), ``"overlay"`` or ``"wh-files"`` (LAYERFS)."""
    warnings: tuple[str, ...]
    """One line per kind of problem that did not stop the layer."""
    diff_size: int
    """Bytes in the uncompressed tar stream, read to its end (podman's "diff-size")."""
    pending: PendingLower = PendingLower()
    """LAYERFS with ``defer_lower``: what ``complete_layer`` must still do."""


@dataclass
class ReportBuilder:
    """Mutable, bounded collector turned into an ``ApplyReport`` at the end of a layer."""

    whiteouts: str
    entries: int = 0
    diff_size: int = 0
    bytes_written: int = 0
    owners_not_applied: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    permission_fixes: list[tuple[str, int, int]] = field(default_factory=list)
    skipped_dropped: int = 0
    fixes_dropped: int = 0
    # Warnings keyed by kind, so a layer of 10k files on a file system without
    # xattrs yields one line with a count, not 10k lines.
    warning_counts: dict[str, int] = field(default_factory=dict)
    warning_examples: dict[str, str] = field(default_factory=dict)
    pending: PendingLower = PendingLower()

    def skip(self, path: str, reason: str) -> None:
        if len(self.skipped) < MAX_LISTED:
            self.skipped.append((path, reason))
        else:
            self.skipped_dropped += 1

    def permission_fix(self, path: str, tar_mode: int, disk_mode: int) -> None:
        if len(self.permission_fixes) < MAX_LISTED:
            self.permission_fixes.append((path, tar_mode, disk_mode))
        else:
            self.fixes_dropped += 1

    def warn(self, kind: str, path: str) -> None:
        """Count one occurrence of a warning ``kind``; the first ``path`` is kept as example."""
        self.warning_counts[kind] = self.warning_counts.get(kind, 0) + 1
        self.warning_examples.setdefault(kind, path)

    def _warning(self, kind: str, count: int) -> str:
        example = self.warning_examples[kind]
        if not example:
            return kind
        return f"{kind} ({count} time{'' if count == 1 else 's'}, first: {example!r})"

    def build(self) -> ApplyReport:
        warnings = [self._warning(kind, count) for kind, count in self.warning_counts.items()]
        if self.skipped_dropped:
            warnings.append(f"{self.skipped_dropped} more skipped entries not listed")
        if self.fixes_dropped:
            warnings.append(f"{self.fixes_dropped} more permission fixes not listed")
        return ApplyReport(
            entries=self.entries,
            bytes_written=self.bytes_written,
            skipped=tuple(self.skipped),
            permission_fixes=tuple(self.permission_fixes),
            owners_not_applied=self.owners_not_applied,
            whiteouts=self.whiteouts,
            warnings=tuple(warnings),
            diff_size=self.diff_size,
            pending=self.pending,
        )
