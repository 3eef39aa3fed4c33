"""``unpacked loop`` as a service: a real process, real signals, bounded waits.

The loop must re-read its wish list every cycle, stop on SIGTERM or SIGINT between
images (exit 0, nothing left in staging), and never leave an image half-published:
a signal that arrives while an image is being converted lets that image finish and
starts no other. To hold a conversion open for as long as the test needs, the image
is served by the in-process fake registry, which keeps a layer blob back until the
test releases it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.fakeserver import FakeRegistry, Reply, Seen
from support.oci import OCI_MANIFEST, BuiltImage, TarEntry, build_image, tar_bytes
from support.registry import RegistryServer
from support.samples import push
from unpacked.batch import BatchOptions, BatchReport
from unpacked.cli import _render as render
from unpacked.cli._wishlist import _Summary
from unpacked.events import CycleDone, Event, emit
from unpacked.loop import Loop as LibraryLoop
from unpacked.loop import stop_on_signals
from unpacked.publish import open_publisher
from unpacked.reference import parse
from unpacked.registry import RegistryClient
from unpacked.wishlist import WishList, loads

UNPACKED = Path(sys.executable).with_name("unpacked")
STARTUP = 30.0
"""Seconds for the loop to publish its first image (interpreter start-up included)."""
EXIT = 20.0
"""Seconds the loop may take to exit after a signal."""
GATE = 30.0
"""Longest a held blob is kept back, should the test fail before releasing it."""
POLL = 0.05
# If pytest dies without its teardown, the loop goes too (setpriv execs: same pid).
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
# As under a service manager: stdout to a file is block-buffered unless the loop flushes.
SERVICE_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}


@dataclass
class Loop:
    """A running ``unpacked loop`` and its logs."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(
                    f"loop exited ({self.process.returncode}) before {what}:\n{self.output()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout:.0f} s:\n{self.output()}")
            time.sleep(POLL)

    def stop(self, signum: int) -> int:
        """Send ``signum``; the exit code, which must come within ``EXIT`` seconds."""
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=EXIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"loop still running {EXIT:.0f} s after {signum}:\n{self.output()}")


@pytest.fixture
def start_loop(tmp_path: Path) -> Iterator[Callable[[Path, Path], Loop]]:
    started: list[Loop] = []

    def start(wishlist: Path, repo: Path) -> Loop:
        index = len(started)
        stdout, stderr = tmp_path / f"loop{index}.out", tmp_path / f"loop{index}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [
                    *DIE_WITH_PARENT,
                    UNPACKED,
                    "loop",
                    str(wishlist),
                    "--repo",
                    f"dir:{repo}",
                    "--interval",
                    "1s",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=SERVICE_ENV,
            )
        started.append(Loop(process, stdout, stderr))
        return started[-1]

    yield start
    for loop in started:
        if loop.process.poll() is None:
            loop.process.kill()
            loop.process.wait(timeout=EXIT)


def write_wishlist(path: Path, *references: str) -> Path:
    """Replace the wish list in one rename, so the loop never reads half a file."""
    text = "version: 1\ninput:\n" + "".join(f"  - '{ref}'\n" for ref in references)
    scratch = path.with_name(path.name + ".new")
    scratch.write_text(text)
    scratch.replace(path)
    return path


def published(repo: Path, reference: str) -> bool:
    """Link, flat tree and status all there."""
    name = parse(reference).public_name
    return (
        (repo / name).is_symlink()
        and (repo / name).is_dir()
        and (repo / ".metadata" / name / "status.json").is_file()
    )


def staging(repo: Path) -> list[str]:
    transactions = repo / ".unpacked" / "transactions"
    return sorted(os.listdir(transactions)) if transactions.exists() else []


def small_image(layout: Path, name: str, files: int = 1) -> BuiltImage:
    layers = [
        tar_bytes([TarEntry.dir(name), TarEntry.file(f"{name}/{i}", f"{name} {i}\n".encode())])
        for i in range(files)
    ]
    return build_image(layout, layers, tag=name)


@pytest.fixture(scope="module")
def loop_images(registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    layout = tmp_path_factory.mktemp("loop-layout")
    refs = []
    for name in ("first", "second"):
        push(registry, small_image(layout, name), f"loop/{name}:1")
        refs.append(f"{registry.host}/loop/{name}:1")
    return refs


# --- stopping while idle ----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_loop_rereads_the_wishlist_and_stops_on_signal(
    loop_images: list[str],
    tmp_path: Path,
    start_loop: Callable[[Path, Path], Loop],
    signum: int,
) -> None:
    first, second = loop_images
    repo = tmp_path / "repo"
    wishlist = write_wishlist(tmp_path / "recipe.yaml", first)
    loop = start_loop(wishlist, repo)
    loop.wait_until(lambda: published(repo, first), STARTUP, f"{first} published")
    assert not published(repo, second)
    # each cycle's summary is on stdout as the cycle ends (flushed), not when the loop exits
    summary = "1 images: 1 added, 0 updated, 0 unchanged, 0 failed\n"
    loop.wait_until(lambda: summary in loop.stdout.read_text(), STARTUP, "first summary")

    write_wishlist(wishlist, first, second)  # the next cycle must see it
    loop.wait_until(lambda: published(repo, second), STARTUP, f"{second} published")

    assert loop.stop(signum) == 0, loop.output()
    assert f"{signal.Signals(signum).name} received" in loop.output()
    assert staging(repo) == []
    assert (repo / parse(first).public_name / "first" / "0").read_bytes() == b"first 0\n"
    assert (repo / parse(second).public_name / "second" / "0").read_bytes() == b"second 0\n"


def test_loop_keeps_running_through_a_broken_wishlist(
    loop_images: list[str], tmp_path: Path, start_loop: Callable[[Path, Path], Loop]
) -> None:
    first, _ = loop_images
    repo = tmp_path / "repo"
    wishlist = tmp_path / "recipe.yaml"
    wishlist.write_text("version: 1\ninput:\n  - 'not a reference'\n")
    loop = start_loop(wishlist, repo)
    loop.wait_until(lambda: "cycle failed" in loop.output(), STARTUP, "failed cycle")
    write_wishlist(wishlist, first)  # fixed by the next merge request
    loop.wait_until(lambda: published(repo, first), STARTUP, f"{first} published")
    assert loop.stop(signal.SIGTERM) == 0, loop.output()
    assert f"{wishlist}:3:" in loop.output()  # the failed cycle said where
    assert staging(repo) == []


# --- stopping in the middle of a conversion -------------------------------------------------


class Gate:
    """Holds blob answers back until ``release``; ``reached`` is set when one is held."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self._open = threading.Event()

    def hold(self, reply: Reply) -> Callable[[Seen], Reply]:
        def answer(_seen: Seen) -> Reply:
            self.reached.set()
            self._open.wait(GATE)
            return reply

        return answer

    def release(self) -> None:
        self._open.set()


def serve(fake: FakeRegistry, repository: str, image: BuiltImage, gate: Gate | None) -> str:
    """Serve ``image`` as ``repository:1`` from ``fake``; the gate holds its last layer."""
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": image.manifest_digest}
    manifest = Reply(body=image.manifest_bytes, headers=headers)
    fake.on("HEAD", f"/v2/{repository}/manifests/1", manifest)
    fake.on("GET", f"/v2/{repository}/manifests/1", manifest)
    fake.on("GET", f"/v2/{repository}/blobs/{image.config_digest}", Reply(body=image.config_bytes))
    for digest in image.layer_digests:
        reply = Reply(body=image.blob(digest))
        last = digest == image.layer_digests[-1]
        fake.on(
            "GET", f"/v2/{repository}/blobs/{digest}", gate.hold(reply) if gate and last else reply
        )
    return f"{fake.host}/{repository}:1"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_conversion_finishes_that_image_and_starts_no_other(
    tmp_path: Path, start_loop: Callable[[Path, Path], Loop], signum: int
) -> None:
    layout = tmp_path / "layout"
    slow_image = small_image(layout, "slow", files=3)
    repo = tmp_path / "repo"
    gate = Gate()
    with FakeRegistry() as fake:
        try:
            slow = serve(fake, "loop/slow", slow_image, gate)
            after = serve(fake, "loop/after", small_image(layout, "after"), None)
            loop = start_loop(write_wishlist(tmp_path / "recipe.yaml", slow, after), repo)
            loop.wait_until(gate.reached.is_set, STARTUP, "layer download")
            assert staging(repo) != []  # the image's transaction is open
            assert not published(repo, slow)

            loop.process.send_signal(signum)
            name = signal.Signals(signum).name
            loop.wait_until(lambda: f"{name} received" in loop.output(), EXIT, "signal noted")
        finally:
            gate.release()
        try:
            code = loop.process.wait(timeout=EXIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"loop still running {EXIT:.0f} s after {name}:\n{loop.output()}")
        assert fake.seen(path="/v2/loop/after/manifests/1") == []  # no other image started
    assert code == 0, loop.output()
    assert "stopped before the end of the list" in loop.output()
    assert published(repo, slow), loop.output()
    flat = repo / parse(slow).public_name
    assert sorted(os.listdir(flat / "slow")) == ["0", "1", "2"]
    assert (flat / "slow" / "2").read_bytes() == b"slow 2\n"  # the held layer, complete
    manifest = repo / ".metadata" / parse(slow).public_name / "manifest.json"
    assert manifest.read_bytes() == slow_image.manifest_bytes
    assert not published(repo, after)
    assert not (repo / parse(after).public_name).exists()
    assert staging(repo) == []


# --- the library loop (``unpacked.loop``), in this process -----------------------------------

CYCLE = 30.0
"""Seconds a library cycle against the local registry may take."""


class Cycles:
    """The ``CycleDone`` events a running library loop emits, and its thread."""

    def __init__(self) -> None:
        self.done: list[CycleDone] = []
        self._arrived = threading.Condition()

    def __call__(self, event: Event) -> None:
        if isinstance(event, CycleDone):
            with self._arrived:
                self.done.append(event)
                self._arrived.notify_all()

    def wait_for(self, count: int) -> list[CycleDone]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.done) >= count, timeout=CYCLE):
                pytest.fail(f"{len(self.done)} cycles done after {CYCLE:.0f} s, not {count}")
            return list(self.done)


@contextmanager
def library_loop(
    load: Callable[[], WishList], repo: Path, interval: float
) -> Iterator[tuple[LibraryLoop, Cycles, threading.Event]]:
    """A ``Loop`` running in a thread; stopped (and joined, bounded) when the block ends."""
    stop, cycles = threading.Event(), Cycles()
    with RegistryClient() as client:
        service = LibraryLoop(
            load,
            client=client,
            open_publisher=lambda _wishlist: open_publisher(f"dir:{repo}"),
            options=BatchOptions(attempts=1),
            interval=interval,
            stop=stop,
            on_event=cycles,
        )
        thread = threading.Thread(target=service.run, name="loop-under-test")
        thread.start()
        try:
            yield service, cycles, stop
        finally:
            stop.set()
            thread.join(EXIT)
    assert not thread.is_alive(), f"loop still running {EXIT:.0f} s after stop was set"


def test_library_loop_rereads_the_wishlist_and_stops_when_told(
    loop_images: list[str], tmp_path: Path
) -> None:
    first, second = loop_images
    repo = tmp_path / "repo"
    wanted = [first]

    def load() -> WishList:
        return loads(
            "version: 1\ninput:\n" + "".join(f"  - '{ref}'\n" for ref in wanted), source="live"
        )

    with library_loop(load, repo, interval=0.05) as (service, cycles, stop):
        (one,) = cycles.wait_for(1)
        assert one.error is None and one.report is not None
        assert [image.outcome for image in one.report.images] == ["added"]
        wanted.append(second)  # the next cycle must see it
        done = cycles.wait_for(3)
        stop.set()
    latest = done[-1].report
    assert latest is not None
    assert sorted(image.outcome for image in latest.images) == ["unchanged", "unchanged"]
    assert all(cycle.started >= one.started and cycle.seconds >= 0 for cycle in done)
    assert published(repo, first) and published(repo, second)
    assert service.next_cycle_at is None  # stopped: no next cycle
    assert staging(repo) == []


def test_library_loop_stops_during_its_pause_and_tells_when_the_next_cycle_is(
    loop_images: list[str], tmp_path: Path
) -> None:
    first, _ = loop_images

    def load() -> WishList:
        return loads(f"version: 1\ninput:\n  - '{first}'\n", source="live")

    before = time.time()
    with library_loop(load, tmp_path / "repo", interval=3600.0) as (service, cycles, stop):
        (one,) = cycles.wait_for(1)
        deadline = time.monotonic() + CYCLE
        while service.next_cycle_at is None and time.monotonic() < deadline:
            time.sleep(POLL)
        next_at = service.next_cycle_at
        assert next_at is not None and before + 3600.0 <= next_at <= time.time() + 3600.0
        stop.set()  # the pause of an hour ends now: library_loop joins within EXIT seconds
    assert len(cycles.done) == 1 and one.report is not None


def test_a_cycle_that_fails_before_any_image_is_reported_and_the_loop_goes_on(
    loop_images: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = loop_images
    texts = iter(["version: 1\ninput:\n  - 'not a reference'\n"])

    def load() -> WishList:  # broken first, then fixed by the next merge request
        return loads(next(texts, f"version: 1\ninput:\n  - '{first}'\n"), source="recipe.yaml")

    repo = tmp_path / "repo"
    with library_loop(load, repo, interval=0.05) as (_service, cycles, _stop):
        broken, fixed = cycles.wait_for(2)[:2]
    assert broken.report is None
    assert broken.error is not None and "recipe.yaml:3:" in broken.error
    assert "cycle failed: recipe.yaml:3:" in caplog.text
    assert fixed.error is None and fixed.report is not None
    assert [image.outcome for image in fixed.report.images] == ["added"]
    assert published(repo, first)


def test_stop_on_signals_sets_the_event_and_restores_the_handlers() -> None:
    def previous(_signum: int, _frame: object) -> None:
        pytest.fail("the loop's handler should have been in place")

    old = {sig: signal.signal(sig, previous) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with stop_on_signals() as stop:
                assert not stop.is_set()
                os.kill(os.getpid(), sig)  # handled in this (the main) thread, at once
                assert stop.wait(EXIT)
            assert signal.getsignal(sig) is previous
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def test_a_reader_that_leaves_stops_the_loop_and_is_raised_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `unpacked loop … | head`: the summary consumer's BrokenPipeError must not be dropped by
    # events.emit (the loop would go on writing to nobody); it ends the loop and reaches
    # main_entry, which exits 141 as before the summary became a consumer.
    def gone(_text: str) -> None:
        raise BrokenPipeError

    monkeypatch.setattr(render, "print_text", gone)
    stop = threading.Event()
    summary = _Summary(argparse.Namespace(json=False), stop)
    emit(summary, CycleDone(BatchReport(images=()), started=time.time(), seconds=0.0))
    assert stop.is_set()
    with pytest.raises(BrokenPipeError):
        summary.raise_failure()
