"""The content index of a tree: every entry's type, mode, size and content, for ``verify --deep``.

Flat trees share inodes with ``layerfs`` and with each other (hard links), so one write
through any of them changes every image that links the file. The index recorded when a
layer is unpacked is what the layer's files must still be; composed in layer order it
is what a flat tree must be.

On disk (``.layers/<l2>/<l>/.metadata/content.gz``, outside ``layerfs``, which must not
gain files): gzip'd JSON lines, a header object then one array per entry, sorted::

    {"content-index": 1}
    [".", "d", 493, 0, ""]
    ["etc/passwd", "f", 420, 1234, "<sha256 hex>"]
    ["bin/sh", "l", 511, 4, "dash"]
    ["dev/null", "c", 438, 0, "1,3"]
    ["usr/share", "d", 493, 0, "o"]          ("o": opaque, trusted.overlay.opaque=y)

Paths are relative to the tree (``.`` is its root), decoded with the file-system
encoding (``surrogateescape``: JSON's ``\\udcxx`` escapes round-trip non-UTF-8 names).
The root's ``.cvmfscatalog`` marker is ours, not the image's, and is left out.

``compose`` stacks layer indexes into the index of the flat tree they make.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
from collections.abc import Iterable, MutableMapping
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import NamedTuple

from unpacked.layers import OPAQUE_XATTR
from unpacked.layout import CATALOG_MARKER

ROOT = "."
_VERSION = 1
_SMALL = 1 << 20
"""Files up to this size are hashed from one ``os.read`` (3x faster than
``hashlib.file_digest`` for the small files most layers are made of)."""
_KINDS = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


class Entry(NamedTuple):
    """One entry: ``kind`` f/d/l/c/b/p/s, permission bits, size (0 for directories), and
    ``extra``: the sha256 hex of a file, a link's target, ``major,minor`` of a device,
    ``o`` for an opaque directory. A tuple: millions are made and compared per check."""

    kind: str
    mode: int
    size: int
    extra: str = ""

    def differences(self, other: Entry) -> list[str]:
        """What differs from ``other`` (the expected entry), in words."""
        if self.kind != other.kind:
            return [f"type {_kind_name(other.kind)} -> {_kind_name(self.kind)}"]
        found = []
        if self.mode != other.mode:
            found.append(f"mode {other.mode:04o} -> {self.mode:04o}")
        if self.size != other.size:
            found.append(f"size {other.size} -> {self.size}")
        if self.extra != other.extra:
            found.append(_extra_change(self.kind, other.extra, self.extra))
        return found


ContentIndex = dict[str, Entry]
"""Path (relative, ``.`` for the root) to entry."""

InodeEntries = MutableMapping[tuple[int, int], Entry]
"""Entries of non-directories by (device, inode): a file linked from many trees is read once."""


def _kind_name(kind: str) -> str:
    names = {"f": "file", "d": "directory", "l": "symlink", "c": "character device"}
    return names.get(kind, {"b": "block device", "p": "fifo"}.get(kind, "socket"))


def _extra_change(kind: str, before: str, after: str) -> str:
    if kind == "f":
        return "content changed"
    if kind == "l":
        return f"link target {before!r} -> {after!r}"
    if kind == "d":
        return "opaque" if after else "no longer opaque"
    return f"device {before} -> {after}"


def index_tree(root: Path, known: InodeEntries | None = None) -> ContentIndex:
    """The index of the tree at ``root``, never following a symlink.

    A non-directory's entry is all its inode's (type, mode, size, content), so one seen
    before, through any tree sharing ``known``, is taken as it was then without another
    ``lstat`` or read: the readdir entry gives its inode number, the directory its device.
    """
    known = {} if known is None else known
    top = os.lstat(root)
    index: ContentIndex = {ROOT: _entry(str(root), top)}
    stack = [(str(root), "", top.st_dev)]
    while stack:
        directory, prefix, device = stack.pop()
        with os.scandir(directory) as entries:
            for item in entries:
                if not prefix and item.name == CATALOG_MARKER:
                    continue
                path = prefix + item.name
                if item.is_dir(follow_symlinks=False):
                    st = item.stat(follow_symlinks=False)
                    index[path] = _entry(item.path, st)
                    stack.append((item.path, path + "/", st.st_dev))
                    continue
                key = (device, item.inode())
                entry = known.get(key)
                if entry is None:
                    entry = known[key] = _entry(item.path, item.stat(follow_symlinks=False))
                index[path] = entry
    return index


def _entry(path: str, st: os.stat_result) -> Entry:
    kind = _KINDS.get(stat.S_IFMT(st.st_mode), "s")
    mode = stat.S_IMODE(st.st_mode)
    if kind == "f":
        return Entry(kind, mode, st.st_size, file_sha256(path, st.st_size))
    if kind == "d":
        return Entry(kind, mode, 0, "o" if _opaque(path) else "")
    if kind == "l":
        return Entry(kind, mode, st.st_size, os.fsdecode(os.readlink(path)))
    if kind in ("c", "b"):
        return Entry(kind, mode, 0, f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}")
    return Entry(kind, mode, 0)


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:  # no such xattr, or none readable here (unprivileged, some file systems)
        return False


def file_sha256(path: str, size: int) -> str:
    """sha256 hex of the regular file at ``path`` (``size``: what lstat said)."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        if size <= _SMALL:
            data = os.read(fd, size + 1)
            if len(data) <= size:  # else it grew meanwhile: read it all below
                return hashlib.sha256(data).hexdigest()
            os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(fd, "rb", closefd=False) as stream:
            return hashlib.file_digest(stream, "sha256").hexdigest()
    finally:
        os.close(fd)


def compose(layers: Iterable[tuple[ContentIndex, bool]]) -> ContentIndex:
    """The flat tree of ``(layer index, wh_files)`` stacked bottom to top (overlay rules)."""
    tree: ContentIndex = {}
    for index, wh_files in layers:
        hidden, opaque, upper = _layer_effects(index, wh_files)
        tree = {} if ROOT in opaque else _hide(tree, hidden, opaque | _replaced(upper))
        tree.update(upper)
    tree.pop(ROOT, None)
    return tree


def _replaced(upper: ContentIndex) -> set[str]:
    return {path for path, entry in upper.items() if entry.kind != "d"}


def _hide(tree: ContentIndex, hidden: set[str], covered: set[str]) -> ContentIndex:
    """``tree`` without the ``hidden`` paths and what is under them or under a ``covered``
    directory (opaque, or replaced by a non-directory): one pass, prefixes matched in C."""
    prefixes = tuple(
        f"{path}/"
        for path in hidden | covered
        if (lower := tree.get(path)) is not None and lower.kind == "d"
    )
    if not hidden and not prefixes:
        return tree
    return {p: e for p, e in tree.items() if p not in hidden and not p.startswith(prefixes)}


def _layer_effects(
    index: ContentIndex, wh_files: bool
) -> tuple[set[str], set[str], dict[str, Entry]]:
    """Paths this layer whites out (with what is under them), its opaque directories (what
    is under them below is hidden), and its own entries."""
    hidden: set[str] = set()
    opaque: set[str] = set()
    upper: dict[str, Entry] = {}
    for path, entry in index.items():
        marker = _whiteout_of(path, entry, wh_files)
        if marker is None:
            if entry.kind == "d" and entry.extra == "o":
                opaque.add(path)
            upper[path] = entry
        elif marker[0]:
            opaque.add(marker[1])
        else:
            hidden.add(marker[1])
    return hidden, opaque, upper


def _whiteout_of(path: str, entry: Entry, wh_files: bool) -> tuple[bool, str] | None:
    """``(True, directory)`` for an opaque marker, ``(False, path)`` for a whiteout of
    ``path``, None for an entry of the tree; in either whiteout form."""
    if not wh_files:
        return (False, path) if entry.kind == "c" and entry.extra == "0,0" else None
    parent, _, name = path.rpartition("/")
    if name == ".wh..wh..opq":
        return True, parent or ROOT
    if name.startswith(".wh."):
        return False, f"{parent}/{name[4:]}" if parent else name[4:]
    return None


def to_bytes(index: ContentIndex) -> bytes:
    """The on-disk form (see the module docstring)."""
    # json.dumps per line costs a third of writing an index; its C string encoder, used
    # directly, gives the same bytes (ASCII, surrogates escaped as \udcxx).
    quote = encode_basestring_ascii
    lines = [json.dumps({"content-index": _VERSION})]
    for path in sorted(index):
        kind, mode, size, extra = index[path]
        lines.append(f'[{quote(path)}, "{kind}", {mode}, {size}, {quote(extra)}]')
    # Level 1: sha256 hex hardly compresses better at 6, which took three times as long.
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=1, mtime=0)


def from_bytes(raw: bytes, *, what: str) -> ContentIndex:
    """Parse ``to_bytes`` output; ``ValueError`` naming ``what`` if it is not one."""
    try:
        header, _, body = gzip.decompress(raw).decode().partition("\n")
        if json.loads(header) != {"content-index": _VERSION}:
            raise ValueError(f"unknown header {header!r}")
        # One parse of the whole body: a call per line costs more than the hashing saves.
        rows = json.loads("[" + body.rstrip("\n").replace("\n", ",") + "]")
        return {row[0]: Entry(*row[1:]) for row in rows}
    except (OSError, EOFError, UnicodeDecodeError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{what}: not a content index: {exc}") from exc


def write_index(tree: Path, destination: Path) -> ContentIndex:
    """Index ``tree`` and write the index to ``destination`` (mode 0644)."""
    index = index_tree(tree)
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as stream:
        os.fchmod(stream.fileno(), 0o644)
        stream.write(to_bytes(index))
    return index
