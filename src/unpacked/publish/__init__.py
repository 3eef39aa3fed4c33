"""Publishing into a repository: one transaction per image, all of it or nothing.

``open_publisher("dir:/srv/unpacked")`` gives a ``Publisher``; its ``transaction()``
context manager gives a ``Transaction`` that stages new trees, files and links and
publishes them when the ``with`` block ends without an exception. The contract every
backend keeps, and what it does not promise, is written in ``_base``.
"""

from __future__ import annotations

from collections.abc import Callable

from unpacked.errors import ConfigError
from unpacked.publish._base import Capabilities, Publisher, Transaction, WhiteoutForm
from unpacked.publish._dir import DirPublisher

__all__ = [
    "BACKENDS",
    "Capabilities",
    "Publisher",
    "Transaction",
    "WhiteoutForm",
    "open_publisher",
]

_OPENERS: dict[str, Callable[[str, bool], Publisher]] = {
    "dir": DirPublisher.open,
}

BACKENDS: tuple[str, ...] = tuple(_OPENERS)
"""Names of the supported backends, as written before the colon of a spec."""


def open_publisher(spec: str, *, create: bool = True) -> Publisher:
    """The publisher for ``spec``, ``"<backend>:<location>"`` (e.g. ``"dir:/srv/unpacked"``).

    A bare path is refused rather than guessed at: ``/cvmfs/x`` could mean either backend.
    With ``create=False`` a missing repository is an error instead of being created (for
    commands that only read, where a mistyped path must not leave an empty repository).
    """
    backend, colon, location = spec.partition(":")
    opener = _OPENERS.get(backend) if colon else None
    if opener is None:
        supported = ", ".join(f"{name}:<path>" for name in BACKENDS)
        hint = f" (for a plain directory: dir:{spec})" if spec.startswith(("/", ".")) else ""
        raise ConfigError(f"unknown publisher {spec!r}: expected one of {supported}{hint}")
    return opener(location, create)
