"""A transaction killed with SIGKILL at any moment leaves the old or the new state, never a mix.

The worker replaces state "old" with state "new" (``publish_worker.run_new``: new trees
with many files, 300 metadata files replaced, 30 created under new directories, a
directory turned into a file, a public link swapped, a tree and a link removed).
Kills are spread over three windows:

- staging: a random delay after the transaction opened;
- commit: a random delay after the body ended, over the whole commit as timed by an
  undisturbed run (flush, journal, renames, flush, deleting the trash);
- renames: the moment a randomly chosen step of the commit becomes visible (the
  k-th metadata file replaced, or the public link swapped). Timing cannot aim
  there: on a loaded machine the renames take a few milliseconds, give or take 10x.

After each kill, opening and closing an empty transaction must recover exactly "old"
or exactly "new" (the latter whenever a journal was left), with no staging left, and
running the transaction again must give "new".
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from publish_helpers import Worker, areas, journals, state
from publish_worker import METADATA_FILES, NEW_TREE, PUBLIC, STALE_TREE, build_old, run_new

from support.tree import Snapshot, compare, format_differences
from unpacked.publish import open_publisher

RUNS = 24
WINDOWS = ("staging", "commit", "renames")
POLL_LIMIT = 30.0
NEW_TARGET = os.fsdecode(Path("..") / NEW_TREE)


@dataclass(frozen=True)
class Timing:
    staging: float
    commit: float


@dataclass(frozen=True)
class Outcome:
    window: str
    when: str
    journal: bool
    seen: str  # "old", "new" or "mixed": the tree right after the kill
    finished: bool

    def __str__(self) -> str:
        flags = " journal" if self.journal else ""
        flags += " finished-before-kill" if self.finished else ""
        return f"{self.window:8} {self.when:28} -> {self.seen}{flags}"


def _differences(expected: Snapshot, actual: Snapshot) -> str:
    return format_differences(compare(expected, actual), limit=10)


def _classify(tree: Snapshot, old: Snapshot, new: Snapshot) -> str:
    if tree == old:
        return "old"
    if tree == new:
        return "new"
    return "mixed"


def _calibrate(root: Path, template: Path) -> tuple[Snapshot, Snapshot, Timing]:
    """One undisturbed run: the old and new states, and how long staging and commit last.

    ``template`` keeps a copy of the old state for the runs to start from.
    """
    publisher = open_publisher(f"dir:{root}")
    with publisher.transaction() as transaction:
        build_old(transaction)
    old = state(root)
    subprocess.run(["cp", "-a", str(root), str(template)], check=True, timeout=60)
    with Worker("crash", str(root)) as worker:
        worker.expect("staging")
        opened = time.monotonic()
        worker.expect("committing")
        committing = time.monotonic()
        worker.expect("committed")
        assert worker.process.wait(timeout=POLL_LIMIT) == 0, worker.stderr()
        ended = time.monotonic()
    new = state(root)
    assert os.readlink(root / PUBLIC) == NEW_TARGET
    assert not (root / STALE_TREE).exists()
    assert new != old
    return old, new, Timing(committing - opened, ended - committing)


def _step_visible(root: Path, step: int) -> bool:
    """Whether commit progress ``step`` is visible: the step-th metadata file, or the link."""
    if step == METADATA_FILES:
        return os.readlink(root / PUBLIC) == NEW_TARGET
    # Never missing, not even for a moment: a replaced file is swapped by one rename.
    return (root / f".metadata/m/{step}.json").read_bytes() == f"new {step}".encode()


def _wait_for_step(root: Path, worker: Worker, step: int) -> None:
    deadline = time.monotonic() + POLL_LIMIT
    while not _step_visible(root, step) and worker.process.poll() is None:
        assert time.monotonic() < deadline, f"commit step {step} never became visible"


def _kill_once(root: Path, window: str, chance: random.Random, timing: Timing) -> tuple[str, bool]:
    with Worker("crash", str(root)) as worker:
        worker.expect("staging")
        if window == "staging":
            delay = chance.uniform(0, timing.staging)
            when = f"+{delay * 1000:.1f} ms"
            time.sleep(delay)
        elif window == "commit":
            worker.expect("committing")
            delay = chance.uniform(0, timing.commit)
            when = f"+{delay * 1000:.1f} ms"
            time.sleep(delay)
        else:
            worker.expect("committing")
            step = chance.randrange(METADATA_FILES + 1)
            _wait_for_step(root, worker, step)
            when = "link swapped" if step == METADATA_FILES else f"metadata file {step} placed"
        worker.kill()
        return when, worker.process.returncode == 0


def _run(
    root: Path,
    window: str,
    chance: random.Random,
    timing: Timing,
    *,
    template: Path,
    old: Snapshot,
    new: Snapshot,
) -> Outcome:
    # A copy is much faster than publishing "old" again, and the same to a reader.
    subprocess.run(["cp", "-a", str(template), str(root)], check=True, timeout=60)
    publisher = open_publisher(f"dir:{root}")
    assert state(root) == old, _differences(old, state(root))

    when, finished = _kill_once(root, window, chance, timing)
    journal = bool(journals(root))
    killed = state(root)
    seen = _classify(killed, old, new)
    # Without a journal nothing was half-published: a mix needs a commit under way.
    assert journal or seen != "mixed", _differences(new, killed)

    with publisher.transaction(lock_timeout=10):
        pass  # recovery only
    recovered = state(root)
    expected = new if journal else killed
    assert recovered == expected, f"{window}: {_differences(expected, recovered)}"
    assert areas(root) == []

    with publisher.transaction() as transaction:
        run_new(transaction)
    assert state(root) == new, _differences(new, state(root))
    assert areas(root) == []
    shutil.rmtree(root)
    return Outcome(window, when, journal, seen, finished)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory on tmpfs if there is one, else ``tmp_path``.

    SIGKILL leaves the page cache intact, so these kills do not need a disk; on tmpfs
    fsync and syncfs cost nothing, which keeps 24 runs fast on a busy machine and puts
    the commit's time into the renames, where the kills should land. The other
    tests publish on the real file system.
    """
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="unpacked-crash-") as directory:
        yield Path(directory)


@pytest.mark.slow
def test_a_killed_transaction_recovers_to_the_old_or_the_new_state(scratch: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    chance = random.Random(seed)
    template = scratch / "old"
    old, new, timing = _calibrate(scratch / "calibration", template)

    outcomes: list[Outcome] = []
    for run in range(RUNS):
        window = WINDOWS[run % len(WINDOWS)]
        outcomes.append(
            _run(
                scratch / f"run{run}",
                window,
                chance,
                timing,
                template=template,
                old=old,
                new=new,
            )
        )

    report = f"seed {seed}, {timing}\n" + "\n".join(str(o) for o in outcomes)
    during_commit = [o for o in outcomes if o.journal]
    mixed = [o for o in outcomes if o.seen == "mixed"]
    during_staging = [o for o in outcomes if o.seen == "old" and not o.journal]
    assert len(during_commit) >= 4, report
    assert len(mixed) >= 1, report
    assert len(during_staging) >= 3, report
    print(report)
