"""A TCP relay in front of a real registry that counts connections and adds latency.

``CountingProxy`` listens on 127.0.0.1, opens one upstream connection per client
connection and copies bytes both ways. It counts the TCP connections clients open
(the figure connection reuse is about) and the chunks clients send, and holds each
client chunk ``delay`` seconds before passing it on: a bodyless request (HEAD, GET)
arrives as one chunk, so each request pays ``delay`` once, as it would to a registry
that far away. It runs its own asyncio loop in a thread; ``stop()`` (or leaving the
``with`` block) closes the listener and every relayed connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

_CHUNK = 64 * 1024
_START_TIMEOUT = 10.0
_STOP_TIMEOUT = 10.0


class CountingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, delay: float = 0.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        """Seconds each client chunk waits; may be changed while the proxy runs."""
        self.connections = 0
        self.chunks = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, as an image reference's registry."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> CountingProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(timeout=_START_TIMEOUT)
        return self

    def reset(self) -> None:
        """Zero the counters (between measured runs)."""
        self.connections = 0
        self.chunks = 0

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
        future.result(timeout=_STOP_TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=_STOP_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, delayed=True),
                self._pump(up_reader, writer, delayed=False),
            )
        finally:
            for end in (writer, up_writer):
                end.close()
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(_CHUNK):
                if delayed:
                    self.chunks += 1
                    if self.delay > 0:
                        await asyncio.sleep(self.delay)
                writer.write(chunk)
                await writer.drain()
        # The other direction may still carry an answer: half-close only.
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()
