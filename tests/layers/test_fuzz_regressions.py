"""The divergences the differential fuzzer found, minimised, as fixed examples.

Each case is a stack of layers compared by ``layer_stacks.check_stack``: our
FLAT tree against ``umoci raw unpack``, and (where a kernel overlay can be
mounted) the LAYERFS directories stacked by overlayfs against the FLAT tree.
The seed of the ``scripts/fuzz_layers.py`` run that found each is in its comment.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from layers.layer_stacks import (
    UMOCI_LINK_TO_ITSELF,
    UMOCI_MARKER_BELOW_SYMLINK_LOOP,
    Layer,
    below_lower_symlink,
    check_stack,
    links_to_itself,
    overlay_available,
    umoci_unpack,
)
from support.oci import TarEntry, build_image, tar_bytes
from unpacked.errors import LayerError
from unpacked.layers import Target, apply_layer

T = TarEntry

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci compares owners and devices: root"),
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed"),
]


def _stack(*layers: list[TarEntry]) -> tuple[Layer, ...]:
    return tuple(Layer(tuple(entries)) for entries in layers)


_LOWER = [T.dir("a"), T.file("a/old", b"x"), T.dir("a/sub", uid=1000, gid=1000), T.fifo("a/b")]

CASES: dict[str, tuple[Layer, ...]] = {
    # Seed 3444893083 (flat:presence, overlay:presence, flat:uid, flat:gid) and
    # 1557455653 (flat:hardlinks): a layer re-creates a directory, then whites it
    # out. OCI: the whiteout hides the lower directory's content, not the entry
    # of the same layer; FLAT kept the lower content (a/b, a/sub owned by 1000).
    "dir-then-whiteout": _stack(_LOWER, [T.dir("a", mode=0o700), T.whiteout("a")]),
    "dir-then-whiteout-then-child": _stack(
        _LOWER, [T.dir("a"), T.whiteout("a"), T.dir("a/sub/new")]
    ),
    "child-then-whiteout-of-parent": _stack(
        _LOWER, [T.fifo("a/new"), T.whiteout("a"), T.file("a/late", b"y")]
    ),
    "nested-dir-then-whiteout": _stack(
        [*_LOWER, T.file("a/sub/deep", b"z")], [T.dir("a/sub"), T.whiteout("a")]
    ),
    # Found while minimising those: in LAYERFS, a directory created implicitly
    # after a whiteout or an opaque marker hid the lower one took the lower
    # one's metadata (a/sub owned by 1000); FLAT and umoci create it anew.
    # Before the marker, it keeps the lower metadata everywhere.
    "child-then-opaque": _stack(_LOWER, [T.dir("a/sub/new"), T.opaque("a")]),
    "child-then-whiteout-of-ancestor": _stack(_LOWER, [T.dir("a/sub/new"), T.whiteout("a")]),
    "opaque-then-child-of-lower-dir": _stack(_LOWER, [T.opaque("a"), T.dir("a/sub/new")]),
    "whiteout-then-child": _stack(_LOWER, [T.whiteout("a/sub"), T.dir("a/sub/new")]),
    "child-then-whiteout": _stack(_LOWER, [T.dir("a/sub/new"), T.whiteout("a/sub")]),
    # Seed 422298165 (error:layerfs): an opaque marker below a lower file b
    # makes b a directory in the layer directory only (a FLAT tree keeps the
    # file); a hard link to b then hit that directory (EPERM) instead of
    # copying the lower file.
    "hard-link-to-lower-file-under-marker-parents": _stack(
        [T.file("b", b"y" * 600), T.dir("a"), T.file("e", b"e")],
        [T.opaque("b/c/d"), T.whiteout("e/f"), T.hardlink("a", "b"), T.hardlink("g", "e")],
    ),
    # Seed 422298165 again, once the link worked (overlay:presence): a layer
    # replaces a lower directory by a non-directory, then makes it a directory
    # again. FLAT has only the new directory; LAYERFS merged it with the lower one.
    "lower-dir-replaced-by-hard-link-then-dir": _stack(
        [T.file("b", b"y"), *_LOWER], [T.hardlink("a", "b"), T.dir("a")]
    ),
    "lower-dir-replaced-by-fifo-then-child": _stack(_LOWER, [T.fifo("a"), T.file("a/new", b"n")]),
    "lower-dir-replaced-by-file-then-dir": _stack(
        _LOWER, [T.file("a", b"f"), T.dir("a", mode=0o750), T.file("a/new", b"n")]
    ),
    # Seed 759152810 (error:layerfs, in the run after the fixes): a hard link to a
    # lower device or fifo; FLAT links it, LAYERFS refused to copy it.
    "hard-links-to-lower-device-and-fifo": _stack(
        [T.char("c", 1, 3, uid=1000, gid=1000), T.fifo("p", mode=0o640)],
        [T.hardlink("a", "c"), T.hardlink("q", "p")],
    ),
    "whiteout-then-dir": _stack(_LOWER, [T.whiteout("a"), T.dir("a", mode=0o700)]),
    # Seed 3600154219 (error:ours): the lower non-directory a/b survived the
    # whiteout of a, and a later entry through a symlink to /a/b then failed.
    "whiteout-of-recreated-dir-then-path-through-symlink": _stack(
        [T.fifo("a/b"), T.symlink("c", "/a/b")],
        [T.symlink("a/x", "a"), T.whiteout("a"), T.dir("c/b")],
    ),
}


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> bool:
    return overlay_available(tmp_path_factory.mktemp("overlay-probe"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_stack_matches_umoci_and_overlay(tmp_path: Path, case: str, overlay: bool) -> None:
    divergences, _ = check_stack(CASES[case], tmp_path, overlay=overlay)
    assert not divergences


HARD_LINKS_TO_DIRECTORIES: dict[str, list[list[TarEntry]]] = {
    "lower": [[T.dir("d")], [T.hardlink("x", "d")]],
    "same-layer": [[T.file("f")], [T.dir("d"), T.hardlink("x", "d")]],
}


@pytest.mark.parametrize("case", sorted(HARD_LINKS_TO_DIRECTORIES))
def test_hard_link_to_a_directory_is_refused_in_every_mode(tmp_path: Path, case: str) -> None:
    """Not a valid layer: a clear LayerError naming the link, FLAT and LAYERFS alike."""
    tars = [tar_bytes(layer) for layer in HARD_LINKS_TO_DIRECTORIES[case]]
    flat, below, layer = tmp_path / "flat", tmp_path / "below", tmp_path / "layer"
    for path in (flat, below, layer):
        path.mkdir()
    apply_layer(io.BytesIO(tars[0]), flat, target=Target.FLAT, name="L0")
    apply_layer(io.BytesIO(tars[0]), below, target=Target.FLAT, name="L0")
    with pytest.raises(LayerError, match="layer L1: hard link 'x' -> 'd'"):
        apply_layer(io.BytesIO(tars[1]), flat, target=Target.FLAT, name="L1")
    with pytest.raises(LayerError, match="layer L1: hard link 'x' -> 'd'"):
        apply_layer(io.BytesIO(tars[1]), layer, target=Target.LAYERFS, lower=below, name="L1")


def _refused_by_umoci_taken_by_us(
    stack: Sequence[Layer], tmp_path: Path, refusal: re.Pattern[str]
) -> Path:
    """The FLAT tree we make of ``stack``, after checking that umoci refuses it as expected."""
    build_image(tmp_path / "layout", [layer.tar() for layer in stack], tag="t", compression="gzip")
    theirs = umoci_unpack(tmp_path / "layout", tmp_path / "umoci")
    assert theirs is not None and refusal.search(theirs), theirs
    flat = tmp_path / "flat"
    flat.mkdir()
    for index, layer in enumerate(stack):
        apply_layer(io.BytesIO(layer.tar()), flat, target=Target.FLAT, name=f"L{index}")
    return flat


def test_whiteout_below_a_symlink_loop_hides_nothing(tmp_path: Path) -> None:
    """Seed 367368271 (error:umoci): umoci refuses it, we accept; the fuzzer skips it."""
    stack = _stack([T.symlink("a", "/a/b"), T.file("f")], [T.whiteout("a/x/c"), T.opaque("a/d")])
    flat = _refused_by_umoci_taken_by_us(stack, tmp_path, UMOCI_MARKER_BELOW_SYMLINK_LOOP)
    assert sorted(os.listdir(flat)) == ["a", "f"]
    assert os.readlink(flat / "a") == "/a/b"


def test_a_hard_link_to_a_symlink_counts_as_a_symlink_for_the_overlay_skip() -> None:
    """Seed 550399824: an entry below a lower hard link to a symlink is the known xfail."""
    stack = _stack([T.symlink("s", "a/b")], [T.hardlink("h", "s")], [T.file("h/x", b"x")])
    assert below_lower_symlink(stack)
    assert not below_lower_symlink(_stack([T.file("f")], [T.hardlink("h", "f")], [T.file("x")]))


def test_a_hard_link_to_itself_through_a_symlinked_parent(tmp_path: Path) -> None:
    """Seed 1282095868 (error:umoci): ``n -> a``, then ``n/b`` linking ``a/b``: we keep the
    file; umoci removes it and fails to link. The fuzzer recognises it and does not count it."""
    stack = _stack(
        [T.symlink("n", "a")],
        [T.file("a/b", b"content"), T.hardlink("n/b", "a/b")],
    )
    flat = _refused_by_umoci_taken_by_us(stack, tmp_path, UMOCI_LINK_TO_ITSELF)
    assert (flat / "a" / "b").read_bytes() == b"content"
    assert links_to_itself(stack, flat)
    assert not links_to_itself(_stack([T.file("a/b"), T.hardlink("c", "a/b")]), flat)
    assert check_stack(stack, tmp_path / "check", overlay=False) == ([], False)
