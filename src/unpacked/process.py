"""Running a program (``cvmfs_server``, ``podman``, ...): the one place that does.

``run(argv, timeout=...)`` waits for the program with a deadline, captures its
stdout whole and the end of its stderr, and turns every way it can go wrong into a
``CommandError`` that carries the command, the exit status and that stderr: a backend
wraps it as ``PublishError.from_command(...)``, and a person reading the message sees
which program said what.

The program runs in a session of its own, so that a timeout kills what it started too
(``sh -c``, a helper of ``cvmfs_server``), not just the process we know of. No shell is
involved: ``argv`` is passed as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

from unpacked.errors import CommandFailed, CommandNotStarted, CommandTimedOut

logger = logging.getLogger(__name__)

STDERR_TAIL = 16 << 10
"""Bytes of stderr kept (the last ones): a chatty program must not fill our memory."""

_READ_SIZE = 64 << 10
_REAP_SECONDS = 5.0
"""How long the pipes may stay open once the program ended or was killed (a grandchild
holding them, outside its session): past it we stop reading, not waiting forever."""


@dataclass(frozen=True)
class Completed:
    """A program that ran to its end with an accepted exit status."""

    argv: tuple[str, ...]
    exit_code: int
    stdout: bytes
    stderr: str
    """The last ``STDERR_TAIL`` bytes of its stderr, decoded (undecodable bytes replaced)."""
    seconds: float


class _Tail:
    """The last ``limit`` bytes written to a stream, read in a thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = False

    def read_from(self, stream: IO[bytes]) -> None:
        while chunk := stream.read(_READ_SIZE):
            self.data += chunk
            if len(self.data) > self.limit:
                del self.data[: len(self.data) - self.limit]
                self.dropped = True

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return f"[...]{text}" if self.dropped else text


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ok_exit_codes: Collection[int] = (0,),
) -> Completed:
    """Run ``argv`` and wait for it, at most ``timeout`` seconds.

    ``input`` is written to its stdin (otherwise stdin is ``/dev/null``); ``env``
    replaces the environment when given. Raises ``CommandNotStarted``,
    ``CommandTimedOut`` (the program and its session killed) or ``CommandFailed``
    (an exit status not in ``ok_exit_codes``; a signal gives a negative status).
    """
    argv = tuple(argv)
    if not argv:
        raise ValueError("run() needs a program to run")
    logger.debug("running %s (timeout %.1f s)", argv, timeout)
    started = time.monotonic()
    process = _start(argv, input is not None, env, cwd)
    stdout, stderr = bytearray(), _Tail(STDERR_TAIL)
    threads = _pumps(process, input, stdout, stderr)
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_session(process)
        _join(threads)
        raise _logged(
            CommandTimedOut(argv, f"still running after {timeout:g} s", stderr=stderr.text())
        ) from None
    finally:
        if process.poll() is None:  # KeyboardInterrupt: never leave it running
            _kill_session(process)
    _join(threads)
    seconds = time.monotonic() - started
    if code not in ok_exit_codes:
        reason = f"exited with status {code}" if code >= 0 else f"killed by signal {-code}"
        raise _logged(CommandFailed(argv, reason, exit_code=code, stderr=stderr.text()))
    logger.debug("%s: exit status %d after %.2f s", argv[0], code, seconds)
    return Completed(argv, code, bytes(stdout), stderr.text(), seconds)


def _start(
    argv: tuple[str, ...], has_input: bool, env: Mapping[str, str] | None, cwd: Path | None
) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if has_input else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as exc:
        raise _logged(CommandNotStarted(argv, exc.strerror or str(exc))) from exc


def _pumps(
    process: subprocess.Popen[bytes], input: bytes | None, stdout: bytearray, stderr: _Tail
) -> list[threading.Thread]:
    """Threads that feed stdin and drain stdout and stderr (a full pipe would block it)."""
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout, process.stderr

    def read_stdout() -> None:
        with out:
            while chunk := out.read(_READ_SIZE):
                stdout.extend(chunk)

    def read_stderr() -> None:
        with err:
            stderr.read_from(err)

    targets = [read_stdout, read_stderr]
    stdin = process.stdin
    if input is not None and stdin is not None:
        data = input
        targets.append(lambda: _feed(stdin, data))
    threads = [threading.Thread(target=t, name="process-pipe", daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    return threads


def _feed(stdin: IO[bytes], data: bytes) -> None:
    # A program that exits without reading all of its input is its business, not an error.
    with contextlib.suppress(BrokenPipeError, OSError), stdin:
        stdin.write(data)


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_REAP_SECONDS)


def _join(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + _REAP_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


_E = TypeVar("_E", bound=Exception)


def _logged(error: _E) -> _E:
    logger.info("%s", error)
    return error
