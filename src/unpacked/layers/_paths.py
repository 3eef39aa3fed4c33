"""The one place where tar names become places on disk, without ever leaving the root.

Every directory is reached by a walk of ``openat(O_DIRECTORY | O_NOFOLLOW)`` from
an fd of the root. A symlink met in a parent component is resolved by us, with
the root standing in for ``/`` (as umoci and docker do, chroot-style): an
absolute target restarts the walk at the root and ``..`` never climbs above it,
so no symlink in an image can lead outside the root. The last component of an
entry is never followed: the callers create, replace or remove it with
``*at`` calls relative to the parent's fd.

Resolved directories are cached as open fds (the walk of ``usr/lib/x`` then
costs one dict lookup); removing or replacing a directory or a symlink
invalidates what could have been reached through it.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
from collections import OrderedDict
from pathlib import Path

from unpacked.errors import LayerError, UnsafeLayerError

Parts = tuple[str, ...]
"""A path below the root as its components; ``()`` is the root itself."""

PATH_MAX = 4096
# Same bound as the kernel's path resolution (40 symlinks per lookup).
_MAX_SYMLINKS = 40
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def display(parts: Parts) -> str:
    """``parts`` as a path for messages and reports (``"."`` for the root)."""
    return "/".join(parts) or "."


def normalise(name: str, *, layer: str, what: str = "entry") -> Parts:
    """Split a tar name into components below the root.

    A leading ``/`` or ``./``, empty and ``.`` components are dropped, so absolute
    names land under the root as docker puts them. ``..`` is resolved lexically
    (as umoci's CleanPath does); one that would climb above the root raises
    ``UnsafeLayerError``. Names of ``PATH_MAX`` bytes or more raise ``LayerError``:
    nothing could open them by path afterwards.
    """
    if len(name) >= PATH_MAX and len(os.fsencode(name)) >= PATH_MAX:
        raise LayerError(f"layer {layer}: {what} name of {len(name)} characters exceeds PATH_MAX")
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise UnsafeLayerError(f"layer {layer}: {what} {name!r} climbs out of the root")
            parts.pop()
            continue
        parts.append(part)
    return tuple(parts)


def _fd_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 512
    return max(16, min(512, soft // 4))


class Tree:
    """A root directory and the directories below it, reached without following symlinks out.

    ``times`` collects the (atime, mtime) of every pre-existing directory the
    walk opened, before anything in it changed, so the layer can put them back.
    They are taken at the first sight of a directory only: one the layer made
    (``made``, or a missing parent the walk created) has no times to put back,
    and a directory closed to stay below the fd limit and opened again has
    already changed. ``created`` receives directories the walk had to create
    (missing parents).
    """

    def __init__(self, root: Path, *, layer: str) -> None:
        self.layer = layer
        self.root_fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)
        self.times: dict[Parts, tuple[int, int]] = {}
        self.created: list[Parts] = []
        st = os.fstat(self.root_fd)
        self.times[()] = (st.st_atime_ns, st.st_mtime_ns)
        self._seen: set[Parts] = {()}
        self.whiteout_devices = False
        """LAYERFS as root: a 0/0 device is the layer's whiteout; a missing parent replaces it."""
        self._fds: OrderedDict[Parts, int] = OrderedDict()
        self._resolved: dict[Parts, Parts] = {}
        self._capacity = _fd_limit()

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._resolved.clear()
        os.close(self.root_fd)

    def directory(self, parts: Parts, *, create: bool) -> tuple[int, Parts] | None:
        """The fd and resolved path of directory ``parts``; symlinks in it resolved in the root.

        Missing directories are created (mode 0755) if ``create``, else ``None``
        is returned. A component that is neither a directory nor a symlink raises
        ``LayerError``. The fd stays owned by the tree: do not close it.
        """
        if not parts:
            return self.root_fd, ()
        resolved = self._resolved.get(parts)
        if resolved is not None:
            fd = self._fds.get(resolved)
            if fd is not None:
                self._fds.move_to_end(resolved)
                return fd, resolved
        self._evict()
        found = self._walk(parts, create=create)
        if found is not None:
            self._resolved[parts] = found[1]
            if found[1] in self._fds:
                # Keep the caller's fd away from the next eviction.
                self._fds.move_to_end(found[1])
        return found

    def made(self, parts: Parts) -> None:
        """Directory ``parts`` (resolved) was just created by the layer: no times to put back."""
        self._seen.add(parts)
        self.times.pop(parts, None)

    def forget(self, parts: Parts, *, directory: bool) -> None:
        """Drop what may have been reached through ``parts``, which was removed or replaced."""
        self._resolved.clear()
        if not directory:
            return
        depth = len(parts)
        for key in [k for k in self._fds if k[:depth] == parts]:
            os.close(self._fds.pop(key))
        # Whatever is made at these paths from now on is the layer's own, and
        # stays in ``_seen`` so that opening it never takes its times.
        for key in [k for k in self.times if k[:depth] == parts]:
            del self.times[key]
            self._seen.add(key)

    def _evict(self) -> None:
        while len(self._fds) > self._capacity:
            _, fd = self._fds.popitem(last=False)
            os.close(fd)

    def _fd(self, resolved: Parts) -> int:
        if not resolved:
            return self.root_fd
        fd = self._fds.get(resolved)
        if fd is not None:
            return fd
        # Not cached any more: ``resolved`` holds real directories only, so
        # walking it again meets no symlink.
        found = self._walk(resolved, create=False)
        if found is None:
            raise LayerError(f"layer {self.layer}: directory {display(resolved)!r} vanished")
        return found[0]

    def _walk(self, parts: Parts, *, create: bool) -> tuple[int, Parts] | None:
        pending = list(reversed(parts))
        resolved: Parts = ()
        fd = self.root_fd
        hops = 0
        while pending:
            part = pending.pop()
            if part == "..":
                resolved = resolved[:-1]
                fd = self._fd(resolved)
                continue
            if part in ("", "."):
                continue
            child = (*resolved, part)
            child_fd = self._fds.get(child)
            if child_fd is None:
                step = self._open_child(fd, part, child, parts, create=create)
                if step is None:
                    return None
                if isinstance(step, str):
                    hops += 1
                    if hops > _MAX_SYMLINKS:
                        raise LayerError(
                            f"layer {self.layer}: too many levels of symbolic links "
                            f"in {display(parts)!r}"
                        )
                    if step.startswith("/"):
                        resolved, fd = (), self.root_fd
                    pending.extend(reversed(step.split("/")))
                    continue
                child_fd = step
            resolved, fd = child, child_fd
        return fd, resolved

    def _open_child(
        self, fd: int, part: str, child: Parts, parts: Parts, *, create: bool
    ) -> int | str | None:
        """Open directory ``part`` of ``fd``; a symlink's target instead; None if missing."""
        try:
            child_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                return None
            child_fd = self._make_parent(fd, part, child)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                return os.readlink(part, dir_fd=fd)
            if not (create and self.whiteout_devices and _is_whiteout(st)):
                raise LayerError(
                    f"layer {self.layer}: {display(child)!r} is not a directory, "
                    f"but entry path {display(parts)!r} needs it to be one"
                ) from None
            # The layer whited the path out and now puts an entry below it.
            os.unlink(part, dir_fd=fd)
            child_fd = self._make_parent(fd, part, child)
        else:
            if child not in self._seen:
                self._seen.add(child)
                st = os.fstat(child_fd)
                self.times[child] = (st.st_atime_ns, st.st_mtime_ns)
        self._fds[child] = child_fd
        return child_fd

    def _make_parent(self, fd: int, part: str, child: Parts) -> int:
        os.mkdir(part, 0o755, dir_fd=fd)
        child_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
        # mkdir's mode is filtered by the umask; missing parents are 0755 in every image tool.
        os.fchmod(child_fd, 0o755)
        self.created.append(child)
        self._seen.add(child)
        return child_fd


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
