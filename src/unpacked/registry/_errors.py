"""Registry answers and transport failures, turned into errors a person understands.

Distribution reports errors as ``{"errors": [{"code", "message", "detail"}]}``;
the code decides the exception class, and the message always names the image,
blob or repository, and the registry.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass

import httpx

from unpacked.errors import (
    AuthenticationError,
    NotFoundError,
    RateLimitedError,
    RegistryConnectionError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnreachableError,
)

_NOT_FOUND_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"})
_DENIED_CODES = frozenset({"UNAUTHORIZED", "DENIED"})
_SUMMARY_LIMIT = 300


@dataclass(frozen=True)
class Subject:
    """What a request is about, for messages.

    registry:    the registry name as the user wrote it ("127.0.0.1:5000")
    what:        "image test/x:v9", "blob sha256:… of test/x", "tags of test/x"
    credentials: how we authenticated, as a hint for refusals
    """

    registry: str
    what: str
    credentials: str = ""


class Transient(Exception):
    """An attempt failed in a way that may pass; ``error`` is raised if it does not."""

    def __init__(self, error: RegistryError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


@dataclass(frozen=True)
class ErrorEntry:
    code: str
    message: str
    detail: str


def error_entries(body: bytes) -> tuple[ErrorEntry, ...]:
    """The entries of a distribution error body; empty if it is not one."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return ()
    errors = document.get("errors") if isinstance(document, dict) else None
    if not isinstance(errors, list):
        return ()
    return tuple(_entry(e) for e in errors if isinstance(e, dict))


def _entry(entry: dict[str, object]) -> ErrorEntry:
    detail = entry.get("detail")
    if detail is not None and not isinstance(detail, str):
        detail = json.dumps(detail, sort_keys=True)
    return ErrorEntry(str(entry.get("code") or ""), str(entry.get("message") or ""), detail or "")


def summarize(body: bytes) -> str:
    """One line describing an error body: ``CODE: message (detail)``, or its text."""
    entries = error_entries(body)
    if entries:
        parts = []
        for e in entries:
            text = f"{e.code}: {e.message}" if e.message else e.code
            parts.append(f"{text} ({e.detail})" if e.detail else text)
        summary = "; ".join(parts)
    else:
        summary = " ".join(body.decode("utf-8", "replace").split())
    if len(summary) > _SUMMARY_LIMIT:
        summary = summary[: _SUMMARY_LIMIT - 1] + "…"
    return summary


def status_error(status: int, body: bytes, subject: Subject) -> RegistryError:
    """The exception for a non-success answer to a request about ``subject``."""
    codes = {e.code for e in error_entries(body)}
    summary = summarize(body)
    said = f" ({summary})" if summary else ""
    if status == 404 or codes & _NOT_FOUND_CODES:
        return NotFoundError(f"{subject.what} not found in registry {subject.registry}{said}")
    if status in (401, 403) or codes & _DENIED_CODES:
        hint = f"; {subject.credentials}" if subject.credentials else ""
        return AuthenticationError(
            f"registry {subject.registry} refused access to {subject.what}{said}{hint}"
        )
    if status == 429 or "TOOMANYREQUESTS" in codes:
        return RateLimitedError(
            f"registry {subject.registry} is rate-limiting requests for {subject.what}{said}"
        )
    reason = httpx.codes.get_reason_phrase(status)
    return RegistryError(
        f"registry {subject.registry} answered {status} {reason} for {subject.what}{said}"
    )


def transport_error(exc: httpx.HTTPError, subject: Subject) -> Transient | RegistryError:
    """A transport failure: a ``Transient`` if retrying may help, else the final error."""
    kind = type(exc).__name__
    if _untrusted_certificate(exc):
        return RegistryUnreachableError(
            f"registry {subject.registry} presented a certificate we do not trust "
            f"({_root_cause(exc)}); add its CA with the ca_bundle option"
        )
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Transient(
            RegistryUnreachableError(
                f"cannot connect to registry {subject.registry} for {subject.what} ({kind}: {exc})"
            )
        )
    if isinstance(exc, httpx.TimeoutException):
        return Transient(
            RegistryConnectionError(
                f"registry {subject.registry} did not answer in time for {subject.what} ({kind})"
            )
        )
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError | httpx.ProxyError):
        return Transient(
            RegistryConnectionError(
                f"connection to registry {subject.registry} failed for {subject.what} "
                f"({kind}: {exc})"
            )
        )
    return RegistryProtocolError(
        f"registry {subject.registry}: cannot complete the request for {subject.what} "
        f"({kind}: {exc})"
    )


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _untrusted_certificate(exc: BaseException) -> bool:
    # Retrying cannot make a certificate trusted; say what to do instead.
    return any(isinstance(e, ssl.SSLCertVerificationError) for e in _causes(exc))


def _root_cause(exc: BaseException) -> str:
    root = _causes(exc)[-1]
    return getattr(root, "verify_message", None) or str(root)
