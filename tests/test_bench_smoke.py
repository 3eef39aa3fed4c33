"""The benchmarks run end to end on a tiny image (their timings are not checked)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "unpack_layers.py"
CONVERT_BENCH = BENCH.with_name("convert_image.py")
# A tiny image, one run of each contender, no waiting for the file system to settle.
TINY = ["--size-mb", "0.3", "--files", "60", "--layers", "3", "--repeat", "1"]
TINY += ["--quiet-seconds", "0"]

needs_bench_tools = pytest.mark.skipif(
    os.geteuid() != 0
    or any(shutil.which(tool) is None for tool in ("skopeo", "umoci", "docker-registry")),
    reason="the benchmarks run as root (owners, devices), with skopeo, umoci, docker-registry",
)


@needs_bench_tools
def test_benchmark_runs_on_a_tiny_image(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(BENCH), *TINY, "--out", str(out), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "identical (up to the intended differences)" in result.stdout
    (written,) = out.glob("unpack_layers-*.json")
    summary = json.loads(written.read_text())
    assert [r["name"][0] for r in summary["results"]] == ["a", "b", "c"]
    for contender in summary["results"]:
        assert contender["median_seconds"] > 0
        assert contender["median_peak_rss_bytes"] > 0
    assert set(summary["ratios"]) == {"a/b", "a/c"}
    # Everything it started or wrote is gone, the JSON results aside.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@needs_bench_tools
def test_convert_benchmark_runs_on_a_tiny_image(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(CONVERT_BENCH),
            *TINY,
            "--out",
            str(out),
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (written,) = out.glob("convert_image-*.json")
    summary = json.loads(written.read_text())
    assert set(summary["results"]) == {"cold", "umoci", "incremental", "top", "noop"}
    assert all(r["median_seconds"] > 0 for r in summary["results"].values())
    # Each layer's content is stored once: the flat trees are hard links.
    assert 0.9 < summary["repository_bytes"] / summary["unique_content_bytes"] < 1.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
