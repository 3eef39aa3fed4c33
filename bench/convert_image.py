"""Benchmark: publishing images into a ``dir:`` repository (``unpacked convert-single-image``).

In one run, against a real docker-registry on 127.0.0.1 (images generated like
``unpack_layers.py`` does, pushed with skopeo), each ``--repeat`` times (median):

1. cold conversion of image A (layers + flat tree + metadata, one transaction), against
   ``skopeo copy`` + ``umoci raw unpack`` of A — target ≤ 0.4x; and the same conversion
   with ``--unpack-workers 1`` (every layer in the one process), to show what the
   workers bring;
2. conversion of image B, which shares all but its top layer with A, into the repository
   that holds A, against unpacking only B's top layer (the work that is really new) —
   target ≤ 1.3x;
3. a no-op re-run of A (one manifest HEAD), start-up included (the target of ≤ 50 ms per
   image is for 50 references in one run: ``noop_convert.py``);
4. the repository's bytes for A and B (``unpacked stats``: each inode once) against their
   unique content (the regular-file bytes of their distinct layers) — target ≤ 1.1x.

    .venv/bin/python bench/convert_image.py [--size-mb 100] [--files 30000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from _common import (
    CLI_ENTRY,
    BenchError,
    Result,
    Sample,
    add_image_arguments,
    compile_bytecode,
    dentry_hash_size,
    export_src,
    mib,
    quiet,
    round_robin,
    run_dir,
    run_measured,
    settle,
    table,
    throttled_loopback,
    write_results,
)
from unpack_layers import REPOSITORY, Setup, generate_layers, measure_skopeo_umoci

from support.oci import BuiltImage, build_image
from support.registry import skopeo_copy, start_registry

UNPACKED = str(Path(sys.executable).with_name("unpacked"))
THIS_SRC = Path(__file__).resolve().parent.parent / "src"
WORKER = str(Path(__file__).resolve().parent / "_unpack_worker.py")


def _convert(remote: str, repo: Path, *options: str, src: Path | None = None) -> Sample:
    """The command line's conversion; with ``src``, of that tree (``--baseline``), started
    the same way as this tree's for the rows compared with it."""
    if src is None:
        launcher = [UNPACKED]
    else:
        launcher = ["env", f"PYTHONPATH={src}", sys.executable, "-c", CLI_ENTRY]
    command = [*launcher, "-q", "convert-single-image", remote, "--repo", f"dir:{repo}", "--json"]
    return run_measured([[*command, *options]])


def _content_bytes(tars: Sequence[bytes]) -> int:
    """Regular-file bytes of these layer tars (each layer counted once)."""
    total = 0
    for data in tars:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            total += sum(member.size for member in archive if member.isreg())
    return total


def _repo_bytes(repo: Path) -> int:
    done = subprocess.run(
        [UNPACKED, "stats", "--repo", f"dir:{repo}", "--json"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return int(json.loads(done.stdout)["bytes"])


class Bench:
    def __init__(
        self, workdir: Path, setup_a: Setup, remote_b: str, baseline: Path | None = None
    ) -> None:
        self.workdir = workdir
        self.setup_a = setup_a
        self.remote_b = remote_b
        self.baseline = baseline
        self.incremental: Path | None = None

    def fresh(self, name: str) -> Path:
        return run_dir(self.workdir, name)

    def cold_a(self) -> Sample:
        return _convert(self.setup_a.remote, self.fresh("repo-cold"))

    def cold_a_in_process(self) -> Sample:
        return _convert(self.setup_a.remote, self.fresh("repo-cold-1"), "--unpack-workers", "1")

    def skopeo_umoci_a(self) -> Sample:
        return measure_skopeo_umoci(self.setup_a, self.fresh("umoci-root"))

    def b_after_a(self) -> Sample:
        repo = self.incremental = self.fresh("repo-incremental")
        _convert(self.setup_a.remote, repo)
        # A's writeback is not B's cost; A's dentries stay, as on a publisher that has
        # just converted A.
        settle(forget_dentries=False)
        return _convert(self.remote_b, repo)

    def top_layer_only(self) -> Sample:
        root = self.fresh("top-layer")
        return run_measured([[sys.executable, WORKER, self.remote_b, str(root), "--last"]])

    def convert_a_for_noop(self) -> None:
        _convert(self.setup_a.remote, self.workdir / "repo-noop")

    def noop_a(self) -> Sample:
        return _convert(self.setup_a.remote, self.workdir / "repo-noop")

    # --baseline: the same conversions by both trees, both started with ``python -c``.

    def cold_a_of(self, src: Path) -> Sample:
        return _convert(self.setup_a.remote, self.fresh("repo-cold-src"), src=src)

    def b_after_a_of(self, src: Path) -> Sample:
        repo = self.fresh("repo-incremental-src")
        _convert(self.setup_a.remote, repo, src=src)
        settle(forget_dentries=False)
        return _convert(self.remote_b, repo, src=src)

    def noop_a_of(self, src: Path) -> Sample:
        return _convert(self.setup_a.remote, self.workdir / "repo-noop", src=src)

    def comparisons(self) -> list[tuple[str, Callable[[], Sample]]]:
        if self.baseline is None:
            return []
        pairs = []
        for label, src in (("before", self.baseline), ("after", THIS_SRC)):
            pairs += [
                (f"{label}: convert A (cold)", functools.partial(self.cold_a_of, src)),
                (f"{label}: convert B after A", functools.partial(self.b_after_a_of, src)),
                (f"{label}: no-op re-run of A", functools.partial(self.noop_a_of, src)),
            ]
        return pairs


def _measure(bench: Bench, repeat: int) -> dict[str, Result]:
    return round_robin(
        [
            ("convert A (cold)", bench.cold_a),
            ("convert A (cold), --unpack-workers 1", bench.cold_a_in_process),
            ("skopeo copy + umoci raw unpack A", bench.skopeo_umoci_a),
            ("convert B after A", bench.b_after_a),
            ("unpack only B's top layer", bench.top_layer_only),
            ("no-op re-run of A", bench.noop_a),
            *bench.comparisons(),
        ],
        repeat,
    )


def _images(layout: Path, args: argparse.Namespace) -> tuple[BuiltImage, BuiltImage, list[bytes]]:
    layers_a = generate_layers(args.size_mb, args.files, seed=args.seed, layers=args.layers)
    other = generate_layers(args.size_mb, args.files, seed=args.seed + 7, layers=args.layers)
    layers_b = [*layers_a[:-1], other[-1]]
    image_a = build_image(layout, layers_a, tag="a", compression="gzip")
    image_b = build_image(layout, layers_b, tag="b", compression="gzip")
    return image_a, image_b, [*layers_a, other[-1]]


def run(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="unpacked-bench-convert-", dir=args.workdir))
    try:
        image_a, image_b, unique_layers = _images(workdir / "layout", args)
        print(f"images generated: A and B, {args.layers} layers, {mib(sum(image_a.layer_sizes))}")
        with start_registry(workdir / "storage", workdir=workdir / "registry") as registry:
            for image in (image_a, image_b):
                skopeo_copy(image.oci_ref, f"docker://{registry.host}/{REPOSITORY}:{image.tag}")
            baseline = export_src(args.baseline, workdir / "baseline") if args.baseline else None
            bench = Bench(
                workdir,
                Setup(workdir, registry, image_a),
                f"{registry.host}/{REPOSITORY}:b",
                baseline,
            )
            bench.convert_a_for_noop()
            quiet(workdir, args.quiet_seconds)
            with throttled_loopback(args.registry_mbit):
                measured = _measure(bench, args.repeat)
            keys = ["cold", "cold-1", "umoci", "incremental", "top", "noop"]
            keys += [name for name, _ in bench.comparisons()]
            results = dict(zip(keys, measured.values(), strict=True))
            assert bench.incremental is not None
            repo_bytes = _repo_bytes(bench.incremental)
        return _report(results, repo_bytes, _content_bytes(unique_layers), args)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _report(
    results: dict[str, Result], repo_bytes: int, unique: int, args: argparse.Namespace
) -> dict[str, object]:
    rows = [["measurement", "median", "CPU (median)", "runs"]]
    for result in results.values():
        runs = ", ".join(f"{s.seconds:.3f}" for s in result.samples)
        rows.append([result.name, f"{result.seconds:.3f} s", f"{result.cpu_seconds:.3f} s", runs])
    print()
    print(table(rows))
    cpus = len(os.sched_getaffinity(0))
    ratios = {
        "cold / (skopeo + umoci)  (target <= 0.4)": results["cold"].seconds
        / results["umoci"].seconds,
        "B after A / top layer only  (target <= 1.3)": results["incremental"].seconds
        / results["top"].seconds,
        "repository bytes / unique content  (target <= 1.1)": repo_bytes / unique,
        "cold with workers / cold in one process": results["cold"].seconds
        / results["cold-1"].seconds,
        # The least the ratios could be on this machine if every CPU were busy from the
        # first instant to the last: the work's CPU time spread over all of them.
        f"cold, CPU time / {cpus} CPUs / (skopeo + umoci)": results["cold"].cpu_seconds
        / cpus
        / results["umoci"].seconds,
        f"B after A, CPU time / {cpus} CPUs / top layer only": results["incremental"].cpu_seconds
        / cpus
        / results["top"].seconds,
    }
    for label in ("convert A (cold)", "convert B after A", "no-op re-run of A"):
        before, after = results.get(f"before: {label}"), results.get(f"after: {label}")
        if before is not None and after is not None:
            ratios[f"after / before ({args.baseline}): {label}"] = after.seconds / before.seconds
    print()
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    print(
        f"no-op re-run of one image through the command line: {results['noop'].seconds:.3f} s, "
        "start-up included (per image over 50 references: bench/noop_convert.py)"
    )
    print(f"repository {mib(repo_bytes)}, unique content {mib(unique)}")
    print(f"kernel dentry hash table: {dentry_hash_size() or 'unknown'} buckets")
    if args.registry_mbit is not None:
        print(f"loopback limited to {args.registry_mbit:g} Mbit/s while measuring")
    return {
        "results": {key: result.as_json() for key, result in results.items()},
        "ratios": ratios,
        "repository_bytes": repo_bytes,
        "unique_content_bytes": unique,
        "parameters": vars(args),
        "cpus": len(os.sched_getaffinity(0)),
        "dentry_hash_entries": dentry_hash_size(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_image_arguments(parser)
    parser.add_argument(
        "--registry-mbit",
        type=float,
        default=None,
        help="limit loopback to this many Mbit/s while measuring, as a registry a network "
        "away would be (root; tc qdisc on lo)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="git revision whose src/ also converts A (cold), B after A and the no-op, "
        "interleaved with this tree's, for before/after ratios",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    compile_bytecode()
    try:
        summary = run(args)
    except BenchError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    write_results(summary, Path(args.out), "convert_image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
