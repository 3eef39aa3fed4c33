"""One transaction per repository at a time: across processes, threads, and dead holders."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path, PurePosixPath

import pytest
from publish_helpers import Worker, areas

from unpacked.cli import EXIT_INPUT, main
from unpacked.errors import ConfigError, PublishError, RepositoryLockedError
from unpacked.publish import Publisher, open_publisher

P = PurePosixPath
ROUNDS = 5


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def publisher(root: Path) -> Publisher:
    return open_publisher(f"dir:{root}")


def test_two_processes_take_turns(publisher: Publisher, root: Path) -> None:
    with (
        Worker("count", str(root), str(ROUNDS), "first") as first,
        Worker("count", str(root), str(ROUNDS), "second") as second,
    ):
        first.expect("ready")
        second.expect("ready")
        (root.parent / "go").write_bytes(b"")
        waits = [float(w.line(timeout=60).removeprefix("waited ")) for w in (first, second)]
        assert first.finish() == 0, first.stderr()
        assert second.finish() == 0, second.stderr()

    # Each transaction read the counter, slept, and wrote it back plus log/<value read>:
    # a lost update would show as a short counter and a log file written twice.
    assert (root / "counter").read_text() == str(2 * ROUNDS)
    writers = [(root / "log" / str(value)).read_text() for value in range(2 * ROUNDS)]
    assert sorted(writers) == ["first"] * ROUNDS + ["second"] * ROUNDS
    # Both ran at once, and neither could starve the other by taking the lock back at
    # once: each waited for some of the other's 50 ms transactions.
    assert min(waits) > 0.04, waits
    assert areas(root) == []


def test_a_lock_timeout_names_the_holder(publisher: Publisher, root: Path) -> None:
    with Worker("hold", str(root)) as holder:
        holder.expect("holding")
        started = time.monotonic()
        with pytest.raises(RepositoryLockedError) as info, publisher.transaction(lock_timeout=0.3):
            pass
        waited = time.monotonic() - started
        message = str(info.value)
        assert f"pid {holder.pid} on " in message
        assert "publish_worker.py hold " in message  # the command it runs
        assert publisher.spec in message
        assert "0.3 s" in message
        assert 0.3 <= waited < 3.0
        assert holder.finish() == 0, holder.stderr()
    with publisher.transaction(lock_timeout=5) as transaction:
        assert transaction.exists(P("held"))


def test_a_holder_that_dies_releases_the_lock(publisher: Publisher, root: Path) -> None:
    with Worker("hold", str(root)) as holder:
        holder.expect("holding")
        holder.kill()
    started = time.monotonic()
    with publisher.transaction(lock_timeout=5) as transaction:
        assert time.monotonic() - started < 1.0
        assert not transaction.exists(P("held"))
        assert areas(root) != []  # ours; the dead holder's area was discarded
    assert areas(root) == []
    assert not (root / "held").exists()


def test_a_transaction_is_not_reentrant_in_one_thread(publisher: Publisher, root: Path) -> None:
    twin = open_publisher(publisher.spec)
    with publisher.transaction():
        started = time.monotonic()
        with pytest.raises(PublishError, match="not re-entrant"), twin.transaction(lock_timeout=30):
            pass
        assert time.monotonic() - started < 1.0
    with twin.transaction(lock_timeout=0):
        pass


def test_another_thread_waits_like_another_process(publisher: Publisher, root: Path) -> None:
    entered, leave = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def hold() -> None:
        try:
            with publisher.transaction() as transaction:
                transaction.write_file(P("from-thread"), b"")
                entered.set()
                if not leave.wait(timeout=30):
                    raise TimeoutError("never told to leave")
        except BaseException as error:
            failures.append(error)
            entered.set()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert entered.wait(timeout=30)
        with (
            pytest.raises(RepositoryLockedError, match=f"pid {os.getpid()} on "),
            publisher.transaction(lock_timeout=0.2),
        ):
            pass
    finally:
        leave.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert failures == []
    with publisher.transaction(lock_timeout=5) as transaction:
        assert transaction.exists(P("from-thread"))


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
def test_a_lock_timeout_must_be_a_duration(publisher: Publisher, timeout: float) -> None:
    with pytest.raises(ConfigError, match="lock timeout"):
        publisher.transaction(lock_timeout=timeout).__enter__()


def test_a_waiter_says_once_whom_it_waits_for_and_when_it_got_the_lock(
    publisher: Publisher, root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # At the CLI's default level: a wait of minutes must not look like a hang.
    with Worker("hold", str(root)) as holder:
        holder.expect("holding")
        release = threading.Timer(2.5, holder.finish)
        release.start()
        try:
            code = main(["delete-image", "nothing/here:1", "--repo", publisher.spec])
        finally:
            release.cancel()
            release.join(timeout=30)
        assert holder.process.wait(timeout=30) == 0, holder.stderr()
    assert code == EXIT_INPUT  # the lock was taken; the image is simply not published
    lines = capsys.readouterr().err.splitlines()
    waiting = [line for line in lines if "waiting for the lock" in line]
    assert len(waiting) == 1, lines
    assert waiting[0].startswith("WARNING: ")
    assert f"{root}/.unpacked/lock" in waiting[0]
    assert f"pid {holder.pid} on " in waiting[0]
    assert " since 20" in waiting[0]
    assert ", running: " in waiting[0]
    assert "publish_worker.py hold " in waiting[0]
    got = [line for line in lines if "got the lock" in line]
    assert len(got) == 1, lines
    assert publisher.spec in got[0]
    waited = float(got[0].split("after waiting ")[1].removesuffix(" s"))
    assert 1.0 <= waited < 30.0
    assert lines.index(waiting[0]) < lines.index(got[0])
