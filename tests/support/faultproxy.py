"""A fault-injecting HTTP proxy in front of a real registry, on 127.0.0.1.

``FaultProxy(upstream, fault, times=1, match="/blobs/")`` forwards every request to
``upstream`` (e.g. the ``registry`` fixture's URL), and answers the first ``times``
GETs whose path contains ``match`` (or one of several) with ``fault`` instead
(``times=None``: all of them). The client is pointed at ``proxy.host`` instead of
the registry's host.

Faults (``Fault``):

- ``reset``: half the body, then the connection reset (RST).
- ``truncate``: half the body, then the connection closed cleanly (FIN).
- ``flip``: the whole body, one byte flipped.
- ``wrong_length``: a Content-Length one byte short of the body.
- ``error_5xx``: 503 Service Unavailable.
- ``too_many``: 429 Too Many Requests with ``Retry-After: 1``.
- ``slow``: the whole body in small pieces, a pause between each (it must succeed).
- ``stall``: half the body, then silence for ``stall_seconds``, then a reset.
- ``hang``: the request read, then no answer at all until the proxy stops.

A test that starts a proxy stops it (``with FaultProxy(...) as proxy``).
"""

from __future__ import annotations

import enum
import http.client
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class Fault(enum.Enum):
    RESET = "reset"
    TRUNCATE = "truncate"
    FLIP = "flip"
    WRONG_LENGTH = "wrong_length"
    ERROR_5XX = "error_5xx"
    TOO_MANY = "too_many"
    SLOW = "slow"
    STALL = "stall"
    HANG = "hang"


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        fault: Fault,
        *,
        times: int | None = 1,
        match: str | tuple[str, ...] = "/blobs/",
        stall_seconds: float = 3.0,
    ) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None
        self.upstream = (parts.hostname, parts.port)
        self.fault = fault
        self.match = (match,) if isinstance(match, str) else match
        self.stall_seconds = stall_seconds
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._left = times
        self.injected = 0
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def take_fault(self, method: str, path: str) -> Fault | None:
        """The fault for this request, if it gets one (counted)."""
        with self._lock:
            self.requests.append((method, path))
            matched = any(part in path for part in self.match)
            if method != "GET" or not matched or self._left == 0:
                return None
            if self._left is not None:
                self._left -= 1
            self.injected += 1
            return self.fault


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ThreadingHTTPServer

    @property
    def proxy(self) -> FaultProxy:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        return proxy

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _forward(self) -> None:
        fault = self.proxy.take_fault(self.command, self.path)
        if fault is Fault.HANG:
            self.proxy.stopping.wait(300)
            self.close_connection = True
            return
        if fault in (Fault.ERROR_5XX, Fault.TOO_MANY):
            self._refuse(fault)
            return
        status, headers, body = self._upstream()
        if fault is None or status != 200:
            self._reply(status, headers, body, len(body))
            return
        _FAULTS[fault](self, status, headers, body)

    def _upstream(self) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(*self.proxy.upstream, timeout=30)
        try:
            forwarded = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            connection.request(self.command, self.path, headers=forwarded)
            response = connection.getresponse()
            body = response.read()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            return response.status, headers, body
        finally:
            connection.close()

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes, length: int) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _refuse(self, fault: Fault) -> None:
        status = 503 if fault is Fault.ERROR_5XX else 429
        body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by the fault proxy"}]}'
        headers = [("Content-Type", "application/json")]
        if fault is Fault.TOO_MANY:
            headers.append(("Retry-After", "1"))
        self._reply(status, headers, body, len(body))

    def _part_then(self, headers: list[tuple[str, str]], body: bytes, *, reset: bool) -> None:
        self.send_response(200)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True
        if reset:
            # SO_LINGER with a zero timeout: close() sends RST, not FIN.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _reset(self, _s: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._part_then(headers, body, reset=True)

    def _truncate(self, _s: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._part_then(headers, body, reset=False)

    def _flip(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        flipped = bytearray(body)
        flipped[len(body) // 2] ^= 0xFF
        self._reply(status, headers, bytes(flipped), len(body))

    def _wrong_length(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._reply(status, headers, body[:-1], len(body) - 1)
        self.close_connection = True

    def _slow(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        piece = max(1, len(body) // 20)
        for start in range(0, len(body), piece):
            self.wfile.write(body[start : start + piece])
            self.wfile.flush()
            time.sleep(0.02)

    def _stall(self, _s: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self._part_then(headers, body, reset=True)
        self.proxy.stopping.wait(self.proxy.stall_seconds)


_FAULTS = {
    Fault.RESET: _Handler._reset,
    Fault.TRUNCATE: _Handler._truncate,
    Fault.FLIP: _Handler._flip,
    Fault.WRONG_LENGTH: _Handler._wrong_length,
    Fault.SLOW: _Handler._slow,
    Fault.STALL: _Handler._stall,
}
