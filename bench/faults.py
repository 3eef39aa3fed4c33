"""Benchmark: how long a conversion takes to give up when every layer blob hangs.

Pushes an image of ``--layers`` small layers to a real docker-registry on 127.0.0.1 and
converts it (``unpacked convert-single-image``, a child process) through the fault proxy
of the tests (``tests/support/faultproxy.py``), which answers every GET of a layer blob
with silence (``hang``). With ``--timeout`` seconds per read, one blob fails for good
after its retries; the others must then be cancelled at once, not go through all their
own retries (issue 12: 59 s instead of about 25 with ``--timeout 5``).

    .venv/bin/python bench/faults.py [--layers 6] [--timeout 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import REPO, BenchError, run_in_workdir, table

from support.faultproxy import Fault, FaultProxy
from support.oci import TarEntry, build_image, tar_bytes
from support.registry import skopeo_copy, start_registry

UNPACKED = str(Path(sys.executable).with_name("unpacked"))
REPOSITORY = "bench/faults"
EXIT_REGISTRY = 6


def _layers(count: int) -> list[bytes]:
    return [tar_bytes([TarEntry.file(f"l{i}/f", b"%d" % i * 10_000)]) for i in range(count)]


def _convert(proxy: FaultProxy, repo: Path, timeout: float) -> tuple[float, str]:
    started = time.perf_counter()
    command = [UNPACKED, "convert-single-image", f"{proxy.host}/{REPOSITORY}:1"]
    result = subprocess.run(
        [*command, "--repo", f"dir:{repo}", "--timeout", str(timeout)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != EXIT_REGISTRY:
        raise BenchError(f"expected exit {EXIT_REGISTRY}, got {result.returncode}: {result.stderr}")
    return seconds, result.stderr.strip().splitlines()[-1]


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    built = build_image(workdir / "layout", _layers(args.layers), tag="1")
    with start_registry(workdir / "storage", workdir=workdir / "registry") as registry:
        skopeo_copy(built.oci_ref, f"docker://{registry.host}/{REPOSITORY}:1")
        hexes = tuple(digest.partition(":")[2] for digest in built.layer_digests)
        runs: list[float] = []
        message = ""
        for number in range(args.repeat):
            with FaultProxy(registry.url, Fault.HANG, times=None, match=hexes) as proxy:
                seconds, message = _convert(proxy, workdir / f"repo-{number}", args.timeout)
            runs.append(seconds)
            print(f"run {number + 1}: {seconds:.1f} s", flush=True)
    return {
        "layers": args.layers,
        "timeout": args.timeout,
        "runs_seconds": runs,
        "median_seconds": statistics.median(runs),
        "message": message,
    }


def report(summary: dict[str, object]) -> None:
    print(
        table(
            [
                ["layers", "--timeout", "median to give up", "error"],
                [
                    str(summary["layers"]),
                    f"{summary['timeout']} s",
                    f"{summary['median_seconds']:.1f} s",
                    str(summary["message"])[:100],
                ],
            ]
        )
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=6, help="layers of the image")
    parser.add_argument("--timeout", type=float, default=5.0, help="unpacked's --timeout")
    parser.add_argument("--repeat", type=int, default=3, help="runs (median)")
    parser.add_argument("--workdir", default=None, help="where to create the working directory")
    parser.add_argument("--out", default=str(REPO / "bench" / "out"), help="JSON results directory")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.repeat < 1 or args.timeout <= 0:
        parser.error("--layers and --repeat must be at least 1, --timeout positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_in_workdir(parse_args(argv), "faults", measure, report)


if __name__ == "__main__":
    sys.exit(main())
