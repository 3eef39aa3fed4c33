"""The exception tree of `unpacked`.

Every error the library raises on purpose is an ``UnpackedError``; third-party
exceptions (httpx, OSError from tar streams, YAML errors) are translated at the
boundary where they occur, so callers and the CLI only ever see this tree::

    UnpackedError
    ├── InvalidReferenceError          a reference string that cannot be parsed
    ├── RegistryError                  anything that went wrong talking to a registry
    │   ├── RegistryConnectionError    network failure or timeout, after retries
    │   │   └── RegistryUnreachableError  no connection at all (refused, no route, DNS,
    │   │                                 connect timeout, untrusted certificate)
    │   ├── AuthenticationError        401/403, or the token service refused us
    │   ├── NotFoundError              unknown manifest, blob, repository or tag
    │   ├── RateLimitedError           429 that did not clear within our patience
    │   └── RegistryProtocolError      a response we cannot accept (bad media type,
    │                                  size over the cap, malformed JSON, ...)
    ├── VerificationError              bytes that do not match their digest or size
    ├── WishlistError                  a wish list cannot be used (every problem, with lines)
    ├── LayerError                     a layer cannot be applied
    │   ├── UnsafeLayerError           an entry tries to leave the target directory
    │   └── LayerTooLargeError         a layer decompresses to more than its size limit
    ├── PublishError                   a repository transaction failed (nothing was published)
    │   ├── RepositoryLockedError      another process holds the repository lock too long
    │   └── RepositoryFullError        the repository's file system is full (or over quota)
    └── ConfigError                    bad configuration (auth file, options)

Each error's message names the culprit (the reference, the blob digest, the
layer, the path) so that it can be shown to a person as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class UnpackedError(Exception):
    """Base class of every error raised on purpose by `unpacked`."""


class InvalidReferenceError(UnpackedError, ValueError):
    """A string is not a valid image reference."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid image reference {text!r}: {reason}")
        self.text = text
        self.reason = reason


class ConfigError(UnpackedError):
    """Configuration (options, auth files) is malformed."""


class RegistryError(UnpackedError):
    """A registry request failed."""


class RegistryConnectionError(RegistryError):
    """The registry could not be reached (connection, TLS, timeout) after retries."""


class RegistryUnreachableError(RegistryConnectionError):
    """Not even a connection to the registry could be made: it is down for every request,
    not failing one of them."""


class AuthenticationError(RegistryError):
    """The registry or its token service refused our credentials."""


class NotFoundError(RegistryError):
    """The registry does not know the manifest, blob, repository or tag."""


class RateLimitedError(RegistryError):
    """The registry kept answering 429 Too Many Requests."""


class RegistryProtocolError(RegistryError):
    """The registry answered something we cannot accept."""


class VerificationError(UnpackedError):
    """Content does not match the digest or size it was announced with."""


class LayerError(UnpackedError):
    """A layer cannot be read or applied."""


class UnsafeLayerError(LayerError):
    """A layer entry would create, change or follow something outside the target."""


class LayerTooLargeError(LayerError):
    """A layer decompresses to more than the limit set for it (a decompression bomb?)."""


class UnpackWorkerDied(LayerError):
    """The worker process unpacking a layer ended without an answer (killed, crashed)."""


class BlobAbandoned(LayerError):
    """The download a layer was being unpacked from, as it grew, restarted or failed: the
    layer is unpacked again from the finished blob, if there is one."""


class LowerLayersNeeded(LayerError):
    """A layer unpacked before its lower layers were ready needs them in the middle of its tar.

    Raised only when the caller asked to defer the lower tree (``defer_lower``); the
    caller unpacks the layer again, in order, with the lower tree.
    """


class PublishError(UnpackedError):
    """A repository transaction could not be completed; the published tree is unchanged."""


class RepositoryLockedError(PublishError):
    """Another process held the repository lock for longer than we were willing to wait."""


class RepositoryFullError(PublishError):
    """The repository's file system ran out of space or quota; nothing was published."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a wish list, located as precisely as we can."""

    source: str
    line: int | None
    entry: str | None  # "input[3] 'ubuntu:22.04 x'", "platforms[1] 'linux'", a key, ...
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return (
            f"{where}: {self.entry}: {self.message}" if self.entry else f"{where}: {self.message}"
        )


class WishlistError(UnpackedError):
    """A wish list cannot be used; ``problems`` lists everything wrong with it, in file order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(sorted(problems, key=lambda problem: problem.line or 0))
        super().__init__("\n".join(str(problem) for problem in self.problems))
