"""Compose a flat root file system from layer directories without copying their bytes.

The repository keeps every layer once, as an overlayfs lower directory (``layerfs``).
A flat tree is those layers stacked, so instead of unpacking every tar a second time
we merge each ``layerfs`` into the flat tree the way overlayfs would read the stack:
whiteouts delete, opaque directories hide what is below, anything else replaces
what the lower layers had, and directories merge. Regular files, symlinks, devices
and fifos become *hard links* to the layer's inode, so the repository stores each
file's content about once; where a link is impossible (another file system, the
link-count limit, protected_hardlinks) a regular file is copied instead.

A hard link shares the inode, hence mode, owner, times and xattrs, with the layer
file: that is exactly the metadata the layer gives the file. Whoever writes into the
flat tree afterwards must replace files (write elsewhere, rename over), never modify
them in place, or the layer would change too.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from unpacked.errors import LayerError
from unpacked.layers._fs import OPAQUE_XATTR

logger = logging.getLogger(__name__)

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
CATALOG_MARKER = ".cvmfscatalog"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LINK_FALLBACK = {errno.EXDEV, errno.EMLINK, errno.EPERM}


@dataclass
class MergeStats:
    linked: int = 0
    copied: int = 0
    removed: int = 0


@dataclass(frozen=True)
class _Dir:
    src: int
    dst: int
    path: str


def merge_layer(layerfs: Path, flat: Path, *, whiteouts: str, name: str) -> MergeStats:
    """Merge one layer directory onto ``flat`` (the layers below it, already merged).

    ``whiteouts`` is how the layer directory stores them: "overlay" (0/0 character
    devices and the ``trusted.overlay.opaque`` xattr) or "wh-files" (``.wh.`` files).
    ``name`` names the layer in errors.
    """
    stats = MergeStats()
    root = _Dir(os.open(layerfs, _DIR_FLAGS), os.open(flat, _DIR_FLAGS), "")
    try:
        _merge_tree(root, whiteouts == "wh-files", stats)
    except OSError as exc:
        raise LayerError(f"layer {name}: merging into the flat tree failed: {exc}") from exc
    return stats


MAX_DEPTH = 512


def _merge_tree(root: _Dir, wh_files: bool, stats: MergeStats) -> None:
    # Depth-first with an explicit stack instead of recursion, keeping only the chain
    # of open directories (one pair of fds per level), never a whole level's worth.
    # Each frame restores its directory's times after its children changed them.
    stack: list[tuple[_Dir, os.stat_result | None, Iterator[tuple[str, os.stat_result]]]] = [
        (root, None, iter(()))
    ]
    try:
        stack[0] = (root, None, iter(_merge_dir(root, wh_files, stats)))
        while stack:
            directory, st, pending = stack[-1]
            following = next(pending, None)
            if following is None:
                stack.pop()
                _close_dir(directory, st)
                continue
            if len(stack) >= MAX_DEPTH:
                raise LayerError(f"{directory.path}: directories nested deeper than {MAX_DEPTH}")
            child = _enter(directory, *following)
            stack.append((child, following[1], iter(_merge_dir(child, wh_files, stats))))
    finally:
        for directory, _, _ in stack:
            _close(directory)


def _merge_dir(
    directory: _Dir, wh_files: bool, stats: MergeStats
) -> list[tuple[str, os.stat_result]]:
    """Merge the non-directory entries; return the subdirectories still to merge."""
    entries = list(os.scandir(directory.src))
    if _is_opaque(directory.src, entries, wh_files):
        stats.removed += _clear(directory.dst)
    subdirs: list[tuple[str, os.stat_result]] = []
    for entry in entries:
        if directory.path == "" and entry.name == CATALOG_MARKER:
            continue  # the layer's catalog marker is not image content
        whited = _whiteout_target(entry, wh_files)
        if whited is not None:
            stats.removed += _remove(directory.dst, whited)
        elif entry.is_dir(follow_symlinks=False):
            subdirs.append((entry.name, entry.stat(follow_symlinks=False)))
        else:
            _replace_with_link(directory, entry, stats)
    return subdirs


def _is_opaque(src_fd: int, entries: list[os.DirEntry[str]], wh_files: bool) -> bool:
    if wh_files:
        return any(entry.name == OPAQUE_MARKER for entry in entries)
    try:
        return os.getxattr(src_fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


def _whiteout_target(entry: os.DirEntry[str], wh_files: bool) -> str | None:
    """The name this entry deletes below it, if it is a whiteout ("" for the opaque marker)."""
    name = entry.name
    if wh_files:
        if name == OPAQUE_MARKER:
            return ""
        return name[len(WHITEOUT_PREFIX) :] if name.startswith(WHITEOUT_PREFIX) else None
    # The directory entry's type answers for files, links and directories without a
    # stat call; only what is left (devices, fifos) needs one.
    if entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False):
        return None
    if entry.is_symlink():
        return None
    st = entry.stat(follow_symlinks=False)
    return name if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 else None


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(dir_fd: int, name: str) -> int:
    """Remove ``name`` (any type, a directory with everything below it); count removed."""
    if not name:
        return 0
    st = _lstat(dir_fd, name)
    if st is None:
        return 0
    if stat.S_ISDIR(st.st_mode):
        # rmtree with dir_fd works on fds and never follows symlinks (Linux).
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)
    return 1


def _clear(dir_fd: int) -> int:
    return sum(_remove(dir_fd, entry.name) for entry in list(os.scandir(dir_fd)))


def _enter(parent: _Dir, name: str, st: os.stat_result) -> _Dir:
    try:
        os.mkdir(name, 0o700, dir_fd=parent.dst)
    except FileExistsError:
        existing = _lstat(parent.dst, name)
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            _remove(parent.dst, name)
            os.mkdir(name, 0o700, dir_fd=parent.dst)
    src = os.open(name, _DIR_FLAGS, dir_fd=parent.src)
    try:
        dst = os.open(name, _DIR_FLAGS, dir_fd=parent.dst)
    except OSError:
        os.close(src)
        raise
    child = _Dir(src, dst, f"{parent.path}/{name}")
    _copy_dir_metadata(child, st)
    return child


def _copy_dir_metadata(directory: _Dir, st: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.fchown(directory.dst, st.st_uid, st.st_gid)
    os.fchmod(directory.dst, stat.S_IMODE(st.st_mode))
    wanted = _content_xattrs(directory.src)
    # A directory declared again by a later layer takes that layer's xattrs only (as
    # umoci does): drop the ones the lower layers gave it.
    for attr in set(_content_xattrs(directory.dst)) - set(wanted):
        _xattr_call(directory, attr, os.removexattr, directory.dst, attr)
    for attr, value in wanted.items():
        _xattr_call(directory, attr, os.setxattr, directory.dst, attr, value)


def _content_xattrs(fd: int) -> dict[str, bytes]:
    """The xattrs of an open directory, without overlayfs's bookkeeping."""
    try:
        names = os.listxattr(fd)
    except OSError:
        return {}
    return {
        name: os.getxattr(fd, name) for name in names if not name.startswith("trusted.overlay.")
    }


def _xattr_call(directory: _Dir, attr: str, call: Callable[..., None], *args: object) -> None:
    try:
        call(*args)
    except OSError as exc:
        logger.warning("%s: xattr %s not applied: %s", directory.path or "/", attr, exc)


def _close_dir(directory: _Dir, st: os.stat_result | None) -> None:
    try:
        if st is not None:
            os.utime(directory.dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        _close(directory)


def _close(directory: _Dir) -> None:
    for fd in (directory.src, directory.dst):
        with contextlib.suppress(OSError):
            os.close(fd)


def _replace_with_link(directory: _Dir, entry: os.DirEntry[str], stats: MergeStats) -> None:
    # Link first: into a fresh directory (most of them) nothing is in the way, and a
    # stat per file would cost as much as the link itself.
    try:
        _link(directory, entry.name)
    except FileExistsError:
        _remove(directory.dst, entry.name)
        _link_or_copy(directory, entry, stats)
        return
    except OSError as exc:
        if exc.errno not in _LINK_FALLBACK:
            raise
        _copy_entry(directory, entry.name, entry.stat(follow_symlinks=False))
        stats.copied += 1
        return
    stats.linked += 1


def _link_or_copy(directory: _Dir, entry: os.DirEntry[str], stats: MergeStats) -> None:
    try:
        _link(directory, entry.name)
        stats.linked += 1
    except OSError as exc:
        if exc.errno not in _LINK_FALLBACK:
            raise
        _copy_entry(directory, entry.name, entry.stat(follow_symlinks=False))
        stats.copied += 1


def _link(directory: _Dir, name: str) -> None:
    os.link(name, name, src_dir_fd=directory.src, dst_dir_fd=directory.dst, follow_symlinks=False)


def _copy_entry(directory: _Dir, name: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=directory.src), name, dir_fd=directory.dst)
        return
    if not stat.S_ISREG(st.st_mode):
        raise LayerError(f"{directory.path}/{name}: cannot link or copy a special file")
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory.src)
    try:
        dst = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=directory.dst,
        )
        try:
            while os.sendfile(dst, src, None, 1 << 30):
                pass
            if os.geteuid() == 0:
                os.fchown(dst, st.st_uid, st.st_gid)
            os.fchmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(dst)
    finally:
        os.close(src)
