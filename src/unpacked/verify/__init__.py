"""Repository verification: is the published tree what the layout (DESIGN.md section 2) says?

    scan (read-only walk, under the repository lock) ─▶ Snapshot
    check (pure)                                      ─▶ Findings
    --repair: one transaction ─▶ scan ─▶ check ─▶ plan_repair (pure) ─▶ apply

The walk looks at the structure only: links, metadata records, layer records, the
``.flat`` and ``.layers`` fan-outs, catalog markers and the publisher's staging. It never
reads the files inside flat trees or ``layerfs`` (apart from the few Apptainer
directories where a temporary file could be left), so it stays cheap on repositories
of thousands of images.

Any publisher will do: the tree is read at ``publisher.root``, and what belongs to the
backend rather than to the layout (its staging areas, its journal) is what
``publisher.private_area()`` says.

Locking. The read-only check takes the repository lock (``publisher.locked()``, waiting
like a transaction would) without opening a transaction, for two reasons: the walk
sees no commit half-way (``dir:`` publishes path by path, ``_base`` N1), and every
staging area found in the private area (``.unpacked/transactions`` for ``dir:``) is
then certainly stale — no running transaction can own it. Opening a transaction instead
would run the publisher's recovery, which changes the repository; a check must not.
``--repair`` does open one transaction: its recovery completes interrupted commits and
deletes stale staging, and all other fixes are recorded in it.

What ``--repair`` fixes, without the registry: origin.json sets (recomputed from the
manifests), missing catalog markers, absolute links that lead to a flat tree (made
relative), stale staging (the publisher's recovery), temporary files left in flat
trees, orphan flat trees (scheduled in remove-schedule.json, so garbage collection
removes them after the grace period; never deleted here). What it cannot fix needs a
re-conversion; for two of those it first removes what would make ``convert`` believe
the image is complete: a layer directory without ``layerfs`` (convert would reuse it)
and a manifest.json that contradicts status.json (convert would find it current).

The package, along those sections: ``_model`` (findings, changes, the snapshot), ``_scan``
(the walk), ``_checks`` (pure), ``_repair`` (the plan and its application), ``_report``
(the edge: reports, locking, the transaction) and ``_deep`` (``verify --deep``).
"""

from unpacked.verify._checks import check
from unpacked.verify._deep import (
    DeepFinding,
    DeepKind,
    DeepRepair,
    DeepReport,
    Reconverter,
    check_content,
    differences,
    expected_flat,
    repair_content,
    verify_content,
)
from unpacked.verify._model import (
    ORPHAN_REFERENCE,
    AreaEntry,
    Broken,
    Change,
    Finding,
    ImageEntry,
    Kind,
    LayerEntry,
    LinkEntry,
    Remedy,
    Remove,
    Schedule,
    SetLink,
    Snapshot,
    VerifyOptions,
    WriteFile,
)
from unpacked.verify._repair import apply, describe, plan_repair
from unpacked.verify._report import (
    RepairReport,
    VerifyReport,
    repair_repository,
    verify_repository,
)
from unpacked.verify._scan import scan

__all__ = [
    "ORPHAN_REFERENCE",
    "AreaEntry",
    "Broken",
    "Change",
    "DeepFinding",
    "DeepKind",
    "DeepRepair",
    "DeepReport",
    "Finding",
    "ImageEntry",
    "Kind",
    "LayerEntry",
    "LinkEntry",
    "Reconverter",
    "Remedy",
    "Remove",
    "RepairReport",
    "Schedule",
    "SetLink",
    "Snapshot",
    "VerifyOptions",
    "VerifyReport",
    "WriteFile",
    "apply",
    "check",
    "check_content",
    "describe",
    "differences",
    "expected_flat",
    "plan_repair",
    "repair_content",
    "repair_repository",
    "scan",
    "verify_content",
    "verify_repository",
]
