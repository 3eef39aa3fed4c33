"""Benchmark: a no-op ``convert`` of a wish list whose images are all published already.

Pushes ``--count`` small distinct images (a shared base layer and one layer of their
own) to a real docker-registry on 127.0.0.1 with skopeo, converts the wish list once,
then measures the no-op re-run ``--repeat`` times (median):

(a) in process: ``convert_wishlist`` with a ``RegistryClient`` whose transport counts
    the requests by method — the contract is exactly one manifest HEAD per image and
    nothing else, and the benchmark fails if that does not hold;
(b) the command line: ``unpacked -q convert W --repo dir:R --json`` as a child process,
    interpreter start-up and imports included.

It prints a table (wall time, time per image against the 50 ms target of issue 4,
requests by method) and writes the results to ``bench/out/noop_convert-<time>.json``.

    .venv/bin/python bench/noop_convert.py [--count 100] [--repeat 3]
    .venv/bin/python bench/noop_convert.py --count 50      # issue 4: 50 references
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from _common import REPO, BenchError, run_in_workdir, table

from support.oci import TarEntry, build_image, tar_bytes
from support.registry import RegistryServer, skopeo_copy, start_registry
from unpacked.batch import BatchReport, convert_wishlist
from unpacked.publish import open_publisher
from unpacked.registry import RegistryClient
from unpacked.wishlist import load

UNPACKED = str(Path(sys.executable).with_name("unpacked"))
REPOSITORY = "bench/noop"
TARGET_MS = 50.0
CLI_TIMEOUT = 600.0


class CountingTransport(httpx.BaseTransport):
    """The real HTTP transport, counting requests by method (thread-safe)."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self._lock = threading.Lock()
        self.methods: Counter[str] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.methods[request.method] += 1
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@dataclass(frozen=True)
class Run:
    """One measured no-op run."""

    seconds: float
    requests: dict[str, int]
    outcomes: dict[str, int]


def _outcomes(report: BatchReport) -> dict[str, int]:
    return dict(Counter(image.outcome for image in report.images))


def _push_images(registry: RegistryServer, layout: Path, count: int, parallel: int) -> list[str]:
    base = tar_bytes([TarEntry.dir("etc"), TarEntry.file("etc/base", b"shared base layer\n")])
    built = [
        build_image(
            layout, [base, tar_bytes([TarEntry.file("id", f"{i}\n".encode())])], tag=f"i{i:04d}"
        )
        for i in range(count)
    ]
    references = [f"{registry.host}/{REPOSITORY}:{image.tag}" for image in built]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        pushes = [
            pool.submit(skopeo_copy, image.oci_ref, f"docker://{reference}")
            for image, reference in zip(built, references, strict=True)
        ]
        for push in pushes:
            push.result()
    return references


def _in_process(wishlist: Path, repo: Path) -> Run:
    transport = CountingTransport()
    with RegistryClient(transport=transport) as client:
        wishes = load(wishlist)
        start = time.perf_counter()
        report = convert_wishlist(wishes, client=client, publisher=open_publisher(f"dir:{repo}"))
        seconds = time.perf_counter() - start
    return Run(seconds, dict(transport.methods), _outcomes(report))


def _cli(wishlist: Path, repo: Path) -> Run:
    command = [UNPACKED, "-q", "convert", str(wishlist), "--repo", f"dir:{repo}", "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, timeout=CLI_TIMEOUT, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()
        raise BenchError(f"{' '.join(command)} exited {done.returncode}: {stderr}")
    summary = json.loads(done.stdout)["summary"]
    return Run(seconds, {}, {key: value for key, value in summary.items() if value})


def _check(run: Run, count: int, what: str, *, requests: bool) -> None:
    if run.outcomes != {"unchanged": count}:
        raise BenchError(f"{what}: expected {count} unchanged images, got {run.outcomes}")
    if requests and run.requests != {"HEAD": count}:
        raise BenchError(f"{what}: expected exactly {count} HEAD requests, got {run.requests}")


def _summary(runs: Sequence[Run], count: int) -> dict[str, object]:
    median = statistics.median(run.seconds for run in runs)
    return {
        "median_seconds": round(median, 4),
        "ms_per_image": round(median * 1000 / count, 3),
        "samples": [round(run.seconds, 4) for run in runs],
        "requests": runs[-1].requests,
        "outcomes": runs[-1].outcomes,
    }


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    with start_registry(workdir / "storage", workdir=workdir / "registry") as registry:
        started = time.perf_counter()
        references = _push_images(registry, workdir / "layout", args.count, args.parallel_push)
        print(f"pushed {args.count} images in {time.perf_counter() - started:.1f} s", flush=True)
        wishlist = workdir / "wishlist.yaml"
        lines = "".join(f"  - '{reference}'\n" for reference in references)
        wishlist.write_text(f"version: 1\ninput:\n{lines}")
        repo = workdir / "repo"
        first = _in_process(wishlist, repo)
        if first.outcomes != {"added": args.count}:
            raise BenchError(f"first conversion: expected {args.count} added, got {first.outcomes}")
        print(f"first conversion: {first.seconds:.2f} s", flush=True)
        in_process, cli = [], []
        for index in range(args.repeat):
            in_process.append(_in_process(wishlist, repo))
            _check(in_process[-1], args.count, "in-process no-op", requests=True)
            cli.append(_cli(wishlist, repo))
            _check(cli[-1], args.count, "CLI no-op", requests=False)
            print(
                f"  run {index + 1}: in process {in_process[-1].seconds:.3f} s, "
                f"CLI {cli[-1].seconds:.3f} s",
                flush=True,
            )
    return {
        "count": args.count,
        "first_conversion_seconds": round(first.seconds, 4),
        "in_process": _summary(in_process, args.count),
        "cli": _summary(cli, args.count),
        "target_ms_per_image": TARGET_MS,
        "parameters": vars(args),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def report(summary: dict[str, object]) -> None:
    count = summary["count"]
    rows = [["no-op convert", f"wall ({count} images)", "per image", "target", "requests"]]
    for key, name in (("in_process", "in process"), ("cli", "CLI (with start-up)")):
        result = summary[key]
        assert isinstance(result, dict)
        per_image = result["ms_per_image"]
        verdict = "ok" if per_image <= TARGET_MS else "MISSED"
        requests = ", ".join(f"{n} {m}" for m, n in sorted(result["requests"].items())) or "-"
        rows.append(
            [
                name,
                f"{result['median_seconds']:.3f} s",
                f"{per_image:.1f} ms",
                f"<= {TARGET_MS:.0f} ms {verdict}",
                requests,
            ]
        )
    print()
    print(table(rows))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=100, help="images in the wish list")
    parser.add_argument("--repeat", type=int, default=3, help="no-op runs of each kind (median)")
    parser.add_argument("--parallel-push", type=int, default=4, help="skopeo pushes at a time")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--workdir", default=None, help="where to create the working directory")
    parser.add_argument("--out", default=str(REPO / "bench" / "out"), help="JSON results directory")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1 or args.parallel_push < 1:
        parser.error("--count, --repeat and --parallel-push must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_in_workdir(parse_args(argv), "noop_convert", measure, report)


if __name__ == "__main__":
    sys.exit(main())
