"""The layer and image levels: apply one tar stream, unpack one blob, unpack an image flat."""

from __future__ import annotations

import contextlib
import logging
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from unpacked.digest import Digest, Readable
from unpacked.errors import LayerError, UnpackedError, UnsafeLayerError
from unpacked.layers import _fs, _whiteouts
from unpacked.layers._compression import opened
from unpacked.layers._context import Context, Place
from unpacked.layers._entries import DEVICE_SKIPPED, HANDLERS, directory_metadata
from unpacked.layers._lower import complete
from unpacked.layers._paths import Parts, Tree, display, normalise
from unpacked.layers._report import ApplyReport, PendingLower, ReportBuilder, Target
from unpacked.layers._tarstream import TarReader
from unpacked.publish import WhiteoutForm
from unpacked.records import Whiteouts

logger = logging.getLogger(__name__)


def apply_layer(
    tar_stream: Readable,
    root: Path,
    *,
    target: Target,
    whiteouts: WhiteoutForm | None = None,
    lower: Path | None = None,
    defer_lower: bool = False,
    name: str = "layer",
) -> ApplyReport:
    """Apply one uncompressed tar stream to the directory ``root``.

    FLAT: ``root`` holds the layers below; whiteouts remove from it. LAYERFS:
    ``root`` is the layer's own directory and ``lower`` (optional) the file
    system of the layers below, from which a hard link to a file not in this
    layer is copied, and whose directories give their metadata to the ones this
    layer creates only implicitly. With ``defer_lower`` instead, the layers below
    exist but are not ready: the layer is unpacked without them, the report's
    ``pending`` says what ``complete_layer`` must do once they are, and a hard
    link into them raises ``LowerLayersNeeded``. The stream is read to its end.
    ``whiteouts`` (LAYERFS) is the form the publisher asks for (its ``capabilities``;
    ``OVERLAY`` needs root); None: the process's own, ``OVERLAY`` as root, else ``AUFS``.
    The target is never probed: what readers need is the publisher's to say.
    Raises ``LayerError`` (or ``UnsafeLayerError`` for an entry that would leave
    ``root``) naming the layer and the entry, for every failure, an unexpected
    one included; ``root`` is then partly written.
    """
    if (lower is not None or defer_lower) and target is not Target.LAYERFS:
        raise ValueError("lower and defer_lower are only used with Target.LAYERFS")
    if lower is not None and defer_lower:
        raise ValueError("lower is given: nothing to defer")
    fs = _fs.select()
    mode = _whiteout_mode(target, whiteouts, fs)
    position = _Position()
    try:
        return _apply(
            tar_stream,
            root,
            _Setting(fs, target, mode),
            lower=lower,
            defer=defer_lower,
            name=name,
            at=position,
        )
    except UnpackedError:
        raise
    except OSError as exc:
        # Entries are named by _apply_member; what is left concerns the layer's directories.
        raise LayerError(f"layer {name}: {root}: {exc.strerror or exc}") from exc
    except Exception as exc:
        # A defect of ours, met on this layer: the user needs the layer and the
        # entry to report it or to work around it, never a traceback.
        logger.debug("layer %s: unexpected error", name, exc_info=True)
        raise LayerError(
            f"layer {name}: {position.describe()}: unexpected {type(exc).__name__}: {exc}"
        ) from exc


class _Position:
    """The entry a layer is at, for the message of an unexpected error."""

    def __init__(self) -> None:
        self.entry: str | None = None
        self.done = False

    def describe(self) -> str:
        if self.done:
            return "after its last entry"
        return "before its first entry" if self.entry is None else f"entry {self.entry!r}"


@dataclass(frozen=True)
class _Setting:
    fs: _fs.FileSystem
    target: Target
    mode: Whiteouts


def _apply(
    tar_stream: Readable,
    root: Path,
    setting: _Setting,
    *,
    lower: Path | None,
    defer: bool,
    name: str,
    at: _Position,
) -> ApplyReport:
    fs, target, mode = setting.fs, setting.target, setting.mode
    with contextlib.ExitStack() as trees:
        tree = trees.enter_context(Tree(root, layer=name))
        lower_tree = trees.enter_context(Tree(lower, layer=name)) if lower is not None else None
        tree.whiteout_devices = mode is Whiteouts.OVERLAY
        report = ReportBuilder(whiteouts=mode.value)
        reader = TarReader(tar_stream, layer=name)
        ctx = Context(
            layer=name,
            fs=fs,
            tree=tree,
            source=reader.source,
            report=report,
            lower=lower_tree,
            upper=set() if target is Target.FLAT else None,
            implicit={} if target is Target.LAYERFS else None,
            defer_lower=defer,
        )
        for member in reader:
            at.entry = member.name
            report.entries += 1
            _apply_member(ctx, mode, member)
        at.done = True
        if target is Target.LAYERFS:
            _whiteouts.reconcile(ctx, mode)
        _finish(ctx, reader)
        if target is Target.LAYERFS:
            _lower_layers(ctx, defer)
    result = report.build()
    _warn_devices(result, name)
    logger.debug(
        "layer %s: %d entries, %d bytes, whiteouts %s",
        name,
        result.entries,
        result.bytes_written,
        result.whiteouts,
    )
    return result


# Enough names to find them in the image; the report keeps the full list.
_NAMED_DEVICES = 20


def _warn_devices(report: ApplyReport, name: str) -> None:
    """One warning per layer naming the device nodes not created, as ``umoci --rootless``."""
    devices = [path for path, why in report.skipped if why == DEVICE_SKIPPED]
    if not devices:
        return
    shown = ", ".join(devices[:_NAMED_DEVICES])
    more = len(devices) - _NAMED_DEVICES
    logger.warning(
        "layer %s: %d device node%s not created (not root): %s%s",
        name,
        len(devices),
        "" if len(devices) == 1 else "s",
        shown,
        f" and {more} more" if more > 0 else "",
    )


def _whiteout_mode(target: Target, form: WhiteoutForm | None, fs: _fs.FileSystem) -> Whiteouts:
    if target is Target.FLAT:
        return Whiteouts.RESOLVE
    if form is None:
        form = WhiteoutForm.OVERLAY if fs.privileged else WhiteoutForm.AUFS
    if form is WhiteoutForm.OVERLAY and not fs.privileged:
        raise ValueError("overlay whiteouts need root (0/0 devices, trusted.* xattrs)")
    return Whiteouts.OVERLAY if form is WhiteoutForm.OVERLAY else Whiteouts.KEEP


def _apply_member(ctx: Context, mode: Whiteouts, member: tarfile.TarInfo) -> None:
    try:
        parts = normalise(member.name, layer=ctx.layer)
        _dispatch(ctx, mode, member, parts)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in a PAX name
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LayerError(f"layer {ctx.layer}: entry {member.name!r}: {reason}") from exc
    if ctx.tree.created:
        _created_implicitly(ctx, marker=bool(parts) and _whiteouts.concerns(parts))


def _dispatch(ctx: Context, mode: Whiteouts, member: tarfile.TarInfo, parts: Parts) -> None:
    """The root's metadata, a whiteout or opaque marker, or an entry of the tree."""
    if not parts:
        _root_entry(ctx, member)
        return
    marker = _whiteouts.concerns(parts)
    if mode is not Whiteouts.KEEP:
        if marker and _whiteouts.PREFIX in member.name:
            _whiteouts.apply(ctx, mode, member, parts)
        else:
            _create(ctx, member, parts)
    elif not (marker and _whiteouts.blocked(ctx, parts)):
        _create(ctx, member, parts)
        _whiteouts.kept(ctx, parts)


def _created_implicitly(ctx: Context, *, marker: bool) -> None:
    """Bookkeeping for the missing parent directories the last entry needed."""
    for parts in ctx.tree.created:
        ctx.created(parts)
        if marker and ctx.implicit is not None:
            ctx.marker_dirs.add(parts)
        if ctx.non_dirs:
            _hidden_whole(ctx, parts, directory=True)
        if ctx.implicit is not None:
            ctx.implicit.pop(parts, None)
            if not ctx.hides_lower(parts):
                ctx.implicit[parts] = None  # the order of their last creation
    ctx.tree.created.clear()


def _lower_layers(ctx: Context, defer: bool) -> None:
    """LAYERFS: what the layer takes from the layers below, now or (``defer``) later."""
    assert ctx.implicit is not None
    pending = PendingLower(tuple(ctx.implicit), ctx.root_opaque)
    if ctx.lower is not None:
        complete(ctx, pending)
    elif defer:
        ctx.report.pending = pending
    elif ctx.root_opaque:
        ctx.report.warn(
            "opaque marker in the layer root cannot take effect without the lower tree", ""
        )


def _create(ctx: Context, member: tarfile.TarInfo, parts: Parts) -> None:
    handler = HANDLERS.get(member.type)
    if handler is None:
        ctx.report.skip(display(parts), f"unsupported tar entry type {member.type!r}")
        return
    found = ctx.tree.directory(parts[:-1], create=True)
    assert found is not None
    fd, resolved = found
    place = Place(fd, parts[-1], (*resolved, parts[-1]))
    if ctx.marker_dirs and not _whiteouts.concerns(parts):
        # Content below (or at) them: real directories of the layer from now on.
        ctx.marker_dirs.difference_update(place.parts[:i] for i in range(1, len(place.parts) + 1))
    handler(ctx, member, place)
    ctx.created(place.parts)
    if ctx.implicit is not None and not _whiteouts.concerns(parts):
        _hidden_whole(ctx, place.parts, directory=member.isdir())


def _hidden_whole(ctx: Context, parts: Parts, *, directory: bool) -> None:
    """LAYERFS: a non-directory of the layer hides the lower path whole; should the layer
    make it a directory again, that directory is opaque (``reconcile``), as in FLAT."""
    if not directory:
        ctx.non_dirs.add(parts)
    elif parts in ctx.non_dirs:
        ctx.whited.add(parts)


def _root_entry(ctx: Context, member: tarfile.TarInfo) -> None:
    if not member.isdir():
        raise UnsafeLayerError(
            f"layer {ctx.layer}: entry {member.name!r} would replace the root directory"
        )
    directory_metadata(ctx, ctx.tree.root_fd, member, (), merged=True)


def _finish(ctx: Context, reader: TarReader) -> None:
    """End of the tar: check what follows, then set directory times (children changed them)."""
    if reader.missing_end_marker:
        ctx.report.warn("tar stream has no end-of-archive marker", "")
    if reader.source.drain():
        ctx.report.warn("data after the end-of-archive marker ignored", "")
    ctx.report.diff_size = reader.source.tell()
    # Directories this layer only passed through get their times back; then
    # the directory entries of this layer get theirs.
    for times in (ctx.tree.times, ctx.dir_times):
        for parts, ns in times.items():
            _set_dir_times(ctx, parts, ns)


def _set_dir_times(ctx: Context, parts: Parts, ns: tuple[int, int]) -> None:
    try:
        found = ctx.tree.directory(parts, create=False)
    except LayerError:
        return  # replaced by a non-directory later in the layer
    if found is not None and found[1] == parts:
        os.utime(found[0], ns=ns)


def unpack_layer(
    blob: Readable,
    media_type: str,
    diff_id: Digest,
    root: Path,
    *,
    target: Target,
    whiteouts: WhiteoutForm | None = None,
    lower: Path | None = None,
    defer_lower: bool = False,
    name: str,
    bound: tuple[int, str] | None = None,
) -> ApplyReport:
    """Decompress, apply and verify one layer blob (``apply_layer`` tells the arguments;
    ``bound``: at most that many decompressed bytes, see ``SizeLimit``).

    The uncompressed stream is hashed to its very end (trailing zero blocks
    included) and must equal ``diff_id``, else ``VerificationError`` naming the
    layer; ``root`` is then partly written and must be discarded by the caller.
    """
    with opened(blob, media_type, name=name, diff_id=diff_id, bound=bound) as stream:
        return apply_layer(
            stream,
            root,
            target=target,
            whiteouts=whiteouts,
            lower=lower,
            defer_lower=defer_lower,
            name=name,
        )


def unpack_flat(layers: Iterable[tuple[Readable, str, Digest]], root: Path) -> list[ApplyReport]:
    """Unpack ``(blob, media type, diff_id)`` layers in order into one FLAT root."""
    return [
        unpack_layer(blob, media_type, diff_id, root, target=Target.FLAT, name=str(diff_id))
        for blob, media_type, diff_id in layers
    ]
