"""One HTTP exchange with a registry: concurrency slot, timeouts, status and error mapping.

``HttpSession.open`` sends a request (through the auth flow and redirects) and
yields the streaming response while holding one of the endpoint's concurrency
slots. Anything that may pass on a later attempt leaves as ``Transient``
(connection failures, timeouts, 500/502/503/504, 429); other failures leave as
their final ``RegistryError``. Retrying is the caller's business, because only
the caller knows what a fresh attempt involves (a blob consumer restarts).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import certifi
import httpx

from unpacked.errors import ConfigError

from ._auth import origin
from ._errors import Subject, Transient, status_error, transport_error
from ._options import RegistryOptions
from ._retry import parse_retry_after

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
_MAX_ERROR_BODY = 64 * 1024
_MAX_DRAIN = 64 * 1024
"""Unread response bytes we read to keep the connection: beyond this, closing it is cheaper."""
KEEPALIVE_ENDPOINTS = 4
"""Endpoints whose connections the pool keeps at once (the registries a batch converts in
parallel): each may keep ``max_concurrency`` idle connections."""


def _ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The system's trust store plus certifi's, plus a site bundle if given."""
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=certifi.where())
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA bundle {ca_bundle}: {exc}") from None
    return context


class HttpSession:
    """An ``httpx.Client`` with per-endpoint concurrency limits; thread-safe."""

    def __init__(self, options: RegistryOptions, transport: httpx.BaseTransport | None) -> None:
        self.timeout = httpx.Timeout(options.timeout)
        self._max_concurrency = options.max_concurrency
        self._client = httpx.Client(
            transport=transport,
            timeout=self.timeout,
            follow_redirects=True,
            max_redirects=10,
            headers={"User-Agent": options.user_agent},
            # Environment proxies would override an injected transport.
            trust_env=transport is None,
            verify=_ssl_context(options.ca_bundle) if transport is None else True,
            # Every request in flight to an endpoint may come back to a kept connection:
            # one TCP (and TLS) handshake per slot, not one per request.
            limits=httpx.Limits(
                max_connections=None,
                max_keepalive_connections=options.max_concurrency * KEEPALIVE_ENDPOINTS,
            ),
        )
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    def close(self) -> None:
        self._client.close()

    def _slot(self, url: httpx.URL) -> threading.BoundedSemaphore:
        key = origin(url)
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = threading.BoundedSemaphore(self._max_concurrency)
            return slot

    @contextmanager
    def open(
        self,
        method: str,
        url: str,
        *,
        subject: Subject,
        auth: httpx.Auth,
        headers: Mapping[str, str],
    ) -> Iterator[httpx.Response]:
        """Yield the (streaming, successful) response to one request; see the module doc."""
        request = self._client.build_request(method, url, headers=dict(headers))
        with self._slot(request.url):
            try:
                response = self._client.send(request, auth=auth, stream=True)
            except httpx.HTTPError as exc:
                raise transport_error(exc, subject) from exc
            try:
                logger.debug("%s %s -> %d", method, response.url, response.status_code)
                _check_status(response, subject)
                yield response
            except httpx.HTTPError as exc:
                raise transport_error(exc, subject) from exc
            finally:
                _release(response)


def _release(response: httpx.Response) -> None:
    """Close ``response``, reading what is left of a short one first.

    httpx puts a connection back in its pool only once the response was read to its
    end; closing a streamed one early (a HEAD never read, a manifest whose answer a
    check rejected) drops the connection, and the next request pays a new handshake.
    A long rest (a blob given up midway) is not worth reading, nor can a stream that
    was partly read be read again: that connection goes.
    """
    try:
        if not response.is_stream_consumed and _short_rest(response):
            for _ in response.iter_raw():
                pass
    except (httpx.HTTPError, httpx.StreamError) as exc:
        logger.debug("dropping the connection of %s: %s", response.url, exc)
    finally:
        response.close()


def _short_rest(response: httpx.Response) -> bool:
    if response.request.method == "HEAD" or response.status_code in (204, 304):
        return True
    declared = response.headers.get("Content-Length", "")
    return declared.isdigit() and int(declared) - response.num_bytes_downloaded <= _MAX_DRAIN


def _check_status(response: httpx.Response, subject: Subject) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    body = _error_body(response)
    error = status_error(status, body, subject)
    if status in RETRYABLE_STATUSES:
        raise Transient(error)
    if status == 429:
        raise Transient(error, parse_retry_after(response.headers.get("Retry-After")))
    raise error


def _error_body(response: httpx.Response) -> bytes:
    if response.request.method == "HEAD":
        return b""
    body = b""
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= _MAX_ERROR_BODY:
            break
    return body[:_MAX_ERROR_BODY]
