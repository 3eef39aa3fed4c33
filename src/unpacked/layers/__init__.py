"""Apply container image layers to a directory, safely, correctly and fast.

Three levels, as in umoci: an image (``unpack_flat``: layers in order, each
checked against its diff_id), a layer (``unpack_layer`` / ``apply_layer``: one
tar stream, whiteouts handled for the ``Target``), an entry (one function per
tar entry type). Nothing is ever created, changed or followed outside the root
directory: every path is resolved below the root by an fd walk that never
follows a symlink out of it.

Decisions that differ between tools, made here:

- Names: a leading ``/`` and ``./`` are dropped (the entry lands under the
  root); ``..`` is resolved lexically and rejected with ``UnsafeLayerError`` if
  it would climb above the root; names of ``PATH_MAX`` bytes or more are a
  ``LayerError``.
- A symlink in a parent component is followed *inside* the root, as if the
  root were ``/`` (as umoci does); a symlink as the last component is replaced,
  never followed. In LAYERFS only the layer's own symlinks are seen: an entry
  below a lower layer's symlink creates a directory in its place, as
  containerd's and docker's per-layer extraction does.
- Directory times: those of this layer's directory entries are set when the
  layer is complete; every lower directory the layer touched gets its times
  back (umoci restores only an entry's direct parent).
- Modes: directories get at least ``u+rwx`` and files ``u+r``, so unprivileged
  runtimes can use the tree and it can be removed; changes are reported.
- Unprivileged: owners are not applied (counted), device nodes are skipped
  (listed, and one warning per layer names them, as ``umoci --rootless``
  does), fifos are created, ``trusted.*``/``security.*`` xattrs give a
  warning, and LAYERFS keeps ``.wh.`` files (``whiteouts="wh-files"``).
- LAYERFS: a layer that whites out a path and also creates it (in either
  order) keeps its entry and no marker; a directory is made opaque, so the
  lower one's content stays hidden as in a FLAT tree (OCI: a whiteout hides
  lower layers only).
- Errors: any exception that is not an ``UnpackedError`` becomes a
  ``LayerError`` naming the layer and the entry; never a traceback.
- ``trusted.overlay.*`` xattrs in a layer are ignored: they would change how
  overlayfs reads the tree.
- LAYERFS: an opaque marker in the layer root is spelled out (whiteouts for
  the lower root's entries, opaque xattrs on merging directories), because
  overlayfs ignores the opaque xattr of a layer's root; directories the layer
  creates only implicitly take the lower tree's metadata. Both are done when
  the layer's tar is complete, so a layer can be unpacked ahead of its lower
  layers (``defer_lower``) and completed later (``complete_layer``).
- A truncated tar without end-of-archive blocks and data after the end of the
  archive are accepted with a warning (GNU tar and Go's archive/tar accept
  them); the diff_id check of ``unpack_layer`` still catches a truncation.
"""

from unpacked.layers._apply import apply_layer, unpack_flat, unpack_layer
from unpacked.layers._compression import open_layer
from unpacked.layers._fs import OPAQUE_XATTR
from unpacked.layers._growing import GrowingBlob, abandon, discard, is_abandoned
from unpacked.layers._limit import SizeLimit
from unpacked.layers._lower import complete_layer
from unpacked.layers._merge import LayerTree, MergeStats, merge_layer, merge_layers
from unpacked.layers._pool import SpareWorkers, UnpackPool, available_cpus
from unpacked.layers._report import ApplyReport, PendingLower, Target

__all__ = [
    "OPAQUE_XATTR",
    "ApplyReport",
    "GrowingBlob",
    "LayerTree",
    "MergeStats",
    "PendingLower",
    "SizeLimit",
    "SpareWorkers",
    "Target",
    "UnpackPool",
    "abandon",
    "apply_layer",
    "available_cpus",
    "complete_layer",
    "discard",
    "is_abandoned",
    "merge_layer",
    "merge_layers",
    "open_layer",
    "unpack_flat",
    "unpack_layer",
]
