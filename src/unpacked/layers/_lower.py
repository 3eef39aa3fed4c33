"""LAYERFS: what a layer directory takes from the layers below it.

A layer is stored on its own, but two things in it depend on the layers below
(as overlayfs will stack them): directories the layer created only as parents of
its entries show the metadata of the directory below, and an opaque marker in
the layer's root must be spelled out against the lower root (overlayfs ignores
the opaque xattr of a layer's root). Both are done once the layer's tar is
complete, from the flat tree of the layers below: by ``apply_layer`` itself when
that tree is ready, or later by ``complete_layer`` for a layer unpacked ahead of
its lower layers (in parallel with them).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from unpacked.layers import _fs
from unpacked.layers._context import Context
from unpacked.layers._entries import inherit_lower_directory
from unpacked.layers._paths import Tree
from unpacked.layers._report import PendingLower, ReportBuilder
from unpacked.layers._tarstream import TarSource
from unpacked.layers._whiteouts import spell_out_root_opaque


def complete(ctx: Context, pending: PendingLower) -> None:
    """Apply ``pending`` to the layer of ``ctx``, whose ``lower`` tree is ready."""
    for parts in pending.implicit_dirs:
        inherit_lower_directory(ctx, parts)
    if pending.root_opaque:
        root = os.fstat(ctx.tree.root_fd)
        spell_out_root_opaque(ctx)
        # The whiteouts it made changed the root's times, which were final.
        os.utime(ctx.tree.root_fd, ns=(root.st_atime_ns, root.st_mtime_ns))


def complete_layer(
    root: Path, lower: Path | None, pending: PendingLower, *, name: str
) -> tuple[str, ...]:
    """Finish a layer unpacked with ``defer_lower``, now that ``lower`` (the flat tree of
    the layers below; None if there is none) is ready. Returns warnings to report."""
    report = ReportBuilder(whiteouts="overlay")
    if not pending:
        return ()
    if lower is None:
        if pending.root_opaque:
            report.warn(
                "opaque marker in the layer root cannot take effect without the lower tree", ""
            )
        return report.build().warnings
    with Tree(root, layer=name) as tree, Tree(lower, layer=name) as lower_tree:
        ctx = Context(
            layer=name,
            fs=_fs.select(),
            tree=tree,
            source=TarSource(io.BytesIO(b""), layer=name),  # no tar: nothing is read
            report=report,
            lower=lower_tree,
        )
        complete(ctx, pending)
    return report.build().warnings
