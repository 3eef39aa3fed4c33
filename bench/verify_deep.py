"""Benchmark: ``unpacked verify --deep`` against ``sha256sum``, and what the content index
costs a conversion.

In one run, against a real docker-registry on 127.0.0.1 (images generated like
``unpack_layers.py`` does, pushed with skopeo), each ``--repeat`` times (median):

1. ``unpacked verify --deep`` of a ``dir:`` repository holding images A and B (B shares
   all but its top layer with A), against ``sha256sum`` of the same files: every regular
   file of every ``layerfs`` (the flat trees link these inodes; verify reads each once and
   walks the flat trees too) — target <= 1.5x;
2. a cold conversion of A writing the layers' content indexes, against the same
   conversion without them (``ConvertOptions.content_index``) — the index's overhead.

The page cache is warm for both sides of each ratio (``settle`` drops dentries only).

    .venv/bin/python bench/verify_deep.py [--size-mb 100] [--files 30000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import (
    BenchError,
    Result,
    Sample,
    add_image_arguments,
    compile_bytecode,
    mib,
    quiet,
    round_robin,
    run_dir,
    run_measured,
    table,
    write_results,
)
from unpack_layers import REPOSITORY, generate_layers

from support.oci import build_image
from support.registry import skopeo_copy, start_registry

UNPACKED = str(Path(sys.executable).with_name("unpacked"))
WORKER = str(Path(__file__).resolve().parent / "_convert_worker.py")


def _layer_files(repo: Path, listing: Path) -> tuple[int, int]:
    """Write the NUL-separated list of the regular files of every layerfs; their count and
    bytes."""
    count = size = 0
    with open(listing, "wb") as out:
        for layerfs in sorted((repo / ".layers").glob("*/*/layerfs")):
            for directory, _, files in os.walk(layerfs):
                for name in files:
                    path = os.path.join(directory, name)
                    st = os.lstat(path)
                    if os.path.isfile(path) and not os.path.islink(path):
                        out.write(os.fsencode(path) + b"\0")
                        count, size = count + 1, size + st.st_size
    return count, size


class Bench:
    def __init__(self, workdir: Path, remote_a: str, repo: Path, listing: Path) -> None:
        self.workdir = workdir
        self.remote_a = remote_a
        self.repo = repo
        self.listing = listing

    def verify_deep(self) -> Sample:
        command = [UNPACKED, "-q", "verify", "--deep", "--repo", f"dir:{self.repo}", "--json"]
        return run_measured([command])

    def sha256sum(self) -> Sample:
        return run_measured([["xargs", "-0", "-a", str(self.listing), "sha256sum"]])

    def convert(self, index: str) -> Sample:
        root = run_dir(self.workdir, f"repo-{index}")
        return run_measured([[sys.executable, WORKER, self.remote_a, str(root), index]])


def run(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="unpacked-bench-deep-", dir=args.workdir))
    try:
        return _run_in(workdir, args)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_in(workdir: Path, args: argparse.Namespace) -> dict[str, object]:
    layers_a = generate_layers(args.size_mb, args.files, seed=args.seed, layers=args.layers)
    other = generate_layers(args.size_mb, args.files, seed=args.seed + 7, layers=args.layers)
    images = [
        build_image(workdir / "layout", layers_a, tag="a"),
        build_image(workdir / "layout", [*layers_a[:-1], other[-1]], tag="b"),
    ]
    print(f"images generated: A and B, {args.layers} layers, {mib(sum(images[0].layer_sizes))}")
    with start_registry(workdir / "storage", workdir=workdir / "registry") as registry:
        remotes = [f"{registry.host}/{REPOSITORY}:{image.tag}" for image in images]
        for image, remote in zip(images, remotes, strict=True):
            skopeo_copy(image.oci_ref, f"docker://{remote}")
        repo = workdir / "repo"
        for remote in remotes:
            subprocess.run(
                [UNPACKED, "-q", "convert-single-image", remote, "--repo", f"dir:{repo}"],
                check=True,
                timeout=1800,
                stdout=subprocess.DEVNULL,
            )
        files, size = _layer_files(repo, workdir / "files.list")
        bench = Bench(workdir, remotes[0], repo, workdir / "files.list")
        quiet(workdir, args.quiet_seconds)
        results = round_robin(
            [
                ("verify --deep (A and B)", bench.verify_deep),
                ("sha256sum of the layer files", bench.sha256sum),
                ("convert A, content index", lambda: bench.convert("index")),
                ("convert A, no content index", lambda: bench.convert("no-index")),
            ],
            args.repeat,
        )
    return _report(list(results.values()), files, size, args)


def _report(
    results: list[Result], files: int, size: int, args: argparse.Namespace
) -> dict[str, object]:
    rows = [["measurement", "median", "CPU (median)", "runs"]]
    for result in results:
        runs = ", ".join(f"{s.seconds:.3f}" for s in result.samples)
        rows.append([result.name, f"{result.seconds:.3f} s", f"{result.cpu_seconds:.3f} s", runs])
    print()
    print(table(rows))
    deep, checksum, indexed, plain = results
    ratios = {
        "verify --deep / sha256sum  (target <= 1.5)": deep.seconds / checksum.seconds,
        "convert with content index / without": indexed.seconds / plain.seconds,
    }
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    print(f"layer files: {files}, {mib(size)}")
    return {
        "results": {r.name: r.as_json() for r in results},
        "ratios": ratios,
        "files": files,
        "bytes": size,
        "parameters": vars(args),
        "cpus": len(os.sched_getaffinity(0)),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_image_arguments(parser)
    args = parser.parse_args(argv)
    compile_bytecode()
    try:
        summary = run(args)
    except (BenchError, subprocess.CalledProcessError) as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    write_results(summary, Path(args.out), "verify_deep")
    return 0


if __name__ == "__main__":
    sys.exit(main())
