"""The state of one layer being applied, and where one of its entries goes."""

from __future__ import annotations

from dataclasses import dataclass, field

from unpacked.layers._fs import FileSystem
from unpacked.layers._paths import Parts, Tree
from unpacked.layers._report import ReportBuilder
from unpacked.layers._tarstream import TarSource


@dataclass(frozen=True, slots=True)
class Place:
    """Where an entry goes: its resolved parent, its name there and its resolved path."""

    dir_fd: int
    name: str
    parts: Parts


@dataclass
class Context:
    """The state of one layer being applied."""

    layer: str
    fs: FileSystem
    tree: Tree
    source: TarSource
    report: ReportBuilder
    lower: Tree | None = None
    upper: set[Parts] | None = None
    """FLAT: every path this layer created, which its own whiteouts must not remove."""
    dir_times: dict[Parts, tuple[int, int]] = field(default_factory=dict)
    """Times of directory entries, set when the layer is complete."""
    root_opaque: bool = False
    """LAYERFS: the layer has an opaque marker in its root directory."""
    implicit: dict[Parts, None] | None = None
    """LAYERFS: directories whose last creation was implicit (as a missing parent), in order;
    they take the lower directory's metadata when the layer is complete."""
    defer_lower: bool = False
    """LAYERFS: the lower tree exists but is not ready; needing it raises LowerLayersNeeded."""
    whited: set[Parts] = field(default_factory=set)
    """LAYERFS: paths whose lower entry this layer hides (whiteouts, and directories made
    where the layer had put a non-directory), checked at its end against what it created."""
    non_dirs: set[Parts] = field(default_factory=set)
    """LAYERFS: where this layer has put a non-directory (which hides the lower path)."""
    opaqued: set[Parts] = field(default_factory=set)
    """LAYERFS: directories this layer has made opaque so far."""
    marker_dirs: set[Parts] = field(default_factory=set)
    """LAYERFS: directories that exist only as parents of whiteouts and opaque markers.

    A FLAT tree does not have them (the lower entry at that path stays), so a hard
    link to one of these paths means the lower entry."""

    def hides_lower(self, parts: Parts) -> bool:
        """LAYERFS: whether a whiteout or an opaque marker met so far hides the lower ``parts``.

        A directory created implicitly after that is new, as in a FLAT tree (and
        umoci's): it takes nothing from the lower one.
        """
        return any(parts[:i] in self.whited for i in range(1, len(parts) + 1)) or any(
            parts[:i] in self.opaqued for i in range(len(parts))
        )

    def created(self, parts: Parts) -> None:
        """FLAT: record that this layer created ``parts`` (and so its parents hold its content)."""
        upper = self.upper
        if upper is None:
            return
        upper.add(parts)
        parent = parts[:-1]
        while parent and parent not in upper:
            upper.add(parent)
            parent = parent[:-1]
