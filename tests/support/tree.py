"""Snapshots of file-system trees, and an entry-by-entry comparison of two of them.

A snapshot maps each path (relative, as bytes, so non-UTF-8 names survive; the
root is ``b"."``) to a ``Node`` with everything a container runtime can observe:
type, permission bits, owner, content hash, link target, device numbers,
xattrs and which paths are hard links of each other. Symlinks are never
followed.

``layer_snapshot`` derives the tree a layer tar should produce as an overlayfs
lower directory (whiteouts as 0/0 character devices, opaque markers as the
``trusted.overlay.opaque`` xattr), independently of the code under test.

Differences from the oracle that are expected — what the project does on
purpose, and what umoci makes up — are listed once, in
``INTENDED_FLAT_DIFFERENCES``, each with its reason; ``compare`` drops exactly
the differences they cover. What a published image adds to that on purpose
(Apptainer files, bind points, catalog markers) is in
``INTENDED_CONVERT_DIFFERENCES``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import tarfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import IO

Snapshot = dict[bytes, "Node"]

ROOT = b"."
WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

# SELinux labels come from the host's policy, not from the image.
_IGNORED_XATTRS = frozenset({"security.selinux"})
_CHUNK = 1 << 20


class Kind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    SOCKET = "socket"


_KIND_OF_MODE = {
    stat.S_IFREG: Kind.FILE,
    stat.S_IFDIR: Kind.DIR,
    stat.S_IFLNK: Kind.SYMLINK,
    stat.S_IFCHR: Kind.CHAR,
    stat.S_IFBLK: Kind.BLOCK,
    stat.S_IFIFO: Kind.FIFO,
    stat.S_IFSOCK: Kind.SOCKET,
}


@dataclass(frozen=True)
class Node:
    """What can be observed of one path, without following it.

    ``size`` and ``sha256`` are set for regular files only (a directory's size
    depends on the file system). ``hardlinks`` lists every path of the tree
    that shares this node's inode, itself included, sorted; it is empty for a
    node with no other name in the tree. ``mtime`` is in nanoseconds, or None
    when the snapshot was taken without mtimes.
    """

    kind: Kind
    mode: int
    uid: int = 0
    gid: int = 0
    size: int | None = None
    sha256: str | None = None
    link_target: bytes | None = None
    rdev: tuple[int, int] | None = None
    xattrs: tuple[tuple[str, bytes], ...] = ()
    hardlinks: tuple[bytes, ...] = ()
    mtime: int | None = None

    def xattr(self, name: str) -> bytes | None:
        return dict(self.xattrs).get(name)


COMPARED_FIELDS = tuple(f.name for f in dataclasses.fields(Node))
PRESENCE = "presence"
"""The pseudo-field of a path that exists in only one of the two trees."""


@dataclass(frozen=True)
class Difference:
    """One field of one path that differs; ``expected``/``actual`` are field values."""

    path: bytes
    field: str
    expected: object
    actual: object

    def __str__(self) -> str:
        return (
            f"{show_path(self.path)}: {self.field}: expected {_show(self.field, self.expected)}, "
            f"got {_show(self.field, self.actual)}"
        )


@dataclass(frozen=True)
class IntendedDifference:
    """A difference from the oracle that the project makes on purpose.

    ``accepts(path, expected, actual)`` is asked only for differences in
    ``field`` and must say yes only to exactly the intended deviation, so
    that anything else still fails.
    """

    name: str
    why: str
    field: str
    accepts: Callable[[bytes, Node | None, Node | None], bool]

    def covers(self, path: bytes, field: str, expected: Node | None, actual: Node | None) -> bool:
        return field == self.field and self.accepts(path, expected, actual)


def _owner_access_fixed(_path: bytes, expected: Node | None, actual: Node | None) -> bool:
    if expected is None or actual is None or expected.kind != actual.kind:
        return False
    added = {Kind.DIR: 0o700, Kind.FILE: 0o400}.get(expected.kind)
    return added is not None and actual.mode == expected.mode | added


OWNER_ACCESS_FIX = IntendedDifference(
    name="owner-access",
    why=(
        "unprivileged runtimes (Apptainer, a user deleting the tree) must read every file "
        "and enter every directory, so a flat tree gives directories u+rwx and regular "
        "files u+r (DESIGN.md section 5); nothing else about the mode may change"
    ),
    field="mode",
    accepts=_owner_access_fixed,
)

_RECENT_NS = 7 * 24 * 3600 * 10**9


def _invented_directory_time(_path: bytes, expected: Node | None, actual: Node | None) -> bool:
    if expected is None or actual is None or expected.kind is not Kind.DIR:
        return False
    mtime = expected.mtime
    return mtime is not None and (mtime == 0 or mtime > time.time_ns() - _RECENT_NS)


UMOCI_INVENTED_DIRECTORY_TIME = IntendedDifference(
    name="umoci-invented-directory-time",
    why=(
        "a directory without a tar entry of its own (a missing parent) has no time in the "
        "image: umoci and we both give it the time of unpacking. umoci also sets the root "
        "to the epoch when no layer has a './' entry, and leaves the root at the time of "
        "unpacking when a later layer adds to it, where we restore the './' entry's time. "
        "Accepted only where umoci's time is made up (0 or within the last week; corpus "
        "times are from 2023 or earlier), so a time we invent where the image has one fails"
    ),
    field="mtime",
    accepts=_invented_directory_time,
)

INTENDED_FLAT_DIFFERENCES: tuple[IntendedDifference, ...] = (
    OWNER_ACCESS_FIX,
    UMOCI_INVENTED_DIRECTORY_TIME,
)
"""Every deliberate difference between a flat tree and ``umoci raw unpack``.

Checked against umoci 0.4.7 and found NOT to differ (so not listed): opaque
markers after their siblings in the same layer (umoci keeps the siblings),
xattrs of a directory re-declared by a later layer (umoci clears the old
ones), hard links to a lower layer's file (umoci links the same inode),
security.capability surviving the chown, mtimes of files, symlinks and
declared directories, even when a later layer adds children (umoci restores
them). ``umoci raw unpack`` writes the root file system only, so there is
no bundle metadata to skip.
"""


def show_path(path: bytes) -> str:
    """``path`` for people: UTF-8 where it is, ``\\xNN`` escapes where it is not."""
    return path.decode("utf-8", "backslashreplace")


def _show(field: str, value: object) -> str:
    if field == "mode" and isinstance(value, int):
        return oct(value)
    if field == PRESENCE:
        return "present" if value else "absent"
    if field == "hardlinks" and isinstance(value, tuple):
        return "[" + ", ".join(show_path(p) for p in value) + "]"
    if isinstance(value, bytes):
        return repr(value)
    if field == "sha256" and isinstance(value, str):
        return value[:16] + "…"
    return str(value)


# --- snapshots of trees on disk ------------------------------------------------


def snapshot(root: Path | str | bytes, *, mtimes: bool = False) -> Snapshot:
    """Every path under ``root`` (and ``root`` itself as ``b"."``), never following symlinks."""
    base = os.fsencode(root)
    nodes: Snapshot = {}
    inodes: dict[tuple[int, int], list[bytes]] = defaultdict(list)
    for rel, full, st in _walk(base):
        nodes[rel] = _node(full, st, mtimes=mtimes)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            inodes[(st.st_dev, st.st_ino)].append(rel)
    return _with_hardlinks(nodes, inodes.values())


def _walk(base: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
    yield ROOT, base, os.lstat(base)
    pending = [(b"", base)]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as entries:
            children = sorted(entries, key=lambda e: e.name)
        for entry in children:
            rel = prefix + entry.name
            st = entry.stat(follow_symlinks=False)
            yield rel, entry.path, st
            if stat.S_ISDIR(st.st_mode):
                pending.append((rel + b"/", entry.path))


def _node(path: bytes, st: os.stat_result, *, mtimes: bool) -> Node:
    kind = _KIND_OF_MODE[stat.S_IFMT(st.st_mode)]
    node = Node(
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        xattrs=_xattrs(path),
        mtime=st.st_mtime_ns if mtimes else None,
    )
    if kind is Kind.FILE:
        return dataclasses.replace(node, size=st.st_size, sha256=_file_sha256(path))
    if kind is Kind.SYMLINK:
        return dataclasses.replace(node, link_target=os.readlink(path))
    if kind in (Kind.CHAR, Kind.BLOCK):
        return dataclasses.replace(node, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
    return node


def _file_sha256(path: bytes) -> str:
    digest = hashlib.sha256()
    # O_NOFOLLOW: the path was lstat'ed as a regular file; never read through a
    # symlink swapped in since.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _xattrs(path: bytes) -> tuple[tuple[str, bytes], ...]:
    names = os.listxattr(path, follow_symlinks=False)
    return tuple(
        sorted(
            (name, os.getxattr(path, name, follow_symlinks=False))
            for name in names
            if name not in _IGNORED_XATTRS
        )
    )


def _with_hardlinks(nodes: Snapshot, groups: Iterable[list[bytes]]) -> Snapshot:
    for group in groups:
        if len(group) > 1:
            members = tuple(sorted(group))
            for path in members:
                nodes[path] = dataclasses.replace(nodes[path], hardlinks=members)
    return nodes


# --- comparison ----------------------------------------------------------------


def compare(
    expected: Mapping[bytes, Node],
    actual: Mapping[bytes, Node],
    *,
    intended: Sequence[IntendedDifference] = (),
) -> list[Difference]:
    """Every difference between two snapshots that no ``intended`` entry covers.

    A path whose type differs reports only ``kind``: its other fields would
    only repeat that. ``mtime`` is compared when both snapshots have it.
    """
    differences: list[Difference] = []
    for path in sorted(expected.keys() | actual.keys()):
        exp, act = expected.get(path), actual.get(path)
        for field, exp_value, act_value in _field_differences(exp, act):
            if not any(i.covers(path, field, exp, act) for i in intended):
                differences.append(Difference(path, field, exp_value, act_value))
    return differences


def _field_differences(
    expected: Node | None, actual: Node | None
) -> Iterator[tuple[str, object, object]]:
    if expected is None or actual is None:
        yield PRESENCE, expected is not None, actual is not None
        return
    if expected.kind != actual.kind:
        yield "kind", expected.kind, actual.kind
        return
    for field in COMPARED_FIELDS:
        exp_value, act_value = getattr(expected, field), getattr(actual, field)
        if field == "mtime" and (exp_value is None or act_value is None):
            continue
        if exp_value != act_value:
            yield field, exp_value, act_value


def format_differences(differences: Sequence[Difference], *, limit: int = 40) -> str:
    """The first ``limit`` differences, one per line, and how many were left out."""
    lines = [str(d) for d in differences[:limit]]
    if len(differences) > limit:
        lines.append(f"... and {len(differences) - limit} more")
    return "\n".join(lines)


def assert_trees_equal(
    expected_root: Path | Mapping[bytes, Node],
    actual_root: Path | Mapping[bytes, Node],
    *,
    intended: Sequence[IntendedDifference] = (),
    mtimes: bool = False,
    limit: int = 40,
) -> None:
    """Fail with a readable list of differences unless the two trees match.

    Either side may be a directory or an already taken snapshot.
    """
    expected = _as_snapshot(expected_root, mtimes=mtimes)
    actual = _as_snapshot(actual_root, mtimes=mtimes)
    differences = compare(expected, actual, intended=intended)
    if differences:
        header = f"{len(differences)} difference(s), expected {_label(expected_root)}"
        header += f" vs actual {_label(actual_root)}:"
        raise AssertionError(header + "\n" + format_differences(differences, limit=limit))


def _as_snapshot(tree: Path | Mapping[bytes, Node], *, mtimes: bool) -> Mapping[bytes, Node]:
    return snapshot(tree, mtimes=mtimes) if isinstance(tree, Path) else tree


def _label(tree: Path | Mapping[bytes, Node]) -> str:
    return str(tree) if isinstance(tree, Path) else "(snapshot)"


# --- the tree a layer tar should give as an overlayfs lower directory -----------


def layer_snapshot(
    layer_tar: bytes,
    *,
    lower: Mapping[bytes, Node] | None = None,
) -> Snapshot:
    """The overlayfs lower directory that the uncompressed ``layer_tar`` describes.

    Whiteouts become 0/0 character devices (mode 0, the entry's owner), opaque
    markers the ``trusted.overlay.opaque=y`` xattr of their directory. A
    directory the tar creates only implicitly (as the parent of an entry)
    copies the metadata of the same directory in ``lower``, because overlayfs
    shows the topmost directory's metadata and the layer did not mean to change
    it; the layer's root, unless the tar has a ``./`` entry, is 0755 root:root
    like every layer directory a tool creates. A hard link to a file of
    ``lower`` becomes a copy of that file, one copy per link entry naming it.
    Nodes carry the entry's mtime; directories without an entry have none
    (``compare`` then skips it): their time is the moment of unpacking.
    ``lower`` is the merged tree of the layers below (e.g. ``umoci raw unpack``
    of them).
    """
    model = _LayerModel(lower or {})
    with tarfile.open(fileobj=io.BytesIO(layer_tar), mode="r:") as tar:
        for member in tar:
            model.add(member, tar)
    return model.finish()


def normalize_member_name(name: str) -> bytes:
    """A tar member name as a snapshot path: no ``./`` or ``/`` prefix, no trailing ``/``."""
    raw = name.encode("utf-8", "surrogateescape")
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    return b"/".join(parts) or ROOT


def _parent(path: bytes) -> bytes:
    head, sep, _ = path.rpartition(b"/")
    return head if sep else ROOT


def _member_mtime(member: tarfile.TarInfo) -> int:
    # PAX keeps sub-second digits that ``member.mtime`` (a float) may round.
    text = member.pax_headers.get("mtime")
    return int(Decimal(text) * 10**9) if text else int(member.mtime) * 10**9


def _member_xattrs(member: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    prefix = "SCHILY.xattr."
    return tuple(
        sorted(
            (key[len(prefix) :], value.encode("utf-8", "surrogateescape"))
            for key, value in member.pax_headers.items()
            if key.startswith(prefix)
        )
    )


class _LayerModel:
    """Builds a layer's expected overlay lower directory, entry by entry."""

    def __init__(self, lower: Mapping[bytes, Node]) -> None:
        self.lower = lower
        self.nodes: Snapshot = {}
        self.opaque: set[bytes] = set()
        self.links: dict[bytes, bytes] = {}
        # Where the layer put a non-directory (or a whiteout): it hides the lower
        # path whole, so a directory the layer makes there again is opaque and new.
        self.non_dirs: set[bytes] = set()

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        path = normalize_member_name(member.name)
        parent, base = _parent(path), path.rpartition(b"/")[2]
        self._ensure_dir(parent)
        if base == OPAQUE_MARKER:
            self.opaque.add(parent)
        elif base.startswith(WHITEOUT_PREFIX):
            hidden = path[: len(path) - len(base)] + base[len(WHITEOUT_PREFIX) :]
            whiteout = Node(Kind.CHAR, 0, member.uid, member.gid, rdev=(0, 0))
            self._put(hidden, dataclasses.replace(whiteout, mtime=_member_mtime(member)))
        elif member.islnk():
            self._link(path, normalize_member_name(member.linkname))
        else:
            self._put(path, self._member_node(member, tar))

    def _ensure_dir(self, path: bytes) -> None:
        if path in self.nodes and self.nodes[path].kind is Kind.DIR:
            return
        if path == ROOT:
            self.nodes[path] = Node(Kind.DIR, 0o755)
            return
        self._ensure_dir(_parent(path))
        below = self.lower.get(path)
        if path in self.non_dirs:
            self.opaque.add(path)
            node = Node(Kind.DIR, 0o755)
        elif below is not None and below.kind is Kind.DIR:
            node = dataclasses.replace(below, hardlinks=(), mtime=None)
        else:
            node = Node(Kind.DIR, 0o755)
        self.nodes[path] = node

    def _put(self, path: bytes, node: Node) -> None:
        old = self.nodes.get(path)
        if old is not None and not (old.kind is Kind.DIR and node.kind is Kind.DIR):
            self._remove(path)
        if node.kind is not Kind.DIR:
            self.non_dirs.add(path)
        elif path in self.non_dirs:
            self.opaque.add(path)
        self.nodes[path] = node

    def _remove(self, path: bytes) -> None:
        prefix = path + b"/"
        for name in [p for p in self.nodes if p == path or p.startswith(prefix)]:
            del self.nodes[name]
            self.links.pop(name, None)

    def _member_node(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> Node:
        node = Node(
            Kind.FILE,
            member.mode & 0o7777,
            uid=member.uid,
            gid=member.gid,
            xattrs=_member_xattrs(member),
            mtime=_member_mtime(member),
        )
        if member.isfile():
            stream = tar.extractfile(member)
            assert stream is not None
            digest, size = _stream_sha256(stream)
            return dataclasses.replace(node, size=size, sha256=digest)
        if member.isdir():
            return dataclasses.replace(node, kind=Kind.DIR)
        if member.issym():
            target = member.linkname.encode("utf-8", "surrogateescape")
            return dataclasses.replace(node, kind=Kind.SYMLINK, link_target=target)
        if member.ischr() or member.isblk():
            kind = Kind.CHAR if member.ischr() else Kind.BLOCK
            return dataclasses.replace(node, kind=kind, rdev=(member.devmajor, member.devminor))
        if member.isfifo():
            return dataclasses.replace(node, kind=Kind.FIFO)
        raise ValueError(f"layer_snapshot: unsupported tar member type {member.type!r}")

    def _link(self, path: bytes, target: bytes) -> None:
        if target in self.nodes:
            # Any name of this layer stands for its inode, whichever name came first.
            origin = self.links.setdefault(target, target)
            self._put(path, self.nodes[target])
        else:
            # Each link to a lower file is a copy of its own: the tar names the
            # lower path, and overlayfs cannot share an inode across layers.
            origin = path
            self._put(path, self._lower_copy(path, target))
        self.links[path] = origin

    def _lower_copy(self, path: bytes, origin: bytes) -> Node:
        below = self.lower.get(origin)
        if below is None or below.kind is Kind.DIR:
            raise ValueError(
                f"layer_snapshot: hard link {show_path(path)} to {show_path(origin)}, "
                "which is neither in this layer nor a non-directory of the lower tree"
            )
        return dataclasses.replace(below, hardlinks=())

    def finish(self) -> Snapshot:
        self._ensure_dir(ROOT)
        if ROOT in self.opaque:
            self._expand_root_opaque()
        for directory in self.opaque:
            self._mark_opaque(directory)
        groups: dict[bytes, list[bytes]] = defaultdict(list)
        for path, origin in self.links.items():
            if path in self.nodes:
                groups[origin].append(path)
        return _with_hardlinks(self.nodes, groups.values())

    def _mark_opaque(self, directory: bytes) -> None:
        node = self.nodes[directory]
        xattrs = dict(node.xattrs) | {OVERLAY_OPAQUE_XATTR: b"y"}
        self.nodes[directory] = dataclasses.replace(node, xattrs=tuple(sorted(xattrs.items())))

    def _expand_root_opaque(self) -> None:
        """Spell out an opaque root: overlayfs ignores the opaque xattr on a layer's root.

        (Checked on Linux 6.18: lower entries stay visible.) So each entry of the
        lower root is whited out, or, where this layer has a directory of that
        name merging with a lower one, that directory is made opaque.
        """
        top_level = [p for p in self.lower if p != ROOT and b"/" not in p]
        for name in top_level:
            mine = self.nodes.get(name)
            if mine is None:
                self.nodes[name] = Node(Kind.CHAR, 0, rdev=(0, 0))
            elif mine.kind is Kind.DIR and self.lower[name].kind is Kind.DIR:
                self.opaque.add(name)


def _stream_sha256(stream: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


# --- what a converted image adds on purpose -------------------------------------
# Written down here from DESIGN.md sections 5 and 8 and Apptainer's makeSymlinks /
# makeDirs, not taken from the code under test.

APPTAINER_DIR = b".singularity.d"
APPTAINER_LINKS: Mapping[bytes, bytes] = {
    b"singularity": b".singularity.d/runscript",
    b".run": b".singularity.d/actions/run",
    b".exec": b".singularity.d/actions/exec",
    b".shell": b".singularity.d/actions/shell",
    b".test": b".singularity.d/actions/test",
    b"environment": b".singularity.d/env/90-environment.sh",
}
BIND_POINTS = (
    b"dev",
    b"proc",
    b"sys",
    b"tmp",
    b"var/tmp",
    b"home",
    b"root",
    b"etc",
    b"cvmfs",
    b"srv",
)
PLACEHOLDERS = (b"etc/hosts", b"etc/resolv.conf")
CATALOG_MARKER = b".cvmfscatalog"

# ``var`` is created only as the parent of the ``var/tmp`` bind point.
_ADDED_DIRS = frozenset({*BIND_POINTS, b"var"})
_ADDITION_PARENTS = frozenset({ROOT, b"etc", b"var"})


def _is_empty_file(node: Node) -> bool:
    return node.kind is Kind.FILE and node.size == 0 and node.mode == 0o644 and not node.xattrs


def _added_node(path: bytes, actual: Node) -> bool:
    """Whether ``actual`` is what the conversion adds at ``path`` where the image has nothing."""
    if path == APPTAINER_DIR:
        return actual.kind is Kind.DIR
    if path.startswith(APPTAINER_DIR + b"/"):
        return True  # Apptainer's own files; tests/test_apptainer.py checks their content
    if path in APPTAINER_LINKS:
        return actual.kind is Kind.SYMLINK and actual.link_target == APPTAINER_LINKS[path]
    if path in _ADDED_DIRS:
        return actual.kind is Kind.DIR and actual.mode == 0o755 and not actual.xattrs
    return (path in PLACEHOLDERS or path == CATALOG_MARKER) and _is_empty_file(actual)


def _added_by_convert(path: bytes, expected: Node | None, actual: Node | None) -> bool:
    return expected is None and actual is not None and _added_node(path, actual)


CONVERT_ADDITIONS = IntendedDifference(
    name="convert-additions",
    why=(
        "a flat tree must run under Apptainer like an 'apptainer build --sandbox' result "
        "(.singularity.d/, the top-level links, the bind points and the etc/hosts and "
        "etc/resolv.conf placeholders, each only where the image has none) and carries the "
        "CVMFS nested-catalog marker (DESIGN.md sections 5 and 8)"
    ),
    field=PRESENCE,
    accepts=_added_by_convert,
)


def _time_of_addition(path: bytes, expected: Node | None, actual: Node | None) -> bool:
    if path not in _ADDITION_PARENTS or expected is None or actual is None:
        return False
    mtime = actual.mtime
    recent = mtime is not None and mtime > time.time_ns() - _RECENT_NS
    return expected.kind is Kind.DIR and actual.kind is Kind.DIR and recent


CONVERT_ADDITION_TIMES = IntendedDifference(
    name="convert-addition-times",
    why=(
        "adding the Apptainer entries gives the directories they are added to (the root, "
        "etc, var) the time of conversion, as 'apptainer build' does"
    ),
    field="mtime",
    accepts=_time_of_addition,
)


def _lower_group_split(path: bytes, expected: Node | None, actual: Node | None) -> bool:
    # Names of one inode in umoci's tree may be split over several inodes in the
    # composed tree, never joined: ``actual``'s group must lie inside ``expected``'s.
    if expected is None or actual is None:
        return False
    group = set(actual.hardlinks) or {path}
    return group <= set(expected.hardlinks)


LOWER_HARD_LINK_COPIES = IntendedDifference(
    name="lower-hard-link-copies",
    why=(
        "a hard link to a lower layer's file is a copy in layerfs (DESIGN.md section 2): "
        "overlayfs cannot share an inode across layers. A flat tree composed from the "
        "layer directories links each name to its layer's inode, so it shows separate "
        "inodes where umoci has one, exactly as podman or containerd show that image"
    ),
    field="hardlinks",
    accepts=_lower_group_split,
)

INTENDED_CONVERT_DIFFERENCES: tuple[IntendedDifference, ...] = (
    *INTENDED_FLAT_DIFFERENCES,
    LOWER_HARD_LINK_COPIES,
    CONVERT_ADDITIONS,
    CONVERT_ADDITION_TIMES,
)
"""Every deliberate difference between a published flat tree and ``umoci raw unpack``."""


def _layer_marker(path: bytes, expected: Node | None, actual: Node | None) -> bool:
    return (
        path == CATALOG_MARKER
        and expected is None
        and actual is not None
        and _is_empty_file(actual)
    )


LAYERFS_CATALOG_MARKER = IntendedDifference(
    name="layerfs-catalog-marker",
    why="every layerfs directory is a CVMFS nested catalog (DESIGN.md section 8)",
    field=PRESENCE,
    accepts=_layer_marker,
)
