"""Benchmark: a no-op ``convert`` cycle over thousands of images, through a slow link.

Issue 12: a no-op cycle over 3,000 images, through a proxy adding 50 ms to every
request, must take at most 60 s, reuse its connections (counted) and bound its
concurrency per registry. This script:

1. starts a real docker-registry on 127.0.0.1, pushes one small image with skopeo
   and tags it ``--count`` times (PUTs of its manifest: many tags of one image, so
   every image is a metadata-only conversion after the first);
2. starts ``CountingProxy`` (``tests/support/proxy.py``) in front of it; the wish
   list names the images through the proxy, which counts TCP connections and
   requests and holds each request ``--delay`` seconds;
3. converts the wish list once with this tree's code (delay 0: setup, not measured);
4. measures the no-op cycle ``--repeat`` times, interleaved, with
   (a) this tree's code and (b) the baseline (``--baseline``, a git revision,
   exported with ``git archive`` into the working directory), both through the
   command line ``unpacked -q convert W --repo dir:R --json`` as child processes,
   and checks that every image came out ``unchanged``.

    .venv/bin/python bench/noop_cycle.py                       # 3,000 images, 50 ms
    .venv/bin/python bench/noop_cycle.py --count 300 --baseline none
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import CLI_ENTRY, REPO, BenchError, export_src, run_in_workdir, table

from support.oci import TarEntry, build_image, tar_bytes
from support.proxy import CountingProxy
from support.registry import RegistryServer, start_registry
from support.samples import push, put_manifest

REPOSITORY = "bench/cycle"
TARGET_SECONDS_PER_3000 = 60.0
CLI_TIMEOUT = 3600.0
ENTRY = CLI_ENTRY


@dataclass(frozen=True)
class Code:
    """Which ``unpacked`` a run uses: ``src`` is put first on ``PYTHONPATH``."""

    name: str
    src: Path


@dataclass(frozen=True)
class Run:
    seconds: float
    connections: int
    requests: int


def _tag_images(registry: RegistryServer, workdir: Path, count: int) -> list[str]:
    layer = tar_bytes([TarEntry.file("hello", b"one small image, many tags\n")])
    built = build_image(workdir / "layout", [layer], tag="one")
    tags = [f"t{i:05d}" for i in range(count)]
    pushed = push(registry, built, f"{REPOSITORY}:{tags[0]}")
    put_manifest(registry, pushed, tags[1:])
    return tags


def _baseline(revision: str, workdir: Path) -> Code:
    """The baseline's ``src/``, exported from git."""
    return Code(f"baseline ({revision})", export_src(revision, workdir / "baseline"))


def _cycle(code: Code, wishlist: Path, repo: Path, proxy: CountingProxy, count: int) -> Run:
    command = [sys.executable, "-c", ENTRY, "-q", "convert", str(wishlist)]
    command += ["--repo", f"dir:{repo}", "--json"]
    env = {**os.environ, "PYTHONPATH": str(code.src)}
    proxy.reset()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, timeout=CLI_TIMEOUT, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip()[-2000:]
        raise BenchError(f"{code.name}: convert exited {done.returncode}: {stderr}")
    summary = json.loads(done.stdout)["summary"]
    if summary.get("unchanged") != count:
        raise BenchError(f"{code.name}: expected {count} unchanged images, got {summary}")
    return Run(seconds, proxy.connections, proxy.chunks)


def _summary(runs: Sequence[Run]) -> dict[str, object]:
    return {
        "median_seconds": round(statistics.median(run.seconds for run in runs), 3),
        "samples": [round(run.seconds, 3) for run in runs],
        "connections": [run.connections for run in runs],
        "requests": [run.requests for run in runs],
    }


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    codes = [Code("this tree", REPO / "src")]
    if args.baseline != "none":
        codes.append(_baseline(args.baseline, workdir))
    with start_registry(workdir / "storage", workdir=workdir / "registry") as registry:
        started = time.perf_counter()
        tags = _tag_images(registry, workdir, args.count)
        print(f"tagged {args.count} images in {time.perf_counter() - started:.1f} s", flush=True)
        host, port = registry.host.rsplit(":", 1)
        with CountingProxy(host, int(port)) as proxy:
            wishlist = workdir / "wishlist.yaml"
            lines = "".join(f"  - '{proxy.host}/{REPOSITORY}:{tag}'\n" for tag in tags)
            wishlist.write_text(f"version: 1\ninput:\n{lines}")
            repo = workdir / "repo"
            started = time.perf_counter()
            _first_conversion(codes[0], wishlist, repo, args.count)
            print(f"first conversion: {time.perf_counter() - started:.1f} s", flush=True)
            proxy.delay = args.delay
            runs: dict[str, list[Run]] = {code.name: [] for code in codes}
            for index in range(args.repeat):
                for code in codes:
                    run = _cycle(code, wishlist, repo, proxy, args.count)
                    runs[code.name].append(run)
                    print(
                        f"  run {index + 1}, {code.name}: {run.seconds:.1f} s, "
                        f"{run.connections} connections, {run.requests} requests",
                        flush=True,
                    )
    return {
        "count": args.count,
        "delay_seconds": args.delay,
        "target_seconds": TARGET_SECONDS_PER_3000 * args.count / 3000,
        "results": {name: _summary(found) for name, found in runs.items()},
        "parameters": vars(args),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _first_conversion(code: Code, wishlist: Path, repo: Path, count: int) -> None:
    command = [sys.executable, "-c", ENTRY, "-q", "convert", str(wishlist)]
    command += ["--repo", f"dir:{repo}", "--json"]
    env = {**os.environ, "PYTHONPATH": str(code.src)}
    done = subprocess.run(command, capture_output=True, timeout=CLI_TIMEOUT, env=env, check=False)
    summary = json.loads(done.stdout or b"{}").get("summary", {})
    if done.returncode != 0 or summary.get("added") != count:
        stderr = done.stderr.decode(errors="replace").strip()[-2000:]
        raise BenchError(f"first conversion: exit {done.returncode}, {summary}: {stderr}")


def report(summary: dict[str, object]) -> None:
    results = summary["results"]
    assert isinstance(results, dict)
    target = summary["target_seconds"]
    rows = [
        ["no-op cycle", f"wall ({summary['count']} images)", "target", "connections", "requests"]
    ]
    for name, result in results.items():
        verdict = "ok" if result["median_seconds"] <= target else "MISSED"
        rows.append(
            [
                name,
                f"{result['median_seconds']:.1f} s",
                f"<= {target:.1f} s {verdict}",
                "/".join(str(n) for n in result["connections"]),
                "/".join(str(n) for n in result["requests"]),
            ]
        )
    print()
    print(table(rows))
    names = list(results)
    if len(names) == 2:
        ratio = results[names[0]]["median_seconds"] / results[names[1]]["median_seconds"]
        print(f"\n{names[0]} / {names[1]}: {ratio:.3f}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=3000, help="images (tags) in the wish list")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds added per request")
    parser.add_argument("--repeat", type=int, default=1, help="no-op cycles of each code")
    parser.add_argument(
        "--baseline", default="main", help="git revision to compare with, or 'none'"
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--workdir", default=None, help="where to create the working directory")
    parser.add_argument("--out", default=str(REPO / "bench" / "out"), help="JSON results directory")
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1 or args.delay < 0:
        parser.error("--count and --repeat must be at least 1, --delay not negative")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_in_workdir(parse_args(argv), "noop_cycle", measure, report)


if __name__ == "__main__":
    sys.exit(main())
