"""Whiteouts and opaque markers: a small closed choice of what to do with them.

- ``RESOLVE`` (FLAT): ``.wh.NAME`` removes NAME of the lower layers; an opaque
  marker ``.wh..wh..opq`` removes everything of the lower layers in its
  directory, whatever the order of the marker and its siblings in the tar.
  What this same layer created is never removed (OCI: whiteouts apply to lower
  layers only).
- ``OVERLAY`` (LAYERFS as root): ``.wh.NAME`` becomes a 0/0 character device
  NAME, an opaque marker the ``trusted.overlay.opaque=y`` xattr of its
  directory: the form overlayfs reads in a lower directory.
- ``KEEP`` (LAYERFS otherwise): the ``.wh.`` entries stay ordinary files; the
  caller records that choice.

In LAYERFS a whiteout hides the lower layers only (OCI), so a layer that whites
out a path and also creates it, in either order, keeps its own entry:
``reconcile`` then drops the marker (fuse-overlayfs would hide the entry behind
a ``.wh.`` file) and makes a directory opaque, so that the lower one's content
stays hidden, as a FLAT tree has it. So does a directory that the layer makes
where it had put a non-directory; and a directory the layer creates only as a
parent after a whiteout or opaque marker hid the lower one takes nothing from
the lower one (``Context.hides_lower``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile

from unpacked.errors import LayerError, UnsafeLayerError
from unpacked.layers import _entries
from unpacked.layers._context import Context, Place
from unpacked.layers._fs import OPAQUE_XATTR
from unpacked.layers._paths import Parts, display
from unpacked.records import Whiteouts

PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
# aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): not content, docker drops it too.
_AUFS_META = ".wh..wh."


def _under_aufs_metadata(parts: Parts) -> bool:
    return any(part.startswith(_AUFS_META) for part in parts[:-1])


def concerns(parts: Parts) -> bool:
    """Whether the entry at ``parts`` is a whiteout, an opaque marker or aufs metadata."""
    return parts[-1].startswith(PREFIX) or _under_aufs_metadata(parts)


def apply(ctx: Context, mode: Whiteouts, member: tarfile.TarInfo, parts: Parts) -> None:
    """Handle an entry for which ``concerns`` is true (mode is not KEEP)."""
    base = parts[-1]
    if _under_aufs_metadata(parts) or (base.startswith(_AUFS_META) and base != OPAQUE):
        ctx.report.skip(display(parts), "aufs metadata")
        return
    if blocked(ctx, parts):
        return
    if base == OPAQUE:
        _opaque(ctx, mode, parts[:-1])
        return
    name = base[len(PREFIX) :]
    if name in ("", ".", ".."):
        raise UnsafeLayerError(f"layer {ctx.layer}: whiteout {member.name!r} names no file")
    if mode is Whiteouts.RESOLVE:
        _remove(ctx, parts[:-1], name)
    else:
        _overlay_whiteout(ctx, member, parts[:-1], name)


def _remove(ctx: Context, parent: Parts, name: str) -> None:
    try:
        found = ctx.tree.directory(parent, create=False)
    except UnsafeLayerError:
        raise
    except LayerError:
        return  # a parent is not a directory: nothing below to hide (as umoci)
    if found is None:
        return  # nothing below to hide
    fd, resolved = found
    place = Place(fd, name, (*resolved, name))
    assert ctx.upper is not None
    if place.parts not in ctx.upper:
        _entries.clear(ctx, place)
        return
    # This layer created the path (or something below it): its own entries stay,
    # but a directory's lower content is hidden, as overlayfs shows the layer
    # (``reconcile`` makes that directory opaque in LAYERFS).
    existing = _lstat(fd, name)
    if existing is None or not stat.S_ISDIR(existing.st_mode):
        return
    below = ctx.tree.directory(place.parts, create=False)
    assert below is not None
    _remove_lower_content(ctx, below[0], place.parts, ctx.upper)


def _opaque(ctx: Context, mode: Whiteouts, parent: Parts) -> None:
    # FLAT: a marker hides lower content; with no directory below there is none
    # (umoci does not create it). LAYERFS: the directory holds the marker.
    found = ctx.tree.directory(parent, create=mode is Whiteouts.OVERLAY)
    if found is None:
        return
    fd, resolved = found
    if mode is Whiteouts.OVERLAY:
        os.setxattr(fd, OPAQUE_XATTR, b"y")
        ctx.root_opaque = ctx.root_opaque or not resolved
        ctx.opaqued.add(resolved)
        return
    assert ctx.upper is not None
    _remove_lower_content(ctx, fd, resolved, ctx.upper)


def _remove_lower_content(ctx: Context, fd: int, resolved: Parts, upper: set[Parts]) -> None:
    """Remove, below directory ``resolved``, everything this layer did not create."""
    pending = [resolved]
    while pending:
        current = pending.pop()
        found = ctx.tree.directory(current, create=False) if current != resolved else (fd, current)
        if found is None:
            continue
        for name in os.listdir(found[0]):
            child = (*current, name)
            if child not in upper:
                _entries.clear(ctx, Place(found[0], name, child))
                continue
            st = os.stat(name, dir_fd=found[0], follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                # A directory of this layer that merged into a lower one: the
                # lower part of it is hidden too.
                pending.append(child)


def blocked(ctx: Context, parts: Parts) -> bool:
    """Whether a parent of whiteout ``parts`` is not a directory: it then hides nothing.

    What the whiteout would hide below is hidden already by the non-directory
    (of this layer in LAYERFS), as umoci does with such a whiteout.
    """
    try:
        ctx.tree.directory(parts[:-1], create=False)
    except UnsafeLayerError:
        raise
    except LayerError:
        return True
    return False


def _overlay_whiteout(ctx: Context, member: tarfile.TarInfo, parent: Parts, name: str) -> None:
    found = ctx.tree.directory(parent, create=True)
    assert found is not None
    place = Place(found[0], name, (*found[1], name))
    ctx.whited.add(place.parts)
    existing = _lstat(place.dir_fd, name)
    if existing is not None and not is_whiteout_device(existing):
        return  # this layer's own entry stays; reconcile() hides the lower one below it
    _entries.clear(ctx, place)
    _whiteout_device(ctx, place.dir_fd, name, member.uid, member.gid)
    os.utime(name, ns=_entries.times(member), dir_fd=place.dir_fd, follow_symlinks=False)


def _whiteout_device(ctx: Context, dir_fd: int, name: str, uid: int, gid: int) -> None:
    # Mode 0, as docker and the kernel itself make them.
    os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=dir_fd)
    ctx.fs.chown_at(dir_fd, name, uid, gid)


def spell_out_root_opaque(ctx: Context) -> None:
    """OVERLAY: make an opaque marker in the layer's root effective.

    overlayfs ignores the opaque xattr on the root of a layer (a root is never
    looked up in the layer below), so every entry of the lower root is whited
    out instead, and a directory of this layer that would merge with a lower
    one is made opaque itself. That needs the lower tree.
    """
    if ctx.lower is None:
        ctx.report.warn(
            "opaque marker in the layer root cannot take effect without the lower tree", ""
        )
        return
    root = ctx.tree.root_fd
    # The whiteouts take the root's times: converting twice gives the same tree.
    st = os.fstat(root)
    for name in os.listdir(ctx.lower.root_fd):
        below = os.stat(name, dir_fd=ctx.lower.root_fd, follow_symlinks=False)
        try:
            here = os.stat(name, dir_fd=root, follow_symlinks=False)
        except FileNotFoundError:
            _whiteout_device(ctx, root, name, 0, 0)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=root, follow_symlinks=False)
            continue
        if stat.S_ISDIR(here.st_mode) and stat.S_ISDIR(below.st_mode):
            found = ctx.tree.directory((name,), create=False)
            assert found is not None
            os.setxattr(found[0], OPAQUE_XATTR, b"y")


def is_whiteout_device(st: os.stat_result) -> bool:
    """Whether ``st`` is the overlayfs whiteout form, a 0/0 character device."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def kept(ctx: Context, parts: Parts) -> None:
    """KEEP: the ``.wh.`` file at ``parts`` was created; remember what it whites out."""
    base = parts[-1]
    if base == OPAQUE or (base.startswith(PREFIX) and not base.startswith(_AUFS_META)):
        found = ctx.tree.directory(parts[:-1], create=False)
        if found is None:
            return
        if base == OPAQUE:
            ctx.opaqued.add(found[1])
        else:
            ctx.whited.add((*found[1], base[len(PREFIX) :]))


def reconcile(ctx: Context, mode: Whiteouts) -> None:
    """LAYERFS, end of the layer: a path both whited out and created keeps the entry only."""
    for parts in sorted(ctx.whited):
        try:
            found = ctx.tree.directory(parts[:-1], create=False)
        except UnsafeLayerError:
            raise
        except LayerError:
            continue  # a parent was replaced by a non-directory later in the layer
        if found is None or found[1] != parts[:-1]:
            continue
        fd, name = found[0], parts[-1]
        existing = _lstat(fd, name)
        if existing is None or is_whiteout_device(existing):
            continue
        if mode is Whiteouts.KEEP:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(PREFIX + name, dir_fd=fd)
        if stat.S_ISDIR(existing.st_mode):
            _make_opaque(ctx, mode, parts)


def _make_opaque(ctx: Context, mode: Whiteouts, parts: Parts) -> None:
    found = ctx.tree.directory(parts, create=False)
    assert found is not None
    if mode is Whiteouts.OVERLAY:
        os.setxattr(found[0], OPAQUE_XATTR, b"y")
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    os.close(os.open(OPAQUE, flags, 0o644, dir_fd=found[0]))
