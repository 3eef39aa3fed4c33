"""Benchmark: unpack a multi-layer image with `unpacked`, with skopeo + umoci, and with tar.

Generates a deterministic image (seeded; many small text-like files and a few
large, partly compressible ones, spread over several gzip layers), pushes it to
a real docker-registry on 127.0.0.1 with skopeo, and measures, each
``--repeat`` times (median reported):

(a) ``unpacked``: every layer streamed from the registry (``RegistryClient``)
    into the flat applier, in a child process;
(b) ``skopeo copy docker://… oci:…`` then ``umoci raw unpack``;
(c) the floor: ``gzip -dc <blob> | tar -x`` per layer from the layout, summed.

It prints a table, the ratios a/b (target ≤ 0.4) and a/c (target ≤ 1.2), and
the peak RSS of (a) for the image and for one a quarter of its size, which
should be about equal: the applier streams, so memory must not grow with the
layers. Results also go to ``bench/out/unpack_layers-<time>.json``.

Run as root (umoci and tar then apply owners and devices like the tool does):

    .venv/bin/python bench/unpack_layers.py [--size-mb 100] [--files 30000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gzip
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import (
    RSS_IS_EXACT,
    BenchError,
    Result,
    Sample,
    add_image_arguments,
    compile_bytecode,
    dentry_hash_size,
    mib,
    quiet,
    round_robin,
    run_dir,
    run_measured,
    table,
    write_results,
)

from support.oci import BuiltImage, TarEntry, build_image, tar_bytes
from support.registry import RegistryServer, skopeo_copy, start_registry
from support.tree import INTENDED_FLAT_DIFFERENCES, compare, format_differences, snapshot

REPOSITORY = "bench/unpack-layers"
LAYER_WEIGHTS = (0.40, 0.25, 0.15, 0.10, 0.10)
SMALL_SHARE = 0.4
"""Part of the compressed size that the many small files make up."""
RANDOM_SHARE = 0.5
"""Part of each large file that is incompressible."""
FILES_PER_DIR = 50
BLOCK = 64 << 10


# --- the image ---------------------------------------------------------------------


@dataclass(frozen=True)
class ImageStats:
    tag: str
    layers: int
    files: int
    compressed: int
    uncompressed: int

    def as_json(self) -> dict[str, object]:
        return self.__dict__.copy()


def _text_pool(rng: random.Random, size: int) -> bytes:
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(3000)]
    words = rng.choices(vocabulary, k=size // 5)
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    return "\n".join(lines).encode()[:size]


def _slice(rng: random.Random, pool: bytes, size: int) -> bytes:
    start = rng.randrange(0, max(1, len(pool) - size))
    return pool[start : start + size]


def _large_content(rng: random.Random, pool: bytes, size: int) -> bytes:
    blocks = []
    for offset in range(0, size, BLOCK):
        length = min(BLOCK, size - offset)
        if rng.random() < RANDOM_SHARE:
            blocks.append(rng.randbytes(length))
        else:
            blocks.append(_slice(rng, pool, length))
    return b"".join(blocks)


def _small_sizes(rng: random.Random, count: int, total: int) -> list[int]:
    raw = [min(rng.lognormvariate(8.0, 1.2), 256 << 10) for _ in range(count)]
    scale = total / sum(raw)
    return [max(0, int(size * scale)) for size in raw]


def generate_layers(size_mb: float, files: int, *, seed: int, layers: int) -> list[bytes]:
    """Uncompressed layer tars of about ``size_mb`` MB once gzip'ed, with ``files`` files."""
    rng = random.Random(seed)
    pool = _text_pool(rng, 4 << 20)
    text_ratio = len(gzip.compress(pool[: 1 << 20], 6)) / (1 << 20)
    large_ratio = RANDOM_SHARE + (1 - RANDOM_SHARE) * text_ratio
    budget = size_mb * 1e6
    large_count = max(2, min(files // 100, 2 * layers))
    small_count = max(1, files - large_count)
    weights = _weights(layers)
    contents: list[list[TarEntry]] = [[] for _ in range(layers)]
    small_total = int(budget * SMALL_SHARE / text_ratio)
    for index, size in enumerate(_small_sizes(rng, small_count, small_total)):
        layer = rng.choices(range(layers), weights)[0]
        path = f"usr/share/pkg{index // FILES_PER_DIR:05d}/file{index:06d}.txt"
        mode = 0o755 if index % 17 == 0 else 0o644
        contents[layer].append(TarEntry.file(path, _slice(rng, pool, size), mode=mode))
    large_size = int(budget * (1 - SMALL_SHARE) / large_ratio / large_count)
    for index in range(large_count):
        path = f"opt/big/blob{index:03d}.bin"
        data = _large_content(rng, pool, large_size)
        contents[index % layers].append(TarEntry.file(path, data))
    _add_whiteouts(rng, contents)
    return [tar_bytes(_with_parents(entries)) for entries in contents]


def _weights(layers: int) -> list[float]:
    if layers <= len(LAYER_WEIGHTS):
        return list(LAYER_WEIGHTS[:layers])
    return [*LAYER_WEIGHTS, *([LAYER_WEIGHTS[-1]] * (layers - len(LAYER_WEIGHTS)))]


def _add_whiteouts(rng: random.Random, contents: list[list[TarEntry]]) -> None:
    """Make each upper layer delete a few files of the layer below, as real images do."""
    for upper in range(1, len(contents)):
        lower = [e for e in contents[upper - 1] if e.type == "file"]
        for entry in rng.sample(lower, k=min(len(lower), 1 + len(lower) // 200)):
            contents[upper].append(TarEntry.whiteout(str(entry.name)))


def _with_parents(entries: list[TarEntry]) -> list[TarEntry]:
    """``entries`` preceded by explicit entries of their parent directories, like docker writes."""
    directories: dict[str, None] = {}
    for entry in entries:
        parts = str(entry.name).split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            directories.setdefault("/".join(parts[:depth]))
    ordered = sorted(entries, key=lambda e: str(e.name))
    return [*(TarEntry.dir(d) for d in directories), *ordered]


def build(
    layout: Path, tag: str, size_mb: float, files: int, *, seed: int, layers: int
) -> tuple[BuiltImage, ImageStats]:
    tars = generate_layers(size_mb, files, seed=seed, layers=layers)
    built = build_image(layout, tars, tag=tag, compression="gzip")
    stats = ImageStats(
        tag=tag,
        layers=len(tars),
        files=files,
        compressed=sum(built.layer_sizes),
        uncompressed=sum(len(t) for t in tars),
    )
    return built, stats


# --- the contenders ----------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    workdir: Path
    registry: RegistryServer
    image: BuiltImage

    @property
    def remote(self) -> str:
        return f"{self.registry.host}/{REPOSITORY}:{self.image.tag}"


def measure_unpacked(setup: Setup, root: Path) -> Sample:
    """(a): the flat applier in a child process, layers streamed from the registry."""
    worker = Path(__file__).resolve().parent / "_unpack_worker.py"
    command = [sys.executable, str(worker), setup.remote, str(root)]
    return run_measured([command])


def measure_skopeo_umoci(setup: Setup, root: Path) -> Sample:
    """(b): pull into an OCI layout with skopeo, then ``umoci raw unpack`` it."""
    layout = run_dir(setup.workdir, "skopeo-layout")
    pull = ["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false"]
    pull += [f"docker://{setup.remote}", f"oci:{layout}:{setup.image.tag}"]
    unpack = ["umoci", "raw", "unpack", "--image", f"{layout}:{setup.image.tag}", str(root)]
    first = run_measured([pull])
    second = run_measured([unpack])
    return Sample(
        first.seconds + second.seconds,
        max(first.peak_rss, second.peak_rss),
        first.cpu_seconds + second.cpu_seconds,
    )


def measure_tar_floor(setup: Setup, root: Path) -> Sample:
    """(c): ``gzip -dc | tar -x`` per layer blob of the local layout, summed."""
    root.mkdir(parents=True)
    seconds, peak, cpu = 0.0, 0, 0.0
    for digest in setup.image.layer_digests:
        blob = setup.image.layout / "blobs" / "sha256" / digest.partition(":")[2]
        sample = run_measured(
            [["gzip", "-dc", str(blob)], ["tar", "-x", "-f", "-", "-C", str(root)]]
        )
        seconds += sample.seconds
        peak = max(peak, sample.peak_rss)
        cpu += sample.cpu_seconds
    return Sample(seconds, peak, cpu)


Contender = Callable[[Setup, Path], Sample]


def once(name: str, contender: Contender, setup: Setup) -> tuple[str, Callable[[], Sample]]:
    """``contender`` as one run into a new root, for ``round_robin`` (kept: see ``quiet``)."""

    def run() -> Sample:
        return contender(setup, run_dir(setup.workdir, "root"))

    return name, run


def verify_same_tree(setup: Setup) -> str:
    """Unpack once with (a) and (b) and compare the trees; a benchmark of different work is void."""
    ours, theirs = run_dir(setup.workdir, "verify-a"), run_dir(setup.workdir, "verify-b")
    measure_unpacked(setup, ours)
    measure_skopeo_umoci(setup, theirs)
    differences = compare(snapshot(theirs), snapshot(ours), intended=INTENDED_FLAT_DIFFERENCES)
    shutil.rmtree(ours)
    shutil.rmtree(theirs)
    if differences:
        raise BenchError(
            "(a) and (b) unpacked different trees:\n" + format_differences(differences)
        )
    return "identical (up to the intended differences)"


# --- driver ------------------------------------------------------------------------


def _ratio(numerator: Result, denominator: Result) -> float:
    return numerator.seconds / denominator.seconds


def report(
    results: Sequence[Result], small: Result, stats: Sequence[ImageStats]
) -> dict[str, object]:
    rows = [["contender", "median time", "median peak RSS", "runs"]]
    for result in [*results, small]:
        runs = ", ".join(f"{s.seconds:.2f}" for s in result.samples)
        rows.append([result.name, f"{result.seconds:.2f} s", mib(result.peak_rss), runs])
    print()
    print(table(rows))
    a, b, c = results
    print(f"\na/b = {_ratio(a, b):.2f} (target <= 0.4)    a/c = {_ratio(a, c):.2f} (target <= 1.2)")
    print(
        f"peak RSS of (a): {mib(small.peak_rss)} at {mib(stats[1].compressed)} compressed, "
        f"{mib(a.peak_rss)} at {mib(stats[0].compressed)}"
    )
    if not RSS_IS_EXACT:
        print(
            "(no /usr/bin/time: peak RSS values are upper bounds that include the benchmark's own)"
        )
    return {
        "rss_exact": RSS_IS_EXACT,
        "results": [r.as_json() for r in results],
        "memory_check": small.as_json(),
        "ratios": {"a/b": round(_ratio(a, b), 3), "a/c": round(_ratio(a, c), 3)},
        "targets": {"a/b": 0.4, "a/c": 1.2},
    }


def run(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="unpacked-bench-", dir=args.workdir))
    print(f"working in {workdir}", flush=True)
    try:
        return _run_in(workdir, args)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_in(workdir: Path, args: argparse.Namespace) -> int:
    layout = workdir / "layout"
    started = time.perf_counter()
    big, big_stats = build(
        layout, "big", args.size_mb, args.files, seed=args.seed, layers=args.layers
    )
    small, small_stats = build(
        layout,
        "small",
        args.size_mb / 4,
        max(1, args.files // 4),
        seed=args.seed + 1,
        layers=args.layers,
    )
    for stats in (big_stats, small_stats):
        print(
            f"image {stats.tag}: {stats.layers} layers, {stats.files} files, "
            f"{mib(stats.compressed)} compressed, {mib(stats.uncompressed)} uncompressed",
        )
    print(f"generated in {time.perf_counter() - started:.1f} s", flush=True)
    with start_registry(workdir / "storage", workdir=workdir / "registry") as registry:
        for image in (big, small):
            skopeo_copy(image.oci_ref, f"docker://{registry.host}/{REPOSITORY}:{image.tag}")
        setup = Setup(workdir, registry, big)
        verdict = verify_same_tree(setup) if not args.no_verify else "not checked (--no-verify)"
        print(f"trees of (a) and (b): {verdict}", flush=True)
        small_setup = Setup(workdir, registry, small)
        contenders = [
            once("a: unpacked (registry stream)", measure_unpacked, setup),
            once("b: skopeo copy + umoci raw unpack", measure_skopeo_umoci, setup),
            once("c: gzip -dc | tar -x (floor)", measure_tar_floor, setup),
            once("a at a quarter of the size", measure_unpacked, small_setup),
        ]
        quiet(workdir, args.quiet_seconds)
        measured = list(round_robin(contenders, args.repeat).values())
        results, small_result = measured[:3], measured[3]
    summary = report(results, small_result, [big_stats, small_stats])
    summary |= {
        "parameters": vars(args),
        "dentry_hash_entries": dentry_hash_size(),
        "images": [big_stats.as_json(), small_stats.as_json()],
        "trees": verdict,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_results(summary, Path(args.out), "unpack_layers")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_image_arguments(parser)
    parser.add_argument("--no-verify", action="store_true", help="skip the tree comparison")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    compile_bytecode()
    try:
        return run(args)
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
