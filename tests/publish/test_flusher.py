"""The background flusher behind ``Transaction.write_ahead`` (dir: backend)."""

from __future__ import annotations

import threading
import time
from pathlib import Path, PurePosixPath

import pytest

from unpacked.publish import _flusher, open_publisher
from unpacked.publish._flusher import Flusher

WAIT = 10.0


def test_requests_during_a_flush_make_one_more_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    calls: list[threading.Event] = [threading.Event() for _ in range(3)]
    count = 0

    def slow_sync(path: Path) -> None:
        nonlocal count
        assert path == tmp_path
        calls[count].set()
        count += 1
        assert release.wait(WAIT)

    monkeypatch.setattr(_flusher, "sync_filesystem", slow_sync)
    flusher = Flusher(tmp_path)
    flusher.request()
    assert calls[0].wait(WAIT)
    for _ in range(5):  # while the first flush runs: coalesced into one more
        flusher.request()
    release.set()
    assert calls[1].wait(WAIT)
    flusher.close()
    assert count == 2
    flusher.request()  # after close: nothing more
    assert count == 2


def test_close_drops_a_flush_not_yet_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit flushes right after: a pending background flush would only delay it."""
    release, running = threading.Event(), threading.Event()
    count = 0

    def slow_sync(path: Path) -> None:
        nonlocal count
        count += 1
        running.set()
        assert release.wait(WAIT)

    monkeypatch.setattr(_flusher, "sync_filesystem", slow_sync)
    flusher = Flusher(tmp_path)
    flusher.request()
    assert running.wait(WAIT)
    flusher.request()  # pending behind the running one
    closing = threading.Thread(target=flusher.close)
    closing.start()
    deadline = time.monotonic() + WAIT
    while not flusher._closed:  # close() is waiting for the running flush
        assert time.monotonic() < deadline
        time.sleep(0.001)
    release.set()
    closing.join(WAIT)
    assert not closing.is_alive()
    assert count == 1


def test_a_failed_background_flush_is_left_to_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = threading.Event()

    def failing_sync(path: Path) -> None:
        done.set()
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(_flusher, "sync_filesystem", failing_sync)
    flusher = Flusher(tmp_path)
    flusher.request()
    assert done.wait(WAIT)
    flusher.close()  # the thread survived the error and ends normally


def test_write_ahead_in_a_transaction_flushes_and_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed = threading.Event()
    real = _flusher.sync_filesystem

    def counted(path: Path) -> None:
        real(path)
        flushed.set()

    monkeypatch.setattr(_flusher, "sync_filesystem", counted)
    publisher = open_publisher(f"dir:{tmp_path / 'repo'}", create=True)
    with publisher.transaction() as tx:
        tree = tx.new_dir(PurePosixPath("tree"))
        (tree / "file").write_bytes(b"content")
        tx.write_ahead()
        assert flushed.wait(WAIT)
    assert (publisher.root / "tree" / "file").read_bytes() == b"content"
    assert not [t for t in threading.enumerate() if t.name == "flush"]
