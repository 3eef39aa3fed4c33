"""One function per tar entry type, each creating its entry at a ``Place`` inside the root.

A ``Place`` is a resolved parent directory fd and a last component that is
never followed. Whatever already exists there (from a lower layer or earlier
in this layer) is replaced, except that a directory over a directory merges.
Metadata order matters: owner first (chown clears setuid/setgid and the
security.capability xattr), then xattrs (unprivileged, user.* needs write
permission, which the final mode may deny), then mode, then times.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import TypeVar, cast

from unpacked.errors import LayerError, LowerLayersNeeded
from unpacked.layers._context import Context, Place
from unpacked.layers._paths import Parts, display, normalise

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_XATTR_PREFIX = "SCHILY.xattr."
# overlayfs interprets these (redirects, metacopy, opaque); only our whiteout
# handling may write them, never a layer.
_FORBIDDEN_XATTR = "trusted.overlay."
_NS = 10**9
DEVICE_SKIPPED = "device node: not permitted (unprivileged)"

_T = TypeVar("_T")


def times(member: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in ns; PAX records keep their sub-second digits exactly."""
    mtime = _pax_ns(member, "mtime")
    if mtime is None:
        mtime = int(member.mtime) * _NS
    atime = _pax_ns(member, "atime")
    return (mtime if atime is None else atime), mtime


def _pax_ns(member: tarfile.TarInfo, key: str) -> int | None:
    text = member.pax_headers.get(key)
    if text is None:
        return None
    try:
        return int(Decimal(text) * _NS)
    except InvalidOperation:
        return None


def _replacing(ctx: Context, place: Place, create: Callable[[], _T]) -> _T:
    try:
        return create()
    except FileExistsError:
        clear(ctx, place)
        return create()


def clear(ctx: Context, place: Place) -> None:
    """Remove whatever is at ``place`` (a directory with all its content)."""
    try:
        st = os.stat(place.name, dir_fd=place.dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        remove_tree(place.dir_fd, place.name)
        ctx.tree.forget(place.parts, directory=True)
    else:
        os.unlink(place.name, dir_fd=place.dir_fd)
        if stat.S_ISLNK(st.st_mode):
            ctx.tree.forget(place.parts, directory=False)


def remove_tree(dir_fd: int, name: str) -> None:
    """Remove directory ``name`` of ``dir_fd`` and its content, never following a symlink.

    Iterative, so that a hostile layer's deep nesting cannot exhaust the stack.
    """
    top = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    stack = [(top, name, iter(os.listdir(top)))]
    try:
        while stack:
            fd, _, children = stack[-1]
            for child in children:
                try:
                    os.unlink(child, dir_fd=fd)
                except IsADirectoryError:
                    child_fd = os.open(child, _DIR_FLAGS, dir_fd=fd)
                    stack.append((child_fd, child, iter(os.listdir(child_fd))))
                    break
            else:
                _, done, _ = stack.pop()
                os.close(fd)
                os.rmdir(done, dir_fd=stack[-1][0] if stack else dir_fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    return [
        (key[len(_XATTR_PREFIX) :], value.encode("utf-8", "surrogateescape"))
        for key, value in member.pax_headers.items()
        if key.startswith(_XATTR_PREFIX)
    ]


def _set_xattrs(ctx: Context, target: int | str, member: tarfile.TarInfo, path: str) -> None:
    """Set the entry's xattrs on ``target`` (an fd, or a path whose last part is not followed)."""
    for key, value in _xattrs(member):
        if key.startswith(_FORBIDDEN_XATTR):
            ctx.report.warn("trusted.overlay.* xattrs in the layer ignored", path)
            continue
        try:
            if isinstance(target, int):
                os.setxattr(target, key, value)
            else:
                os.setxattr(target, key, value, follow_symlinks=False)
        except OSError as exc:
            _xattr_failed(ctx, exc, key, path)


def _xattr_failed(ctx: Context, exc: OSError, key: str, path: str) -> None:
    namespace = key.split(".", 1)[0]
    if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
        ctx.report.warn("file system does not support xattrs", path)
    elif exc.errno in (errno.EPERM, errno.EACCES):
        ctx.report.warn(f"{namespace}.* xattrs not permitted here (unprivileged?)", path)
    elif exc.errno in (errno.E2BIG, errno.ERANGE, errno.ENOSPC):
        ctx.report.warn("xattrs too large for this file system", path)
    else:
        raise exc


def _owner(ctx: Context, applied: bool) -> None:
    if not applied:
        ctx.report.owners_not_applied += 1


def _metadata_fd(
    ctx: Context, fd: int, member: tarfile.TarInfo, parts: Parts, *, minimum: int
) -> None:
    """Owner, xattrs and mode (widened by ``minimum`` owner bits, reported) of an open file."""
    _owner(ctx, ctx.fs.chown_fd(fd, member.uid, member.gid))
    if member.pax_headers:
        _set_xattrs(ctx, fd, member, display(parts))
    mode = member.mode & 0o7777
    if mode & minimum != minimum:
        ctx.report.permission_fix(display(parts), mode, mode | minimum)
        mode |= minimum
    os.fchmod(fd, mode)


def _metadata_at(ctx: Context, member: tarfile.TarInfo, place: Place, *, mode: bool) -> None:
    """Owner, xattrs, mode and times of a symlink, device or fifo, by name without following."""
    _owner(ctx, ctx.fs.chown_at(place.dir_fd, place.name, member.uid, member.gid))
    if member.pax_headers and _xattrs(member):
        _set_xattrs(ctx, f"/proc/self/fd/{place.dir_fd}/{place.name}", member, display(place.parts))
    if mode:
        # Linux has no lchmod; an O_PATH fd of the node itself reaches it through /proc.
        fd = os.open(place.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=place.dir_fd)
        try:
            os.chmod(f"/proc/self/fd/{fd}", member.mode & 0o7777)
        finally:
            os.close(fd)
    os.utime(place.name, ns=times(member), dir_fd=place.dir_fd, follow_symlinks=False)


def _create_file(ctx: Context, place: Place) -> int:
    return _replacing(
        ctx, place, lambda: os.open(place.name, _FILE_FLAGS, 0o600, dir_fd=place.dir_fd)
    )


def regular(ctx: Context, member: tarfile.TarInfo, place: Place) -> None:
    """A regular file; GNU/PAX sparse files get their holes back."""
    fd = _create_file(ctx, place)
    try:
        if member.sparse is not None:
            _write_sparse(ctx, fd, member, place)
        else:
            ctx.source.copy_to(fd, member.size, what=member.name)
            ctx.report.bytes_written += member.size
        _metadata_fd(ctx, fd, member, place.parts, minimum=0o400)
        os.utime(fd, ns=times(member))
    finally:
        os.close(fd)


def _write_sparse(ctx: Context, fd: int, member: tarfile.TarInfo, place: Place) -> None:
    sparse = cast(list[tuple[int, int]], member.sparse)
    for offset, size in sparse:
        if offset < 0 or size < 0 or offset + size > member.size:
            raise LayerError(
                f"layer {ctx.layer}: sparse map of {member.name!r} points outside the file"
            )
        os.lseek(fd, offset, os.SEEK_SET)
        ctx.source.copy_to(fd, size, what=member.name)
        ctx.report.bytes_written += size
    os.ftruncate(fd, member.size)


def directory(ctx: Context, member: tarfile.TarInfo, place: Place) -> None:
    """A directory; over an existing directory it merges and takes the new metadata."""
    merged = False
    try:
        os.mkdir(place.name, 0o700, dir_fd=place.dir_fd)
    except FileExistsError:
        st = os.stat(place.name, dir_fd=place.dir_fd, follow_symlinks=False)
        merged = stat.S_ISDIR(st.st_mode)
        if not merged:
            clear(ctx, place)
            os.mkdir(place.name, 0o700, dir_fd=place.dir_fd)
    if not merged:
        ctx.tree.made(place.parts)
    found = ctx.tree.directory(place.parts, create=False)
    if found is None:
        raise LayerError(f"layer {ctx.layer}: directory {member.name!r} vanished")
    directory_metadata(ctx, found[0], member, place.parts, merged=merged)


def directory_metadata(
    ctx: Context, fd: int, member: tarfile.TarInfo, parts: Parts, *, merged: bool
) -> None:
    """Metadata of a directory entry; its times wait for the end of the layer.

    A directory entry over an existing directory replaces its metadata, xattrs
    included (as umoci does): the old ones not declared again are removed.
    """
    if merged:
        _drop_undeclared_xattrs(ctx, fd, member, display(parts))
    _metadata_fd(ctx, fd, member, parts, minimum=0o700)
    ctx.dir_times[parts] = times(member)
    if ctx.implicit is not None:
        ctx.implicit.pop(parts, None)  # declared after all: its own metadata wins


def _drop_undeclared_xattrs(ctx: Context, fd: int, member: tarfile.TarInfo, path: str) -> None:
    declared = {key for key, _ in _xattrs(member)}
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        _xattr_failed(ctx, exc, "", path)
        return
    for key in names:
        # The host's SELinux label is not the image's; overlay markers are ours.
        if key in declared or key == "security.selinux" or key.startswith(_FORBIDDEN_XATTR):
            continue
        try:
            os.removexattr(fd, key)
        except OSError as exc:
            _xattr_failed(ctx, exc, key, path)


def inherit_lower_directory(ctx: Context, parts: Parts) -> None:
    """LAYERFS: a directory this layer created only implicitly takes the lower one's metadata.

    overlayfs shows the topmost directory's metadata, and the layer did not
    mean to change it. Called once the layer is complete, so times are final.
    """
    assert ctx.lower is not None
    try:
        below = ctx.lower.directory(parts, create=False)
        here = ctx.tree.directory(parts, create=False)
    except LayerError:
        # Not a directory below (a whiteout's parent over a lower file), or
        # replaced by a non-directory later in the layer: nothing to take.
        return
    if below is None or below[1] != parts or here is None or here[1] != parts:
        return  # not a real directory below (absent, or reached through a symlink)
    st = os.fstat(below[0])
    ctx.fs.chown_fd(here[0], st.st_uid, st.st_gid)
    os.fchmod(here[0], stat.S_IMODE(st.st_mode) | 0o700)
    _copy_xattrs(ctx, below[0], here[0], display(parts))
    os.utime(here[0], ns=(st.st_atime_ns, st.st_mtime_ns))


def symlink(ctx: Context, member: tarfile.TarInfo, place: Place) -> None:
    """A symlink, stored as written: absolute, relative or dangling, never followed."""
    _replacing(ctx, place, lambda: os.symlink(member.linkname, place.name, dir_fd=place.dir_fd))
    _metadata_at(ctx, member, place, mode=False)


def hardlink(ctx: Context, member: tarfile.TarInfo, place: Place) -> None:
    """A hard link to an entry of this layer, or (FLAT) of a lower one; LAYERFS copies from lower.

    The link shares the target's inode, so the entry's own metadata is not applied.
    """
    target = normalise(member.linkname, layer=ctx.layer, what="hard link target")
    if not target:
        raise LayerError(f"layer {ctx.layer}: hard link {member.name!r} points at the root")
    if _link(ctx, place, target):
        return
    if ctx.lower is not None and copy_from_lower(ctx, place, target):
        return
    if ctx.defer_lower:
        raise LowerLayersNeeded(
            f"layer {ctx.layer}: hard link {member.name!r} -> {member.linkname!r} "
            "needs the lower layers"
        )
    raise LayerError(
        f"layer {ctx.layer}: hard link {member.name!r} -> {member.linkname!r}: target not found"
    )


def _link(ctx: Context, place: Place, target: Parts) -> bool:
    for attempt in range(2):
        found = ctx.tree.directory(target[:-1], create=False)
        if found is None or (*found[1], target[-1]) in ctx.marker_dirs:
            return False
        try:
            os.link(
                target[-1],
                place.name,
                src_dir_fd=found[0],
                dst_dir_fd=place.dir_fd,
                follow_symlinks=False,
            )
        except FileNotFoundError:
            return False
        except FileExistsError:
            if attempt or _same_inode(found[0], target[-1], place):
                return True
            # Clearing may close fds the target was reached through: resolve it again.
            clear(ctx, place)
            continue
        except PermissionError as exc:
            raise LayerError(
                f"layer {ctx.layer}: hard link {display(place.parts)!r} -> "
                f"{display(target)!r}: {exc.strerror} (a directory?)"
            ) from None
        return True
    return True


def _same_inode(dir_fd: int, name: str, place: Place) -> bool:
    a = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    b = os.stat(place.name, dir_fd=place.dir_fd, follow_symlinks=False)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def copy_from_lower(ctx: Context, place: Place, target: Parts) -> bool:
    """Copy the lower layers' ``target`` to ``place`` (LAYERFS: overlayfs cannot link across)."""
    assert ctx.lower is not None
    found = ctx.lower.directory(target[:-1], create=False)
    if found is None:
        return False
    try:
        st = os.stat(target[-1], dir_fd=found[0], follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink(target[-1], dir_fd=found[0])
        _replacing(ctx, place, lambda: os.symlink(link, place.name, dir_fd=place.dir_fd))
        _owner(ctx, ctx.fs.chown_at(place.dir_fd, place.name, st.st_uid, st.st_gid))
        os.utime(
            place.name,
            ns=(st.st_atime_ns, st.st_mtime_ns),
            dir_fd=place.dir_fd,
            follow_symlinks=False,
        )
        return True
    if stat.S_ISREG(st.st_mode):
        _copy_regular(ctx, found[0], target[-1], place, st)
    elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        _copy_special(ctx, place, st)
    else:
        raise LayerError(
            f"layer {ctx.layer}: hard link {display(place.parts)!r} -> {display(target)!r}: "
            "only files, symlinks, fifos and devices of the lower layers can be linked"
        )
    return True


def _copy_special(ctx: Context, place: Place, st: os.stat_result) -> None:
    """A fifo or device node like the lower one (FLAT links to it)."""
    if stat.S_ISFIFO(st.st_mode):
        _replacing(ctx, place, lambda: os.mkfifo(place.name, 0o600, dir_fd=place.dir_fd))
    else:
        kind, rdev = stat.S_IFMT(st.st_mode), st.st_rdev
        make = ctx.fs.make_device
        if not _replacing(ctx, place, lambda: make(place.dir_fd, place.name, kind, 0o600, rdev)):
            clear(ctx, place)
            ctx.report.skip(display(place.parts), DEVICE_SKIPPED)
            return
    # No xattrs: user.* ones cannot be set on such nodes.
    _owner(ctx, ctx.fs.chown_at(place.dir_fd, place.name, st.st_uid, st.st_gid))
    os.chmod(place.name, stat.S_IMODE(st.st_mode), dir_fd=place.dir_fd)
    os.utime(place.name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=place.dir_fd)


def _copy_regular(ctx: Context, dir_fd: int, name: str, place: Place, st: os.stat_result) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        dst = _create_file(ctx, place)
        try:
            left = st.st_size
            while left > 0:
                sent = os.sendfile(dst, src, None, min(left, 1 << 30))
                if sent == 0:
                    break
                left -= sent
            ctx.report.bytes_written += st.st_size - left
            _owner(ctx, ctx.fs.chown_fd(dst, st.st_uid, st.st_gid))
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            _copy_xattrs(ctx, src, dst, display(place.parts))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_xattrs(ctx: Context, src: int, dst: int, path: str) -> None:
    for key in os.listxattr(src):
        if key.startswith(_FORBIDDEN_XATTR):
            continue
        try:
            os.setxattr(dst, key, os.getxattr(src, key))
        except OSError as exc:
            _xattr_failed(ctx, exc, key, path)


def device(ctx: Context, member: tarfile.TarInfo, place: Place) -> None:
    """A character or block device: created as root, else skipped and reported."""
    kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
    device_number = os.makedev(member.devmajor, member.devminor)
    made = _replacing(
        ctx,
        place,
        lambda: ctx.fs.make_device(place.dir_fd, place.name, kind, 0o600, device_number),
    )
    if not made:
        clear(ctx, place)  # the layer still replaces what lower layers had here
        ctx.report.skip(display(place.parts), DEVICE_SKIPPED)
        return
    _metadata_at(ctx, member, place, mode=True)


def fifo(ctx: Context, member: tarfile.TarInfo, place: Place) -> None:
    """A named pipe (any user may create one)."""
    _replacing(ctx, place, lambda: os.mkfifo(place.name, 0o600, dir_fd=place.dir_fd))
    _metadata_at(ctx, member, place, mode=True)


HANDLERS: dict[bytes, Callable[[Context, tarfile.TarInfo, Place], None]] = {
    tarfile.REGTYPE: regular,
    tarfile.AREGTYPE: regular,
    tarfile.CONTTYPE: regular,
    tarfile.GNUTYPE_SPARSE: regular,
    tarfile.DIRTYPE: directory,
    tarfile.SYMTYPE: symlink,
    tarfile.LNKTYPE: hardlink,
    tarfile.CHRTYPE: device,
    tarfile.BLKTYPE: device,
    tarfile.FIFOTYPE: fifo,
}
