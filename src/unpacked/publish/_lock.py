"""The repository lock of the ``dir:`` backend: ``flock`` on a file, polled with a deadline.

flock(2) locks belong to an open file description, so the kernel drops the lock of a
process that dies, however it dies: there is no stale lock to break by hand. Each
acquisition opens the file anew, so two threads of one process exclude each other
like two processes do. On NFS, Linux turns flock into an NFS byte-range lock, so the
lock reaches other clients too (NFSv4, or v3 with a lock manager); on Lustre only
with the ``flock`` mount option.

A blocking flock cannot time out, so waiters poll, and polling alone is unfair: a
daemon that publishes image after image takes the lock back within a millisecond of
releasing it, and a ``gc`` polling every 100 ms would starve until its timeout. So a
waiter first takes a second lock, the turnstile, and keeps it while it polls; whoever
wants the main lock next, the previous holder included, queues at the turnstile.

The holder writes its pid, host, command and start time into the lock file, so that a
waiter can say whom it waits for: once, at WARNING, after ``ANNOUNCE_AFTER`` seconds (a
wait of up to ten minutes must not look like a hang), and again when it gets the lock.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from unpacked.errors import PublishError, RepositoryLockedError

logger = logging.getLogger(__name__)

_FIRST_POLL = 0.005
_LONGEST_POLL = 0.1
ANNOUNCE_AFTER = 1.0
"""Seconds of waiting before a waiter says whom it waits for: short waits are normal."""
_COMMAND_CHARS = 300
TURNSTILE_SUFFIX = ".turnstile"

# (st_dev, st_ino) of the lock files this thread holds: a thread that asks again
# would wait for itself until the timeout.
_held = threading.local()


def _held_here() -> set[tuple[int, int]]:
    held: set[tuple[int, int]] | None = getattr(_held, "locks", None)
    if held is None:
        held = set()
        _held.locks = held
    return held


def _holder_record() -> bytes:
    since = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    command = shlex.join(sys.argv)
    if len(command) > _COMMAND_CHARS:
        command = command[: _COMMAND_CHARS - 3] + "..."
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": since}
    return json.dumps(record).encode() + b"\n"


def describe_holder(lock_file: Path) -> str:
    """Who holds the lock, as the holder wrote it:
    ``"pid 123 on host since 2024-..., running: unpacked convert w.yaml"``."""
    try:
        record = json.loads(lock_file.read_bytes() or b"null")
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or "pid" not in record:
        return "an unknown process (it has not written its pid yet)"
    command = f", running: {record['command']}" if record.get("command") else ""
    host, since = record.get("host", "?"), record.get("since", "?")
    return f"pid {record['pid']} on {host} since {since}{command}"


class _Waiter:
    """One attempt to take the lock: the deadline and what to say when it passes."""

    def __init__(self, lock_file: Path, repository: str, timeout: float) -> None:
        self.lock_file = lock_file
        self.repository = repository
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.announced = False

    def take(self, fd: int) -> None:
        """flock ``fd`` exclusively, polling until the deadline."""
        delay = _FIRST_POLL
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise RepositoryLockedError(
                    f"repository {self.repository} is locked by "
                    f"{describe_holder(self.lock_file)}; gave up after waiting "
                    f"{self.timeout:g} s (lock file {self.lock_file})"
                )
            self._announce()
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _LONGEST_POLL)

    def _announce(self) -> None:
        if self.announced or time.monotonic() - self.started < ANNOUNCE_AFTER:
            return
        self.announced = True
        logger.warning(
            "waiting for the lock of repository %s (%s), held by %s (giving up after %g s)",
            self.repository,
            self.lock_file,
            describe_holder(self.lock_file),
            self.timeout,
        )

    def got_it(self) -> None:
        if self.announced:
            logger.warning(
                "got the lock of repository %s after waiting %.1f s",
                self.repository,
                time.monotonic() - self.started,
            )


def _open(path: Path, repository: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise PublishError(
            f"repository {repository}: cannot open lock file {path}: {error.strerror}"
        ) from error


def _take(fd: int, waiter: _Waiter) -> None:
    turnstile = _open(
        waiter.lock_file.with_name(waiter.lock_file.name + TURNSTILE_SUFFIX), waiter.repository
    )
    try:
        waiter.take(turnstile)
        waiter.take(fd)
        waiter.got_it()
    finally:
        # Closing drops the turnstile lock, whether we got the main lock or gave up.
        os.close(turnstile)


@contextlib.contextmanager
def repository_lock(lock_file: Path, repository: str, timeout: float) -> Iterator[None]:
    """Hold the lock of ``repository`` for the ``with`` block.

    Waits up to ``timeout`` seconds, then raises ``RepositoryLockedError`` naming the
    holder. Asking again from the thread that holds it raises ``PublishError`` at once.
    """
    fd = _open(lock_file, repository)
    try:
        status = os.fstat(fd)
        key = (status.st_dev, status.st_ino)
        held = _held_here()
        if key in held:
            raise PublishError(
                f"repository {repository}: this thread already has a transaction open; "
                "transactions are not re-entrant"
            )
        _take(fd, _Waiter(lock_file, repository, timeout))
        held.add(key)
        try:
            _write_record(fd)
            yield
        finally:
            held.discard(key)
            _release(fd)
    finally:
        os.close(fd)


def _write_record(fd: int) -> None:
    # The record only serves error messages: failing to write it must not fail the lock.
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_record(), 0)
    except OSError as error:
        logger.warning("could not write the lock holder record: %s", error.strerror)


def _release(fd: int) -> None:
    # Clear the record first, so nobody blames a process that no longer holds the lock.
    try:
        os.ftruncate(fd, 0)
    except OSError as error:
        logger.warning("could not clear the lock holder record: %s", error.strerror)
    fcntl.flock(fd, fcntl.LOCK_UN)
