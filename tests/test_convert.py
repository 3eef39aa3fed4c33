"""``convert-single-image`` end to end: a real registry in, a ``dir:`` repository out.

- Every corpus image is pushed, converted, and its flat tree compared with
  ``umoci raw unpack`` of the same image (``INTENDED_CONVERT_DIFFERENCES`` only), and
  each of its layer directories with what overlayfs expects (``layer_snapshot``).
- The repository layout and its records (DESIGN.md sections 2 and 8), byte by byte.
- Re-running costs one HEAD request; shared layers are stored and unpacked once;
  moving tags; failures that leave the repository exactly as it was; the options;
  ``stats``; progress events.

The corpus comparisons need root (owners, devices, ``trusted.*`` xattrs) and umoci.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import os
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from support.corpus import CORPUS, CorpusImage, by_name, data
from support.oci import (
    OCI_CONFIG,
    OCI_MANIFEST,
    BuiltImage,
    TarEntry,
    build_image,
    tar_bytes,
    write_blob,
)
from support.oci import sha256 as sha256_digest
from support.registry import RegistryServer
from support.samples import SampleImage, SampleImages
from support.tree import (
    INTENDED_CONVERT_DIFFERENCES,
    INTENDED_FLAT_DIFFERENCES,
    LAYERFS_CATALOG_MARKER,
    OVERLAY_OPAQUE_XATTR,
    Kind,
    Snapshot,
    assert_trees_equal,
    layer_snapshot,
    snapshot,
)
from support.umoci import UmociOracle
from unpacked import cli
from unpacked.convert import (
    ConvertOptions,
    ConvertResult,
    LayerProgress,
    Outcome,
    convert_image,
    writers_for,
)
from unpacked.convert import _blobs as convert_blobs
from unpacked.convert import _job as convert_job
from unpacked.digest import Digest
from unpacked.errors import (
    ConfigError,
    LayerError,
    NotFoundError,
    UnpackWorkerDied,
    VerificationError,
)
from unpacked.events import Event, ImageStarted
from unpacked.layers import SpareWorkers, UnpackPool
from unpacked.layers import _pool as unpack_pool
from unpacked.platform import DEFAULT, Platform
from unpacked.publish import open_publisher
from unpacked.reference import Reference
from unpacked.registry import RegistryClient

PushImage = Callable[..., SampleImage]

AS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not AS_ROOT, reason="compares owners, devices, trusted.* xattrs")
needs_umoci = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")

FIRST = "2030-01-01T00:00:00Z"
SECOND = "2030-01-02T00:00:00Z"
THIRD = "2030-01-03T00:00:00Z"
PRIVATE = b".unpacked"


# --- helpers ------------------------------------------------------------------------


class CountingTransport(httpx.BaseTransport):
    """A real HTTP transport that remembers each request as (method, path)."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.requests: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()

    def blob_requests(self) -> list[str]:
        return [path.rpartition("/")[2] for _, path in self.requests if "/blobs/" in path]


def convert(
    reference: Reference,
    root: Path,
    *,
    now: str = FIRST,
    transport: CountingTransport | None = None,
    spare_workers: SpareWorkers | None = None,
    **options: Any,
) -> ConvertResult:
    """Convert ``reference`` into ``dir:root`` through a real client."""
    with RegistryClient(transport=transport) as client:
        return convert_image(
            reference,
            client=client,
            publisher=open_publisher(f"dir:{root}"),
            options=ConvertOptions(**options),
            now=lambda: now,
            spare_workers=spare_workers,
        )


def ref_of(registry: RegistryServer, repo_tag: str) -> Reference:
    repository, _, tag = repo_tag.rpartition(":")
    return Reference(registry.host, repository, tag)


def hexpart(digest: str | Digest) -> str:
    return str(digest).partition(":")[2]


def configs(*images: SampleImage) -> list[str]:
    """The images' config digests, sorted (as origin.json lists them)."""
    digests = [image.config_digest for image in images]
    assert all(digests), "a pushed image has a config"
    return sorted(d for d in digests if d)


def flat_dir(root: Path, config_digest: str | Digest | None) -> Path:
    assert config_digest is not None
    h = hexpart(config_digest)
    return root / ".flat" / h[:2] / h


def layer_dir(root: Path, layer_digest: str | Digest) -> Path:
    h = hexpart(layer_digest)
    return root / ".layers" / h[:2] / h


def metadata_dir(root: Path, reference: Reference) -> Path:
    return root / ".metadata" / reference.registry / f"{reference.repository}:{reference.tag}"


def public_link(root: Path, reference: Reference) -> Path:
    return root / reference.registry / f"{reference.repository}:{reference.tag}"


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def status_of(root: Path, reference: Reference) -> dict[str, Any]:
    value: dict[str, Any] = read_json(metadata_dir(root, reference) / "status.json")
    return value


def origin_of(root: Path, layer_digest: str) -> list[str]:
    value: list[str] = read_json(layer_dir(root, layer_digest) / ".metadata/origin.json")["origin"]
    return value


def removal_schedule(root: Path) -> list[dict[str, str]]:
    value: list[dict[str, str]] = read_json(root / ".metadata/remove-schedule.json")["images"]
    return value


def linked_flat(root: Path, reference: Reference) -> Path:
    """The flat tree the public link points at, as a path under ``root`` (never outside)."""
    link = public_link(root, reference)
    target = os.readlink(link)
    assert not os.path.isabs(target), f"public link {link} -> {target} is absolute"
    resolved = Path(os.path.normpath(link.parent / target))
    assert resolved.is_relative_to(root), f"{link} -> {target} leaves the repository"
    return resolved


def repository_state(root: Path) -> Snapshot:
    """What readers see (mtimes included), without the publisher's private directory."""
    kept: Snapshot = {}
    for path, node in snapshot(root, mtimes=True).items():
        if path == PRIVATE or path.startswith(PRIVATE + b"/"):
            continue
        kept[path] = node
    return kept


def assert_no_staging(root: Path) -> None:
    transactions = root / ".unpacked" / "transactions"
    assert not transactions.exists() or os.listdir(transactions) == [], os.listdir(transactions)


def files_layer(label: str, count: int, size: int, *, seed: int = 0) -> bytes:
    """A layer of ``count`` files of ``size`` bytes under ``label/``."""
    entries = [TarEntry.dir(label)]
    entries += [
        TarEntry.file(f"{label}/f{i}", data(seed * 1000 + i, size, compressible=0.2))
        for i in range(count)
    ]
    return tar_bytes(entries)


_LAYOUT_TAGS = itertools.count()


def build_and_push(
    push_image: PushImage, layout: Path, layers: list[bytes], repo_tag: str, **kw: Any
) -> SampleImage:
    """Build an image into ``layout`` under a tag of its own, and push it as ``repo_tag``."""
    built = build_image(layout, layers, tag=f"image-{next(_LAYOUT_TAGS)}", **kw)
    return push_image(built, repo_tag)


def count_cli_requests(monkeypatch: pytest.MonkeyPatch) -> CountingTransport:
    """Make every ``RegistryClient`` the command line creates use one counting transport."""
    counting = CountingTransport()
    original = RegistryClient.__init__

    def counted(self: RegistryClient, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **{**kwargs, "transport": counting})

    monkeypatch.setattr(RegistryClient, "__init__", counted)
    return counting


@dataclasses.dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


RunCli = Callable[..., CliRun]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """``run_cli(*argv)``: ``unpacked.cli.main`` in this process, with what it printed."""

    def run(*argv: str) -> CliRun:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return CliRun(code, captured.out, captured.err)

    return run


def storage_ids(diff_ids: tuple[str, ...]) -> list[str]:
    """containers/storage layer ids, computed here independently of the code under test."""
    ids: list[str] = []
    for diff_id in diff_ids:
        h = hexpart(diff_id)
        ids.append(hashlib.sha256(f"{ids[-1]}+{h}".encode()).hexdigest() if ids else h)
    return ids


# --- 1, 2: the corpus against umoci and overlayfs ----------------------------------


@dataclasses.dataclass
class Converted:
    image: CorpusImage
    built: BuiltImage
    root: Path
    result: ConvertResult

    @property
    def flat(self) -> Path:
        return flat_dir(self.root, self.built.config_digest)


@dataclasses.dataclass
class CorpusRepos:
    """Each corpus image pushed to the registry and converted into a repository of its own."""

    oracle: UmociOracle
    registry: RegistryServer
    push_image: PushImage
    workdir: Path
    unpack_workers: int
    layers_first: bool
    """Store the layers first (``skip_flat``), so that the flat tree is then merged from
    stored layers, all in one walk."""
    done: dict[str, Converted] = dataclasses.field(default_factory=dict)
    pools: list[int] = dataclasses.field(default_factory=list)
    """Worker counts of the ``UnpackPool``s the conversions started."""
    redone: list[str] = dataclasses.field(default_factory=list)
    """Layers a worker could not unpack before their lower layers were ready."""

    def converted(self, image: CorpusImage) -> Converted:
        if image.name not in self.done:
            built = self.oracle.built(image)
            self.push_image(built, f"corpus/{image.name}:latest")
            root = self.workdir / image.name
            reference = ref_of(self.registry, f"corpus/{image.name}:latest")
            if self.layers_first:
                convert(reference, root, skip_flat=True, unpack_workers=self.unpack_workers)
            result = convert(reference, root, unpack_workers=self.unpack_workers)
            if self.layers_first:  # the flat tree added to a published image
                assert (result.outcome, result.layers_unpacked) == (Outcome.UPDATED, ())
            else:
                assert result.outcome is Outcome.ADDED
            self.done[image.name] = Converted(image, built, root, result)
        return self.done[image.name]


UNPACK_MODES = {"in-process": (1, False), "workers": (2, False), "stored-layers": (1, True)}
"""Corpus modes: (workers asked for, layers stored by an earlier conversion)."""


@pytest.fixture(scope="module", params=list(UNPACK_MODES))
def corpus(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    registry: RegistryServer,
    push_image: PushImage,
) -> Iterator[CorpusRepos]:
    """Every corpus image converted, with its layers unpacked in order in this process, or
    by two worker processes ahead of order (asked for: used whatever the size), or stored
    by a ``skip_flat`` conversion first, the flat tree then merged from stored layers."""
    oracle = UmociOracle(tmp_path_factory.mktemp("umoci"))
    workers, layers_first = UNPACK_MODES[request.param]
    repos = CorpusRepos(
        oracle,
        registry,
        push_image,
        tmp_path_factory.mktemp(f"corpus-repos-{request.param}"),
        workers,
        layers_first,
    )

    class CountedPool(UnpackPool):
        def __init__(self, workers: int, spare: SpareWorkers | None = None) -> None:
            repos.pools.append(workers)
            super().__init__(workers, spare)

    class Redone(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "unpacking the layer again" in record.getMessage():
                repos.redone.append(record.getMessage())

    handler = Redone()
    job_logger = logging.getLogger(convert_job.__name__)
    job_logger.addHandler(handler)
    level = job_logger.level
    job_logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(convert_job, "UnpackPool", CountedPool)
            yield repos
    finally:
        job_logger.removeHandler(handler)
        job_logger.setLevel(level)


@needs_root
@needs_umoci
def test_workers_unpack_ahead_of_order_and_redo_what_needs_lower_layers(
    corpus: CorpusRepos,
) -> None:
    """The corpus really goes through the mode its tests are named after."""
    for image in CORPUS:
        corpus.converted(image)
    if corpus.unpack_workers == 1:
        assert corpus.pools == []
        return
    multi_layer = [image for image in CORPUS if len(set(image.layers)) > 1]  # distinct layers
    assert len(corpus.pools) >= len(multi_layer)
    # "links" hard-links files of its lower layer: its worker must stop and the
    # layer be unpacked again in order, with the lower tree.
    assert any("links" in redone and "usr-bin-busybox" in redone for redone in corpus.redone)


COMPOSED_DIVERGES = {
    "symlink-parents": (
        "the flat tree is composed from layer directories with overlay semantics: an entry "
        "written through a lower layer's directory symlink becomes a real directory that "
        "hides the symlink, as containerd, docker and podman show that image; umoci follows "
        "the symlink"
    ),
}


def _corpus_cases() -> list[Any]:
    return [
        pytest.param(
            image, marks=pytest.mark.xfail(reason=COMPOSED_DIVERGES[image.name], strict=True)
        )
        if image.name in COMPOSED_DIVERGES
        else image
        for image in CORPUS
    ]


@needs_root
@needs_umoci
@pytest.mark.parametrize("image", _corpus_cases(), ids=lambda image: image.name)
def test_flat_tree_matches_umoci(corpus: CorpusRepos, image: CorpusImage) -> None:
    converted = corpus.converted(image)
    assert_trees_equal(
        corpus.oracle.rootfs(image),
        converted.flat,
        intended=INTENDED_CONVERT_DIFFERENCES,
        mtimes=True,
    )


@needs_root
@needs_umoci
@pytest.mark.parametrize("image", CORPUS, ids=lambda image: image.name)
def test_layerfs_is_what_overlayfs_reads(corpus: CorpusRepos, image: CorpusImage) -> None:
    converted = corpus.converted(image)
    digests = converted.built.layer_digests
    seen: set[str] = set()
    for index, digest in enumerate(digests):
        if digest in seen:  # the same layer twice: stored once, as its first use made it
            continue
        seen.add(digest)
        lower_root = corpus.oracle.lower(image, index)
        lower: Snapshot = snapshot(lower_root, mtimes=True) if lower_root is not None else {}
        expected = layer_snapshot(image.layers[index], lower=lower)
        try:
            assert_trees_equal(
                expected,
                layer_dir(converted.root, digest) / "layerfs",
                intended=(*INTENDED_FLAT_DIFFERENCES, LAYERFS_CATALOG_MARKER),
                mtimes=True,
            )
        except AssertionError as error:
            raise AssertionError(f"layer {index} ({digest}) of {image.name}: {error}") from None


@needs_root
@needs_umoci
def test_whiteouts_are_stored_for_overlayfs(corpus: CorpusRepos) -> None:
    """As root, whiteouts are 0/0 character devices and opaque markers an xattr."""
    converted = corpus.converted(by_name("whiteouts"))
    upper = layer_dir(converted.root, converted.built.layer_digests[1])
    layerfs = upper / "layerfs"
    gone = os.lstat(layerfs / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == os.makedev(0, 0)
    assert os.getxattr(layerfs / "opq-before", OVERLAY_OPAQUE_XATTR) == b"y"
    assert not any(name.startswith(".wh.") for name in os.listdir(layerfs))
    records = read_json(upper / ".metadata/layers.json")
    assert [r["unpacked-whiteouts"] for r in records] == ["overlay"]
    flat = snapshot(converted.flat)
    assert not [p for p, n in flat.items() if n.kind is Kind.CHAR and n.rdev == (0, 0)]
    assert b"gone" in flat and flat[b"gone"].kind is Kind.DIR  # recreated by layer 3


def _two_layers_converted_here(
    registry: RegistryServer, push_image: PushImage, tmp_path: Path, repo_tag: str, *, seed: int
) -> tuple[Reference, Path, ConvertResult]:
    """A pushed image of two layers, and its conversion without workers into ``expected``."""
    layers = [files_layer("base", 5, 2_000, seed=seed), files_layer("top", 3, 2_000, seed=seed + 1)]
    build_and_push(push_image, tmp_path / "oci", layers, repo_tag)
    reference = ref_of(registry, repo_tag)
    expected = tmp_path / "expected"
    return reference, expected, convert(reference, expected, unpack_workers=1)


def _dead_worker(self: Any, arguments: tuple[object, ...], name: str) -> Any:
    raise UnpackWorkerDied(f"layer {name}: the process unpacking it died (test)")


def _no_workers(self: Any, workers: int, spare: Any = None) -> None:
    raise LayerError("cannot start a process to unpack layers: (test)")


@pytest.mark.parametrize(
    ("patched", "replacement", "message"),
    [
        ("_Worker.call", _dead_worker, "unpacking the layer in this process instead"),
        ("UnpackPool.__init__", _no_workers, "unpacking the layers in this process"),
    ],
    ids=["worker-died", "workers-cannot-start"],
)
def test_layers_are_unpacked_here_when_workers_fail(  # noqa: PLR0917 - fixtures
    registry: RegistryServer,
    push_image: PushImage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    patched: str,
    replacement: Callable[..., Any],
    message: str,
) -> None:
    """Workers are an optimisation: an image never fails because they did."""
    reference, expected, first = _two_layers_converted_here(
        registry, push_image, tmp_path, "convert/fallback:1", seed=71
    )
    layer_trees = [layer_dir(expected, digest) for digest in first.layers_unpacked]
    owner, attribute = patched.split(".")
    monkeypatch.setattr(getattr(unpack_pool, owner), attribute, replacement)
    root = tmp_path / "repo"
    with caplog.at_level(logging.WARNING, logger=convert_job.__name__):
        result = convert(reference, root, unpack_workers=2)
    assert result.outcome is Outcome.ADDED
    assert message in caplog.text
    # The same trees as unpacking in this process in the first place (apart from the
    # times of the directories the conversion itself creates).
    assert len(layer_trees) == 2
    for tree in layer_trees:
        assert_trees_equal(tree / "layerfs", root / tree.relative_to(expected) / "layerfs")
    flat = flat_dir(expected, first.image_id)
    assert_trees_equal(flat, root / flat.relative_to(expected))
    assert_no_staging(root)


def test_a_spare_worker_is_used_first_and_killed_when_not_needed(
    registry: RegistryServer, push_image: PushImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``convert-single-image`` starts a worker before it knows whether the image changed."""
    reference, expected, first = _two_layers_converted_here(
        registry, push_image, tmp_path, "convert/spare:1", seed=73
    )
    started: list[unpack_pool._Worker] = []
    real_init = unpack_pool._Worker.__init__

    def counted(worker: unpack_pool._Worker) -> None:
        real_init(worker)
        started.append(worker)

    monkeypatch.setattr(unpack_pool._Worker, "__init__", counted)
    root = tmp_path / "repo"
    with SpareWorkers(1) as spare:
        result = convert(reference, root, spare_workers=spare, unpack_workers=2)
        assert result.outcome is Outcome.ADDED
        assert spare.take(1) == [], "the pool adopted the spare"
    assert len(started) == 2, "one spare, one more for the second layer: no third"
    assert all(worker.process.returncode == 0 for worker in started), "both ended cleanly"
    flat = flat_dir(expected, first.image_id)
    assert_trees_equal(flat, root / flat.relative_to(expected))
    with SpareWorkers(1) as spare:
        result = convert(reference, root, spare_workers=spare, unpack_workers=2)
        assert result.outcome is Outcome.UNCHANGED
    assert len(started) == 3
    assert started[2].process.returncode == -signal.SIGKILL, "the unused spare is killed, reaped"
    assert_no_staging(root)


class CutFirstBlob(CountingTransport):
    """The first GET of blob ``digest`` stops after ``keep`` of its bytes (a pause, then a
    reset connection); every other request is served whole."""

    def __init__(self, digest: str, keep: float) -> None:
        super().__init__()
        self._path_end = f"/blobs/{digest}"
        self._keep = keep
        self.cut = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method != "GET" or not request.url.path.endswith(self._path_end) or self.cut:
            return response
        self.cut += 1
        body = response.read()
        stream = _PartThenReset(body[: int(len(body) * self._keep)])
        return httpx.Response(response.status_code, headers=response.headers, stream=stream)


class _PartThenReset(httpx.SyncByteStream):
    def __init__(self, part: bytes) -> None:
        self._part = part

    def __iter__(self) -> Iterator[bytes]:
        yield self._part
        time.sleep(0.5)  # the worker following the download reads it (all of it: done)
        raise httpx.ReadError("connection reset (test)")


@pytest.mark.parametrize("keep", [0.5, 1.0], ids=["midway", "after-the-last-byte"])
def test_a_restarted_download_unpacks_its_layer_again_from_the_finished_blob(  # noqa: PLR0917
    registry: RegistryServer,
    push_image: PushImage,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    keep: float,
) -> None:
    """A worker unpacks a layer as its blob downloads; when the download restarts, what
    it read is abandoned (even if it was the whole blob: its digest was never checked)
    and the layer is unpacked from the verified blob."""
    # The client hands a blob out in 64 KiB pieces, the last one at the end of the stream:
    # only a blob of whole pieces can be all on disk before a reset is noticed.
    base = tar_bytes([TarEntry.file("base/big", data(91, 320_000, compressible=0.5))])
    assert len(base) % (64 << 10) == 0
    layers = [base, files_layer("top", 3, 2_000, seed=92)]
    pushed = build_and_push(
        push_image, tmp_path / "oci", layers, "convert/restart:1", compression=["none", "gzip"]
    )
    reference = ref_of(registry, "convert/restart:1")
    expected = tmp_path / "expected"
    convert(reference, expected, unpack_workers=1)
    cutting = CutFirstBlob(pushed.layer_digests[0], keep)
    # Every byte goes to the file as it comes: the whole blob can be on disk, and read,
    # before the download learns that its connection was reset.
    monkeypatch.setattr(convert_blobs, "_CHUNK", 1)
    root = tmp_path / "repo"
    with caplog.at_level(logging.INFO, logger=convert_job.__name__):
        result = convert(reference, root, transport=cutting, unpack_workers=2)
    assert (result.outcome, cutting.cut) == (Outcome.ADDED, 1)
    assert cutting.blob_requests().count(pushed.layer_digests[0]) == 2
    assert "unpacking the layer again, from the finished blob" in caplog.text
    for digest in pushed.layer_digests:
        tree = layer_dir(expected, digest) / "layerfs"
        assert_trees_equal(tree, root / tree.relative_to(expected))
    flat = flat_dir(expected, pushed.config_digest)
    assert_trees_equal(flat, root / flat.relative_to(expected))
    assert_no_staging(root)


def test_a_worker_that_opens_an_abandoned_blob_late_unpacks_it_again(
    registry: RegistryServer,
    push_image: PushImage,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker busy elsewhere (or a loaded CPU) opens a blob's first file only after its
    download restarted: the file must still be there, abandoned, not removed under it
    (it was: ``FileNotFoundError`` and a traceback, 3 runs in 43 under load)."""
    layers = [files_layer("base", 4, 30_000, seed=93), files_layer("top", 3, 2_000, seed=94)]
    pushed = build_and_push(push_image, tmp_path / "oci", layers, "convert/late:1")
    reference = ref_of(registry, "convert/late:1")
    late = Path()
    call = unpack_pool.UnpackPool._call

    def call_after_the_restart(pool: UnpackPool, arguments: tuple[Any, ...], name: str) -> Any:
        nonlocal late
        blob = Path(str(arguments[0]))
        if blob.name.startswith(f"blob-{hexpart(pushed.layer_digests[0])}-"):
            late = blob
            deadline = time.monotonic() + 10
            while not blob.with_name(blob.name + ".abandoned").exists():
                assert time.monotonic() < deadline, "the download never restarted"
                time.sleep(0.01)
        return call(pool, arguments, name)

    monkeypatch.setattr(unpack_pool.UnpackPool, "_call", call_after_the_restart)
    cutting = CutFirstBlob(pushed.layer_digests[0], 0.0)
    root = tmp_path / "repo"
    with caplog.at_level(logging.INFO, logger=convert_job.__name__):
        result = convert(reference, root, transport=cutting, unpack_workers=2)
    assert (result.outcome, cutting.cut) == (Outcome.ADDED, 1)
    assert late.name, "a worker followed the first download"
    assert "unpacking the layer again, from the finished blob" in caplog.text
    assert not late.exists(), "the abandoned file is removed once its reader is done"
    expected = tmp_path / "expected"
    convert(reference, expected, unpack_workers=1)
    flat = flat_dir(expected, pushed.config_digest)
    assert_trees_equal(flat, root / flat.relative_to(expected))
    assert_no_staging(root)


# --- 3: layout and records ----------------------------------------------------------


@pytest.fixture(scope="module")
def three_layers() -> list[bytes]:
    return [
        files_layer("base", 5, 20_000, seed=301),
        tar_bytes([TarEntry.file("base/f0", b"replaced"), TarEntry.whiteout("base/f1")]),
        files_layer("top", 3, 5_000, seed=302),
    ]


PushThree = Callable[[str], SampleImage]


@pytest.fixture
def push_three(push_image: PushImage, three_layers: list[bytes], tmp_path: Path) -> PushThree:
    """``push_three("repo:tag")``: push the three-layer image under that name."""
    return functools.partial(build_and_push, push_image, tmp_path / "three", three_layers)


def _expected_markers(config_digest: str, layer_digests: tuple[str, ...]) -> set[str]:
    c = hexpart(config_digest)
    markers = {".flat", f".flat/{c[:2]}", f".flat/{c[:2]}/{c}", ".layers"}
    for digest in layer_digests:
        h = hexpart(digest)
        markers |= {f".layers/{h[:2]}", f".layers/{h[:2]}/{h}/layerfs"}
    return {f"{directory}/.cvmfscatalog" for directory in markers}


def _found_markers(root: Path) -> set[str]:
    return {
        str(path.relative_to(root))
        for path in root.rglob(".cvmfscatalog")
        if path.relative_to(root).parts[0] != ".unpacked"
    }


def test_layout_and_records(
    registry: RegistryServer, push_image: PushImage, three_layers: list[bytes], tmp_path: Path
) -> None:
    pushed = build_and_push(push_image, tmp_path / "oci", three_layers, "convert/layout:v1")
    reference = ref_of(registry, "convert/layout:v1")
    root = tmp_path / "repo"
    result = convert(reference, root, now=FIRST)
    assert pushed.config_digest is not None
    assert (result.outcome, str(result.digest)) == (Outcome.ADDED, pushed.digest)
    assert str(result.image_id) == pushed.config_digest
    assert [str(d) for d in result.layers_unpacked] == list(pushed.layer_digests)

    flat = flat_dir(root, pushed.config_digest)
    assert linked_flat(root, reference) == flat
    assert os.readlink(public_link(root, reference)).startswith("../")
    assert (flat / "top/f2").is_file() and not (flat / "base/f1").exists()
    assert (flat / "base/f0").read_bytes() == b"replaced"

    meta = metadata_dir(root, reference)
    assert (meta / "manifest.json").read_bytes() == pushed.manifest_bytes
    assert status_of(root, reference) == {
        "reference": str(reference),
        "digest": pushed.digest,
        "mediaType": OCI_MANIFEST,
        "manifestDigest": pushed.digest,
        "imageId": pushed.config_digest,
        "platform": "linux/amd64",
        "lastCheck": FIRST,
        "lastChange": FIRST,
        "lastError": None,
    }
    ids = storage_ids(pushed.diff_ids)
    for index, digest in enumerate(pushed.layer_digests):
        assert origin_of(root, digest) == [pushed.config_digest]
        assert read_json(layer_dir(root, digest) / ".metadata/layers.json") == [
            {
                "id": ids[index],
                "created": FIRST,
                "compressed-diff-digest": digest,
                "diff-digest": pushed.diff_ids[index],
                "diff-size": len(three_layers[index]),
                "unpacked-whiteouts": "overlay" if AS_ROOT else "wh-files",
            }
        ]
    assert _found_markers(root) == _expected_markers(pushed.config_digest, pushed.layer_digests)
    assert_no_staging(root)


def test_origin_json_is_sorted_without_duplicates(
    registry: RegistryServer, push_image: PushImage, tmp_path: Path
) -> None:
    """Three images (two tags of one, and another) on one layer: each config digest once."""
    shared = files_layer("shared", 2, 1_000, seed=311)
    one = build_and_push(push_image, tmp_path / "oci", [shared], "convert/origins:one")
    two = build_and_push(
        push_image,
        tmp_path / "oci",
        [shared, tar_bytes([TarEntry.file("two", b"2")])],
        "convert/origins:two",
    )
    push_image(one.built, "convert/origins:alias")
    root = tmp_path / "repo"
    for tag in ("two", "one", "alias"):
        convert(ref_of(registry, f"convert/origins:{tag}"), root)
    assert origin_of(root, one.layer_digests[0]) == configs(one, two)


# --- 4: a second run costs one HEAD request -----------------------------------------


def test_unchanged_image_costs_one_head_request(
    registry: RegistryServer, push_image: PushImage, three_layers: list[bytes], tmp_path: Path
) -> None:
    pushed = build_and_push(push_image, tmp_path / "oci", three_layers, "convert/again:v1")
    reference = ref_of(registry, "convert/again:v1")
    root = tmp_path / "repo"
    convert(reference, root, now=FIRST)
    before = repository_state(root)

    counting = CountingTransport()
    result = convert(reference, root, now=SECOND, transport=counting)
    assert counting.requests == [("HEAD", "/v2/convert/again/manifests/v1")]
    assert result.outcome is Outcome.UNCHANGED
    assert (str(result.digest), str(result.image_id)) == (pushed.digest, pushed.config_digest)
    assert (result.layers_unpacked, result.layers_reused, result.bytes_downloaded) == ((), (), 0)
    status = status_of(root, reference)
    assert (status["lastCheck"], status["lastChange"]) == (SECOND, FIRST)

    # Only status.json changed (and the times of its directory).
    after = repository_state(root)
    status_path = os.fsencode(metadata_dir(root, reference).relative_to(root) / "status.json")
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    assert changed <= {status_path, os.path.dirname(status_path)}
    assert status_path in changed
    assert_no_staging(root)


def test_unchanged_image_via_cli_json(
    registry: RegistryServer,
    push_three: PushThree,
    tmp_path: Path,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pushed = push_three("convert/again-cli:v1")
    argv = ["convert-single-image", f"{registry.host}/convert/again-cli:v1"]
    argv += ["--repo", f"dir:{tmp_path / 'repo'}", "--json"]
    run = run_cli(*argv)
    assert run.code == cli.EXIT_OK, run.err
    first = run.json
    assert first["outcome"] == "added"
    assert first["layersUnpacked"] == list(pushed.layer_digests)

    counting = count_cli_requests(monkeypatch)
    run = run_cli(*argv)
    assert run.code == cli.EXIT_OK, run.err
    second = run.json
    assert counting.requests == [("HEAD", "/v2/convert/again-cli/manifests/v1")]
    assert second["outcome"] == "unchanged"
    assert (second["digest"], second["imageId"]) == (pushed.digest, pushed.config_digest)
    assert (second["layersUnpacked"], second["bytesDownloaded"]) == ([], 0)
    assert second["publicLink"] == f"{registry.host}/convert/again-cli:v1"


# --- 5: shared layers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_pair(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, push_image: PushImage
) -> tuple[SampleImage, SampleImage, list[list[bytes]]]:
    """Two images sharing their two lower layers (about 1 MiB), different top layers."""
    layout = tmp_path_factory.mktemp("shared") / "oci"
    base = [files_layer("base", 4, 200_000, seed=501), files_layer("more", 2, 100_000, seed=502)]
    first = [*base, files_layer("first", 1, 30_000, seed=503)]
    second = [*base, files_layer("second", 1, 30_000, seed=504)]
    one = build_and_push(push_image, layout, first, "convert/shared-a:v1")
    two = build_and_push(push_image, layout, second, "convert/shared-b:v1")
    return one, two, [first, second]


def _regular_file_bytes(layers: list[bytes]) -> int:
    """The content of the images' regular files, each distinct layer counted once."""
    total = 0
    for layer in set(layers):
        for node in layer_snapshot(layer).values():
            total += node.size or 0
    return total


def test_shared_layers_are_stored_and_unpacked_once(
    registry: RegistryServer,
    shared_pair: tuple[SampleImage, SampleImage, list[list[bytes]]],
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    one, two, layers = shared_pair
    root = tmp_path / "repo"
    first = convert(ref_of(registry, "convert/shared-a:v1"), root)
    counting = CountingTransport()
    second = convert(ref_of(registry, "convert/shared-b:v1"), root, transport=counting)

    shared = one.layer_digests[:2]
    assert [str(d) for d in first.layers_unpacked] == list(one.layer_digests)
    assert [str(d) for d in second.layers_reused] == list(shared)
    assert [str(d) for d in second.layers_unpacked] == [two.layer_digests[2]]
    assert set(counting.blob_requests()) == {two.config_digest, two.layer_digests[2]}
    assert second.bytes_downloaded == two.layer_sizes[2]
    assert len(list((root / ".layers").glob("*/*/layerfs"))) == 4

    both = configs(one, two)
    for digest in shared:
        assert origin_of(root, digest) == both
    assert origin_of(root, one.layer_digests[2]) == [one.config_digest]
    assert origin_of(root, two.layer_digests[2]) == [two.config_digest]

    flat_one, flat_two = flat_dir(root, one.config_digest), flat_dir(root, two.config_digest)
    for name in ("base/f0", "base/f3", "more/f1"):
        inode = os.lstat(
            layer_dir(root, shared[0 if name.startswith("base") else 1]) / "layerfs" / name
        )
        assert os.lstat(flat_one / name).st_ino == inode.st_ino, name
        assert os.lstat(flat_two / name).st_ino == inode.st_ino, name

    run = run_cli("stats", "--repo", f"dir:{root}", "--json")
    assert run.code == cli.EXIT_OK, run.err
    stats = run.json
    content = _regular_file_bytes([*layers[0], *layers[1]])
    assert content <= stats["bytes"] <= 1.1 * content, (stats["bytes"], content)


# --- 6: moving tags -----------------------------------------------------------------


def test_moved_tag_is_updated_and_the_old_tree_kept(
    registry: RegistryServer, push_image: PushImage, tmp_path: Path
) -> None:
    layout = tmp_path / "oci"
    base = files_layer("base", 3, 10_000, seed=601)
    v1 = build_and_push(
        push_image, layout, [base, tar_bytes([TarEntry.file("v", b"1")])], "convert/moving:latest"
    )
    reference = ref_of(registry, "convert/moving:latest")
    root = tmp_path / "repo"
    assert convert(reference, root, now=FIRST).outcome is Outcome.ADDED

    v2 = build_and_push(
        push_image, layout, [base, tar_bytes([TarEntry.file("v", b"2")])], "convert/moving:latest"
    )
    result = convert(reference, root, now=SECOND)
    assert (result.outcome, str(result.digest)) == (Outcome.UPDATED, v2.digest)
    assert [str(d) for d in result.layers_reused] == [v2.layer_digests[0]]
    assert linked_flat(root, reference) == flat_dir(root, v2.config_digest)
    assert (flat_dir(root, v2.config_digest) / "v").read_bytes() == b"2"
    assert (flat_dir(root, v1.config_digest) / "v").read_bytes() == b"1"  # GC comes later
    status = status_of(root, reference)
    assert (status["digest"], status["imageId"]) == (v2.digest, v2.config_digest)
    assert (status["lastCheck"], status["lastChange"]) == (SECOND, SECOND)
    assert (metadata_dir(root, reference) / "manifest.json").read_bytes() == v2.manifest_bytes
    assert removal_schedule(root) == [
        {"imageId": v1.config_digest, "reference": str(reference), "unlinked": SECOND}
    ]

    # Back to v1, whose tree and layers are all there: manifests and config, no layer.
    assert v1.built is not None
    push_image(v1.built, "convert/moving:latest")
    counting = CountingTransport()
    back = convert(reference, root, now=THIRD, transport=counting)
    assert (back.outcome, str(back.digest), back.layers_unpacked) == (
        Outcome.UPDATED,
        v1.digest,
        (),
    )
    assert counting.blob_requests() == [v1.config_digest]
    assert linked_flat(root, reference) == flat_dir(root, v1.config_digest)
    assert status_of(root, reference)["lastChange"] == THIRD
    assert removal_schedule(root) == [
        {"imageId": v2.config_digest, "reference": str(reference), "unlinked": THIRD}
    ]
    assert_no_staging(root)


# --- 7: failures leave nothing ------------------------------------------------------


def _with_wrong_diff_id(built: BuiltImage, index: int, tag: str) -> BuiltImage:
    """``built`` with a config whose diff_id of layer ``index`` is wrong, as a new tag."""
    config = json.loads(built.config_bytes)
    config["rootfs"]["diff_ids"][index] = sha256_digest(b"not the content of this layer")
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = json.loads(built.manifest_bytes)
    manifest["config"] = {
        "mediaType": OCI_CONFIG,
        "digest": write_blob(built.layout, config_bytes),
        "size": len(config_bytes),
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = write_blob(built.layout, manifest_bytes)
    index_path = built.layout / "index.json"
    oci_index = json.loads(index_path.read_bytes())
    oci_index["manifests"].append(
        {
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    index_path.write_bytes(json.dumps(oci_index).encode())
    return dataclasses.replace(
        built,
        tag=tag,
        manifest_digest=manifest_digest,
        manifest_bytes=manifest_bytes,
        config_digest=manifest["config"]["digest"],
        config_bytes=config_bytes,
        diff_ids=tuple(config["rootfs"]["diff_ids"]),
    )


@pytest.fixture
def published(
    registry: RegistryServer, push_image: PushImage, tmp_path: Path
) -> Iterator[tuple[Reference, Path]]:
    """A repository with one good image published under ``convert/failing:<test>``."""
    name = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    reference = ref_of(registry, f"convert/failing:{name}")
    build_and_push(
        push_image,
        tmp_path / "oci",
        [files_layer("good", 3, 5_000, seed=701)],
        f"convert/failing:{name}",
    )
    root = tmp_path / "repo"
    convert(reference, root)
    yield reference, root


def test_wrong_diff_id_is_a_verification_error_and_changes_nothing(
    push_image: PushImage, published: tuple[Reference, Path], tmp_path: Path
) -> None:
    reference, root = published
    layers = [files_layer("bad", 2, 5_000, seed=702), files_layer("bad2", 2, 5_000, seed=703)]
    good = build_image(tmp_path / "bad-oci", layers, tag="good")
    bad = _with_wrong_diff_id(good, 1, "bad")
    push_image(bad, f"{reference.repository}:{reference.tag}")
    before = repository_state(root)
    with pytest.raises(VerificationError) as caught:
        convert(reference, root, now=SECOND)
    message = str(caught.value)
    assert bad.layer_digests[1] in message, message
    assert bad.diff_ids[1] in message, message
    assert_trees_equal(before, repository_state(root), mtimes=True)
    assert_no_staging(root)


def test_missing_blob_is_not_found_and_changes_nothing(
    registry: RegistryServer,
    push_image: PushImage,
    published: tuple[Reference, Path],
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    reference, root = published
    # Content unique to this test: the blob deleted below belongs to no other image.
    unique = tar_bytes([TarEntry.file("unique", os.urandom(4096))])
    layers = [files_layer("kept", 2, 5_000, seed=704), unique]
    pushed = build_and_push(
        push_image, tmp_path / "missing-oci", layers, f"{reference.repository}:{reference.tag}"
    )
    registry.blob_path(pushed.layer_digests[1]).unlink()
    before = repository_state(root)
    with pytest.raises(NotFoundError) as caught:
        convert(reference, root, now=SECOND)
    assert pushed.layer_digests[1] in str(caught.value)
    assert_trees_equal(before, repository_state(root), mtimes=True)
    assert_no_staging(root)

    # The command line says the same, and notes the error in the published image's status.
    target = os.readlink(public_link(root, reference))
    argv = ["convert-single-image", str(reference), "--repo", f"dir:{root}"]
    run = run_cli(*argv)
    assert run.code == cli.EXIT_NOT_FOUND
    assert pushed.layer_digests[1] in run.err
    status = status_of(root, reference)
    assert status["lastError"] is not None and pushed.layer_digests[1] in status["lastError"]
    assert status["digest"] != pushed.digest
    assert os.readlink(public_link(root, reference)) == target
    assert_no_staging(root)


def test_cli_bad_reference_and_unknown_tag_change_nothing(
    registry: RegistryServer, published: tuple[Reference, Path], run_cli: RunCli
) -> None:
    reference, root = published
    before = repository_state(root)
    bad = f"{registry.host}/Upper/Case:tag"
    run = run_cli("convert-single-image", bad, "--repo", f"dir:{root}")
    assert run.code == cli.EXIT_INPUT
    assert bad in run.err
    unknown = f"{registry.host}/{reference.repository}:no-such-tag"
    argv = ["convert-single-image", unknown, "--repo", f"dir:{root}"]
    run = run_cli(*argv)
    assert run.code == cli.EXIT_NOT_FOUND
    err = run.err
    assert f"{reference.repository}:no-such-tag" in err, err
    assert_trees_equal(before, repository_state(root), mtimes=True)
    assert_no_staging(root)
    assert not (root / registry.host / f"{reference.repository}:no-such-tag").exists()


# --- the same layer twice in one image ----------------------------------------------


def _records_by_id(root: Path, layer_digest: str) -> dict[str, dict[str, Any]]:
    records = read_json(layer_dir(root, layer_digest) / ".metadata/layers.json")
    ids = [record["id"] for record in records]
    assert len(ids) == len(set(ids)), f"duplicate layer ids in {layer_digest}: {ids}"
    return {record["id"]: record for record in records}


def _expected_records(image: SampleImage, layers: list[bytes]) -> dict[str, dict[str, Any]]:
    """Each layer digest's podman records for ``image`` (one per position in the image)."""
    expected: dict[str, dict[str, Any]] = {}
    for index, layer_id in enumerate(storage_ids(image.diff_ids)):
        expected.setdefault(image.layer_digests[index], {})[layer_id] = {
            "id": layer_id,
            "compressed-diff-digest": image.layer_digests[index],
            "diff-digest": image.diff_ids[index],
            "diff-size": len(layers[index]),
        }
    return expected


def _assert_records(root: Path, expected: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Each layer's layers.json has exactly the expected records (all problems reported)."""
    problems = []
    for digest, records in expected.items():
        stored = _records_by_id(root, digest)
        if set(stored) != set(records):
            problems.append(f"{digest}: ids {sorted(stored)}, expected {sorted(records)}")
        for layer_id in records.keys() & stored.keys():
            mine = {key: stored[layer_id][key] for key in records[layer_id]}
            if mine != records[layer_id]:
                problems.append(f"{digest}: record {mine}, expected {records[layer_id]}")
    assert not problems, "\n".join(problems)


def _merged(*expectations: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    merged: dict[str, dict[str, dict[str, Any]]] = {}
    for expected in expectations:
        for digest, records in expected.items():
            merged.setdefault(digest, {}).update(records)
    return merged


EMPTY_LAYER = tar_bytes([])
"""Empty layers repeat in real images (``ENV``, ``LABEL`` steps of older builders)."""


def test_the_same_new_layer_twice_in_one_image(
    registry: RegistryServer, push_image: PushImage, tmp_path: Path
) -> None:
    """One layer directory, unpacked once, with a podman record for each position."""
    layers = [
        files_layer("a", 2, 1_000, seed=801),
        EMPTY_LAYER,
        tar_bytes([TarEntry.file("a/f0", b"replaced")]),
        EMPTY_LAYER,
    ]
    twice = build_and_push(push_image, tmp_path / "oci", layers, "convert/twice:new")
    assert twice.layer_digests[1] == twice.layer_digests[3]
    root = tmp_path / "repo"
    result = convert(ref_of(registry, "convert/twice:new"), root)
    assert [str(d) for d in result.layers_unpacked] == list(twice.layer_digests[:3])
    assert (flat_dir(root, twice.config_digest) / "a/f0").read_bytes() == b"replaced"
    _assert_records(root, _merged(_expected_records(twice, layers)))
    assert origin_of(root, twice.layer_digests[1]) == [twice.config_digest]


def test_the_same_layer_twice_with_skip_layers(
    registry: RegistryServer, push_image: PushImage, tmp_path: Path
) -> None:
    """Flat only: the blob is downloaded once and applied at both positions."""
    layers = [
        files_layer("a", 2, 1_000, seed=803),
        tar_bytes([TarEntry.file("marker", b"first")]),
        tar_bytes([TarEntry.file("marker", b"second")]),
        tar_bytes([TarEntry.file("marker", b"first")]),
    ]
    twice = build_and_push(push_image, tmp_path / "oci", layers, "convert/twice-flat:1")
    assert twice.layer_digests[1] == twice.layer_digests[3]
    root = tmp_path / "repo"
    counting = CountingTransport()
    convert(ref_of(registry, "convert/twice-flat:1"), root, transport=counting, skip_layers=True)
    assert sorted(counting.blob_requests()) == sorted({*configs(twice), *twice.layer_digests})
    assert (flat_dir(root, twice.config_digest) / "marker").read_bytes() == b"first"


def test_stored_layers_in_new_positions(
    registry: RegistryServer, push_image: PushImage, tmp_path: Path
) -> None:
    """Layers the repository has, used again at other positions (and one of them twice)."""
    a = files_layer("a", 2, 1_000, seed=802)
    b = tar_bytes([TarEntry.file("a/f0", b"replaced")])
    first_layers, second_layers = [a, EMPTY_LAYER, b], [b, EMPTY_LAYER, a, EMPTY_LAYER]
    first = build_and_push(push_image, tmp_path / "oci", first_layers, "convert/again-twice:1")
    second = build_and_push(push_image, tmp_path / "oci", second_layers, "convert/again-twice:2")
    root = tmp_path / "repo"
    convert(ref_of(registry, "convert/again-twice:1"), root)
    result = convert(ref_of(registry, "convert/again-twice:2"), root)
    assert result.layers_unpacked == ()
    original = data(802 * 1000, 1_000, compressible=0.2)  # files_layer's a/f0
    assert (flat_dir(root, second.config_digest) / "a/f0").read_bytes() == original
    _assert_records(
        root,
        _merged(_expected_records(first, first_layers), _expected_records(second, second_layers)),
    )
    both = configs(first, second)
    assert all(origin_of(root, digest) == both for digest in first.layer_digests)
    reused = [str(d) for d in result.layers_reused]
    assert sorted(reused) == sorted(set(first.layer_digests)), "each stored layer once"


# --- 8: options ---------------------------------------------------------------------


def test_skip_layers_builds_the_flat_tree_directly(
    registry: RegistryServer,
    push_image: PushImage,
    three_layers: list[bytes],
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    pushed = build_and_push(push_image, tmp_path / "oci", three_layers, "convert/skip:v1")
    root, full = tmp_path / "repo", tmp_path / "full"
    argv = ["convert-single-image", f"{registry.host}/convert/skip:v1", "--json"]
    run = run_cli(*argv, "--repo", f"dir:{root}", "--skip-layers")
    assert run.code == cli.EXIT_OK, run.err
    result = run.json
    assert (result["outcome"], result["layersUnpacked"]) == ("added", [])
    assert not (root / ".layers").exists()
    reference = ref_of(registry, "convert/skip:v1")
    assert linked_flat(root, reference) == flat_dir(root, pushed.config_digest)
    convert(reference, full)
    assert_trees_equal(flat_dir(full, pushed.config_digest), flat_dir(root, pushed.config_digest))

    assert run_cli(*argv, "--repo", f"dir:{root}", "--skip-layers").json["outcome"] == "unchanged"


def test_skip_flat_stores_layers_only(
    registry: RegistryServer,
    push_image: PushImage,
    three_layers: list[bytes],
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    pushed = build_and_push(push_image, tmp_path / "oci", three_layers, "convert/skip-flat:v1")
    reference = ref_of(registry, "convert/skip-flat:v1")
    root = tmp_path / "repo"
    argv = ["convert-single-image", str(reference), "--json", "--repo", f"dir:{root}"]
    run = run_cli(*argv, "--skip-flat")
    assert run.code == cli.EXIT_OK, run.err
    result = run.json
    assert (result["outcome"], result["publicLink"]) == ("added", None)
    assert result["layersUnpacked"] == list(pushed.layer_digests)
    assert not (root / ".flat").exists()
    assert not os.path.lexists(public_link(root, reference))
    for digest in pushed.layer_digests:
        assert (layer_dir(root, digest) / "layerfs").is_dir()
        assert origin_of(root, digest) == [pushed.config_digest]
    assert status_of(root, reference)["digest"] == pushed.digest

    assert run_cli(*argv, "--skip-flat").json["outcome"] == "unchanged"
    # A full conversion afterwards adds the flat tree from the stored layers.
    counting = CountingTransport()
    full = convert(reference, root, transport=counting)
    assert (full.layers_unpacked, [str(d) for d in full.layers_reused]) == (
        (),
        list(pushed.layer_digests),
    )
    assert counting.blob_requests() == [pushed.config_digest]
    assert linked_flat(root, reference) == flat_dir(root, pushed.config_digest)


def test_skip_flat_and_layers_together_is_an_input_error(
    registry: RegistryServer, tmp_path: Path, run_cli: RunCli
) -> None:
    argv = ["convert-single-image", f"{registry.host}/convert/nothing:v1"]
    argv += ["--repo", f"dir:{tmp_path / 'repo'}", "--skip-flat", "--skip-layers"]
    run = run_cli(*argv)
    assert run.code == cli.EXIT_INPUT
    err = run.err
    assert "--skip-flat" in err and "--skip-layers" in err and "convert/nothing:v1" in err
    with pytest.raises(ConfigError):
        convert(
            ref_of(registry, "convert/nothing:v1"),
            tmp_path / "repo",
            skip_flat=True,
            skip_layers=True,
        )


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (ConvertOptions(), ["layers", "flat", "metadata"]),
        (ConvertOptions(skip_flat=True), ["layers", "metadata"]),
        (ConvertOptions(skip_layers=True), ["flat", "metadata"]),
    ],
)
def test_the_options_choose_the_writers(options: ConvertOptions, names: list[str]) -> None:
    """One place maps the user-facing flags to outputs; only layer directories need each
    layer in a tree of its own."""
    writers = writers_for(options)
    assert [writer.name for writer in writers] == names
    assert [writer.layer_trees for writer in writers] == [name == "layers" for name in names]


def test_platform_selects_from_an_index(
    registry: RegistryServer,
    sample_images: SampleImages,
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    index = sample_images.multi_oci
    arm = index.for_platform("linux/arm64/v8")
    assert arm.config_digest is not None
    root = tmp_path / "repo"
    argv = ["convert-single-image", index.ref(registry), "--repo", f"dir:{root}", "--json"]
    run = run_cli(*argv, "--platform", "linux/arm64")
    assert run.code == cli.EXIT_OK, run.err
    result = run.json
    assert (result["imageId"], result["platform"]) == (arm.config_digest, "linux/arm64/v8")
    reference = ref_of(registry, f"{index.repository}:{index.tag}")
    flat = linked_flat(root, reference)
    assert flat == flat_dir(root, arm.config_digest)
    assert (flat / "etc/arch").read_bytes() == b"linux/arm64/v8\n"
    status = status_of(root, reference)
    assert (status["digest"], status["manifestDigest"]) == (index.digest, arm.digest)
    assert status["platform"] == "linux/arm64/v8"
    assert (metadata_dir(root, reference) / "manifest.json").read_bytes() == arm.manifest_bytes

    counting = CountingTransport()
    again = convert(reference, root, transport=counting, platform=Platform.parse("linux/arm64"))
    assert again.outcome is Outcome.UNCHANGED
    assert [method for method, _ in counting.requests] == ["HEAD"]


# --- 9: stats -----------------------------------------------------------------------


def _expected_stats(root: Path) -> dict[str, Any]:
    """The stats of ``root`` computed from a snapshot, independently of ``unpacked.stats``."""
    tree = {p: n for p, n in snapshot(root).items() if p != b"." and not p.startswith(PRIVATE)}
    markers = {os.path.dirname(p) for p in tree if os.path.basename(p) == b".cvmfscatalog"}
    catalogs: dict[bytes, int] = {b"": 0} | dict.fromkeys(markers, 0)
    inodes: dict[tuple[int, int], int] = {}
    for path in tree:
        parent = os.path.dirname(path)
        while parent not in catalogs:
            parent = os.path.dirname(parent)
        catalogs[parent] += 1
        st = os.lstat(root / os.fsdecode(path))
        if stat.S_ISREG(st.st_mode):
            inodes[(st.st_dev, st.st_ino)] = st.st_size
    most = max(catalogs.values())
    return {
        "bytes": sum(inodes.values()),
        "entries": len(tree),
        "catalogs": len(catalogs),
        "most": most,
        "largest": {os.fsdecode(p) or "/" for p, n in catalogs.items() if n == most},
    }


def test_stats_json(
    registry: RegistryServer,
    shared_pair: tuple[SampleImage, SampleImage, list[list[bytes]]],
    tmp_path: Path,
    run_cli: RunCli,
) -> None:
    root = tmp_path / "repo"
    convert(ref_of(registry, "convert/shared-a:v1"), root)
    convert(ref_of(registry, "convert/shared-b:v1"), root)
    run = run_cli("stats", "--repo", f"dir:{root}", "--json")
    assert run.code == cli.EXIT_OK, run.err
    stats = run.json
    expected = _expected_stats(root)
    assert (stats["images"], stats["flatTrees"], stats["layers"]) == (2, 2, 4)
    assert stats["bytes"] == expected["bytes"]
    assert stats["entries"] == expected["entries"]
    assert stats["catalogs"] == expected["catalogs"]
    assert stats["largestCatalogs"][0]["entries"] == expected["most"]
    assert stats["largestCatalogs"][0]["path"] in expected["largest"]
    sizes = [c["entries"] for c in stats["largestCatalogs"]]
    assert sizes == sorted(sizes, reverse=True)


# --- 10: progress -------------------------------------------------------------------


def test_progress_events(
    registry: RegistryServer,
    shared_pair: tuple[SampleImage, SampleImage, list[list[bytes]]],
    tmp_path: Path,
) -> None:
    one, two, _ = shared_pair
    root = tmp_path / "repo"

    def run(reference: Reference) -> list[LayerProgress]:
        events: list[Event] = []
        with RegistryClient() as client:
            convert_image(
                reference,
                client=client,
                publisher=open_publisher(f"dir:{root}"),
                on_event=events.append,
            )
        assert events[0] == ImageStarted(reference, DEFAULT)  # then only layer progress
        assert all(isinstance(event, LayerProgress) for event in events[1:])
        return [event for event in events if isinstance(event, LayerProgress)]

    events = run(ref_of(registry, "convert/shared-a:v1"))
    for digest, size in zip(one.layer_digests, one.layer_sizes, strict=True):
        mine = [e for e in events if str(e.digest) == digest]
        phases = [e.phase for e in mine]
        assert phases[-2:] == ["unpack", "done"], (digest, phases)
        downloads = [e for e in mine if e.phase == "download"]
        assert downloads and downloads[-1].done == downloads[-1].total == size
        assert [e.done for e in downloads] == sorted(e.done for e in downloads)
        assert mine[-1].done == mine[-1].total == size
    assert {str(e.digest) for e in events} == set(one.layer_digests)

    events = run(ref_of(registry, "convert/shared-b:v1"))
    assert {str(e.digest) for e in events} == {two.layer_digests[2]}
    assert run(ref_of(registry, "convert/shared-b:v1")) == []
