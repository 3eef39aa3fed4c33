"""Subprocess side of the garbage-collection tests, and the repository consistency check.

Run as ``python gc_worker.py <command> ...``; imported by the tests for
``check_consistency``. Commands print marker lines (flushed) that the tests wait for:

- ``sweep ROOT NOW BATCH [STEP]``: ``collect_garbage`` on ``dir:ROOT`` at time ``NOW``
  (ISO 8601) with the default grace and batches of BATCH removals; prints ``sweeping``
  just before and ``swept <journal steps carried out>`` after. With STEP, prints
  ``step STEP`` and waits (up to a minute) before the STEP-th journal step of its
  commits: the moment for a test to kill it.
- ``awkward ROOT REF NOW``: drops to uid/gid 65534 (started as root), converts REF into
  ``dir:ROOT``, gives it read-only directories and unreadable files (``harden``),
  deletes it and collects it at NOW plus the default grace; prints a JSON report.
  Everything is imported before the privileges go.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from support.tree import snapshot
from unpacked.convert import convert_image
from unpacked.gc import DEFAULT_GRACE, collect_garbage, delete_image
from unpacked.publish import _journal, open_publisher
from unpacked.reference import parse
from unpacked.registry import RegistryClient

NOBODY = 65534
LIMIT = 60.0  # seconds any wait of a worker may take


def marker(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# --- the consistency check ------------------------------------------------------------


def _links(root: Path) -> dict[str, str]:
    """Every symbolic link outside dot-directories (and under .multiarch) → its target."""
    links = {}
    for directory, subdirs, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        if relative == ".":
            subdirs[:] = [d for d in subdirs if not d.startswith(".") or d == ".multiarch"]
        for name in subdirs + files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                links[os.path.relpath(path, root)] = os.readlink(path)
    return links


def _json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _metadata(root: Path) -> tuple[set[str], set[str]]:
    """The image ids of every status.json and the layer digests of every manifest.json."""
    images, layers = set(), set()
    for directory, _, files in os.walk(root / ".metadata"):
        if "status.json" in files:
            images.add(_json(Path(directory) / "status.json")["imageId"])
        if "manifest.json" in files:
            manifest = _json(Path(directory) / "manifest.json")
            layers |= {layer["digest"] for layer in manifest["layers"]}
    return images, layers


def _fanout(top: Path) -> set[str]:
    if not top.is_dir():
        return set()
    return {
        f"sha256:{entry.name}"
        for sub in top.iterdir()
        if sub.is_dir()
        for entry in sub.iterdir()
        if entry.is_dir()
    }


def check_consistency(root: Path, complete: dict[str, Any] | None = None) -> list[str]:
    """What is wrong with the repository at ``root``; empty when it is consistent.

    ``complete`` maps image ids to the snapshot (``support.tree``) of their whole flat
    tree: any such tree still present must equal it.
    """
    problems = []
    flats = _fanout(root / ".flat")
    layers = _fanout(root / ".layers")
    status_images, live_layers = _metadata(root)
    schedule_file = root / ".metadata" / "remove-schedule.json"
    scheduled = (
        {e["imageId"] for e in _json(schedule_file)["images"]} if schedule_file.exists() else set()
    )
    linked = set()
    for link, target in _links(root).items():
        resolved = (root / link).parent / target
        image = "sha256:" + Path(target).name
        linked.add(image)
        if not resolved.is_dir():
            problems.append(f"link {link} -> {target}: no flat tree there")
    live = linked | status_images
    for layer in sorted(live_layers - layers):
        problems.append(f"layer {layer} of a live manifest is missing")
    for layer in sorted(layers):
        base = root / ".layers" / layer[7:9] / layer[7:]
        if not (base / "layerfs").is_dir() or not (base / ".metadata" / "layers.json").is_file():
            problems.append(f"layer {layer}: incomplete directory")
            continue
        origin = base / ".metadata" / "origin.json"
        origins = set(_json(origin)["origin"]) if origin.exists() else set()
        for image in sorted(origins - flats - live - scheduled):
            problems.append(f"layer {layer}: origin.json names {image}, which exists nowhere")
    for image in sorted(flats - live - scheduled):
        problems.append(f"flat tree {image} is neither live nor scheduled")
    for image, expected in (complete or {}).items():
        tree = root / ".flat" / image[7:9] / image[7:]
        if tree.exists() and snapshot(tree) != expected:
            problems.append(f"flat tree {image} is not complete")
    return problems


# --- hostile modes ------------------------------------------------------------------------

READ_ONLY_DIRS = ("ro", "sub", "layerfs")
UNREADABLE_FILES = ("secret",)


def harden(*trees: Path) -> list[Path]:
    """Give directories named in ``READ_ONLY_DIRS`` mode 0555 and ``UNREADABLE_FILES`` 000.

    The layer applier widens such modes (owner rwx on directories, r on files), so a
    repository it wrote never has them; the removal must cope anyway (another writer,
    an older version, a hand-made fix). Returns the paths changed.
    """
    changed = []
    for tree in trees:
        for directory, subdirs, files in os.walk(tree):
            for name in files:
                if name in UNREADABLE_FILES:
                    changed.append(Path(directory) / name)
                    os.chmod(changed[-1], 0o000)
            for name in subdirs:
                if name in READ_ONLY_DIRS:
                    changed.append(Path(directory) / name)
        for path in changed:
            if path.is_dir():
                os.chmod(path, 0o555)
    return changed


def image_trees(root: Path, image_id: str, layers: list[str]) -> list[Path]:
    """The flat tree and the layer directories of an image."""
    trees = [root / ".flat" / image_id[7:9] / image_id[7:]]
    return trees + [root / ".layers" / layer[7:9] / layer[7:] for layer in layers]


# --- commands ---------------------------------------------------------------------------


def _count_commit_steps(pause_at: int | None) -> list[int]:
    """Count the journal steps commits carry out; pause (bounded) before step ``pause_at``.

    The pause lets a test kill the process at an exact step inside a commit, which
    timing alone hits only by luck: on tmpfs a commit takes well under a millisecond.
    """
    count = [0]
    redo = _journal.redo

    def counted(*args: Any, **kwargs: Any) -> None:
        count[0] += 1
        if count[0] == pause_at:
            marker(f"step {pause_at}")
            time.sleep(LIMIT)
        redo(*args, **kwargs)

    _journal.redo = counted  # type: ignore[assignment]
    return count


def sweep(root: str, now: str, batch: str, pause_at: str = "0") -> None:
    publisher = open_publisher(f"dir:{root}")
    steps = _count_commit_steps(int(pause_at) or None)
    marker("sweeping")
    collect_garbage(publisher, now=datetime.fromisoformat(now), batch_size=int(batch))
    marker(f"swept {steps[0]}")


def awkward(root: str, ref: str, now: str) -> None:
    # The interpreter and its lazily loaded modules live where 65534 may not read:
    # what loads on first use (host name encoding, the client's TLS context) comes first.
    # and the dir: backend, which the publisher package loads when a repository is opened.
    "127.0.0.1".encode("idna")
    importlib.import_module("unpacked.publish._dir")
    with RegistryClient() as client:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        reference = parse(ref)
        publisher = open_publisher(f"dir:{root}")
        result = convert_image(reference, client=client, publisher=publisher)
    published = (Path(root) / ".flat" / result.image_id.hex[:2] / result.image_id.hex).is_dir()
    layers = [str(layer) for layer in result.layers_unpacked]
    hardened = harden(*image_trees(Path(root), str(result.image_id), layers))
    when = datetime.fromisoformat(now)
    delete_image(publisher, reference, now=when)
    plan = collect_garbage(publisher, now=when + DEFAULT_GRACE + timedelta(seconds=1))
    report = {
        "uid": os.getuid(),
        "published": published,
        "removedImages": [image.image_id for image in plan.images],
        "removedLayers": list(plan.layers),
        "imageId": str(result.image_id),
        "hardened": sorted(str(path.relative_to(root)) for path in hardened),
    }
    marker(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    commands = {"sweep": sweep, "awkward": awkward}
    commands[sys.argv[1]](*sys.argv[2:])
