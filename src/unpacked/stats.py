"""Repository statistics: images, layers, bytes, and the largest would-be CVMFS catalog.

Read-only: a walk of the published tree that never follows symbolic links. Bytes count
each inode once, so a flat tree made of hard links to its layers costs nothing extra.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from unpacked import layout, repository


@dataclass(frozen=True)
class CatalogSize:
    path: str
    entries: int


@dataclass(frozen=True)
class RepositoryStats:
    images: int
    """Public links (``<registry>/<repository>:<tag>``, ``repository.is_public_link``)."""
    flat_trees: int
    layers: int
    bytes: int
    """Bytes of regular files, each inode counted once."""
    entries: int
    catalogs: int
    largest_catalogs: tuple[CatalogSize, ...]
    """The biggest CVMFS catalogs the markers would make, largest first."""

    def to_json(self) -> dict[str, object]:
        return {
            "images": self.images,
            "flatTrees": self.flat_trees,
            "layers": self.layers,
            "bytes": self.bytes,
            "entries": self.entries,
            "catalogs": self.catalogs,
            "largestCatalogs": [
                {"path": c.path, "entries": c.entries} for c in self.largest_catalogs
            ],
        }


@dataclass
class _Walk:
    seen_inodes: set[tuple[int, int]] = field(default_factory=set)
    bytes: int = 0
    entries: int = 0
    links: int = 0
    catalog_entries: dict[str, int] = field(default_factory=dict)


def repository_stats(root: Path, *, top: int = 5) -> RepositoryStats:
    """Walk the repository at ``root`` once and summarise it."""
    walk = _Walk()
    _scan(root, walk)
    largest = sorted(walk.catalog_entries.items(), key=lambda item: (-item[1], item[0]))[:top]
    return RepositoryStats(
        images=walk.links,
        flat_trees=len(repository.fanout(root, layout.FLAT).digests),
        layers=len(repository.fanout(root, layout.LAYERS).digests),
        bytes=walk.bytes,
        entries=walk.entries,
        catalogs=len(walk.catalog_entries),
        largest_catalogs=tuple(CatalogSize(path or "/", n) for path, n in largest),
    )


def _scan(root: Path, walk: _Walk) -> None:
    # Each stack item: a directory and the catalog (path of the nearest marked directory) it is in.
    walk.catalog_entries[""] = 0
    stack: list[tuple[Path, str]] = [(root, "")]
    while stack:
        directory, catalog = stack.pop()
        relative = PurePosixPath(os.path.relpath(directory, root)).as_posix()
        relative = "" if relative == "." else relative
        if relative and (directory / layout.CATALOG_MARKER).exists():
            catalog = relative
            walk.catalog_entries.setdefault(catalog, 0)
        for entry in os.scandir(directory):
            if not relative and entry.name == str(layout.PRIVATE_DIR):
                continue
            _count(entry, relative, catalog, walk)
            if entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), catalog))


def _count(entry: os.DirEntry[str], relative: str, catalog: str, walk: _Walk) -> None:
    st = entry.stat(follow_symlinks=False)
    walk.entries += 1
    walk.catalog_entries[catalog] += 1
    if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in walk.seen_inodes:
        walk.seen_inodes.add((st.st_dev, st.st_ino))
        walk.bytes += st.st_size
    elif stat.S_ISLNK(st.st_mode) and repository.is_public_link(
        PurePosixPath(relative, entry.name)
    ):
        walk.links += 1
