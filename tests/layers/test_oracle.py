"""The layer applier against an oracle: ``umoci raw unpack`` of the same image.

For every corpus image (tests/support/corpus.py):

- FLAT: our ``unpack_flat`` of the layout's blobs must give umoci's root file
  system, entry by entry, up to ``INTENDED_FLAT_DIFFERENCES``; once also with
  every blob streamed from a real registry.
- LAYERFS: each layer's directory must be what overlayfs expects of a lower
  directory, as ``layer_snapshot`` derives it from the tar on its own.
- Overlay: the layer directories mounted as one read-only overlayfs must show
  umoci's root file system (the strongest check: it is what podman and the
  CVMFS snapshotter will show to users).

Everything runs as root: owners, devices and trusted.* xattrs are part of the
comparison. umoci 0.4.7 cannot read zstd layers, so it unpacks a gzip twin of
such images (same diff_ids, hence the same tree).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import pytest

from support.corpus import CORPUS, CorpusImage, by_name
from support.oci import BuiltImage
from support.registry import RegistryServer
from support.tree import (
    INTENDED_FLAT_DIFFERENCES,
    IntendedDifference,
    Node,
    Snapshot,
    assert_trees_equal,
    layer_snapshot,
    snapshot,
)
from support.umoci import UmociOracle, run_tool
from unpacked.digest import Digest
from unpacked.errors import VerificationError
from unpacked.layers import Target, unpack_flat, unpack_layer
from unpacked.reference import Reference
from unpacked.registry import RegistryClient

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the oracle compares owners and devices: root"),
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed"),
]


def _lower_group_split(path: bytes, expected: Node | None, actual: Node | None) -> bool:
    # Names of one inode in umoci's tree may be split over several inodes in the
    # merged view, never joined: ``actual``'s group must lie inside ``expected``'s.
    if expected is None or actual is None:
        return False
    group = set(actual.hardlinks) or {path}
    return group <= set(expected.hardlinks)


INTENDED_OVERLAY_DIFFERENCES: tuple[IntendedDifference, ...] = (
    *INTENDED_FLAT_DIFFERENCES,
    IntendedDifference(
        name="lower-hard-link-copies",
        why=(
            "a hard link to a lower layer's file is a copy in layerfs (DESIGN.md section 2): "
            "overlayfs cannot share an inode across layers, so the merged view shows "
            "separate inodes where the flat tree has one"
        ),
        field="hardlinks",
        accepts=_lower_group_split,
    ),
)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> UmociOracle:
    return UmociOracle(tmp_path_factory.mktemp("oracle"))


def _layers(
    oracle: UmociOracle, built: BuiltImage, stack: contextlib.ExitStack
) -> list[tuple[BinaryIO, str, Digest]]:
    return [
        (
            stack.enter_context(oracle.blob(built, index).open("rb")),
            built.layer_media_types[index],
            Digest.parse(built.diff_ids[index]),
        )
        for index in range(len(built.layer_digests))
    ]


# --- FLAT ----------------------------------------------------------------------------


@pytest.mark.parametrize("image", CORPUS, ids=lambda image: image.name)
def test_flat_matches_umoci(oracle: UmociOracle, image: CorpusImage, tmp_path: Path) -> None:
    built = oracle.built(image)
    root = tmp_path / "rootfs"
    root.mkdir()
    with contextlib.ExitStack() as stack:
        reports = unpack_flat(_layers(oracle, built, stack), root)
    assert len(reports) == len(image.layers)
    assert all(report.whiteouts == "resolved" for report in reports)
    assert_trees_equal(oracle.rootfs(image), root, intended=INTENDED_FLAT_DIFFERENCES, mtimes=True)


def test_flat_reports_each_permission_fix(oracle: UmociOracle, tmp_path: Path) -> None:
    """The owner-access fix is the only mode change, and every one is reported."""
    image = by_name("basic")
    built = oracle.built(image)
    root = tmp_path / "rootfs"
    root.mkdir()
    with contextlib.ExitStack() as stack:
        reports = unpack_flat(_layers(oracle, built, stack), root)
    fixed = {path for report in reports for path, _, _ in report.permission_fixes}
    assert {"nobody-may-read", "exec-only", "readonly"} <= fixed
    expected, actual = snapshot(oracle.rootfs(image)), snapshot(root)
    widened = {path.decode() for path, node in actual.items() if node.mode != expected[path].mode}
    assert widened <= fixed


def test_flat_streamed_from_registry_matches_umoci(
    oracle: UmociOracle, registry: RegistryServer, push_image: object, tmp_path: Path
) -> None:
    """Blobs straight from a real registry: download, verify, decompress, apply, in one pass."""
    image = by_name("compressions")
    built = oracle.built(image)
    assert callable(push_image)
    push_image(built, "oracle/compressions:latest")
    reference = Reference(registry.host, "oracle/compressions", "latest")
    root = tmp_path / "rootfs"
    root.mkdir()
    with RegistryClient() as client:
        resolved = client.resolve_image(reference)
        assert [str(d.digest) for d in resolved.layers] == list(built.layer_digests)
        for descriptor, diff_id in zip(resolved.layers, resolved.config.diff_ids, strict=True):
            consume = functools.partial(
                unpack_layer,
                media_type=descriptor.media_type,
                diff_id=diff_id,
                root=root,
                target=Target.FLAT,
                name=str(descriptor.digest),
            )
            client.fetch_blob(reference, descriptor, consume)
    assert_trees_equal(oracle.rootfs(image), root, intended=INTENDED_FLAT_DIFFERENCES, mtimes=True)


def _wrong_config_diff_ids(built: BuiltImage, index: int) -> list[Digest]:
    """The config's diff_ids with the one of layer ``index`` replaced by another layer's."""
    config = json.loads(built.config_bytes)
    diff_ids = [Digest.parse(d) for d in config["rootfs"]["diff_ids"]]
    diff_ids[index] = Digest.of(b"not the content of this layer")
    return diff_ids


def test_flat_wrong_diff_id_is_a_verification_error_naming_the_layer(
    oracle: UmociOracle, tmp_path: Path
) -> None:
    built = oracle.built(by_name("compressions"))
    diff_ids = _wrong_config_diff_ids(built, 1)
    root = tmp_path / "rootfs"
    root.mkdir()
    with contextlib.ExitStack() as stack:
        layers = [
            (blob, media_type, diff_ids[index])
            for index, (blob, media_type, _) in enumerate(_layers(oracle, built, stack))
        ]
        with pytest.raises(VerificationError) as caught:
            unpack_flat(layers, root)
    message = str(caught.value)
    assert str(diff_ids[1]) in message
    assert built.diff_ids[1] in message, "the message should say what the layer really is"


def test_layer_wrong_diff_id_names_the_layer_given(oracle: UmociOracle, tmp_path: Path) -> None:
    built = oracle.built(by_name("compressions"))
    wrong = _wrong_config_diff_ids(built, 1)[1]
    with oracle.blob(built, 1).open("rb") as blob, pytest.raises(VerificationError) as caught:
        unpack_layer(
            blob,
            built.layer_media_types[1],
            wrong,
            tmp_path,
            target=Target.LAYERFS,
            name=built.layer_digests[1],
        )
    assert built.layer_digests[1] in str(caught.value)


# --- LAYERFS and the overlay mount -----------------------------------------------------


@dataclasses.dataclass
class LayerDirs:
    """Each layer of an image unpacked as LAYERFS, with its lower tree from umoci."""

    image: CorpusImage
    dirs: list[Path]


@pytest.fixture(scope="module")
def layerfs_cache() -> dict[str, LayerDirs]:
    return {}


def _layerfs(oracle: UmociOracle, image: CorpusImage, cache: dict[str, LayerDirs]) -> LayerDirs:
    if image.name in cache:
        return cache[image.name]
    built = oracle.built(image)
    dirs = []
    for index in range(len(image.layers)):
        root = oracle.workdir / "layerfs" / image.name / str(index)
        if root.exists():  # left over by a failed attempt
            shutil.rmtree(root)
        root.mkdir(parents=True)
        with oracle.blob(built, index).open("rb") as blob:
            report = unpack_layer(
                blob,
                built.layer_media_types[index],
                Digest.parse(built.diff_ids[index]),
                root,
                target=Target.LAYERFS,
                lower=oracle.lower(image, index),
                name=built.layer_digests[index],
            )
        assert report.whiteouts == "overlay", report.warnings
        dirs.append(root)
    cache[image.name] = LayerDirs(image, dirs)
    return cache[image.name]


@pytest.mark.parametrize("image", CORPUS, ids=lambda image: image.name)
def test_layerfs_is_what_overlayfs_expects(
    oracle: UmociOracle, image: CorpusImage, layerfs_cache: dict[str, LayerDirs]
) -> None:
    layers = _layerfs(oracle, image, layerfs_cache)
    for index, directory in enumerate(layers.dirs):
        lower_root = oracle.lower(image, index)
        lower: Snapshot = snapshot(lower_root, mtimes=True) if lower_root is not None else {}
        expected = layer_snapshot(image.layers[index], lower=lower)
        try:
            assert_trees_equal(expected, directory, intended=INTENDED_FLAT_DIFFERENCES, mtimes=True)
        except AssertionError as error:
            raise AssertionError(f"layer {index} of {image.name}: {error}") from None


def _overlay_unavailable(workdir: Path) -> str | None:
    """Why overlayfs cannot be mounted here, or None if a probe mount worked."""
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    for name in ("upper-probe", "lower-probe", "merged-probe"):
        (workdir / name).mkdir(exist_ok=True)
    try:
        os.setxattr(workdir / "upper-probe", "trusted.overlay.opaque", b"y")
    except OSError as error:
        return f"trusted.* xattrs unavailable on {workdir}: {error}"
    try:
        with _overlay([workdir / "lower-probe", workdir / "upper-probe"], workdir / "merged-probe"):
            return None
    except AssertionError as error:
        return f"probe mount failed: {error}"


@contextlib.contextmanager
def _overlay(layers: Sequence[Path], mountpoint: Path) -> Iterator[Path]:
    """Mount ``layers`` (base first) read-only at ``mountpoint``; unmount on the way out."""
    # Without an upper directory, overlayfs wants at least two lower ones.
    empty = mountpoint.parent / f"{mountpoint.name}-empty-base"
    empty.mkdir(exist_ok=True)
    lowerdir = ":".join(str(p) for p in [*reversed(layers), empty])
    mountpoint.mkdir(exist_ok=True)
    run_tool(
        ["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lowerdir}", str(mountpoint)]
    )
    try:
        yield mountpoint
    finally:
        run_tool(["umount", str(mountpoint)])


OVERLAY_DIVERGES = {
    "symlink-parents": (
        "an entry below a lower layer's symlink to a directory: the flat tree follows the "
        "symlink inside the root (as umoci does); its layerfs puts a directory in the "
        "symlink's place, which overlayfs shows instead of the symlink (as containerd does). "
        "Kept on purpose: a layer directory is shared by every image that uses the layer, so "
        "it must not depend on the layers below it in one particular image"
    ),
}


def _overlay_cases() -> list[object]:
    return [
        pytest.param(
            image, marks=pytest.mark.xfail(reason=OVERLAY_DIVERGES[image.name], strict=True)
        )
        if image.name in OVERLAY_DIVERGES
        else image
        for image in CORPUS
    ]


@pytest.mark.parametrize("image", _overlay_cases(), ids=lambda image: image.name)
def test_overlay_of_layerfs_matches_umoci(
    oracle: UmociOracle, image: CorpusImage, layerfs_cache: dict[str, LayerDirs], tmp_path: Path
) -> None:
    reason = _overlay_unavailable(tmp_path)
    if reason is not None:
        pytest.skip(reason)
    layers = _layerfs(oracle, image, layerfs_cache)
    with _overlay(layers.dirs, tmp_path / "merged") as merged:
        assert_trees_equal(
            oracle.rootfs(image), merged, intended=INTENDED_OVERLAY_DIFFERENCES, mtimes=True
        )
