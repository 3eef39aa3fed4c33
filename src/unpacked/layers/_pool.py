"""Unpacking several layers at once, each in a worker process.

Unpacking is mostly Python (tar headers, paths, one syscall after another), so
threads would take turns on one interpreter lock; separate processes really run
at once. Workers are fresh interpreters running ``unpacked.layers._worker``,
started with ``subprocess`` (no fork of a process that has threads, and nothing
of the caller's ``__main__`` imported again, as ``multiprocessing`` would), and
spoken to over a pipe: one pickled call in, one pickled result out. A worker
unpacks a blob file, on disk or still being downloaded (``GrowingBlob``), into its
layer directory with ``defer_lower`` (the layers below may not be ready); the
caller completes each layer in order (``complete_layer``).

Workers are started by the constructor, so their start-up overlaps the
downloads, or earlier as ``SpareWorkers``, which a pool adopts; the thread that
starts a worker must outlive the pool using it (a worker is killed when that
thread ends, so that none outlives a killed conversion).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO

from unpacked.digest import Digest
from unpacked.errors import LayerError, UnpackWorkerDied
from unpacked.layers._report import ApplyReport
from unpacked.publish import WhiteoutForm

logger = logging.getLogger(__name__)

_STOP_SECONDS = 10.0


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0))


class _Worker:
    """One worker process and its two pipes."""

    def __init__(self) -> None:
        env = dict(os.environ)
        # The worker must import this very package, wherever it was found.
        env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
        self.process = subprocess.Popen(
            # -P: not the current directory first on sys.path.
            [sys.executable, "-P", "-m", "unpacked.layers._worker", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._requests: IO[bytes] = self.process.stdin
        self._replies: IO[bytes] = self.process.stdout

    def call(self, arguments: tuple[object, ...], name: str) -> ApplyReport:
        try:
            pickle.dump(arguments, self._requests, protocol=pickle.HIGHEST_PROTOCOL)
            self._requests.flush()
            ok, value = pickle.load(self._replies)  # noqa: S301 - our own child
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            code = self.process.poll()
            raise UnpackWorkerDied(
                f"layer {name}: the process unpacking it died (exit status {code}): {exc!r}"
            ) from exc
        if not ok:
            raise value
        assert isinstance(value, ApplyReport)
        return value

    def close(self, *, kill: bool) -> None:
        """Tell the worker to exit (its requests end), or kill it; do not wait."""
        if kill:
            self.process.kill()
        for stream in (self._requests, self._replies):
            with contextlib.suppress(OSError):  # a killed worker's pipe
                stream.close()

    def wait(self) -> None:
        try:
            self.process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class SpareWorkers:
    """Workers started before it is known whether a conversion will need them.

    A worker takes about 0.13 s to start: a fresh interpreter importing the unpacker.
    Started while the registry client is set up and the image resolved, when a CPU is
    otherwise idle, that time is off the critical path, and the first new layer is
    unpacked from its first byte. An ``UnpackPool`` adopts spares before starting workers
    of its own; spares nobody took are killed on exit. Thread-safe.
    """

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        for _ in range(count):
            try:
                self._workers.append(_Worker())
            except OSError as exc:
                # Only a head start is lost: a pool starts its own, or says why it cannot.
                logger.debug("cannot start a spare unpacking process: %s", exc)
                break

    def __enter__(self) -> SpareWorkers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def take(self, count: int) -> list[_Worker]:
        """Up to ``count`` spares, now the caller's to stop."""
        with self._lock:
            taken, self._workers = self._workers[:count], self._workers[count:]
        return taken

    def close(self) -> None:
        """Kill the spares nobody took."""
        with self._lock:
            left, self._workers = self._workers, []
        for worker in left:
            worker.close(kill=True)
        for worker in left:
            worker.wait()


class UnpackPool:
    """Up to ``workers`` layers unpacked at once (LAYERFS, lower layers deferred)."""

    def __init__(self, workers: int, spare: SpareWorkers | None = None) -> None:
        self._workers: list[_Worker] = spare.take(workers) if spare is not None else []
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        for worker in self._workers:
            self._idle.put(worker)
        try:
            for _ in range(workers - len(self._workers)):
                worker = _Worker()
                self._workers.append(worker)
                self._idle.put(worker)
        except OSError as exc:
            self._stop(kill=True)
            raise LayerError(f"cannot start a process to unpack layers: {exc}") from exc
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unpack")

    def __enter__(self) -> UnpackPool:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        failed = exc_type is not None
        # On failure, queued layers are cancelled and running ones killed: their
        # layer directories are in a staging area that is being thrown away.
        self._threads.shutdown(wait=not failed, cancel_futures=True)
        self._stop(kill=failed)
        self._threads.shutdown(wait=True)

    def close(self) -> None:
        """No more layers: the workers finish theirs and exit, while the caller goes on.

        ``__exit__`` then only waits for processes that are already ending.
        """
        self._threads.shutdown(wait=True)
        for worker in self._workers:
            worker.close(kill=False)

    def _stop(self, *, kill: bool) -> None:
        for worker in self._workers:
            worker.close(kill=kill)
        for worker in self._workers:  # all told first: they end at the same time
            worker.wait()

    def submit(
        self,
        blob: Path,
        media_type: str,
        diff_id: Digest,
        root: Path,
        *,
        whiteouts: WhiteoutForm | None = None,
        name: str,
        size: int | None = None,
        bound: tuple[int, str] | None = None,
    ) -> Future[ApplyReport]:
        """Unpack the blob file ``blob`` into the empty layer directory ``root``, its
        whiteouts in the form ``whiteouts`` (the publisher's; see ``apply_layer``).

        With ``size``, the blob is still being written: it is read as it grows, up to
        ``size`` bytes (``GrowingBlob``; ``BlobAbandoned`` if its writer abandons it).
        """
        arguments = (
            str(blob),
            media_type,
            str(diff_id),
            str(root),
            name,
            size,
            bound,
            None if whiteouts is None else whiteouts.value,
        )
        return self._threads.submit(self._call, arguments, name)

    def _call(self, arguments: tuple[object, ...], name: str) -> ApplyReport:
        worker = self._idle.get()
        try:
            return worker.call(arguments, name)
        finally:
            self._idle.put(worker)
