"""Faults end in a clear error and an exit code, never a traceback, and publish nothing.

- A full repository file system (a small tmpfs, as root): exit 9 naming the mount point,
  what the image needed and what was free, whether it filled up while downloading or
  while unpacking (in this process or in a worker).
- A layer that decompresses to more than ``--max-layer-size``: exit 8 naming the limit.
- Each fault of ``support.faultproxy`` in front of the real registry: the retry succeeds
  and the tree is right, or the error is clear and nothing is published.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from support.faultproxy import Fault, FaultProxy
from support.oci import TarEntry, build_image, tar_bytes
from support.registry import RegistryServer
from support.samples import SampleImage
from support.tree import assert_trees_equal
from unpacked import cli
from unpacked.layers import SizeLimit

PushImage = Callable[..., SampleImage]
AS_ROOT = os.geteuid() == 0
_TAGS = itertools.count()


def push_layers(
    push_image: PushImage,
    tmp_path: Path,
    layers: list[bytes],
    repo_tag: str,
    compression: str | list[str] = "gzip",
) -> SampleImage:
    built = build_image(
        tmp_path / f"oci-{next(_TAGS)}", layers, tag=f"t{next(_TAGS)}", compression=compression
    )
    return push_image(built, repo_tag)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def assert_nothing_published(root: Path) -> None:
    """No public link, no flat tree, no layer, no transaction left behind."""
    published = [
        path.relative_to(root)
        for path in root.rglob("*")
        if path.relative_to(root).parts[0] != ".unpacked"
        and path.name != ".cvmfscatalog"
        and (path.is_symlink() or not path.is_dir())
    ]
    assert published == []
    assert list(root.glob(".flat/*/*")) == []
    assert list(root.glob(".layers/*/*")) == []
    transactions = root / ".unpacked" / "transactions"
    assert not transactions.exists() or os.listdir(transactions) == []


def random_file(name: str, size: int, seed: int) -> TarEntry:
    return TarEntry.file(name, random.Random(seed).randbytes(size))


# --- a full file system ------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    if not AS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.parametrize(
    ("where", "workers"),
    [("download", "1"), ("unpack", "1"), ("unpack", "2")],
)
def test_a_full_file_system_is_exit_9_naming_it(  # noqa: PLR0917 - fixtures
    registry: RegistryServer,
    push_image: PushImage,
    tmp_path: Path,
    small_tmpfs: Path,
    capsys: pytest.CaptureFixture[str],
    where: str,
    workers: str,
) -> None:
    if where == "download":  # a blob bigger than the file system
        layers = [tar_bytes([random_file("big", 6 << 20, 1)]), tar_bytes([random_file("s", 9, 2)])]
        compression = "none"
    else:  # small blobs that unpack to more than the file system holds
        zeros = b"\0" * (3 << 20)
        layers = [
            tar_bytes([TarEntry.file("a", zeros), TarEntry.file("b", zeros)]),
            tar_bytes([TarEntry.file("c", zeros), TarEntry.file("d", zeros)]),
        ]
        compression = "gzip"
    repo_tag = f"faults/full-{where}:{workers}"
    push_layers(push_image, tmp_path, layers, repo_tag, compression)
    root = small_tmpfs / "repo"
    code, err = run(
        capsys,
        "convert-single-image",
        f"{registry.host}/{repo_tag}",
        "--repo",
        f"dir:{root}",
        "--unpack-workers",
        workers,
    )
    assert code == 9, err
    assert "Traceback" not in err
    assert f"file system ({small_tmpfs}, holding {root}) is full" in err
    assert "the image needs about" in err and "is free" in err
    assert "nothing was published" in err
    assert_nothing_published(root)


# --- a decompression bomb ----------------------------------------------------------


def test_the_default_layer_size_limit_is_relative_and_capped() -> None:
    limit = SizeLimit()
    assert limit.for_blob(1000) == 1 << 30, "at least 1 GiB"
    assert limit.for_blob(100 << 20) == 10_000 << 20, "100 times the compressed size"
    assert limit.for_blob(10 << 30) == 64 << 30, "at most 64 GiB"
    assert SizeLimit(fixed=5).for_blob(10 << 30) == 5


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_layer_decompressing_past_the_limit_is_a_layer_error(
    registry: RegistryServer,
    push_image: PushImage,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    workers: str,
) -> None:
    """32 MiB of zeros in a 32 KiB gzip, 4 MiB allowed: stopped at the limit, not at the
    end of the disk, with exit 8 naming the image, the layer and the limit."""
    bomb = tar_bytes([TarEntry.file("zeros", b"\0" * (32 << 20))])
    pushed = push_layers(
        push_image, tmp_path, [tar_bytes([random_file("base", 4096, 3)]), bomb], "faults/bomb:1"
    )
    root = tmp_path / "repo"
    reference = f"{registry.host}/faults/bomb:1"
    code, err = run(
        capsys,
        "convert-single-image",
        reference,
        "--repo",
        f"dir:{root}",
        "--unpack-workers",
        workers,
        "--max-layer-size",
        "4M",
    )
    assert code == 8, err
    assert f"layer {pushed.layer_digests[1]} (2/2 of {reference})" in err
    assert "decompresses to more than the limit of 4194304 bytes (--max-layer-size)" in err
    assert "Traceback" not in err
    assert_nothing_published(root)


# --- the fault proxy in front of the real registry ------------------------------------


@pytest.fixture(scope="module")
def two_layers(
    registry: RegistryServer, push_image: PushImage, tmp_path_factory: pytest.TempPathFactory
) -> tuple[SampleImage, Path]:
    """A two-layer image, and its repository converted straight from the registry."""
    layers = [
        tar_bytes([random_file(f"base/f{i}", 40_000, 10 + i) for i in range(3)]),
        tar_bytes([random_file("top/f", 30_000, 20), TarEntry.whiteout("base/f1")]),
    ]
    workdir = tmp_path_factory.mktemp("two-layers")
    pushed = push_layers(push_image, workdir, layers, "faults/two:1")
    expected = workdir / "expected"
    code = cli.main(
        ["convert-single-image", f"{registry.host}/faults/two:1", "--repo", f"dir:{expected}"]
    )
    assert code == 0
    return pushed, expected


def convert_through(
    proxy: FaultProxy, root: Path, capsys: pytest.CaptureFixture[str], *options: str
) -> tuple[int, str]:
    return run(
        capsys,
        "convert-single-image",
        f"{proxy.host}/faults/two:1",
        "--repo",
        f"dir:{root}",
        "--timeout",
        "2",
        *options,
    )


def assert_same_images(expected: Path, root: Path) -> None:
    """The same flat tree and layers as a conversion without faults."""
    flats = [path for path in expected.glob(".flat/*/*") if path.is_dir()]
    for tree in [*flats, *expected.glob(".layers/*/*/layerfs")]:
        assert_trees_equal(tree, root / tree.relative_to(expected))
    transactions = root / ".unpacked" / "transactions"
    assert not transactions.exists() or os.listdir(transactions) == []


_PASSING = [
    Fault.RESET,
    Fault.TRUNCATE,
    Fault.ERROR_5XX,
    Fault.TOO_MANY,
    Fault.SLOW,
    Fault.STALL,
    Fault.HANG,
]


# With workers, each fault hits a blob a worker follows as it downloads; without, one.
@pytest.mark.parametrize(
    ("fault", "workers"),
    [*((fault, "2") for fault in _PASSING), (Fault.RESET, "1")],
    ids=lambda value: value.value if isinstance(value, Fault) else f"workers-{value}",
)
def test_a_fault_that_passes_is_retried_and_the_image_is_right(  # noqa: PLR0917 - fixtures
    registry: RegistryServer,
    two_layers: tuple[SampleImage, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fault: Fault,
    workers: str,
) -> None:
    pushed, expected = two_layers
    root = tmp_path / "repo"
    first_layer = pushed.layer_digests[0]
    with FaultProxy(registry.url, fault, times=1, match=first_layer) as proxy:
        code, err = convert_through(proxy, root, capsys, "--unpack-workers", workers)
    assert code == 0, err
    assert proxy.injected == 1
    assert "Traceback" not in err
    # The links name the proxy's host: compare the trees they point at.
    assert_same_images(expected, root)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.FLIP, "expected sha256:"),
        (Fault.WRONG_LENGTH, "bytes, expected"),
    ],
    ids=lambda value: value.value if isinstance(value, Fault) else "",
)
def test_a_corrupt_blob_is_a_verification_error_and_publishes_nothing(  # noqa: PLR0917
    registry: RegistryServer,
    two_layers: tuple[SampleImage, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fault: Fault,
    message: str,
) -> None:
    pushed, _ = two_layers
    root = tmp_path / "repo"
    with FaultProxy(registry.url, fault, times=None) as proxy:
        code, err = convert_through(proxy, root, capsys)
    assert code == 7, err
    assert "Traceback" not in err
    assert message in err and any(d in err for d in (*pushed.layer_digests, pushed.config_digest))
    assert_nothing_published(root)


def test_once_a_layer_failed_for_good_the_others_are_not_retried(
    registry: RegistryServer,
    push_image: PushImage,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The top layer is corrupt (final), the base one hangs: the base's first attempt
    times out and is not tried again (it was, four more times: 59 s instead of 25 with
    every blob hanging, ``bench/faults.py``), and the error is the corrupt layer's."""
    layers = [tar_bytes([random_file("base", 5000, 30)]), tar_bytes([random_file("top", 50, 31)])]
    pushed = push_layers(push_image, tmp_path, layers, "faults/cancel:1")
    base, top = (digest.partition(":")[2] for digest in pushed.layer_digests)
    root = tmp_path / "repo"
    with (
        FaultProxy(registry.url, Fault.HANG, times=None, match=base) as hanging,
        FaultProxy(f"http://{hanging.host}", Fault.FLIP, times=None, match=top) as proxy,
    ):
        code, err = run(
            capsys,
            "convert-single-image",
            f"{proxy.host}/faults/cancel:1",
            "--repo",
            f"dir:{root}",
            "--timeout",
            "2",
        )
        assert code == 7, err
        assert f"expected sha256:{top}" in err
        assert hanging.injected == 1, "the hanging layer was not retried"
    assert_nothing_published(root)
