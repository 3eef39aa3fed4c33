"""LAYERFS: a layer that whites out a path and also creates it, devices without root,
and the error an unexpected failure inside the applier becomes.

OCI: a whiteout hides the lower layers only. A layer directory holding both the
marker and the entry would hide the entry (fuse-overlayfs reads ``.wh.NAME``
before ``NAME``), so the entry stays alone, and a directory is made opaque so
that the lower directory's content stays hidden, as in a FLAT tree.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from layers.test_privileges import HELPER, owned_dir
from support.oci import TarEntry, tar_bytes
from support.tree import snapshot
from unpacked.errors import LayerError
from unpacked.layers import Target, _entries, apply_layer, merge_layer

T = TarEntry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become uid 65534")

LOWER = [T.dir("d"), T.file("d/x", b"low"), T.file("d/y", b"low"), T.dir("e"), T.file("e/old")]
# Every order of a whiteout and the entry it names, for files and directories.
RECREATING = [
    T.dir("d"),
    T.whiteout("d/x"),
    T.file("d/x", b"new"),
    T.file("d/y", b"mine"),
    T.whiteout("d/y"),
    T.whiteout("e"),
    T.dir("e"),
    T.file("e/f", b"f"),
    T.whiteout("g"),
    T.file("g/h", b"below a whiteout"),
]


def _apply_as_nobody(
    workspace: Path, entries: list[TarEntry], root: Path, target: Target, lower: Path | None = None
) -> subprocess.CompletedProcess[str]:
    tar = workspace / f"{root.name}.tar"
    tar.write_bytes(tar_bytes(entries))
    args = [sys.executable, str(HELPER), str(tar), str(root), target.value]
    args += [str(lower)] if lower is not None else []
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and '"error"' not in done.stdout, done.stdout + done.stderr
    return done


def _names(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def test_unprivileged_recreated_entries_win_over_their_whiteouts(workspace: Path) -> None:
    lower = owned_dir(workspace / "lower")
    _apply_as_nobody(workspace, LOWER, lower, Target.FLAT)
    layer = owned_dir(workspace / "layer")
    _apply_as_nobody(workspace, RECREATING, layer, Target.LAYERFS, lower)
    # No .wh.x, .wh.y, .wh.e, .wh.g beside the entries; the directories are opaque.
    assert _names(layer) == [
        "d",
        "d/x",
        "d/y",
        "e",
        "e/.wh..wh..opq",
        "e/f",
        "g",
        "g/.wh..wh..opq",
        "g/h",
    ]
    # Stacked, the layer gives what FLAT gives.
    merged = owned_dir(workspace / "merged")
    _apply_as_nobody(workspace, LOWER, merged, Target.FLAT)
    merge_layer(layer, merged, whiteouts="wh-files", name="layer")
    flat = owned_dir(workspace / "flat")
    _apply_as_nobody(workspace, LOWER, flat, Target.FLAT)
    _apply_as_nobody(workspace, RECREATING, flat, Target.FLAT)
    assert _names(merged) == _names(flat) == ["d", "d/x", "d/y", "e", "e/f", "g", "g/h"]
    assert (flat / "d/x").read_bytes() == (merged / "d/x").read_bytes() == b"new"


def test_as_root_recreated_entries_win_over_their_whiteouts(tmp_path: Path) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    report = apply_layer(io.BytesIO(tar_bytes(RECREATING)), layer, target=Target.LAYERFS)
    assert report.whiteouts == "overlay"
    assert _names(layer) == ["d", "d/x", "d/y", "e", "e/f", "g", "g/h"]
    assert (layer / "d/x").read_bytes() == b"new" and (layer / "d/y").read_bytes() == b"mine"
    for opaque in ("e", "g"):
        assert os.getxattr(layer / opaque, "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.opaque" not in os.listxattr(layer / "d")
    nodes = snapshot(layer)
    assert all(node.kind != "char" for node in nodes.values())


def test_as_root_whiteout_after_own_directory_keeps_it(tmp_path: Path) -> None:
    entries = [T.dir("k"), T.file("k/mine"), T.whiteout("k"), T.whiteout("w")]
    report = apply_layer(io.BytesIO(tar_bytes(entries)), tmp_path, target=Target.LAYERFS)
    assert report.whiteouts == "overlay"
    assert (tmp_path / "k/mine").exists()
    assert os.getxattr(tmp_path / "k", "trusted.overlay.opaque") == b"y"
    assert stat.S_ISCHR(os.lstat(tmp_path / "w").st_mode)


def test_unprivileged_devices_give_one_warning_naming_them(workspace: Path) -> None:
    root = owned_dir(workspace / "root")
    entries = [T.char("dev/null", 1, 3), T.file("dev/ok"), T.block("dev/sda", 8, 0)]
    done = _apply_as_nobody(workspace, entries, root, Target.LAYERFS)
    warnings = [line for line in done.stderr.splitlines() if "device node" in line]
    assert warnings == ["layer unpriv: 2 device nodes not created (not root): dev/null, dev/sda"]


def test_an_unexpected_error_names_the_layer_and_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(ctx: object, member: tarfile.TarInfo, place: object) -> None:
        raise KeyError("a defect")

    monkeypatch.setitem(_entries.HANDLERS, tarfile.FIFOTYPE, broken)
    tar = io.BytesIO(tar_bytes([T.file("a"), T.fifo("dir/pipe"), T.file("b")]))
    with pytest.raises(LayerError) as caught:
        apply_layer(tar, tmp_path, target=Target.FLAT, name="sha256:abc (2/3 of img:1)")
    assert str(caught.value) == (
        "layer sha256:abc (2/3 of img:1): entry 'dir/pipe': unexpected KeyError: 'a defect'"
    )
    assert isinstance(caught.value.__cause__, KeyError)
