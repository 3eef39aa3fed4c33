"""``unpacked loop`` as a service: a real process, real signals, bounded waits.

The loop must re-read its wish list every cycle, stop on SIGTERM or SIGINT between
images (exit 0, nothing left in staging), and never leave an image half-published:
a signal that arrives while an image is being converted lets that image finish and
starts no other. To hold a conversion open for as long as the test needs, the image
is served by the in-process fake registry, which keeps a layer blob back until the
test releases it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.fakeserver import FakeRegistry, Reply, Seen
from support.oci import OCI_MANIFEST, BuiltImage, TarEntry, build_image, tar_bytes
from support.registry import RegistryServer
from support.samples import push
from unpacked.reference import parse

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
