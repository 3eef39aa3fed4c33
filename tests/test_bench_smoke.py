"""The benchmarks run end to end on tiny images (their timings are not checked)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
# A tiny image, one run of each contender, no waiting for the file system to settle.
TINY = ["--size-mb", "0.3", "--files", "60", "--layers", "3", "--repeat", "1"]
TINY += ["--quiet-seconds", "0"]

needs_registry_tools = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("skopeo", "docker-registry")),
    reason="skopeo and docker-registry are needed",
)
needs_bench_tools = pytest.mark.skipif(
    os.geteuid() != 0
    or any(shutil.which(tool) is None for tool in ("skopeo", "umoci", "docker-registry")),
    reason="the benchmarks run as root (owners, devices), with skopeo, umoci, docker-registry",
)


def run_benchmark(script: str, tmp_path: Path, *options: str) -> tuple[dict[str, Any], str]:
    """Run ``bench/<script>.py``; its JSON results and its output. Everything it started or
    wrote must be gone afterwards, the JSON aside."""
    out = tmp_path / "out"
    command = [sys.executable, str(BENCH / f"{script}.py"), *options]
    result = subprocess.run(
        [*command, "--out", str(out), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (written,) = out.glob(f"{script}-*.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    return json.loads(written.read_text()), result.stdout


@needs_bench_tools
def test_unpack_benchmark(tmp_path: Path) -> None:
    summary, output = run_benchmark("unpack_layers", tmp_path, *TINY)
    assert "identical (up to the intended differences)" in output
    assert [r["name"][0] for r in summary["results"]] == ["a", "b", "c"]
    for contender in summary["results"]:
        assert contender["median_seconds"] > 0
        assert contender["median_peak_rss_bytes"] > 0
    assert set(summary["ratios"]) == {"a/b", "a/c"}


@needs_bench_tools
def test_convert_benchmark(tmp_path: Path) -> None:
    summary, _ = run_benchmark("convert_image", tmp_path, *TINY, "--baseline", "HEAD")
    compared = {
        f"{side}: {label}"
        for side in ("before", "after")
        for label in ("convert A (cold)", "convert B after A", "no-op re-run of A")
    }
    assert set(summary["results"]) == {
        "cold",
        "cold-1",
        "umoci",
        "incremental",
        "top",
        "noop",
        *compared,
    }
    assert {name for name in summary["ratios"] if name.startswith("after / before")} == {
        f"after / before (HEAD): {label}"
        for label in ("convert A (cold)", "convert B after A", "no-op re-run of A")
    }
    assert all(r["median_seconds"] > 0 for r in summary["results"].values())
    # Each layer's content is stored once: the flat trees are hard links.
    assert 0.9 < summary["repository_bytes"] / summary["unique_content_bytes"] < 1.1


@needs_registry_tools
def test_noop_benchmark(tmp_path: Path) -> None:
    summary, _ = run_benchmark("noop_convert", tmp_path, "--count", "3")
    assert summary["count"] == 3
    assert summary["in_process"]["requests"] == {"HEAD": 3}
    assert summary["in_process"]["outcomes"] == {"unchanged": 3}
    assert summary["cli"]["outcomes"] == {"unchanged": 3}
    assert summary["cli"]["median_seconds"] > 0


@needs_registry_tools
def test_noop_cycle_benchmark(tmp_path: Path) -> None:
    options = ("--count", "3", "--delay", "0.01", "--baseline", "HEAD")
    summary, _ = run_benchmark("noop_cycle", tmp_path, *options)
    assert summary["count"] == 3
    assert len(summary["results"]) == 2
    for result in summary["results"].values():
        assert result["median_seconds"] > 0
        assert result["requests"] == [3]  # one manifest HEAD per image, through the proxy
        assert 1 <= result["connections"][0] <= 3


def test_faults_benchmark(tmp_path: Path) -> None:
    summary, output = run_benchmark(
        "faults", tmp_path, "--layers", "2", "--timeout", "0.5", "--repeat", "1"
    )
    assert "median to give up" in output
    assert summary["median_seconds"] > 0
    assert "did not answer in time" in summary["message"]


def test_verify_deep_benchmark(tmp_path: Path) -> None:
    summary, output = run_benchmark("verify_deep", tmp_path, *TINY)
    assert set(summary["ratios"]) == {
        "verify --deep / sha256sum  (target <= 1.5)",
        "convert with content index / without",
    }
    assert summary["files"] > 0
    assert all(r["median_seconds"] > 0 for r in summary["results"].values())
    assert "verify --deep / sha256sum" in output


def test_gc_scale_benchmark(tmp_path: Path) -> None:
    summary, output = run_benchmark(
        "gc_scale", tmp_path, "--sizes", "6", "--baseline", "HEAD", "--no-settle"
    )
    assert set(summary["results"]) == {"before-6", "after-6"}
    for result in summary["results"].values():
        assert (result["images"], result["layers"]) == (3, 3)
        assert result["read_state_seconds"] > 0
    assert "ms/removal" in output
