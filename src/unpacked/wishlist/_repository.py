"""Where the images go: ``repository: dir:/path | cvmfs:name`` and DUCC's ``cvmfs_repo``."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

# CernVM-FS repository names are DNS-like ("unpacked.cern.ch"); DUCC lets ``cvmfs_repo``
# carry a lease sub-path after the name ("unpacked.cern.ch/some/dir") for gateway publishers.
_CVMFS_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_BACKENDS = "expected 'dir:/absolute/path' or 'cvmfs:repository.name'"


def repository_spec(text: str) -> str:
    """The canonical form of a ``dir:`` / ``cvmfs:`` spec; ``ValueError`` says what is wrong."""
    backend, colon, rest = text.partition(":")
    if not colon or backend not in ("dir", "cvmfs"):
        raise ValueError(_BACKENDS)
    if backend == "dir":
        return "dir:" + _directory(rest)
    return "cvmfs:" + cvmfs_repository(rest)


def cvmfs_repository(text: str) -> str:
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


def _directory(text: str) -> str:
    # A relative path would depend on the directory a cron job happens to start in.
    if not text.startswith("/"):
        raise ValueError(f"a dir: repository needs an absolute path, got {text!r}")
    return str(PurePosixPath(text))
