"""A conversion asks its publisher (``capabilities``) instead of probing where it writes.

A ``dir:`` publisher that declares what a CVMFS one may (whiteouts as ``.wh.`` files,
no hard links across directories, scratch on another file system) must
get the same flat tree as a plain ``dir:`` conversion, with no file shared between the
flat tree and the layers, and layers with whiteouts in the declared form.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from support.corpus import by_name
from support.oci import BuiltImage
from support.registry import RegistryServer
from support.samples import SampleImage
from support.tree import Snapshot, assert_trees_equal, snapshot
from unpacked.convert import ConvertOptions, Outcome, convert_image
from unpacked.publish import (
    Capabilities,
    PrivateArea,
    Publisher,
    Transaction,
    WhiteoutForm,
    open_publisher,
)
from unpacked.reference import Reference
from unpacked.registry import RegistryClient

PushImage = Callable[..., SampleImage]
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="compares owners and devices")

DECLARED = Capabilities(
    whiteouts=WhiteoutForm.AUFS,
    hardlinks_across_directories=False,
    scratch_on_tree_filesystem=False,
)


class _DeclaredTransaction(Transaction):
    """A ``dir:`` transaction that reports other capabilities (and checks they are kept)."""

    def __init__(self, inner: Transaction, capabilities: Capabilities) -> None:
        self._inner = inner
        self._capabilities = capabilities
        self.renamed_into_scratch: list[str] = []

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def new_dir(self, path: PurePosixPath) -> Path:
        return self._inner.new_dir(path)

    def write_file(self, path: PurePosixPath, data: bytes) -> None:
        self._inner.write_file(path, data)

    def set_symlink(self, path: PurePosixPath, target: str) -> None:
        self._inner.set_symlink(path, target)

    def remove(self, path: PurePosixPath) -> None:
        self._inner.remove(path)

    def exists(self, path: PurePosixPath) -> bool:
        return self._inner.exists(path)

    def read_path(self, path: PurePosixPath) -> Path:
        return self._inner.read_path(path)

    def discard(self, path: Path) -> None:
        self._inner.discard(path)

    def scratch_dir(self) -> Path:
        return self._inner.scratch_dir()

    def write_ahead(self) -> None:
        self._inner.write_ahead()


class DeclaredPublisher(Publisher):
    """``dir:`` storage behind the capabilities another backend would declare."""

    def __init__(self, inner: Publisher, capabilities: Capabilities) -> None:
        self._inner = inner
        self._capabilities = capabilities
        self.spec = inner.spec
        self.root = inner.root

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @contextmanager
    def transaction(
        self, *, lease: PurePosixPath | None = None, lock_timeout: float = 600.0
    ) -> Iterator[Transaction]:
        with self._inner.transaction(lease=lease, lock_timeout=lock_timeout) as tx:
            yield _DeclaredTransaction(tx, self._capabilities)

    def locked(self, *, lock_timeout: float = 600.0) -> AbstractContextManager[None]:
        return self._inner.locked(lock_timeout=lock_timeout)

    def private_area(self) -> PrivateArea | None:
        return self._inner.private_area()


def _convert(reference: Reference, publisher: Publisher, **options: Any) -> Outcome:
    with RegistryClient() as client:
        result = convert_image(
            reference,
            client=client,
            publisher=publisher,
            options=ConvertOptions(**options),
            now=lambda: "2030-01-01T00:00:00Z",
        )
    return result.outcome


def _comparable(tree: Snapshot, since: int) -> Snapshot:
    """Without hard-link groups and the times of what the conversion itself wrote.

    Hard links between names of the image itself become copies too: CVMFS breaks every
    link between directories, so a declared publisher cannot keep those. The Apptainer
    entries (and their directories) take the time of each conversion.
    """
    return {
        path: dataclasses.replace(
            node,
            hardlinks=(),
            mtime=None if node.mtime is not None and node.mtime >= since else node.mtime,
        )
        for path, node in tree.items()
    }


def _inodes(root: Path) -> set[tuple[int, int]]:
    found = set()
    for directory, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(directory, name))
            found.add((st.st_dev, st.st_ino))
    return found


MODES = {"in-process": (1, False), "workers": (2, False), "layers-first": (1, True)}
"""(workers asked for, layers stored by an earlier conversion): the workers get the
whiteout form through the pool; stored layers are merged into a scratch lower tree."""


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", ["whiteouts", "links", "special", "metadata"])
def test_a_publisher_without_links_or_overlay_whiteouts_gets_the_same_flat_tree(
    registry: RegistryServer,
    push_image: PushImage,
    tmp_path: Path,
    name: str,
    mode: str,
) -> None:
    workers, layers_first = MODES[mode]
    since = time.time_ns() - 10**9  # file systems' clocks run on jiffies
    image = by_name(name)
    built: BuiltImage = image.build(tmp_path / "oci")
    push_image(built, f"declared/{name}:latest")
    reference = Reference(registry.host, f"declared/{name}", "latest")
    plain = open_publisher(f"dir:{tmp_path / 'plain'}")
    declared = DeclaredPublisher(open_publisher(f"dir:{tmp_path / 'declared'}"), DECLARED)
    assert _convert(reference, plain) is Outcome.ADDED
    if layers_first:  # the lower tree of a later layer is then built in scratch
        assert _convert(reference, declared, skip_flat=True) is Outcome.ADDED
    _convert(reference, declared, unpack_workers=workers)

    config = built.config_digest.removeprefix("sha256:")
    flat = PurePosixPath(".flat", config[:2], config)
    expected = _comparable(snapshot(plain.root / flat, mtimes=True), since)
    actual = _comparable(snapshot(declared.root / flat, mtimes=True), since)
    assert any(node.mtime is not None for node in expected.values())
    assert_trees_equal(expected, actual)

    layers = [
        declared.root / ".layers" / d.removeprefix("sha256:")[:2] / d.removeprefix("sha256:")
        for d in built.layer_digests
    ]
    layer_inodes = set().union(*(_inodes(layer / "layerfs") for layer in layers))
    assert not _inodes(declared.root / flat) & layer_inodes, "a flat file shares a layer's"
    for layer in layers:
        for directory, _, files in os.walk(layer / "layerfs"):
            for entry in files:
                mode = os.lstat(os.path.join(directory, entry)).st_mode
                assert not (
                    stat.S_ISCHR(mode) and os.lstat(os.path.join(directory, entry)).st_rdev == 0
                ), entry
        assert (
            b'"unpacked-whiteouts": "overlay"' not in (layer / ".metadata/layers.json").read_bytes()
        )
    if name == "whiteouts":
        upper = layers[1] / "layerfs"
        assert any(entry.startswith(".wh.") for entry in os.listdir(upper))
