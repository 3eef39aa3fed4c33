"""The rules of the read-side view that need no file system: names, times, what an image is.

Pure (no I/O imports), so that garbage collection, verify, stats, status and convert
apply one rule each, and tests can check the rules on plain values.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from unpacked import layout
from unpacked.reference import Reference

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
"""The repository's time stamps (status.json, layers.json, remove-schedule.json): UTC, seconds."""

ORPHAN = ""
"""The ``reference`` of a schedule entry for a flat tree that no reference used."""

HEX = re.compile(r"[0-9a-f]{64}")
# A public link's target, wherever the repository is mounted: the last three components
# name the flat tree. Matching only the tail keeps absolute links (made by hand) live too.
_FLAT_TARGET = re.compile(r"(?:^|/)\.flat/([0-9a-f]{2})/([0-9a-f]{64})/?$")
_MULTIARCH = str(layout.MULTIARCH)


def format_time(when: datetime) -> str:
    """The repository's time stamp format (UTC, seconds)."""
    return when.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """A time stamp of the repository's records; naive ones are UTC. ``ValueError`` if bad."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def utc_now() -> str:
    """Now, in the repository's time stamp format."""
    return format_time(datetime.now(UTC))


def is_image(files: Collection[str]) -> bool:
    """THE rule of what an image is: a metadata directory holding a ``status.json``.

    The directory is ``.metadata/<name>`` (default platform) or
    ``.metadata/.multiarch/<arch>/<name>`` (a further platform). A manifest alone is not
    an image: convert writes both in one transaction, so a directory without a status is
    either broken or not ours.
    """
    return layout.STATUS_NAME in files


def is_image_name(metadata: PurePosixPath) -> bool:
    """Whether a metadata directory (relative to the root) is named like an image.

    Below the registry level a ``:`` or ``@`` can only be the tag or digest separator
    (repository components cannot contain them). The ``<arch>`` of ``.multiarch/<arch>/``
    may contain a ``:`` too (``arm64:v8``), so it does not count.
    """
    parts = public_name_of(metadata).parts
    return len(parts) >= 2 and (":" in parts[-1] or "@" in parts[-1])


def public_name_of(metadata: PurePosixPath) -> PurePosixPath:
    """The public name a metadata directory belongs to.

    ``.metadata/<name>``, or ``.metadata/.multiarch/<arch>/<name>`` for the image of a
    further platform (published with a ``.multiarch`` link only).
    """
    parts = metadata.parts[1:]
    if parts and parts[0] == _MULTIARCH:
        parts = parts[2:]
    return PurePosixPath(*parts)


def belongs_in(metadata: PurePosixPath, reference: Reference) -> bool:
    """Whether a status naming ``reference`` is in the directory that reference uses."""
    return public_name_of(metadata) == layout.public_link(reference)


def is_public_link(path: PurePosixPath) -> bool:
    """Whether a link's path is a public name: ``<registry>/.../<repository>:<tag>`` (or ``@``).

    Outside ``podmanStore``, below the registry level, with a tag or digest in its name,
    and no component starting with a dot (no registry or repository name does: such a
    link is not one of ours, and ``links`` does not list it).
    """
    return (
        len(path.parts) >= 2
        and not any(part.startswith(".") for part in path.parts)
        and path.parts[0] != str(layout.PODMAN_STORE)
        and (":" in path.name or "@" in path.name)
    )


def flat_target_image(link: PurePosixPath, target: str) -> str | None:
    """The image id a link's target names (``.../.flat/<c2>/<c>``), or None."""
    joined = posixpath.normpath(posixpath.join(str(link.parent), target))
    match = _FLAT_TARGET.search(joined)
    if match is None or match[2][:2] != match[1]:
        return None
    return f"sha256:{match[2]}"


@dataclass(frozen=True)
class Link:
    """A symbolic link of the public area or of ``.multiarch``, as the view lists it.

    ``image_id``: the flat tree its target names (None: it names none).
    """

    path: PurePosixPath
    target: str
    image_id: str | None

    @property
    def public(self) -> bool:
        return is_public_link(self.path)


@dataclass(frozen=True)
class Fanout:
    """A ``.flat`` or ``.layers`` fan-out: its ``<d2>`` directories and the ``<d>`` under them.

    Only real directories count, and a ``<d>`` only when it is 64 hex digits starting
    with its ``<d2>``: anything else there is not part of the layout.
    """

    parents: tuple[str, ...]
    digests: tuple[str, ...]

    def ids(self) -> frozenset[str]:
        """``sha256:<d>`` of every entry."""
        return frozenset(f"sha256:{hexdigest}" for hexdigest in self.digests)


@dataclass(frozen=True)
class MetadataTree:
    """What ``.metadata`` holds, relative to the root, sorted.

    images:     directories that are images (``is_image``)
    unrecorded: directories named like an image that are not one (no ``status.json``)
    manifests:  every ``manifest.json`` (the layers they list are in use)
    """

    images: tuple[PurePosixPath, ...]
    unrecorded: tuple[PurePosixPath, ...]
    manifests: tuple[PurePosixPath, ...]
