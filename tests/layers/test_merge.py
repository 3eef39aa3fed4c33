"""Merging several layer directories in one walk gives the tree of merging them one by one.

``merge_layers`` resolves each directory through all its layers in memory; ``merge_layer``
applied layer after layer is the reference: the overlay reading of the stack, one layer
at a time, which the corpus compares with umoci. Random stacks of small layer trees
(files, directories with modes, times and xattrs, symlinks, whiteouts, opaque
directories) are merged both ways, onto an empty flat tree and onto one holding lower
layers already, and the two trees must be the same, down to which layer's inode each
name is a hard link to.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unpacked.errors import LayerError
from unpacked.layers import LayerTree, merge_layer, merge_layers

NAMES = ("a", "b")
IS_ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class File:
    content: bytes
    mode: int


@dataclass(frozen=True)
class Link:
    target: str


@dataclass(frozen=True)
class Whiteout:
    pass


@dataclass(frozen=True)
class Dir:
    mode: int
    mtime: int
    xattr: bytes | None
    opaque: bool
    children: dict[str, Any]


def _leaf() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.builds(File, st.binary(max_size=8), st.sampled_from([0o644, 0o755, 0o600])),
        st.builds(Link, st.sampled_from(["a", "../b", "/c/a"])),
        st.just(Whiteout()),
    )


def _dir(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[Dir]:
    return st.builds(
        Dir,
        st.sampled_from([0o755, 0o750, 0o700]),
        st.integers(1_000_000, 1_000_100),
        st.sampled_from([None, b"1", b"2"]),
        st.booleans(),
        children,
    )


def _tree() -> st.SearchStrategy[dict[str, Any]]:
    nodes = st.recursive(
        _leaf(), lambda inner: _dir(st.dictionaries(st.sampled_from(NAMES), inner)), max_leaves=8
    )
    return st.dictionaries(st.sampled_from(NAMES), nodes, max_size=3)


def _write(directory: Path, children: dict[str, Any], wh_files: bool) -> None:
    for name, node in children.items():
        path = directory / name
        if isinstance(node, File):
            path.write_bytes(node.content)
            path.chmod(node.mode)
        elif isinstance(node, Link):
            path.symlink_to(node.target)
        elif isinstance(node, Whiteout):
            if wh_files:
                (directory / f".wh.{name}").write_bytes(b"")
            else:
                os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
        else:
            _write_dir(path, node, wh_files)


def _write_dir(path: Path, node: Dir, wh_files: bool) -> None:
    path.mkdir()
    _write(path, node.children, wh_files)
    if node.opaque:
        if wh_files:
            (path / ".wh..wh..opq").write_bytes(b"")
        else:
            os.setxattr(path, "trusted.overlay.opaque", b"y")
    if node.xattr is not None:
        os.setxattr(path, "user.merge", node.xattr)
    path.chmod(node.mode)
    os.utime(path, ns=(node.mtime * 10**9, node.mtime * 10**9))


def _snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: type, mode, xattrs; a file's inode; a directory's mtime."""
    found: dict[str, tuple[object, ...]] = {}
    for directory, subdirs, files in os.walk(root):
        for name in [*subdirs, *files]:
            path = Path(directory, name)
            st_ = path.lstat()
            xattrs = () if path.is_symlink() else tuple(sorted(os.listxattr(path)))
            identity = st_.st_mtime_ns if stat.S_ISDIR(st_.st_mode) else st_.st_ino
            found[str(path.relative_to(root))] = (st_.st_mode, xattrs, identity)
    return found


def _layers(base: Path, stack: list[dict[str, Any]], wh_files: bool) -> list[LayerTree]:
    layers = []
    for index, children in enumerate(stack):
        layerfs = base / f"layer{index}"
        layerfs.mkdir()
        _write(layerfs, children, wh_files)
        whiteouts = "wh-files" if wh_files else "overlay"
        layers.append(LayerTree(layerfs, whiteouts, f"layer {index}"))
    return layers


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    # Hypothesis runs many examples per test: a directory of their own for each.
    with tempfile.TemporaryDirectory(prefix="merge-") as name:
        yield Path(name)


def _one_by_one(layers: list[LayerTree], flat: Path) -> None:
    for layer in layers:
        merge_layer(layer.path, flat, whiteouts=layer.whiteouts, name=layer.name)


WHITEOUT_MODES = [
    True,
    pytest.param(False, marks=pytest.mark.skipif(not IS_ROOT, reason="needs root (mknod)")),
]


_RECREATED = [
    {"a": Dir(0o755, 1_000_000, None, False, {"x": File(b"x", 0o644)})},
    {"a": Whiteout()},
    {"a": Dir(0o755, 1_000_001, None, False, {"y": File(b"y", 0o644)})},
]


@pytest.mark.parametrize("wh_files", WHITEOUT_MODES, ids=lambda wh: "wh-files" if wh else "overlay")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stack=st.lists(_tree(), min_size=1, max_size=4), lower=st.integers(0, 3))
@example(stack=_RECREATED, lower=1)  # whited out, then given again: the flat tree's is hidden
def test_merging_layers_at_once_is_merging_them_one_by_one(
    wh_files: bool, stack: list[dict[str, Any]], lower: int
) -> None:
    with _workdir() as base:
        layers = _layers(base, stack, wh_files)
        expected, actual = base / "expected", base / "actual"
        expected.mkdir()
        actual.mkdir()
        _one_by_one(layers, expected)
        # The first ``lower`` layers are already in the flat tree: the walk must respect
        # what is there, as it does for stored layers above freshly unpacked ones.
        _one_by_one(layers[:lower], actual)
        merge_layers(layers[lower:], actual)
        assert _snapshot(actual) == _snapshot(expected)


def test_the_topmost_layer_gives_each_name(tmp_path: Path) -> None:
    """A case spelled out: replaced, whited out, re-created and opaque, in one walk."""
    stack = [
        {"f": File(b"1", 0o644), "d": Dir(0o755, 1_000_000, b"1", False, {"x": File(b"x", 0o644)})},
        {"f": Whiteout(), "d": Dir(0o750, 1_000_001, None, True, {"y": File(b"y", 0o600)})},
        {"f": Dir(0o700, 1_000_002, None, False, {}), "g": Link("f")},
    ]
    layers = _layers(tmp_path, stack, wh_files=True)
    flat = tmp_path / "flat"
    flat.mkdir()
    stats = merge_layers(layers, flat)
    assert sorted(os.listdir(flat)) == ["d", "f", "g"]
    assert os.listdir(flat / "d") == ["y"], "the opaque layer hides x"
    assert (flat / "d/y").stat().st_ino == (layers[1].path / "d/y").stat().st_ino
    assert stat.S_IMODE((flat / "d").stat().st_mode) == 0o750
    assert os.listxattr(flat / "d") == [], "a directory takes its topmost layer's xattrs only"
    assert (flat / "d").stat().st_mtime_ns == 1_000_001 * 10**9
    assert (flat / "f").is_dir() and os.readlink(flat / "g") == "f"
    assert (stats.linked, stats.copied) == (2, 0), "y and g, each once; x and f never"


def test_a_missing_layer_is_named(tmp_path: Path) -> None:
    present = tmp_path / "present"
    present.mkdir()
    flat = tmp_path / "flat"
    flat.mkdir()
    layers = [
        LayerTree(present, "overlay", "sha256:aaa (1/2 of r)"),
        LayerTree(tmp_path / "gone", "overlay", "sha256:bbb (2/2 of r)"),
    ]
    with pytest.raises(LayerError, match=r"sha256:bbb \(2/2 of r\)"):
        merge_layers(layers, flat)


def _contents(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: type and mode, owner, xattrs, content or target, mtime."""
    found: dict[str, tuple[object, ...]] = {}
    for directory, subdirs, files in os.walk(root):
        for name in [*subdirs, *files]:
            path = Path(directory, name)
            st_ = path.lstat()
            link = path.is_symlink()
            xattrs = () if link else tuple((a, os.getxattr(path, a)) for a in os.listxattr(path))
            content: object = os.readlink(path) if link else None
            if stat.S_ISREG(st_.st_mode):
                content = path.read_bytes()
            mtime = None if link else st_.st_mtime_ns
            owner = (st_.st_uid, st_.st_gid)
            found[str(path.relative_to(root))] = (st_.st_mode, owner, xattrs, content, mtime)
    return found


def test_without_links_across_directories_the_flat_tree_is_copied(tmp_path: Path) -> None:
    """A publisher that breaks hard links up (CVMFS) gets the same tree, with no shared inode."""
    stack = [
        {"f": File(b"1", 0o644), "d": Dir(0o755, 1_000_000, b"1", False, {"x": File(b"x", 0o644)})},
        {"f": Whiteout(), "d": Dir(0o750, 1_000_001, None, True, {"y": File(b"y", 0o4711)})},
        {"g": Link("f"), "h": File(b"h", 0o600)},
    ]
    layers = _layers(tmp_path, stack, wh_files=True)
    os.setxattr(layers[2].path / "h", "user.kept", b"1")
    os.mkfifo(layers[2].path / "pipe", 0o640)
    os.utime(layers[2].path / "h", ns=(5, 7_000_000_000))
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    linked.mkdir()
    copied.mkdir()
    merge_layers(layers, linked)
    stats = merge_layers(layers, copied, link=False)
    assert _contents(copied) == _contents(linked)
    assert (stats.linked, stats.copied) == (0, 4), "y, g, h and pipe, each copied once"
    layer_inodes = {p.lstat().st_ino for layer in layers for p in layer.path.rglob("*")}
    assert not layer_inodes & {p.lstat().st_ino for p in copied.rglob("*")}
    # Merging again over an existing tree replaces what is there.
    stats = merge_layers(layers[2:], copied, link=False)
    assert _contents(copied) == _contents(linked)
