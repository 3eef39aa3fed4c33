"""Orders of entries the OCI layer spec allows, against ``umoci raw unpack``.

The spec fixes no order of entries in a layer: an opaque marker may come before
its own directory, and a layer may touch more directories than the applier
keeps open (``Tree`` closes and opens them again). Each case is a real OCI
layout unpacked by umoci, compared with our FLAT tree (times included) and
with the LAYERFS layers stacked by a kernel overlay mount.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support.oci import TarEntry, build_image, tar_bytes
from support.tree import INTENDED_FLAT_DIFFERENCES, assert_trees_equal
from unpacked.layers import Target, apply_layer

T = TarEntry
# More directories than the applier keeps open at once (_paths._fd_limit caps at 512).
MANY = 700

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="layer tests run as root"),
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed"),
]


def _big_lower() -> list[TarEntry]:
    entries = [T.dir("big")]
    for i in range(MANY):
        entries += [T.dir(f"big/s{i:04}"), T.file(f"big/s{i:04}/f", b"f")]
    return entries


ORDER_CASES: dict[str, list[list[TarEntry]]] = {
    # Issue 12: the opaque marker before its directory, a directory in it, and
    # whiteouts that open more directories than are kept: "dictionary changed
    # size during iteration" once the directory times were put back.
    "opaque-before-dir-many-whiteouts": [
        [*_big_lower(), T.dir("d"), T.file("d/old")],
        [
            T.opaque("d"),
            T.dir("d", mode=0o750),
            T.dir("d/sub"),
            T.file("d/sub/x", b"x"),
            *(T.whiteout(f"big/s{i:04}/f") for i in range(MANY)),
        ],
    ],
    "opaque-before-new-dir-many-whiteouts": [
        _big_lower(),
        [
            T.opaque("d"),
            T.dir("d"),
            T.dir("d/sub"),
            T.file("d/sub/x", b"x"),
            *(T.whiteout(f"big/s{i:04}/f") for i in range(MANY)),
        ],
    ],
    "implicit-parents-then-many-dirs": [
        _big_lower(),
        [
            T.file("new/a/b/f", b"1"),
            T.dir("new/a/b/c"),
            *(T.file(f"big/s{i:04}/g", b"g") for i in range(MANY)),
            T.file("new/a/late", b"2"),
        ],
    ],
}


def _umoci(layout: Path, out: Path) -> None:
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:t", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_flat_matches_umoci(tmp_path: Path, case: str) -> None:
    tars = [tar_bytes(layer) for layer in ORDER_CASES[case]]
    build_image(tmp_path / "layout", tars, tag="t", compression="gzip")
    _umoci(tmp_path / "layout", tmp_path / "umoci")
    ours = tmp_path / "ours"
    ours.mkdir()
    for index, tar in enumerate(tars):
        apply_layer(io.BytesIO(tar), ours, target=Target.FLAT, name=f"L{index}")
    assert_trees_equal(tmp_path / "umoci", ours, intended=INTENDED_FLAT_DIFFERENCES, mtimes=True)
