"""An in-process fake registry for fault paths: a threaded HTTP server on 127.0.0.1.

Each test scripts the answers: ``fake.on("GET", "/v2/x/blobs/sha256:…", Reply(...), ...)``
queues replies for one path (the last one repeats), and ``fake.seen(...)`` lists what
the client sent. A ``Reply`` can drop the connection after some bytes, answer late,
or use chunked encoding (no ``Content-Length``), which the real registry never does
on demand. Unscripted paths get distribution's 404 ``NAME_UNKNOWN``. With ``tls`` (a
server ``SSLContext``) the fake speaks HTTPS.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    send_bytes: send only this many bytes of ``body`` (with the full length
                announced), then drop the connection
    delay:      seconds to wait before answering (cut short when the server stops)
    chunked:    chunked transfer encoding instead of ``Content-Length``
    """

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    send_bytes: int | None = None
    delay: float = 0.0
    chunked: bool = False


@dataclass(frozen=True)
class Seen:
    """A request as the fake received it (header names lower case)."""

    method: str
    path: str
    headers: Mapping[str, str]


Script = Reply | Callable[[Seen], Reply]


def error_body(code: str, message: str) -> bytes:
    """A distribution error body."""
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()


class FakeRegistry:
    """A scripted HTTP server; use as a context manager (starts on enter, stops on exit)."""

    def __init__(self, address: str = "127.0.0.1", *, tls: ssl.SSLContext | None = None) -> None:
        self._address = address
        self._tls = tls
        self._lock = threading.Lock()
        self._scripts: dict[tuple[str, str], list[Script]] = {}
        self._seen: list[Seen] = []
        self.stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> FakeRegistry:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer((self._address, 0), handler)
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # shutdown() waits up to one interval
            name="fake-registry",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=STOP_TIMEOUT)

    def __enter__(self) -> FakeRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        assert self._server is not None, "fake registry not started"
        return f"{self._address}:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"{'https' if self._tls is not None else 'http'}://{self.host}"

    # --- scripting ------------------------------------------------------------------

    def on(self, method: str, path: str, *scripts: Script) -> None:
        """Answer ``method path`` with ``scripts`` in turn; the last one repeats."""
        if not scripts:
            raise ValueError("at least one reply")
        with self._lock:
            self._scripts[(method, path)] = list(scripts)

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        """Requests received so far, optionally only those for ``method`` / ``path``."""
        with self._lock:
            return [
                s
                for s in self._seen
                if (method is None or s.method == method) and (path is None or s.path == path)
            ]

    def _next_reply(self, seen: Seen) -> Reply:
        with self._lock:
            self._seen.append(seen)
            queue = self._scripts.get((seen.method, seen.path.split("?", 1)[0]))
            queue = queue if queue is not None else self._scripts.get((seen.method, seen.path))
            if not queue:
                return Reply(404, error_body("NAME_UNKNOWN", "repository name not known"))
            script = queue.pop(0) if len(queue) > 1 else queue[0]
        return script(seen) if callable(script) else script


class _Handler(BaseHTTPRequestHandler):
    fake: FakeRegistry
    protocol_version = "HTTP/1.1"
    # Small answers on a keep-alive connection wait ~40 ms for delayed ACKs otherwise.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, *, send_body: bool) -> None:
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
        reply = self.fake._next_reply(seen)
        if reply.delay and self.fake.stopping.wait(reply.delay):
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif "Content-Length" not in reply.headers:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if send_body:
            self._body(reply)
        if reply.send_bytes is not None:
            self.close_connection = True

    def _body(self, reply: Reply) -> None:
        body = reply.body if reply.send_bytes is None else reply.body[: reply.send_bytes]
        if not reply.chunked:
            self.wfile.write(body)
            return
        step = 1024
        for start in range(0, len(body), step):
            piece = body[start : start + step]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        if reply.send_bytes is None:
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        return
