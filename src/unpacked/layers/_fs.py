"""File-system primitives whose behaviour depends on privileges, behind one small interface.

Everything that only root can do (chown to other users, device nodes) goes
through a ``FileSystem``; which whiteout form a layer takes is not this module's
business but the publisher's (its ``capabilities``). ``Unprivileged`` never
attempts what would fail and says so through its return values, so callers
report a skipped entry or an owner not applied instead of handling ``EPERM``
per entry.

The other calls (mkdirat, openat, linkat, unlinkat, fchmod, utimensat, ...)
are the same for both and stay plain ``os`` calls on directory fds. umoci's
unprivileged layer also wraps them, to chmod a read-only parent directory
around each operation; here that is never needed, because every directory
this package creates or enters is at least ``u+rwx``.
"""

from __future__ import annotations

import os
from typing import Protocol

OPAQUE_XATTR = "trusted.overlay.opaque"


class FileSystem(Protocol):
    """The privilege-dependent primitives; ``*_at`` never follow the last component."""

    @property
    def privileged(self) -> bool: ...

    def chown_fd(self, fd: int, uid: int, gid: int) -> bool:
        """Set the owner of the file open as ``fd``; False if it could not be applied."""
        ...

    def chown_at(self, dir_fd: int, name: str, uid: int, gid: int) -> bool:
        """Set the owner of ``name`` in ``dir_fd`` (a symlink itself, not its target)."""
        ...

    def make_device(self, dir_fd: int, name: str, kind: int, mode: int, device: int) -> bool:
        """Create a character or block device; False if this file system may not."""
        ...


class Unprivileged:
    """What an ordinary user can do: own files only, no device nodes, no trusted.* xattrs."""

    privileged = False

    def __init__(self) -> None:
        self._uid = os.geteuid()
        self._gid = os.getegid()

    def chown_fd(self, fd: int, uid: int, gid: int) -> bool:
        return (uid, gid) == (self._uid, self._gid)

    def chown_at(self, dir_fd: int, name: str, uid: int, gid: int) -> bool:
        return (uid, gid) == (self._uid, self._gid)

    def make_device(self, dir_fd: int, name: str, kind: int, mode: int, device: int) -> bool:
        return False


class Privileged:
    """Root: owners and device nodes are applied."""

    privileged = True

    def chown_fd(self, fd: int, uid: int, gid: int) -> bool:
        os.fchown(fd, uid, gid)
        return True

    def chown_at(self, dir_fd: int, name: str, uid: int, gid: int) -> bool:
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        return True

    def make_device(self, dir_fd: int, name: str, kind: int, mode: int, device: int) -> bool:
        try:
            os.mknod(name, kind | (mode & 0o777), device, dir_fd=dir_fd)
        except PermissionError:
            # Root in a user namespace, or a nodev mount: not fatal for an image.
            return False
        return True


def select() -> FileSystem:
    """The implementation for the current process."""
    return Privileged() if os.geteuid() == 0 else Unprivileged()
