"""Image references: parse every form users write, print one canonical form. No I/O.

(Skeleton: the fields and signatures below are the contract other modules code against;
the parser is being filled in.)
"""

from __future__ import annotations

from dataclasses import dataclass

from unpacked.errors import InvalidReferenceError

DOCKER_HUB = "registry.hub.docker.com"
"""The registry name Docker Hub images get in public paths (users' scripts depend on it)."""

DOCKER_HUB_API = "registry-1.docker.io"
"""The host that actually serves Docker Hub's distribution API."""


@dataclass(frozen=True)
class Reference:
    """A parsed image reference.

    registry:   normalised registry name as used in public paths, with port if any
                ("registry.hub.docker.com", "ghcr.io", "localhost:5000", "[::1]:5000")
    repository: path inside the registry ("library/ubuntu", "org/team/app")
    tag:        tag, possibly a wildcard pattern ("3.*"); None for digest-only references
    digest:     "sha256:<hex>" or None
    scheme:     "http" or "https" when the reference said so (DUCC URL form), else None
    """

    registry: str
    repository: str
    tag: str | None = "latest"
    digest: str | None = None
    scheme: str | None = None

    def __str__(self) -> str:
        raise NotImplementedError


def parse(text: str) -> Reference:
    raise InvalidReferenceError(text, "parser not implemented yet")
