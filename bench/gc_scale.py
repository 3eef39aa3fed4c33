"""Benchmark: garbage collection of repositories of 1,000 to 10,000 images, half of them due.

Converts a small image from a real docker-registry on 127.0.0.1 (pushed with skopeo)
into a template repository, then synthesizes each repository of ``--sizes`` images by
cloning what that conversion wrote, faithfully and per image: a flat tree (hard links to
the template's, as convert makes them to ``layerfs``), a layer of its own (``layerfs``
hard-linked, ``origin.json`` naming the image, ``layers.json``), a ``manifest.json`` and a
``status.json`` rewritten with the image's own config and layer digests, and a public
link; the base layer is shared by all and its ``origin.json`` names every image. Every
second image is deleted as ``delete-image`` leaves it (no link, no metadata, on the
removal schedule since 2020). Converting thousands of images from the registry would
take an hour for the same repository: gc never reads blobs, only these records.

For each size, a fresh copy for each contender: ``main`` (``--baseline``, that git
revision's ``src/`` exported with ``git archive``) and this tree. Each runs in a child
process that times ``read_state`` alone, then one ``collect_garbage`` cycle (default
grace: every deleted image has expired), and reports ms per removed image.

    .venv/bin/python bench/gc_scale.py                       # 1000 3000 10000
    .venv/bin/python bench/gc_scale.py --sizes 1000 --baseline-max 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import REPO, BenchError, export_src, run_in_workdir, settle, table

from support.oci import TarEntry, build_image, tar_bytes
from support.registry import skopeo_copy, start_registry
from unpacked import layout
from unpacked.convert import convert_image
from unpacked.digest import Digest
from unpacked.publish import open_publisher
from unpacked.reference import parse
from unpacked.registry import RegistryClient

TIMEOUT = 3600.0
CHILD = """
import json, sys, time
from datetime import UTC, datetime
from pathlib import Path
from unpacked.gc import collect_garbage, read_state
from unpacked.publish import open_publisher
root = Path(sys.argv[1])
started = time.perf_counter()
read_state(root)
read = time.perf_counter() - started
started = time.perf_counter()
plan = collect_garbage(open_publisher(f"dir:{root}"), now=datetime.now(UTC))
gc = time.perf_counter() - started
print(json.dumps({"read_state_seconds": read, "gc_seconds": gc, "images": len(plan.images),
                  "layers": len(plan.layers), "batches": len(plan.batches)}))
"""


def _template(workdir: Path) -> tuple[Path, str]:
    """A repository with one converted image (base layer + own layer); its reference."""
    base = tar_bytes([TarEntry.dir("etc"), TarEntry.file("etc/os-release", b"ID=gc-bench\n")])
    own = tar_bytes([TarEntry.dir("app"), TarEntry.file("app/id", b"template\n")])
    built = build_image(workdir / "layout", [base, own])
    with start_registry(workdir / "storage", workdir=workdir / "registry") as registry:
        reference = f"{registry.host}/bench/gc:template"
        skopeo_copy(built.oci_ref, f"docker://{reference}")
        root = workdir / "template"
        with RegistryClient() as client:
            convert_image(parse(reference), client=client, publisher=open_publisher(f"dir:{root}"))
    return root, reference


class Synthesizer:
    """Clones the template's image as image ``i`` of a repository."""

    def __init__(self, template: Path, reference: str) -> None:
        self.template = template
        self.ref = parse(reference)
        self.status = json.loads((template / layout.status_file(self.ref)).read_bytes())
        self.manifest = json.loads((template / layout.manifest_file(self.ref)).read_bytes())
        self.base, self.own = (Digest.parse(d["digest"]) for d in self.manifest["layers"])
        self.image = Digest.parse(self.status["imageId"])

    def repository(self, root: Path, count: int) -> None:
        shutil.copytree(
            self.template / layout.layer_dir(self.base), root / layout.layer_dir(self.base)
        )
        ids, schedule = [], []
        for index in range(count):
            image_id = self._image(root, index, deleted=index % 2 == 1)
            ids.append(image_id)
            if index % 2 == 1:
                reference = f"{self.ref.registry}/bench/gc:{index}"
                schedule.append(
                    {
                        "imageId": image_id,
                        "reference": reference,
                        "unlinked": "2020-01-01T00:00:00Z",
                    }
                )
        origin = root / layout.layer_origin_file(self.base)
        origin.write_text(json.dumps({"origin": sorted(ids)}))
        (root / layout.REMOVE_SCHEDULE).parent.mkdir(parents=True, exist_ok=True)
        (root / layout.REMOVE_SCHEDULE).write_text(json.dumps({"version": 1, "images": schedule}))

    def _image(self, root: Path, index: int, *, deleted: bool) -> str:
        image = Digest.of(f"gc-bench image {index}".encode())
        own = Digest.of(f"gc-bench layer {index}".encode())
        _link_tree(self.template / layout.flat_dir(self.image), root / layout.flat_dir(image))
        layer = root / layout.layer_dir(own)
        _link_tree(self.template / layout.layer_dir(self.own), layer)
        origin = root / layout.layer_origin_file(own)
        origin.unlink()  # a hard link to the template's: replace it, do not write through
        origin.write_text(json.dumps({"origin": [str(image)]}))
        if deleted:
            return str(image)
        ref = parse(f"{self.ref.registry}/bench/gc:{index}")
        manifest = dict(self.manifest)
        manifest["config"] = {**manifest["config"], "digest": str(image)}
        manifest["layers"] = [manifest["layers"][0], {**manifest["layers"][1], "digest": str(own)}]
        metadata = root / layout.metadata_dir(ref)
        metadata.mkdir(parents=True)
        (metadata / "manifest.json").write_text(json.dumps(manifest))
        status = {**self.status, "reference": str(ref), "imageId": str(image)}
        (metadata / "status.json").write_text(json.dumps(status))
        link = layout.public_link(ref)
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(layout.relative_target(link, layout.flat_dir(image)), root / link)
        return str(image)


def _link_tree(source: Path, target: Path) -> None:
    """``source`` again at ``target``: directories made, files hard-linked, links copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, symlinks=True, copy_function=os.link)


def _run(src: Path, root: Path, *, settled: bool) -> dict[str, Any]:
    if settled:
        settle(forget_dentries=True)
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"gc of {root} with {src}: {done.stderr.strip()}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["ms_per_removal"] = round(result["gc_seconds"] * 1000 / max(result["images"], 1), 3)
    return result


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    template, reference = _template(workdir)
    synth = Synthesizer(template, reference)
    contenders = [("after", REPO / "src")]
    baseline = export_src(args.baseline, workdir / "baseline") if args.baseline else None
    results: dict[str, dict[str, Any]] = {}
    for size in args.sizes:
        runs = (
            contenders
            if baseline is None or size > args.baseline_max
            else [("before", baseline), *contenders]
        )
        for name, src in runs:
            root = workdir / f"repo-{size}-{name}"
            started = time.perf_counter()
            synth.repository(root, size)
            made = time.perf_counter() - started
            result = _run(src, root, settled=args.settle)
            if result["images"] != size // 2:
                raise BenchError(f"{name} {size}: removed {result['images']}, not {size // 2}")
            results[f"{name}-{size}"] = {**result, "size": size, "synthesis_seconds": made}
            print(
                f"  {name} {size}: {result['gc_seconds']:.2f} s, "
                f"{result['ms_per_removal']:.1f} ms/removal, read_state "
                f"{result['read_state_seconds']:.2f} s",
                flush=True,
            )
            shutil.rmtree(root)
    return {
        "results": results,
        "parameters": vars(args),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def report(summary: dict[str, Any]) -> None:
    rows = [["contender", "images", "removed", "gc", "ms/removal", "read_state"]]
    for name, r in summary["results"].items():
        rows.append(
            [
                name.split("-")[0],
                str(r["size"]),
                str(r["images"]),
                f"{r['gc_seconds']:.2f} s",
                f"{r['ms_per_removal']:.1f}",
                f"{r['read_state_seconds']:.3f} s",
            ]
        )
    print()
    print(table(rows))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument(
        "--baseline", default="main", help="git revision measured as 'before' ('' for none)"
    )
    parser.add_argument(
        "--baseline-max",
        type=int,
        default=3000,
        help="largest size the baseline runs at (it is quadratic)",
    )
    parser.add_argument(
        "--settle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sync, drop unused dentries and pause 2 s before each run (default: yes)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--workdir", default=None, help="where to create the working directory")
    parser.add_argument("--out", default=str(REPO / "bench" / "out"), help="JSON results directory")
    args = parser.parse_args(argv)
    if any(size < 2 for size in args.sizes):
        parser.error("--sizes must be at least 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_in_workdir(parse_args(argv), "gc_scale", measure, report)


if __name__ == "__main__":
    sys.exit(main())
