"""A person-sized view of a resolved image, for ``unpacked inspect``. No I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unpacked.registry import ResolvedImage


@dataclass(frozen=True)
class LayerSummary:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class ImageSummary:
    """What a reference resolves to: digests, platforms, config and layers."""

    reference: str
    digest: str
    media_type: str
    platforms: tuple[str, ...]
    platform: str
    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    created: str | None
    layers: tuple[LayerSummary, ...]

    @property
    def total_size(self) -> int:
        return sum(layer.size for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "mediaType": self.media_type,
            "platforms": list(self.platforms),
            "platform": self.platform,
            "manifest": {"digest": self.manifest_digest, "mediaType": self.manifest_media_type},
            "config": {"digest": self.config_digest, "created": self.created},
            "layers": [
                {"digest": layer.digest, "size": layer.size, "mediaType": layer.media_type}
                for layer in self.layers
            ],
            "size": self.total_size,
        }


def summarize(image: ResolvedImage) -> ImageSummary:
    """Reduce a resolved image to what ``inspect`` shows."""
    platforms = tuple(str(p) for p in image.index.platforms()) if image.index else ()
    return ImageSummary(
        reference=str(image.reference),
        digest=str(image.top.digest),
        media_type=image.top.media_type,
        platforms=platforms,
        platform=str(image.platform),
        manifest_digest=str(image.manifest_descriptor.digest),
        manifest_media_type=image.manifest_descriptor.media_type,
        config_digest=str(image.image_id),
        created=image.config.created,
        layers=tuple(
            LayerSummary(str(layer.digest), layer.size, layer.media_type) for layer in image.layers
        ),
    )
