"""The one image a conversion publishes, as every writer and the layer scheduling see it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unpacked.convert._model import ConvertOptions, LayerPlan, Placement
from unpacked.records import ImageStatus
from unpacked.reference import Reference
from unpacked.registry import ResolvedImage


@dataclass(frozen=True)
class ImageContext:
    """What is known before the transaction writes anything; the same for every writer."""

    reference: Reference
    place: Placement
    image: ResolvedImage
    root: Path
    options: ConvertOptions
    previous: ImageStatus | None
    """The reference's status before this conversion (None: a new reference)."""
    when: str

    def layer_name(self, item: LayerPlan) -> str:
        count = len(self.image.layers)
        return f"{item.descriptor.digest} ({item.index + 1}/{count} of {self.reference})"

    def bound(self, item: LayerPlan) -> tuple[int, str]:
        """The most the layer may decompress to, and how that was set (for the error)."""
        limit, size = self.options.max_layer_size, item.descriptor.size
        return limit.for_blob(size), limit.describe(size)
