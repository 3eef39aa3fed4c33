"""File-system primitives the ``dir:`` backend builds on: flushing, parents, deletion.

They raise ``OSError``; the callers translate it into ``PublishError`` with the
repository and path that matter to a person.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OWNER_RWX = stat.S_IRWXU
DIR_MODE = 0o755


def lexists(path: Path) -> bool:
    """Whether anything, a dangling symlink included, is at ``path`` (not following it)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def is_real_dir(path: Path) -> bool:
    """Whether ``path`` is a directory itself, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creations, renames, removals) durable."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _find_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[[int], int] = libc.syncfs
    except (OSError, AttributeError):
        return None
    return function


_SYNCFS = _find_syncfs()


def sync_filesystem(path: Path) -> None:
    """Flush everything written to the file system that holds ``path``.

    One syncfs(2) makes a whole staged image durable before anything points at it;
    an fsync per file would cost a journal commit per file (a flat tree has tens of
    thousands). Without syncfs (not Linux/glibc), sync(2) does the same for all file
    systems.
    """
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(path, _DIR_FLAGS)
    try:
        if _SYNCFS(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), str(path))
    finally:
        os.close(fd)


def make_parents(root: Path, relative: PurePosixPath, created: list[Path]) -> None:
    """Create the missing directories of ``relative`` under ``root`` (mode 0755).

    Each directory created is appended to ``created``. An existing component must
    be a real directory: a symlink is never followed, so nothing lands outside ``root``.
    """
    current = root
    for part in relative.parts:
        current = current / part
        try:
            os.mkdir(current, DIR_MODE)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise NotADirectoryError(
                    20, "exists and is not a directory", str(current)
                ) from None
            continue
        # The mode is the layout's, not the umask's: every reader must traverse it.
        os.chmod(current, DIR_MODE)
        created.append(current)


@dataclass
class _Frame:
    """One directory being emptied: its fd, where it hangs, and the subdirectories still to do."""

    parent_fd: int
    name: str
    fd: int
    subdirs: list[str] = field(default_factory=list)


def _open_dir_writable(parent_fd: int, name: str) -> int:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        # Mode 0o000 or 0o300: we cannot open it, but as its owner we may chmod it.
        # chmod follows symlinks, so make sure this is a directory first (O_NOFOLLOW
        # would have failed with ELOOP, not EACCES, on a link; this is belt and braces).
        if not stat.S_ISDIR(os.lstat(name, dir_fd=parent_fd).st_mode):
            raise
        os.chmod(name, _OWNER_RWX, dir_fd=parent_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    mode = os.fstat(fd).st_mode
    if mode & _OWNER_RWX != _OWNER_RWX:
        os.fchmod(fd, stat.S_IMODE(mode) | _OWNER_RWX)
    return fd


def _open_frame(parent_fd: int, name: str) -> _Frame:
    fd = _open_dir_writable(parent_fd, name)
    frame = _Frame(parent_fd, name, fd)
    try:
        with os.scandir(fd) as entries:
            listed = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
        for child, is_dir in listed:
            if is_dir:
                frame.subdirs.append(child)
            else:
                # Unlinking needs write permission on the directory only (granted
                # above), so files of mode 000 go too; symlinks are removed, never followed.
                os.unlink(child, dir_fd=fd)
    except BaseException:
        os.close(fd)
        raise
    return frame


def _remove_entry(parent_fd: int, name: str) -> None:
    try:
        mode = os.lstat(name, dir_fd=parent_fd).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    # Iterative, one open directory per level: trees from images can be deeper than
    # Python's recursion limit, and fds relative to their parent never leave the tree.
    stack = [_open_frame(parent_fd, name)]
    try:
        while stack:
            top = stack[-1]
            if top.subdirs:
                stack.append(_open_frame(top.fd, top.subdirs.pop()))
                continue
            stack.pop()
            os.close(top.fd)
            os.rmdir(top.name, dir_fd=top.parent_fd)
    finally:
        for frame in stack:
            os.close(frame.fd)


def remove_tree(path: Path) -> None:
    """Delete ``path`` and everything under it; nothing if it does not exist.

    Works for trees with read-only (0555) or inaccessible (000) directories and
    files: each directory gets u+rwx before it is emptied. Symlinks are never
    followed, and the walk holds directory fds, so it cannot leave ``path``.
    """
    parent_fd = os.open(path.parent, _DIR_FLAGS)
    try:
        _remove_entry(parent_fd, path.name)
    finally:
        os.close(parent_fd)
