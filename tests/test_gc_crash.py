"""Garbage collection killed with SIGKILL mid-sweep leaves a consistent repository.

The repository: one live image and ``IMAGES`` deleted ones, all sharing a base layer,
each with a layer of its own of a few hundred files, so the sweep (batches of
``BATCH`` removals: one image and its layer per transaction) takes a while. A worker
process sweeps at a time when every deleted image has expired; it is killed at a random
moment between the start of the sweep and its calibrated end. Then:

- the next transaction (an empty one: recovery only) leaves a consistent repository
  (``gc_worker.check_consistency``: every link resolves to a complete flat tree, every
  layer of a live manifest exists, no ``origin.json`` names an image that exists
  nowhere, no flat tree is neither live nor scheduled; and ``unpacked.verify`` finds
  nothing);
- what is gone is exactly the first k batches of the plan, for some k: whole batches;
- a second run finishes the job: the repository equals the undisturbed run's result.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gc_worker import check_consistency
from support.oci import TarEntry, build_image, tar_bytes
from support.registry import RegistryServer
from support.tree import Snapshot, snapshot
from unpacked import layout
from unpacked.convert import convert_image
from unpacked.digest import Digest
from unpacked.gc import DEFAULT_GRACE, Plan, collect_garbage, delete_image, plan_garbage_collection
from unpacked.publish import open_publisher
from unpacked.reference import parse
from unpacked.registry import RegistryClient
from unpacked.verify import verify_repository

T = TarEntry
IMAGES = 12
FILES = 300
BATCH = 2
RUNS = 12
WORKER = Path(__file__).with_name("gc_worker.py")
LIMIT = 60.0


def _layer(label: str) -> bytes:
    entries = [T.dir(f"{label}-{d}") for d in range(10)]
    entries += [
        T.file(f"{label}-{n % 10}/f{n}", f"{label} {n}\n".encode() * 4) for n in range(FILES)
    ]
    return tar_bytes(entries)


BASE = tar_bytes([T.dir("etc"), T.file("etc/os-release", b"ID=gc-crash\n")])


@dataclass(frozen=True)
class Setup:
    template: Path
    now: datetime
    plan: Plan
    flats: dict[str, Snapshot]
    shared_origin: Path


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """tmpfs if there is one: SIGKILL spares the page cache, and syncfs costs nothing there."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="unpacked-gc-crash-") as directory:
        yield Path(directory)


def _build(tmp_path: Path, scratch: Path, registry: RegistryServer, push_image: Any) -> Setup:
    prefix = f"gc-crash/{os.urandom(4).hex()}"
    template = scratch / "template"
    publisher = open_publisher(f"dir:{template}")
    names = ["live", *(f"gone{n}" for n in range(IMAGES))]
    with RegistryClient() as client:
        for name in names:
            built = build_image(tmp_path / name, [BASE, _layer(name)])
            shared = Digest.parse(built.layer_digests[0])
            push_image(built, f"{prefix}-{name}:1")
            convert_image(
                parse(f"{registry.host}/{prefix}-{name}:1"), client=client, publisher=publisher
            )
    unlinked = datetime.now(UTC) - timedelta(minutes=1)
    for n, name in enumerate(names[1:]):
        when = unlinked + timedelta(seconds=n)
        delete_image(publisher, parse(f"{registry.host}/{prefix}-{name}:1"), now=when)
    now = unlinked + DEFAULT_GRACE + timedelta(hours=1)
    plan = plan_garbage_collection(publisher, now=now, batch_size=BATCH)
    assert len(plan.images) == IMAGES and len(plan.layers) == IMAGES
    assert len(plan.batches) == IMAGES
    flats = {
        f"sha256:{tree.name}": snapshot(tree)
        for top in (template / ".flat").iterdir()
        if top.is_dir()
        for tree in top.iterdir()
        if tree.is_dir()
    }
    return Setup(template, now, plan, flats, Path(layout.layer_origin_file(shared)))


class Sweeper:
    """``gc_worker.py sweep`` in a subprocess, with bounded reads of its markers."""

    def __init__(self, root: Path, now: datetime, step: int = 0) -> None:
        # stderr to a file: a chatty worker must never block on a full pipe.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "sweep",
                str(root),
                now.isoformat(),
                str(BATCH),
                str(step),
            ],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=os.environ | {"PYTHONDONTWRITEBYTECODE": "1"},
        )

    def line(self) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], LIMIT)
        return self.process.stdout.readline().decode().strip() if ready else "(nothing)"

    def expect(self, text: str) -> None:
        line = self.line()
        assert line == text, f"expected {text!r}, got {line!r}: {self.stderr()}"

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def __enter__(self) -> Sweeper:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=LIMIT)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


def _state(root: Path) -> Snapshot:
    return {
        path: node
        for path, node in snapshot(root).items()
        if path != b".unpacked" and not path.startswith(b".unpacked/")
    }


def _copy(setup: Setup, root: Path) -> None:
    subprocess.run(["cp", "-a", str(setup.template), str(root)], check=True, timeout=LIMIT)


@dataclass(frozen=True)
class Timing:
    seconds: float
    steps: int


def _calibrate(setup: Setup, root: Path) -> tuple[Timing, Snapshot]:
    """One undisturbed sweep: how long it takes, how many commit steps, what it leaves."""
    _copy(setup, root)
    with Sweeper(root, setup.now) as sweeper:
        sweeper.expect("sweeping")
        started = time.monotonic()
        done = sweeper.line()
        seconds = time.monotonic() - started
        assert sweeper.process.wait(timeout=LIMIT) == 0, sweeper.stderr()
    word, steps = done.split()
    assert word == "swept", done
    final = _state(root)
    assert check_consistency(root) == []
    return Timing(seconds, int(steps)), final


def _whole_batches(setup: Setup, root: Path) -> int:
    """How many of the plan's batches are done; fails if the removals are not whole batches."""
    gone = {
        image for image in setup.flats if not (root / ".flat" / image[7:9] / image[7:]).exists()
    }
    done = set()
    for count, batch in enumerate(setup.plan.batches):
        if done == gone:
            return count
        done |= {image.image_id for image in batch.images}
    assert done == gone, f"removed {sorted(gone)}: not a prefix of whole batches"
    return len(setup.plan.batches)


def _kill(setup: Setup, root: Path, chance: random.Random, timing: Timing, *, aim: bool) -> str:
    """Run a sweep and kill it: after a random delay, or (``aim``) at a random commit step.

    Timing alone rarely lands inside a commit (on tmpfs a commit takes well under a
    millisecond; reading the repository and deleting the trash take the rest), so half
    of the kills wait for the worker to stop before a randomly chosen journal step.
    """
    step = chance.randint(1, timing.steps) if aim else 0
    with Sweeper(root, setup.now, step) as sweeper:
        sweeper.expect("sweeping")
        if aim:
            sweeper.expect(f"step {step}")
            return f"before commit step {step}/{timing.steps}"
        delay = chance.uniform(0, timing.seconds)
        time.sleep(delay)
    return f"after {delay * 1000:.0f} ms"


@pytest.mark.slow
def test_a_killed_sweep_leaves_a_consistent_repository_and_a_rerun_finishes(
    tmp_path: Path, scratch: Path, registry: RegistryServer, push_image: Any
) -> None:
    setup = _build(tmp_path, scratch, registry, push_image)
    timing, final = _calibrate(setup, scratch / "calibration")
    seed = int.from_bytes(os.urandom(4), "big")
    chance = random.Random(seed)
    outcomes = []
    for run in range(RUNS):
        root = scratch / f"run{run}"
        _copy(setup, root)
        aim = run % 2 == 1
        when = _kill(setup, root, chance, timing, aim=aim)
        journal = any((root / ".unpacked" / "transactions").glob("*/journal.json"))
        assert journal or not aim, f"run {run}: killed {when}, but no commit was under way"
        publisher = open_publisher(f"dir:{root}")
        with publisher.transaction(lock_timeout=10):
            pass  # recovery only
        problems = check_consistency(root, setup.flats)
        problems += [finding.message for finding in verify_repository(publisher).findings]
        assert problems == [], f"run {run}, killed {when}: {problems}"
        batches = _whole_batches(setup, root)
        outcomes.append(
            f"run {run}: killed {when}{' mid-commit' if journal else ''}, {batches} batches done"
        )
        collect_garbage(publisher, now=setup.now, batch_size=BATCH)
        assert _state(root) == final, outcomes[-1]
        subprocess.run(["rm", "-rf", str(root)], check=True, timeout=LIMIT)
    report = f"seed {seed}, undisturbed sweep {timing}\n" + "\n".join(outcomes)
    midway = [o for o in outcomes if not o.endswith((" 0 batches done", f" {IMAGES} batches done"))]
    assert len(midway) >= RUNS // 3, report
    print(report)
