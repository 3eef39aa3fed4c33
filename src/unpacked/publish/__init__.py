"""Publishing into a repository: one transaction per image, all of it or nothing.

``open_publisher("dir:/srv/unpacked")`` gives a ``Publisher``; its ``transaction()``
context manager gives a ``Transaction`` that stages new trees, files and links and
publishes them when the ``with`` block ends without an exception. The contract every
backend keeps, and what it does not promise, is written in ``_base``.
"""

from __future__ import annotations

from unpacked.errors import ConfigError
from unpacked.publish._backends import (
    BACKEND_TABLE,
    Backend,
    backend_of,
    canonical_spec,
    cvmfs_location,
)
from unpacked.publish._base import Capabilities, Publisher, Transaction, WhiteoutForm
from unpacked.publish._private import PrivateArea

__all__ = [
    "BACKENDS",
    "BACKEND_TABLE",
    "Backend",
    "Capabilities",
    "PrivateArea",
    "Publisher",
    "Transaction",
    "WhiteoutForm",
    "backend_of",
    "canonical_spec",
    "cvmfs_location",
    "open_publisher",
]

BACKENDS: tuple[str, ...] = tuple(
    name for name, backend in BACKEND_TABLE.items() if backend.opener is not None
)
"""Names of the implemented backends, as written before the colon of a spec."""


def open_publisher(spec: str, *, create: bool = True) -> Publisher:
    """The publisher for ``spec``, ``"<backend>:<location>"`` (e.g. ``"dir:/srv/unpacked"``).

    A bare path is refused rather than guessed at: ``/cvmfs/x`` could mean either backend.
    With ``create=False`` a missing repository is an error instead of being created (for
    commands that only read, where a mistyped path must not leave an empty repository).
    """
    backend = backend_of(spec)
    opener = backend.opener if backend is not None else None
    if opener is None:
        supported = ", ".join(f"{name}:<path>" for name in BACKENDS)
        hint = f" (for a plain directory: dir:{spec})" if spec.startswith(("/", ".")) else ""
        raise ConfigError(f"unknown publisher {spec!r}: expected one of {supported}{hint}")
    return opener(spec.partition(":")[2], create)
