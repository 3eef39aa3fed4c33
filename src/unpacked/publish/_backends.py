"""The publishing backends by name: the one table every spec ``<backend>:<location>`` is read with.

The wish list checks a repository spec with it, the CLI opens a publisher with it, and
a new backend is one row here. A known backend without an opener (``cvmfs`` today) is
accepted where a spec is only written down (a wish list) and refused where a publisher
is opened, as an unknown one is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from unpacked.publish._base import Publisher

# CernVM-FS repository names are DNS-like ("unpacked.cern.ch"); DUCC lets ``cvmfs_repo``
# carry a lease sub-path after the name ("unpacked.cern.ch/some/dir") for gateway publishers.
_CVMFS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def directory_location(text: str) -> str:
    """A ``dir:`` location, normalised; ``ValueError`` unless it is an absolute path."""
    # A relative path would depend on the directory a cron job happens to start in.
    if not text.startswith("/"):
        raise ValueError(f"a dir: repository needs an absolute path, got {text!r}")
    return str(PurePosixPath(text))


def cvmfs_location(text: str) -> str:
    """``name[/lease/path]`` checked, without a trailing ``/``; ``ValueError`` if malformed."""
    name, _, lease = text.rstrip("/").partition("/")
    if not _CVMFS_NAME.fullmatch(name):
        raise ValueError(
            f"bad CernVM-FS repository name {name!r}: letters, digits, '.', '_' and '-'"
        )
    parts = lease.split("/") if lease else []
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"bad lease path {lease!r}: empty, '.' or '..' component")
    return "/".join([name, *parts])


def _open_dir(location: str, create: bool) -> Publisher:
    # Imported when a repository is opened: ``import unpacked.publish`` stays cheap for
    # the unpacking worker processes, which need only the capability types (the
    # backend's modules would add about 60 ms to each worker's start).
    from unpacked.publish._dir import DirPublisher  # noqa: PLC0415

    return DirPublisher.open(location, create)


@dataclass(frozen=True)
class Backend:
    """One backend: its name before the colon and how its location is written and checked."""

    name: str
    location: str
    """The location's form, for messages (``/absolute/path``)."""
    canonical: Callable[[str], str]
    """The location normalised; ``ValueError`` saying what is wrong with it."""
    opener: Callable[[str, bool], Publisher] | None
    """``(location, create)`` to a publisher; None: known, not implemented yet."""
    local_directory: bool
    """Whether the location is a directory of this machine (that a reader checks exists)."""


BACKEND_TABLE: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("dir", "/absolute/path", directory_location, _open_dir, True),
        Backend("cvmfs", "repository.name", cvmfs_location, None, False),
    )
}


def backend_of(spec: str) -> Backend | None:
    """The backend ``spec`` names before its colon, if it is a known one."""
    name, colon, _ = spec.partition(":")
    return BACKEND_TABLE.get(name) if colon else None


def canonical_spec(text: str) -> str:
    """The canonical form of a spec of any known backend; ``ValueError`` says what is wrong."""
    backend = backend_of(text)
    if backend is None:
        expected = " or ".join(f"'{b.name}:{b.location}'" for b in BACKEND_TABLE.values())
        raise ValueError(f"expected {expected}")
    return f"{backend.name}:{backend.canonical(text.partition(':')[2])}"
