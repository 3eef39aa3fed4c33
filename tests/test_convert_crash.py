"""``unpacked convert-single-image`` killed at any moment leaves the old image or the new one.

The repository starts with image v1 of ``crash/img:latest`` published; the tag then
points at v2 (four layers, over a thousand small files, one layer shared with v1).
Each run copies that repository, starts the real command line on it and SIGKILLs it:
after a delay drawn over the whole conversion (from process start to exit, as timed
by undisturbed runs, and 20 % beyond), or, in a few runs, while the commit journal
exists (the commit lasts milliseconds: timing alone rarely hits it). Opening and
closing a transaction then recovers, and the repository must be exactly OLD (the
copy it started from) or exactly NEW (an undisturbed run's result, up to the times
recorded in the JSON files), with no staging left; converting again must give NEW.

Two processes converting two images into one repository at once must both succeed
and leave what converting them one after the other leaves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from support.faultproxy import Fault, FaultProxy
from support.oci import TarEntry, build_image, tar_bytes
from support.registry import RegistryServer
from support.samples import SampleImage
from support.tree import Snapshot, compare, format_differences, snapshot
from unpacked.convert import Outcome, convert_image
from unpacked.publish import open_publisher
from unpacked.reference import Reference
from unpacked.registry import RegistryClient

PushImage = Callable[..., SampleImage]

UNPACKED = Path(sys.executable).with_name("unpacked")
RUNS = 20
COMMIT_RUNS = 4
WORKER_RUNS = 8
COMMIT_STEPS = 6  # the commit of v2 has more steps than this (trees, files, links)
WORKER = Path(__file__).with_name("convert_worker.py")
POLL_INTERVAL = 0.0002
OVERSHOOT = 1.2
RUN_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
PRIVATE = b".unpacked"
# Times written into the records; everything else must be identical between runs.
_TIME_KEYS = frozenset({"lastCheck", "lastChange", "created", "unlinked"})
_TIMED_FILES = frozenset({b"status.json", b"layers.json", b"remove-schedule.json"})


def small_files_layer(label: str, count: int) -> bytes:
    """``count`` small files in directories of 50 under ``label/``."""
    entries: list[TarEntry] = [TarEntry.dir(label)]
    for index in range(count):
        if index % 50 == 0:
            entries.append(TarEntry.dir(f"{label}/d{index // 50}"))
        content = f"{label} file {index}\n".encode() * 4
        entries.append(TarEntry.file(f"{label}/d{index // 50}/f{index}", content))
    return tar_bytes(entries)


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k not in _TIME_KEYS}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def state(root: Path, *, times: bool = False) -> Snapshot:
    """What readers see under ``root``; without ``times``, the times in our JSON records
    (of checks, changes, layer records, unlinking) are blanked out."""
    kept: Snapshot = {}
    for path, node in snapshot(root).items():
        if path == PRIVATE or path.startswith(PRIVATE + b"/"):
            continue
        kept[path] = node
        if not times and os.path.basename(path) in _TIMED_FILES and node.sha256 is not None:
            content = json.loads((root / os.fsdecode(path)).read_bytes())
            canonical = json.dumps(_without_times(content), sort_keys=True).encode()
            digest = hashlib.sha256(canonical).hexdigest()
            kept[path] = dataclasses.replace(node, size=None, sha256=digest)
    return kept


def pending(root: Path) -> tuple[bool, bool]:
    """(a transaction area is left, a commit journal is left) in the private directory."""
    transactions = root / ".unpacked" / "transactions"
    areas = os.listdir(transactions) if transactions.exists() else []
    return bool(areas), any((transactions / a / "journal.json").exists() for a in areas)


def recover(root: Path) -> None:
    """Open and close a transaction: completes or discards what a killed process left."""
    with open_publisher(f"dir:{root}").transaction(lock_timeout=STOP_TIMEOUT):
        pass


def copy_tree(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True, timeout=60)


def command(reference: str, root: Path) -> list[str]:
    return [str(UNPACKED), "-q", "convert-single-image", reference, "--repo", f"dir:{root}"]


def run_to_completion(reference: str, root: Path) -> float:
    """Run the command line undisturbed; return how long the process lived."""
    started = time.monotonic()
    done = subprocess.run(
        command(reference, root), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started


def convert_in_process(reference: Reference, root: Path) -> Outcome:
    with RegistryClient() as client:
        return convert_image(
            reference, client=client, publisher=open_publisher(f"dir:{root}")
        ).outcome


@dataclasses.dataclass(frozen=True)
class Scenario:
    reference: Reference
    pristine: Path
    """The repository with v1 published: OLD."""
    finished: Path
    """``pristine`` after an undisturbed conversion of v2: NEW."""
    duration: float


@pytest.fixture(scope="module")
def scenario(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, push_image: PushImage
) -> Scenario:
    workdir = tmp_path_factory.mktemp("convert-crash")
    layout = workdir / "oci"
    base = small_files_layer("base", 200)
    v1_built = build_image(layout, [base, small_files_layer("v1", 100)], tag="v1")
    v2_layers = [base, *(small_files_layer(f"v2-{i}", 350) for i in range(3))]
    v2_built = build_image(layout, v2_layers, tag="v2")
    reference = Reference(registry.host, "crash/img", "latest")
    push_image(v1_built, "crash/img:latest")
    pristine = workdir / "pristine"
    assert convert_in_process(reference, pristine) is Outcome.ADDED
    push_image(v2_built, "crash/img:latest")
    # Two undisturbed runs: the longer one sets the span of the delays, and both must
    # leave the same tree, or OLD/NEW could not be told apart from a mix.
    finished, again = workdir / "finished", workdir / "again"
    durations = []
    for target in (finished, again):
        copy_tree(pristine, target)
        durations.append(run_to_completion(str(reference), target))
    assert state(finished) == state(again)
    return Scenario(reference, pristine, finished, max(durations))


@dataclasses.dataclass(frozen=True)
class Kill:
    when: str
    exited_first: bool
    area: bool
    journal: bool
    seen: str

    def __str__(self) -> str:
        flags = " area" * self.area + " journal" * self.journal
        flags += " exited-before-kill" * self.exited_first
        return f"{self.when:30} -> {self.seen}{flags}"


class Conversion:
    """The command line converting in a process of its own, killed on the way out."""

    def __init__(self, args: list[str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def kill(self) -> bool:
        """SIGKILL it now; whether it had exited (successfully) before."""
        exited = self.process.poll() is not None
        if not exited:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)
        assert not exited or self.process.returncode == 0, f"exit {self.process.returncode}"
        return exited

    def wait_for_journal(self, root: Path) -> None:
        """Until the commit journal is written, or the process ended without one."""
        transactions = root / ".unpacked" / "transactions"
        deadline = self.started + RUN_TIMEOUT
        while self.process.poll() is None:
            with contextlib.suppress(FileNotFoundError):
                if any(
                    (transactions / a / "journal.json").exists() for a in os.listdir(transactions)
                ):
                    return
            assert time.monotonic() < deadline, "the conversion neither committed nor ended"
            time.sleep(POLL_INTERVAL)

    def __enter__(self) -> Conversion:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=STOP_TIMEOUT)


def _classify(root: Path, old: Snapshot, new: Snapshot, history: list[Kill]) -> str:
    """ "old" if ``root`` is exactly ``old`` (times too), "new" if it is ``new``."""
    if state(root, times=True) == old:
        return "old"
    now = state(root)
    if now == new:
        return "new"
    log = "\n".join(str(kill) for kill in history)
    raise AssertionError(
        "repository is neither OLD nor NEW after recovery; against NEW:\n"
        + format_differences(compare(new, now), limit=15)
        + "\nagainst OLD:\n"
        + format_differences(compare(old, state(root, times=True)), limit=15)
        + f"\nearlier runs:\n{log}"
    )


@dataclasses.dataclass
class CrashLoop:
    scenario: Scenario
    root: Path
    old: Snapshot
    new: Snapshot
    history: list[Kill] = dataclasses.field(default_factory=list)

    def run(
        self,
        kill: Callable[[Conversion], tuple[str, bool]],
        prefix: Sequence[str] = (),
        options: Sequence[str] = (),
    ) -> Kill:
        """Convert v2 on a fresh copy of OLD, ``kill`` it, recover, classify, finish."""
        copy_tree(self.scenario.pristine, self.root)
        args = [*command(str(self.scenario.reference), self.root), *options]
        if prefix:  # a worker instead of the console script, with the same arguments
            args = [*prefix, *args[1:]]
        with Conversion(args) as conversion:
            when, exited = kill(conversion)
        area, journal = pending(self.root)
        recover(self.root)
        assert pending(self.root) == (False, False), "staging left after recovery"
        result = Kill(
            when, exited, area, journal, _classify(self.root, self.old, self.new, self.history)
        )
        self.history.append(result)
        assert not journal or result.seen == "new", f"a commit under way was lost: {result}"
        if result.seen == "new":
            assert convert_in_process(self.scenario.reference, self.root) is Outcome.UNCHANGED
        else:
            assert convert_in_process(self.scenario.reference, self.root) is Outcome.UPDATED
            now = state(self.root)
            assert now == self.new, format_differences(compare(self.new, now), limit=15)
        return result

    def log(self) -> str:
        return "\n".join(str(kill) for kill in self.history)


def _after(delay: float) -> Callable[[Conversion], tuple[str, bool]]:
    def kill(conversion: Conversion) -> tuple[str, bool]:
        time.sleep(max(0.0, conversion.started + delay - time.monotonic()))
        return f"+{delay * 1000:.0f} ms", conversion.kill()

    return kill


def _in_commit(marker: Path, step: int) -> Callable[[Conversion], tuple[str, bool]]:
    def kill(conversion: Conversion) -> tuple[str, bool]:
        deadline = conversion.started + RUN_TIMEOUT
        while not marker.exists():
            assert conversion.process.poll() is None, "the conversion ended before its commit"
            assert time.monotonic() < deadline, "the conversion never reached its commit"
            time.sleep(POLL_INTERVAL)
        marker.unlink()
        return f"before commit step {step}", conversion.kill()

    return kill


def _paused_at(marker: Path, step: int) -> list[str]:
    """The worker that runs the command line but pauses before commit step ``step``."""
    return [sys.executable, str(WORKER), str(step), str(marker)]


@pytest.mark.slow
def test_killed_conversion_leaves_old_or_new(scenario: Scenario, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    old = state(scenario.pristine, times=True)
    loop = CrashLoop(scenario, root, old, state(scenario.finished))
    assert loop.old != loop.new
    chance = random.Random(20240101)
    span = OVERSHOOT * scenario.duration
    for run in range(RUNS):
        # One delay in each of RUNS equal slices of the span: random, yet spread over all of it.
        loop.run(_after((run + chance.random()) * span / RUNS))
    # The commit itself lasts milliseconds, too short to hit by timing: the worker pauses
    # before a chosen step of it, and is killed there.
    marker = tmp_path / "paused"
    for _ in range(COMMIT_RUNS):
        step = chance.randint(1, COMMIT_STEPS)
        loop.run(_in_commit(marker, step), _paused_at(marker, step))
    log = loop.log()
    assert sum(kill.area or kill.journal for kill in loop.history) >= 3, f"too few:\n{log}"
    assert sum(kill.journal for kill in loop.history) >= 1, f"no kill in a commit:\n{log}"
    assert {kill.seen for kill in loop.history} == {"old", "new"}, log


def _unpack_workers(parent: int | None = None) -> list[int]:
    """Live ``unpacked.layers._worker`` processes (whose parent is ``parent``, if given)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            status = Path(f"/proc/{entry}/status").read_text()
            ppid = int(status.split("PPid:", 1)[1].split()[0])
            if (
                b"unpacked.layers._worker" in cmdline
                and "State:\tZ" not in status
                and parent in (None, ppid)
            ):
                found.append(int(entry))
    return found


@pytest.mark.slow
def test_killed_conversion_with_unpack_workers_leaves_no_worker(
    scenario: Scenario, tmp_path: Path
) -> None:
    """Killed while worker processes unpack its layers: the repository is OLD or NEW, as
    always, and the workers die with their parent instead of writing on."""
    loop = CrashLoop(
        scenario, tmp_path / "repo", state(scenario.pristine, times=True), state(scenario.finished)
    )
    chance = random.Random(20241127)
    span = OVERSHOOT * scenario.duration
    busy = 0
    for run in range(WORKER_RUNS):
        delay = (run + chance.random()) * span / WORKER_RUNS

        def kill(conversion: Conversion, delay: float = delay) -> tuple[str, bool]:
            nonlocal busy
            time.sleep(max(0.0, conversion.started + delay - time.monotonic()))
            busy += bool(_unpack_workers(conversion.process.pid))
            return f"+{delay * 1000:.0f} ms", conversion.kill()

        loop.run(kill, options=["--unpack-workers", "2"])
        deadline = time.monotonic() + STOP_TIMEOUT
        while left := _unpack_workers():
            assert time.monotonic() < deadline, f"unpack workers outlived their parent: {left}"
            time.sleep(0.05)
    assert busy >= 1, f"never killed while workers ran:\n{loop.log()}"


def test_concurrent_conversions_into_one_repository(
    registry: RegistryServer, push_image: PushImage, tmp_path: Path
) -> None:
    layout = tmp_path / "oci"
    shared = [small_files_layer("shared", 200), small_files_layer("shared-2", 100)]
    one = push_image(
        build_image(layout, [*shared, small_files_layer("one", 200)], tag="one"), "together/one:1"
    )
    two = push_image(
        build_image(layout, [*shared, small_files_layer("two", 200)], tag="two"), "together/two:1"
    )
    references = [f"{registry.host}/together/one:1", f"{registry.host}/together/two:1"]
    root = tmp_path / "repo"
    processes = [
        subprocess.Popen(
            command(reference, root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for reference in references
    ]
    try:
        results = [process.communicate(timeout=RUN_TIMEOUT) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
    for process, (_, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err

    sequential = tmp_path / "sequential"
    for reference in references:
        run_to_completion(reference, sequential)
    assert state(root) == state(sequential), format_differences(
        compare(state(sequential), state(root)), limit=15
    )
    assert one.config_digest is not None and two.config_digest is not None
    both = sorted([one.config_digest, two.config_digest])
    for digest in one.layer_digests[:2]:
        h = digest.partition(":")[2]
        origin = json.loads((root / ".layers" / h[:2] / h / ".metadata/origin.json").read_bytes())
        assert origin == {"origin": both}
    for image in (one, two):
        assert image.config_digest is not None
        h = image.config_digest.partition(":")[2]
        link = root / registry.host / f"{image.repository}:{image.tag}"
        assert os.path.realpath(link) == str(root / ".flat" / h[:2] / h)


@pytest.mark.parametrize(
    ("moment", "workers"),
    [("while-a-blob-hangs", "1"), ("in-its-retry", "2")],
)
def test_killed_during_a_retry_leaves_old(
    scenario: Scenario, registry: RegistryServer, tmp_path: Path, moment: str, workers: str
) -> None:
    """Killed while a new layer's download hangs, or once its retry has started (the
    other layers downloaded, unpacked by workers or not): recovery leaves OLD, with no
    worker left, and converting again gives NEW."""
    root = tmp_path / "repo"
    copy_tree(scenario.pristine, root)
    stored = {path.name for path in scenario.pristine.glob(".layers/*/*")}
    hanging = min(p.name for p in scenario.finished.glob(".layers/*/*") if p.name not in stored)
    gets = 1 if moment == "while-a-blob-hangs" else 2
    reference = scenario.reference
    # It hangs once (killed then), or twice (killed in the retry's hanging attempt).
    with FaultProxy(registry.url, Fault.HANG, times=gets, match=hanging) as proxy:
        via_proxy = f"{proxy.host}/{reference.repository}:{reference.tag}"
        args = [*command(via_proxy, root), "--timeout", "1", "--unpack-workers", workers]
        with Conversion(args) as conversion:
            deadline = conversion.started + RUN_TIMEOUT
            while sum(hanging in path for _, path in proxy.requests) < gets:
                assert conversion.process.poll() is None, "the conversion ended"
                assert time.monotonic() < deadline, "the download never hung or retried"
                time.sleep(0.01)
            time.sleep(0.2)
            assert not conversion.kill(), "killed before it could end"
            parent = conversion.process.pid
    assert pending(root)[0], "killed inside its transaction"
    deadline = time.monotonic() + STOP_TIMEOUT
    while _unpack_workers(parent):
        assert time.monotonic() < deadline, "a worker outlived the killed conversion"
        time.sleep(0.05)
    recover(root)
    assert pending(root) == (False, False), "staging left after recovery"
    assert state(root, times=True) == state(scenario.pristine, times=True)
    assert convert_in_process(reference, root) is Outcome.UPDATED
    assert state(root) == state(scenario.finished)
