"""Random stacks of layers for differential testing of the applier, and the comparison.

``stacks()`` (hypothesis) draws 2 to 5 layers over a small set of names, so that
entries collide across and within layers: every entry kind (files, directories,
symlinks relative/absolute/dangling, hard links to this layer's and lower
layers' files, fifos, devices, whiteouts, opaque markers, a ``./`` entry), in
any order (a whiteout or an opaque marker before or after its directory and its
target, a path whited out and created again in one layer, a directory replaced
by a file and back, duplicate paths), with ``user.*`` xattrs, modes 000 and
0555, long (PAX or GNU headers) and non-UTF-8 names.

``check_stack`` applies a stack and returns its divergences:

1. the FLAT tree against ``umoci raw unpack`` of the same OCI layout, up to
   ``INTENDED_FLAT_DIFFERENCES``; a layer both refuse is agreement;
2. as root, with ``overlay=True``: the LAYERFS directories mounted as one
   read-only kernel overlay against the FLAT tree, up to ``OVERLAY_DIFFERENCES``.

Intended differences of (2), and only these, are normalised:

- ``overlay-root-metadata``: the merged root shows the top layer directory's
  root, whose metadata is the top layer's ``./`` entry if it has one; a FLAT
  root keeps the last ``./`` entry of any layer. The layer directories' roots
  belong to the repository (DESIGN.md), not to one image.
- ``lower-hard-link-copies``: a hard link to a lower layer's file is a copy in
  LAYERFS (overlayfs cannot share an inode across layers).
- ``whiteout-parent-over-lower-non-directory``: a whiteout or opaque marker
  below a path the layer does not create needs its parent directories in the
  layer directory; the merged view shows them (holding only directories) where
  the FLAT tree has nothing or a lower non-directory. A whiteout in a directory
  of one layer only is listed by the kernel but cannot be looked up: such names
  are left out of the merged snapshot.
- ``umoci-marker-below-symlink-loop``: a whiteout or opaque marker whose parent
  path runs into a symlink loop (``a -> /a/b``, then ``a/.wh.c``) hides nothing
  (nothing can exist below such a path), so we accept the layer; umoci refuses it
  ("sanitise symlinks in root: ... too many levels of symbolic links"). Any
  other entry below the loop is refused by both. Such a stack is not compared.
- Not generated: a hard link to itself (we keep the file; umoci removes it and
  then fails to link). One whose parent path reaches its target through a symlink
  (``n -> a``, then ``n/b`` linking ``a/b``) is generated: umoci's refusal of it
  (``link: no such file or directory``) is not compared, as for a direct one.
- Stacks with an entry below a lower layer's symlink (or a hard link to one) are
  not compared in (2): the FLAT tree follows the symlink (as umoci does), LAYERFS
  puts a directory in its place (as containerd does), because a layer directory
  is shared by every image that uses it (the xfail of test_oracle.py).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from support.oci import TarEntry, build_image, tar_bytes
from support.tree import (
    INTENDED_FLAT_DIFFERENCES,
    LOWER_HARD_LINK_COPIES,
    ROOT,
    Difference,
    IntendedDifference,
    Node,
    compare,
    snapshot,
)
from support.tree import _node as tree_node
from support.tree import _with_hardlinks as with_hardlinks
from unpacked.errors import LayerError
from unpacked.layers import Target, apply_layer

T = TarEntry
TOOL_TIMEOUT = 60
LONG = "l" * 120
NON_UTF8 = b"n\xff".decode("utf-8", "surrogateescape")
_COMPONENTS = st.sampled_from(["a", "a", "b", "b", "c", LONG, NON_UTF8])
_MODES_FILE = st.sampled_from([0o644, 0o644, 0o000, 0o555, 0o4755])
_MODES_DIR = st.sampled_from([0o755, 0o755, 0o555, 0o700, 0o000])


@dataclass(frozen=True)
class Layer:
    entries: tuple[TarEntry, ...]
    gnu: bool = False
    """Written in GNU format (long names as GNU headers; no xattrs)."""

    def tar(self) -> bytes:
        if not self.gnu:
            return tar_bytes(self.entries)
        buffer = io.BytesIO()
        with tarfile.open(
            fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT, errors="surrogateescape"
        ) as tar:
            for entry in self.entries:
                info = entry.tarinfo()
                info.pax_headers = {}
                data = io.BytesIO(entry.data) if entry.type == "file" else None
                tar.addfile(info, data)
        return buffer.getvalue()


@dataclass(frozen=True)
class Divergence:
    kind: str
    detail: str


def _path(parts: Sequence[str]) -> str:
    return "/".join(parts)


_PATHS = st.lists(_COMPONENTS, min_size=1, max_size=3).map(_path)


_KINDS = (
    ["file"] * 4
    + ["dir"] * 3
    + ["symlink"] * 2
    + ["hardlink"] * 2
    + ["whiteout"] * 3
    + ["opaque"] * 2
    + ["fifo", "char", "root"]
)
_SYMLINK_TARGETS = st.sampled_from(["a", "../b", "/a/b", "/nonexistent", "a/" + LONG])


@st.composite
def _entry(draw: st.DrawFn, files: list[str]) -> TarEntry:
    path = draw(_PATHS)
    kind = draw(st.sampled_from(_KINDS))
    xattrs = draw(st.sampled_from([{}, {}, {"user.k": b"v"}, {"user.k": b"\x00\xff"}]))
    uid = draw(st.sampled_from([0, 0, 1000]))
    if kind == "file":
        data = draw(st.sampled_from([b"", b"x", b"y" * 600]))
        files.append(path)
        return T.file(path, data, mode=draw(_MODES_FILE), xattrs=xattrs, uid=uid, gid=uid)
    if kind in ("dir", "root"):
        name = "./" if kind == "root" else path
        return T.dir(name, mode=draw(_MODES_DIR), xattrs=xattrs, uid=uid, gid=uid)
    targets = [name for name in files if name != path]
    if kind == "hardlink" and targets:
        return T.hardlink(path, draw(st.sampled_from(targets)))
    simple = {
        "symlink": lambda: T.symlink(path, draw(_SYMLINK_TARGETS)),
        "whiteout": lambda: T.whiteout(path),
        "opaque": lambda: T.opaque(path),
        "char": lambda: T.char(path, 1, 3),
    }
    return simple.get(kind, lambda: T.fifo(path))()


@st.composite
def _layer(draw: st.DrawFn, files: list[str]) -> Layer:
    entries = tuple(draw(st.lists(_entry(files), min_size=1, max_size=8)))
    return Layer(entries, gnu=draw(st.sampled_from([False, False, False, True])))


@st.composite
def stacks(draw: st.DrawFn) -> tuple[Layer, ...]:
    """2 to 5 layers; hard links name files of this and earlier layers."""
    files: list[str] = []
    count = draw(st.integers(min_value=2, max_value=5))
    return tuple(draw(_layer(files)) for _ in range(count))


def describe(stack: Sequence[Layer]) -> list[dict[str, object]]:
    """A stack as JSON-able data, to reproduce a divergence."""
    return [
        {
            "gnu": layer.gnu,
            "entries": [
                {
                    "type": e.type,
                    "name": os.fsencode(e.name).decode("utf-8", "backslashreplace")
                    if isinstance(e.name, str)
                    else e.name.decode("utf-8", "backslashreplace"),
                    "mode": e.mode,
                    "uid": e.uid,
                    "linkname": str(e.linkname),
                    "size": len(e.data),
                    "xattrs": {k: v.hex() for k, v in e.xattrs.items()},
                }
                for e in layer.entries
            ],
        }
        for layer in stack
    ]


def _undescribed_name(text: str) -> str:
    """Inverse of ``describe``'s names: ``\\xNN`` escapes back to the bytes they were."""
    raw = re.sub(rb"\\x([0-9a-f]{2})", lambda m: bytes.fromhex(m[1].decode()), text.encode())
    return os.fsdecode(raw)


# ``describe`` keeps a file's size only; the generator draws these contents.
_CONTENTS = {0: b"", 1: b"x", 600: b"y" * 600}


def _undescribed_entry(entry: dict[str, Any]) -> TarEntry:
    kind = entry["type"]
    return TarEntry(
        _undescribed_name(entry["name"]),
        kind,
        data=_CONTENTS.get(entry["size"], b"z" * entry["size"]) if kind == "file" else b"",
        mode=entry["mode"],
        uid=entry["uid"],
        gid=entry["uid"],
        linkname=_undescribed_name(entry["linkname"]),
        devmajor=1 if kind == "char" else 0,
        devminor=3 if kind == "char" else 0,
        xattrs={key: bytes.fromhex(value) for key, value in entry["xattrs"].items()},
    )


def from_description(layers: Sequence[dict[str, Any]]) -> tuple[Layer, ...]:
    """The stack ``describe`` wrote (file contents and gids as the generator draws them)."""
    return tuple(
        Layer(tuple(_undescribed_entry(e) for e in layer["entries"]), gnu=layer["gnu"])
        for layer in layers
    )


# --- the comparison ----------------------------------------------------------------


def _root_metadata(path: bytes, expected: Node | None, actual: Node | None) -> bool:
    return path == ROOT and expected is not None and actual is not None


OVERLAY_DIFFERENCES: tuple[IntendedDifference, ...] = (
    *(
        IntendedDifference(
            name="overlay-root-metadata",
            why="the merged root shows the top layer directory's root (see module docstring)",
            field=field,
            accepts=_root_metadata,
        )
        for field in ("mode", "uid", "gid", "xattrs", "mtime")
    ),
    LOWER_HARD_LINK_COPIES,
)


# umoci's refusal of a whiteout or an opaque marker whose parent path is a symlink loop.
UMOCI_MARKER_BELOW_SYMLINK_LOOP = re.compile(
    r"unpack entry: (?:[^\n]*/)?\.wh\.[^/\n]*: sanitise symlinks in root: "
    r"[^\n]*too many levels of symbolic links"
)


# umoci's refusal of a hard link to itself: it removes the name, then links to it.
UMOCI_LINK_TO_ITSELF = re.compile(r"unpack entry: [^\n]*: link: no such file or directory")


def links_to_itself(stack: Sequence[Layer], root: Path) -> bool:
    """Whether a hard link of ``stack``, its parent path resolved through the symlinks of
    the tree at ``root``, names its own target."""
    return any(
        _through_symlinks(root, str(entry.name)) == _through_symlinks(root, str(entry.linkname))
        for layer in stack
        for entry in layer.entries
        if entry.type == "hardlink"
    )


def _through_symlinks(root: Path, name: str) -> str:
    """``name`` with its parent directories' symlinks in ``root`` followed (inside it)."""
    *pending, last = [part for part in name.strip("/").split("/") if part not in ("", ".")]
    resolved: list[str] = []
    for _ in range(256):  # bounded: a loop ends as it stands
        if not pending:
            break
        part = pending.pop(0)
        candidate = root.joinpath(*resolved, part)
        if part == "..":
            resolved = resolved[:-1]
        elif candidate.is_symlink():
            target = os.readlink(candidate)
            resolved = [] if target.startswith("/") else resolved
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
        else:
            resolved.append(part)
    return "/".join([*resolved, last])


def umoci_unpack(layout: Path, out: Path) -> str | None:
    done = subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:t", str(out)],
        capture_output=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    return None if done.returncode == 0 else done.stderr.decode(errors="replace").strip()


def _ours_flat(tars: Sequence[bytes], root: Path) -> str | None:
    root.mkdir()
    try:
        for index, tar in enumerate(tars):
            apply_layer(io.BytesIO(tar), root, target=Target.FLAT, name=f"L{index}")
    except LayerError as exc:
        return str(exc)
    return None


def _divergences(where: str, differences: Sequence[Difference]) -> list[Divergence]:
    kinds: dict[str, Difference] = {}
    for difference in differences:
        kinds.setdefault(f"{where}:{difference.field}", difference)
    return [Divergence(kind, str(difference)) for kind, difference in kinds.items()]


def below_lower_symlink(stack: Sequence[Layer]) -> bool:
    """Whether an entry's parent path was a symlink in a lower layer (not compared in (2))."""
    links: set[str] = set()
    for layer in stack:
        for entry in layer.entries:
            name = str(entry.name).strip("/").removeprefix("./")
            parts = name.split("/")
            if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
                return True
        for entry in layer.entries:
            # A hard link to a symlink is a symlink too (LAYERFS copies it).
            if entry.type == "symlink" or (entry.type == "hardlink" and entry.linkname in links):
                links.add(str(entry.name))
    return False


def check_stack(
    stack: Sequence[Layer], workdir: Path, *, overlay: bool
) -> tuple[list[Divergence], bool]:
    """The divergences of ``stack`` (see the module docstring); True if (2) was compared."""
    tars = [layer.tar() for layer in stack]
    build_image(workdir / "layout", tars, tag="t", compression="gzip")
    theirs = umoci_unpack(workdir / "layout", workdir / "umoci")
    flat = workdir / "flat"
    ours = _ours_flat(tars, flat)
    if theirs is not None or ours is not None:
        if (theirs is None) == (ours is None):
            return [], False  # both refuse the stack
        if ours is None and UMOCI_MARKER_BELOW_SYMLINK_LOOP.search(theirs or ""):
            return [], False  # intended: see the module docstring
        refused_link = ours is None and UMOCI_LINK_TO_ITSELF.search(theirs or "")
        if refused_link and links_to_itself(stack, flat):
            return [], False  # intended: see the module docstring
        which = "ours" if ours is not None else "umoci"
        return [Divergence(f"error:{which}", ours or theirs or "")], False
    flat_snapshot = snapshot(flat)
    found = _divergences(
        "flat",
        compare(snapshot(workdir / "umoci"), flat_snapshot, intended=INTENDED_FLAT_DIFFERENCES),
    )
    if not overlay or below_lower_symlink(stack):
        return found, False
    return found + _overlay_divergences(tars, workdir, flat_snapshot), True


def _overlay_divergences(
    tars: Sequence[bytes], workdir: Path, flat: dict[bytes, Node]
) -> list[Divergence]:
    below = workdir / "below"
    below.mkdir()
    layers: list[Path] = []
    for index, tar in enumerate(tars):
        layer = workdir / f"layer{index}"
        layer.mkdir()
        try:
            apply_layer(
                io.BytesIO(tar), layer, target=Target.LAYERFS, lower=below, name=f"L{index}"
            )
        except LayerError as exc:
            return [Divergence("error:layerfs", str(exc))]
        apply_layer(io.BytesIO(tar), below, target=Target.FLAT, name=f"L{index}")
        layers.append(layer)
    with _mounted(layers, workdir / "merged") as merged:
        view = _merged_snapshot(merged)
    intended = (*OVERLAY_DIFFERENCES, *_whiteout_parents(flat, view))
    return _divergences("overlay", compare(flat, view, intended=intended))


def _whiteout_parents(
    flat: dict[bytes, Node], view: dict[bytes, Node]
) -> tuple[IntendedDifference, ...]:
    def only_directories(path: bytes) -> bool:
        below = [node for key, node in view.items() if key.startswith(path + b"/")]
        return view[path].kind == "dir" and all(node.kind == "dir" for node in below)

    def over_non_directory(path: bytes, expected: Node | None, actual: Node | None) -> bool:
        if expected is None or actual is None or expected.kind == "dir":
            return False
        return only_directories(path)

    def below_one(path: bytes, expected: Node | None, actual: Node | None) -> bool:
        return expected is None and actual is not None and only_directories(path)

    why = (
        "a whiteout or opaque marker below a path the layer does not create needs its parent "
        "directories in the layer directory (a layer cannot know its lower layers); the "
        "merged view shows them, empty or holding only such directories, where the FLAT "
        "tree has nothing or a lower non-directory"
    )
    name = "whiteout-parent-over-lower-non-directory"
    return (
        IntendedDifference(name=name, why=why, field="kind", accepts=over_non_directory),
        IntendedDifference(name=name, why=why, field="presence", accepts=below_one),
    )


def _merged_snapshot(root: Path) -> dict[bytes, Node]:
    """``snapshot`` of a merged view, without the names overlayfs lists but cannot look up.

    A whiteout in a directory that only one layer has is listed by the kernel
    (a directory of one layer is read as it is) and gives ENOENT on lookup:
    intended, a layer cannot know which lower layers it will be stacked on.
    """
    nodes: dict[bytes, Node] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    base = os.fsencode(root)
    pending = [(b"", base)]
    nodes[ROOT] = tree_node(base, os.lstat(base), mtimes=False)
    while pending:
        prefix, directory = pending.pop()
        for name in sorted(os.listdir(directory)):
            full = os.path.join(directory, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            rel = prefix + name
            nodes[rel] = tree_node(full, st, mtimes=False)
            if stat.S_ISDIR(st.st_mode):
                pending.append((rel + b"/", full))
            elif st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    return with_hardlinks(nodes, inodes.values())


@contextlib.contextmanager
def _mounted(layers: Sequence[Path], mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir()
    lowerdir = ":".join(str(layer) for layer in reversed(layers))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(mountpoint)],
        check=True,
        capture_output=True,
        timeout=TOOL_TIMEOUT,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=TOOL_TIMEOUT)


def overlay_available(scratch: Path) -> bool:
    """Whether this process can mount a kernel overlay (root, overlayfs present)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    lower = [scratch / "probe-a", scratch / "probe-b"]
    for path in lower:
        path.mkdir(parents=True, exist_ok=True)
    try:
        with _mounted(lower, scratch / "probe-merged"):
            return True
    except (subprocess.CalledProcessError, OSError):
        return False
    finally:
        shutil.rmtree(scratch / "probe-merged", ignore_errors=True)
