"""Helpers of the publish tests: tree states without the private directory, worker processes."""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType

import unpacked
from support.tree import Snapshot, snapshot
from unpacked.publish import Publisher, Transaction, open_publisher

WORKER = Path(__file__).with_name("publish_worker.py")
PRIVATE = b".unpacked"
STOP_TIMEOUT = 10.0


def state(root: Path) -> Snapshot:
    """Everything a reader can observe under ``root``, the publisher's private directory excepted.

    Hard-link groups are restricted to the published tree: a backup link in the
    private trash is not something readers see.
    """
    kept: Snapshot = {}
    for path, node in snapshot(root).items():
        if path == PRIVATE or path.startswith(PRIVATE + b"/"):
            continue
        links = tuple(p for p in node.hardlinks if not p.startswith(PRIVATE + b"/"))
        kept[path] = dataclasses.replace(node, hardlinks=links if len(links) > 1 else ())
    return kept


def areas(root: Path) -> list[str]:
    """The transaction areas left in the private directory (empty when nothing is pending)."""
    return sorted(os.listdir(root / ".unpacked" / "transactions"))


def journals(root: Path) -> list[Path]:
    base = root / ".unpacked" / "transactions"
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    return [base / n / "journal.json" for n in names if (base / n / "journal.json").exists()]


def _usable_by_others(path: Path) -> bool:
    resolved = path.resolve()
    if not os.stat(resolved).st_mode & stat.S_IXOTH:
        return False
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in resolved.parents)


def interpreter_for_others() -> str | None:
    """A Python >= 3.11 that another user can run (the venv's may live under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if not Path(candidate).exists() or not _usable_by_others(Path(candidate)):
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(sys.version_info >= (3, 11))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.stdout.strip() == "True":
            return candidate
    return None


class Worker:
    """``publish_worker.py`` in a subprocess, with bounded reads of its marker lines.

    With ``user``, it runs as that uid/gid with ``interpreter`` (and the package's
    source directory on ``PYTHONPATH``, since another user may not read the venv).
    """

    def __init__(
        self,
        *args: str,
        user: int | None = None,
        cwd: Path | None = None,
        interpreter: str = sys.executable,
    ) -> None:
        env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
        if user is not None:
            env["PYTHONPATH"] = str(Path(unpacked.__file__).parents[1])
        # A file, not a pipe: a chatty worker must never block on a full stderr pipe.
        # Closed in __exit__, as the object owns it for the worker's whole life.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [interpreter, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            bufsize=0,
            cwd=cwd,
            env=env,
            user=user,
            group=user,
            extra_groups=None if user is None else [],
        )
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def line(self, timeout: float) -> str:
        """The next line the worker prints; fails after ``timeout`` seconds or if it exits."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"worker printed nothing for {timeout} s:\n{self.stderr()}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.process.wait(timeout=STOP_TIMEOUT)
                    raise AssertionError(
                        f"worker exited ({self.process.returncode}):\n{self.stderr()}"
                    )
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def expect(self, text: str, timeout: float = 30.0) -> None:
        line = self.line(timeout)
        assert line == text, f"expected {text!r} from the worker, got {line!r}"

    def finish(self, timeout: float = 30.0) -> int:
        """Close stdin and wait for the worker to exit."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=STOP_TIMEOUT)

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


P = PurePosixPath


def populate(transaction: Transaction) -> None:
    """The state most tests start from: an image, its metadata and link, a tree to remove."""
    tree = transaction.new_dir(P(".flat/aa/one"))
    (tree / "file").write_bytes(b"one")
    transaction.write_file(P(".metadata/x/status.json"), b"old status")
    transaction.set_symlink(P("reg/img:1"), "../.flat/aa/one")
    doomed = transaction.new_dir(P("doomed"))
    (doomed / "inner").mkdir()
    (doomed / "inner" / "file").write_bytes(b"doomed")
    transaction.new_dir(P("dirfile")).joinpath("content").write_bytes(b"a directory")


def change_everything(transaction: Transaction) -> None:
    """One change of every kind against ``populate``'s state."""
    tree = transaction.new_dir(P(".flat/bb/two"))
    (tree / "file").write_bytes(b"two")
    transaction.write_file(P(".metadata/x/status.json"), b"new status")
    transaction.write_file(P(".metadata/y/status.json"), b"brand new")
    transaction.remove(P("dirfile"))
    transaction.write_file(P("dirfile"), b"a file now")
    transaction.set_symlink(P("reg/img:1"), "../.flat/bb/two")
    transaction.set_symlink(P("reg/img:2"), "../.flat/bb/two")
    transaction.remove(P("doomed"))


@dataclass(frozen=True)
class BackendUnderTest:
    """How the contract tests make and look into one backend's repositories."""

    spec: Callable[[Path], str]
    """The spec of a fresh repository kept under the given scratch directory."""
    leftovers: Callable[[Publisher], list[str]]
    """What the backend keeps of finished transactions (empty when nothing is pending)."""
    private_path: str
    """A path inside the backend's private directory (refused by every method, P7)."""


BACKENDS_UNDER_TEST: dict[str, BackendUnderTest] = {
    "dir": BackendUnderTest(
        spec=lambda base: f"dir:{base / 'repo'}",
        leftovers=lambda publisher: areas(publisher.root),
        private_path=".unpacked/lock",
    ),
}


@dataclass(frozen=True)
class PublisherFactory:
    """Opens the test's repository of one backend (the same one at every call)."""

    name: str
    backend: BackendUnderTest
    base: Path

    def __call__(self) -> Publisher:
        return open_publisher(self.backend.spec(self.base))

    def leftovers(self, publisher: Publisher) -> list[str]:
        return self.backend.leftovers(publisher)

    @property
    def private_path(self) -> str:
        return self.backend.private_path


SWAPS = 150


def watch_swaps(
    root: Path, swap: Callable[[int], None], *, until_missing: bool
) -> dict[str, object]:
    """What a reader saw of ``reg/img:1`` and ``data`` under ``root`` while ``swap(i)``
    ran ``SWAPS`` times (``publish_worker``'s "watch")."""
    stop = root.parent / "stop"
    with Worker("watch", str(root / "reg/img:1"), str(root / "data"), str(stop)) as watcher:
        watcher.expect("watching")
        for index in range(SWAPS):
            swap(index)
        if until_missing:
            assert watcher.line(timeout=20) == "missing"
        stop.write_bytes(b"")
        line = watcher.line(timeout=20)
        if line == "missing":
            line = watcher.line(timeout=20)
        assert watcher.finish() == 0, watcher.stderr()
    stop.unlink()
    report: dict[str, object] = json.loads(line)
    return report
