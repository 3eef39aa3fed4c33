"""The tree oracle: ``umoci raw unpack`` of corpus images, built into one OCI layout.

umoci 0.4.7 cannot read zstd layers, so it unpacks a gzip twin of such an image
(same uncompressed tars, hence the same diff_ids and the same tree).
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .corpus import CorpusImage
from .oci import BuiltImage

TOOL_TIMEOUT = 120


def umoci_twin(image: CorpusImage) -> CorpusImage:
    """``image`` with every zstd layer gzip-compressed instead (umoci 0.4.7 lacks zstd)."""
    kinds = tuple("gzip" if kind == "zstd" else kind for kind in image.compressions)
    return dataclasses.replace(image, name=f"{image.name}-for-umoci", compressions=kinds)


def run_tool(args: Sequence[str]) -> None:
    """Run a command with a timeout; fail the test with its stderr if it fails."""
    result = subprocess.run(list(args), capture_output=True, timeout=TOOL_TIMEOUT, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {result.stderr.decode(errors='replace')}")


@dataclasses.dataclass
class UmociOracle:
    """Builds corpus images into one layout and unpacks each with umoci, once."""

    workdir: Path

    def __post_init__(self) -> None:
        self.layout = self.workdir / "layout"
        self._built: dict[str, BuiltImage] = {}
        self._rootfs: dict[str, Path] = {}

    def built(self, image: CorpusImage) -> BuiltImage:
        """``image`` written into the oracle's layout (as it is, zstd included)."""
        if image.name not in self._built:
            self._built[image.name] = image.build(self.layout)
        return self._built[image.name]

    def rootfs(self, image: CorpusImage) -> Path:
        """umoci's root file system of ``image``."""
        if image.name not in self._rootfs:
            built = self.built(umoci_twin(image))
            rootfs = self.workdir / "umoci" / image.name
            rootfs.parent.mkdir(exist_ok=True)
            if rootfs.exists():  # left over by a failed attempt
                shutil.rmtree(rootfs)
            run_tool(
                ["umoci", "raw", "unpack", "--image", f"{self.layout}:{built.tag}", str(rootfs)]
            )
            self._rootfs[image.name] = rootfs
        return self._rootfs[image.name]

    def lower(self, image: CorpusImage, index: int) -> Path | None:
        """umoci's tree of the layers below layer ``index`` (None for the first layer)."""
        return self.rootfs(image.prefix(index)) if index else None

    def blob(self, built: BuiltImage, index: int) -> Path:
        """The blob file of layer ``index`` of ``built`` in the oracle's layout."""
        return self.layout / "blobs" / "sha256" / built.layer_digests[index].partition(":")[2]
