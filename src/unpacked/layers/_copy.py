"""Copying one merged entry, where the flat tree cannot (or must not) hard-link it.

A copy keeps what a hard link would share with the layer's file: content, mode,
owner (as root), times and xattrs (without overlayfs's bookkeeping).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable

from unpacked.errors import LayerError

logger = logging.getLogger(__name__)


def copy_entry(src: int, dst: int, name: str, st: os.stat_result, path: str) -> None:
    """Copy ``name`` of ``src`` into ``dst`` with the metadata a hard link would share.

    ``st`` is its lstat; ``path`` names it in errors. A directory is not copied here.
    """
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
    elif stat.S_IFMT(st.st_mode) in _SPECIAL:
        os.mknod(name, st.st_mode, st.st_rdev, dir_fd=dst)
    if stat.S_ISLNK(st.st_mode) or stat.S_IFMT(st.st_mode) in _SPECIAL:
        _copy_owner_and_times(dst, name, st)
        _copy_xattrs_at(src, dst, name, path)
        return
    if not stat.S_ISREG(st.st_mode):
        raise LayerError(f"/{path}: cannot link or copy a special file")
    _copy_file(src, dst, name, st, path)


# What a copy can re-create besides files and symlinks (a socket is not image content).
_SPECIAL = frozenset({stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO})


def _copy_owner_and_times(dst: int, name: str, st: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=dst)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)


def _copy_xattrs_at(src: int, dst: int, name: str, path: str) -> None:
    """The xattrs of a symlink or special file, which cannot be opened to read them: by
    their path through the directories' fds (the last component never followed)."""
    source, target = f"/proc/self/fd/{src}/{name}", f"/proc/self/fd/{dst}/{name}"
    try:
        attrs = os.listxattr(source, follow_symlinks=False)
    except OSError:
        return
    for attr in attrs:
        if attr.startswith("trusted.overlay."):
            continue
        value = os.getxattr(source, attr, follow_symlinks=False)
        xattr_call(path, attr, _set_nofollow, target, attr, value)


def _set_nofollow(target: str, attr: str, value: bytes) -> None:
    os.setxattr(target, attr, value, follow_symlinks=False)


def _copy_file(src: int, dst: int, name: str, st: os.stat_result, path: str) -> None:
    source = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
    try:
        target = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dst,
        )
        try:
            while os.sendfile(target, source, None, 1 << 30):
                pass
            if os.geteuid() == 0:
                os.fchown(target, st.st_uid, st.st_gid)
            # A hard link would share them (security.capability, user.*): so does a copy.
            for attr, value in content_xattrs(source).items():
                xattr_call(path, attr, os.setxattr, target, attr, value)
            os.fchmod(target, stat.S_IMODE(st.st_mode))
            os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            os.close(target)
    finally:
        os.close(source)


def content_xattrs(fd: int) -> dict[str, bytes]:
    """The xattrs of an open file or directory, without overlayfs's bookkeeping."""
    try:
        names = os.listxattr(fd)
    except OSError:
        return {}
    return {
        name: os.getxattr(fd, name) for name in names if not name.startswith("trusted.overlay.")
    }


def xattr_call(path: str, attr: str, call: Callable[..., None], *args: object) -> None:
    try:
        call(*args)
    except OSError as exc:
        logger.warning("/%s: xattr %s not applied: %s", path, attr, exc)
