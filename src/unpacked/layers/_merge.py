"""Compose a flat root file system from layer directories without copying their bytes.

The repository keeps every layer once, as an overlayfs lower directory (``layerfs``).
A flat tree is those layers stacked, so instead of unpacking every tar a second time
we merge the ``layerfs`` directories into the flat tree the way overlayfs reads the
stack: whiteouts delete, opaque directories hide what is below, anything else replaces
what the lower layers had, and directories merge. Regular files, symlinks, devices
and fifos become *hard links* to the layer's inode, so the repository stores each
file's content about once; where a link is impossible (another file system, the
link-count limit, protected_hardlinks) a regular file is copied instead. A caller whose
publisher does not keep hard links across directories (``capabilities``: CVMFS breaks
them up) asks for copies up front (``link=False``): the same tree, with separate files.

Several layers are merged in one walk (``merge_layers``): each directory is read in
every layer that has it and resolved in memory, bottom to top, so the flat tree gets
each directory once and each file once, from the topmost layer that has it. Merging
them one by one would create a directory again for each layer that declares it (in
real images, each layer declares its parents) and link files that a layer above then
replaces or whites out.

A hard link shares the inode, hence mode, owner, times and xattrs, with the layer
file: that is exactly the metadata the layer gives the file. Whoever writes into the
flat tree afterwards must replace files (write elsewhere, rename over), never modify
them in place, or the layer would change too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unpacked.errors import LayerError
from unpacked.layers._copy import content_xattrs, copy_entry, xattr_call
from unpacked.layers._fs import OPAQUE_XATTR
from unpacked.layout import CATALOG_MARKER

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
MAX_DEPTH = 512
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LINK_FALLBACK = {errno.EXDEV, errno.EMLINK, errno.EPERM}


@dataclass(frozen=True)
class LayerTree:
    """A layer directory to merge: where it is, how it stores whiteouts, its name in errors.

    ``whiteouts`` is "overlay" (0/0 character devices and the ``trusted.overlay.opaque``
    xattr) or "wh-files" (``.wh.`` files).
    """

    path: Path
    whiteouts: str
    name: str


@dataclass
class MergeStats:
    linked: int = 0
    copied: int = 0
    removed: int = 0


def merge_layer(
    layerfs: Path, flat: Path, *, whiteouts: str, name: str, link: bool = True
) -> MergeStats:
    """Merge one layer directory onto ``flat`` (the layers below it, already merged)."""
    return merge_layers([LayerTree(layerfs, whiteouts, name)], flat, link=link)


def merge_layers(layers: Sequence[LayerTree], flat: Path, *, link: bool = True) -> MergeStats:
    """Merge layer directories, bottom first, onto ``flat`` (the layers below them).

    The result is the same as merging them one after the other. ``link``: files become
    hard links to the layers' (copies where that fails); False: copies, always.
    """
    stats = MergeStats()
    if not layers:
        return stats
    with _Roots.open(layers, flat, link=link) as roots:
        _walk(roots, stats)
    return stats


@dataclass
class _Roots:
    """The open root directories: the layers' (bottom first) and the flat tree's.

    Directories below them are opened by their path from these roots, one level at a
    time, so a deep tree holds no chain of open directories. The paths are safe to
    resolve: every component was just read as a directory (never a symlink) in a layer
    tree, or created as one in the flat tree, and nobody else writes into either.
    """

    layers: Sequence[LayerTree]
    link: bool = True
    src: list[int] = field(default_factory=list)
    dst: int = -1

    @classmethod
    @contextlib.contextmanager
    def open(cls, layers: Sequence[LayerTree], flat: Path, *, link: bool) -> Iterator[_Roots]:
        roots = cls(layers, link)
        try:
            for layer in layers:
                roots.src.append(_open_root(layer.path, layer.name))
            roots.dst = _open_root(flat, layers[-1].name)
            yield roots
        finally:
            for fd in [*roots.src, roots.dst]:
                if fd >= 0:
                    os.close(fd)

    def wh_files(self, layer: int) -> bool:
        return self.layers[layer].whiteouts == "wh-files"

    def error(self, layer: int, path: str, exc: OSError) -> LayerError:
        where = f"/{path}" if path else "/"
        name = self.layers[layer].name
        return LayerError(f"layer {name}: merging {where} into the flat tree failed: {exc}")


def _open_root(path: Path, name: str) -> int:
    try:
        return os.open(path, _DIR_FLAGS)
    except OSError as exc:
        raise LayerError(f"layer {name}: cannot merge it into the flat tree: {exc}") from exc


@dataclass(slots=True)
class _Entry:
    """A name of one directory, resolved through the layers merged so far."""

    entry: os.DirEntry[str]
    layer: int
    """The topmost layer that has it: its file is linked, its directory's metadata used."""
    layers: list[int]
    """For a directory: the layers whose directory of this name merge, bottom first."""
    fresh: bool
    """For a directory: what the flat tree had at this name is hidden by a merged layer."""


@dataclass(frozen=True)
class _Dir:
    path: str
    """Relative to the roots; "" for the roots themselves."""
    layers: tuple[int, ...]
    st: os.stat_result | None
    """The topmost layer's directory, whose metadata the flat tree's takes (None: the root)."""


@dataclass
class _Resolved:
    """One directory of the merged layers, and what it does to the flat tree's."""

    entries: dict[str, _Entry] = field(default_factory=dict)
    cleared: bool = False
    """An opaque layer hides everything the flat tree had here."""
    hidden: dict[str, int] = field(default_factory=dict)
    """Names whited out or replaced by a non-directory, with the layer that did it."""

    def removed(self) -> list[tuple[str, int]]:
        """Names of the flat tree to delete: whited out and not given again."""
        return [(name, layer) for name, layer in self.hidden.items() if name not in self.entries]


def _walk(roots: _Roots, stats: MergeStats) -> None:
    # Depth-first with an explicit stack instead of recursion. A directory's times are
    # set when everything below it is merged, since merging changes them.
    root = _Dir("", tuple(range(len(roots.layers))), None)
    stack: list[tuple[_Dir, Iterator[_Dir]]] = [(root, iter(_merge_dir(roots, root, stats)))]
    while stack:
        directory, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            _set_times(roots, directory)
        elif len(stack) >= MAX_DEPTH:
            raise LayerError(f"/{directory.path}: directories nested deeper than {MAX_DEPTH}")
        else:
            stack.append((child, iter(_merge_dir(roots, child, stats))))


def _merge_dir(roots: _Roots, directory: _Dir, stats: MergeStats) -> list[_Dir]:
    """Merge one directory's entries into the flat tree; return its subdirectories."""
    fds: list[int] = []
    try:
        src = {layer: _open_dir(roots, layer, directory.path, fds) for layer in directory.layers}
        top = directory.layers[-1]
        dst = _open_dir(roots, None, directory.path, fds)
        if directory.st is not None:
            _copy_dir_metadata(dst, src[top], directory.st, directory.path)
        resolved = _resolve(roots, directory, src)
        return _apply(roots, directory, resolved, (src, dst), stats)
    finally:
        for fd in fds:
            os.close(fd)


def _open_dir(roots: _Roots, layer: int | None, path: str, opened: list[int]) -> int:
    root = roots.dst if layer is None else roots.src[layer]
    if not path:
        return root
    try:
        fd = os.open(path, _DIR_FLAGS, dir_fd=root)
    except OSError as exc:
        culprit = len(roots.layers) - 1 if layer is None else layer
        raise roots.error(culprit, path, exc) from exc
    opened.append(fd)
    return fd


def _resolve(roots: _Roots, directory: _Dir, src: dict[int, int]) -> _Resolved:
    """The directory as the layers, bottom to top, leave it."""
    resolved = _Resolved()
    for layer, fd in src.items():
        wh_files = roots.wh_files(layer)
        try:
            entries = list(os.scandir(fd))
            opaque = _is_opaque(fd, entries, wh_files)
        except OSError as exc:
            raise roots.error(layer, directory.path, exc) from exc
        if opaque:
            resolved = _Resolved(cleared=True)
        kept = _apply_whiteouts(resolved, entries, layer, wh_files, root=not directory.path)
        for entry in kept:
            _add(resolved, entry, layer)
    return resolved


def _apply_whiteouts(
    resolved: _Resolved, entries: list[os.DirEntry[str]], layer: int, wh_files: bool, *, root: bool
) -> list[os.DirEntry[str]]:
    """Delete what this layer whites out below it; return the entries it adds."""
    kept = []
    for entry in entries:
        if root and entry.name == CATALOG_MARKER:
            continue  # the layer's catalog marker is not image content
        whited = _whiteout_target(entry, wh_files)
        if whited is None:
            kept.append(entry)
        elif whited:  # "": the opaque marker, already applied
            resolved.entries.pop(whited, None)
            resolved.hidden[whited] = layer
    return kept


def _add(resolved: _Resolved, entry: os.DirEntry[str], layer: int) -> None:
    name = entry.name
    below = resolved.entries.get(name)
    if not entry.is_dir(follow_symlinks=False):
        resolved.entries[name] = _Entry(entry, layer, [], fresh=True)
        resolved.hidden[name] = layer  # a directory above it must not see the flat tree's
    elif below is not None and below.layers:
        below.entry, below.layer = entry, layer
        below.layers.append(layer)
    else:
        fresh = resolved.cleared or below is not None or name in resolved.hidden
        resolved.entries[name] = _Entry(entry, layer, [layer], fresh)


def _apply(
    roots: _Roots,
    directory: _Dir,
    resolved: _Resolved,
    fds: tuple[dict[int, int], int],
    stats: MergeStats,
) -> list[_Dir]:
    src, dst = fds
    prefix = f"{directory.path}/" if directory.path else ""
    culprit = directory.layers[-1]  # the layer named if a change fails
    subdirs = []
    try:
        if resolved.cleared:
            stats.removed += _clear(dst)
        for name, layer in resolved.removed():
            culprit = layer
            stats.removed += _remove(dst, name)
        for name, item in resolved.entries.items():
            culprit = item.layer
            if item.layers:
                _make_dir(dst, name, replace=item.fresh and not resolved.cleared)
                st = item.entry.stat(follow_symlinks=False)
                subdirs.append(_Dir(prefix + name, tuple(item.layers), st))
            elif roots.link:
                _replace_with_link(src[item.layer], dst, item.entry, prefix + name, stats)
            else:
                _replace_with_copy(src[item.layer], dst, item.entry, prefix + name, stats)
    except OSError as exc:
        raise roots.error(culprit, directory.path, exc) from exc
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


def _make_dir(dst: int, name: str, *, replace: bool) -> None:
    """A directory ``name`` in ``dst``: the one there if it may merge, else a new one."""
    if replace:
        _remove(dst, name)
    try:
        os.mkdir(name, 0o700, dir_fd=dst)
    except FileExistsError:
        existing = _lstat(dst, name)
        if existing is not None and not stat.S_ISDIR(existing.st_mode):
            _remove(dst, name)
            os.mkdir(name, 0o700, dir_fd=dst)


def _copy_dir_metadata(dst: int, src: int, st: os.stat_result, path: str) -> None:
    if os.geteuid() == 0:
        os.fchown(dst, st.st_uid, st.st_gid)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))
    wanted = content_xattrs(src)
    # A directory declared again by a later layer takes that layer's xattrs only (as
    # umoci does): drop the ones the lower layers gave it.
    for attr in set(content_xattrs(dst)) - set(wanted):
        xattr_call(path, attr, os.removexattr, dst, attr)
    for attr, value in wanted.items():
        xattr_call(path, attr, os.setxattr, dst, attr, value)


def _set_times(roots: _Roots, directory: _Dir) -> None:
    if directory.st is None:
        return
    st = directory.st
    try:
        os.utime(
            directory.path,
            ns=(st.st_atime_ns, st.st_mtime_ns),
            dir_fd=roots.dst,
            follow_symlinks=False,
        )
    except OSError as exc:
        raise roots.error(directory.layers[-1], directory.path, exc) from exc


def _replace_with_link(
    src: int, dst: int, entry: os.DirEntry[str], path: str, stats: MergeStats
) -> None:
    # Link first: into a fresh directory (most of them) nothing is in the way, and a
    # stat per file would cost as much as the link itself.
    name = entry.name
    try:
        _link(src, dst, name)
    except FileExistsError:
        _remove(dst, name)
        _link_or_copy(src, dst, entry, path, stats)
        return
    except OSError as exc:
        if exc.errno not in _LINK_FALLBACK:
            raise
        copy_entry(src, dst, name, entry.stat(follow_symlinks=False), path)
        stats.copied += 1
        return
    stats.linked += 1


def _replace_with_copy(
    src: int, dst: int, entry: os.DirEntry[str], path: str, stats: MergeStats
) -> None:
    st = entry.stat(follow_symlinks=False)
    try:
        copy_entry(src, dst, entry.name, st, path)
    except FileExistsError:
        _remove(dst, entry.name)
        copy_entry(src, dst, entry.name, st, path)
    stats.copied += 1


def _link_or_copy(
    src: int, dst: int, entry: os.DirEntry[str], path: str, stats: MergeStats
) -> None:
    try:
        _link(src, dst, entry.name)
        stats.linked += 1
    except OSError as exc:
        if exc.errno not in _LINK_FALLBACK:
            raise
        copy_entry(src, dst, entry.name, entry.stat(follow_symlinks=False), path)
        stats.copied += 1


def _link(src: int, dst: int, name: str) -> None:
    os.link(name, name, src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)
