"""The JSON records of the repository layout (DESIGN.md section 2). Pure: values in, bytes out.

- ``origin.json`` of a layer: ``{"origin": ["sha256:<config digest>", ...]}``, the images
  that use the layer, as a sorted list without duplicates (garbage collection removes a
  layer when the list becomes empty).
- ``layers.json`` of a layer: podman-style layer records ``[{"id", "created",
  "compressed-diff-digest", "diff-digest", "diff-size"}]``, one per containers/storage
  layer id the layer has been published under (the id depends on the layers below it).
  ``unpacked-whiteouts`` says how whiteouts are stored in ``layerfs`` ("overlay": 0/0
  character devices and the ``trusted.overlay.opaque`` xattr; "wh-files": the ``.wh.``
  files of the tar, kept when running unprivileged).
- ``status.json`` of an image: what we know about it, readable by users.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from unpacked.digest import Digest


def _dump(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


# What ``json.dumps`` does to a string (``ensure_ascii``), without its per-call overhead.
_quote = json.encoder.encode_basestring_ascii


def _dump_list(key: str, items: Sequence[str], after: str = "") -> bytes:
    """``_dump({key: [...], ...})`` for items already encoded (indented by the caller).

    The same bytes as ``_dump``, at the C encoder's speed: ``json`` uses its slow
    pure-Python encoder whenever ``indent`` is set, and garbage collection rewrites the
    ``origin.json`` of a base layer thousands of images share, and the removal
    schedule, at every batch.
    """
    body = "[\n" + ",\n".join(items) + "\n  ]" if items else "[]"
    return f"{{\n  {_quote(key)}: {body}{after}\n}}\n".encode()


def parse_origin(raw: bytes | None, *, what: str) -> frozenset[str]:
    """The config digests listed in an ``origin.json`` (empty when there is none)."""
    if raw is None:
        return frozenset()
    try:
        value = json.loads(raw)
        origins = value["origin"]
        if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
            raise TypeError("'origin' is not a list of strings")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{what}: malformed origin.json: {exc}") from exc
    return frozenset(origins)


def origin_json(origins: Iterable[str]) -> bytes:
    """``origin.json`` content for exactly this set of config digests."""
    return _dump_list("origin", [f"    {_quote(o)}" for o in sorted(set(origins))])


def storage_layer_ids(diff_ids: Sequence[Digest]) -> list[str]:
    """containers/storage layer ids: the first layer's diff_id hex, then chained.

    containers/storage names layer N ``sha256(<id of layer N-1> + "+" + <diff_id N hex>)``;
    podman recognises layers of an additional image store only under these ids (they
    are not OCI ChainIDs).
    """
    ids: list[str] = []
    for diff_id in diff_ids:
        if not ids:
            ids.append(diff_id.hex)
        else:
            ids.append(hashlib.sha256(f"{ids[-1]}+{diff_id.hex}".encode()).hexdigest())
    return ids


class Whiteouts(enum.Enum):
    """How whiteouts are kept in a tree: a closed choice.

    RESOLVE: applied (a flat tree has none); OVERLAY: 0/0 character devices and the
    ``trusted.overlay.opaque`` xattr; KEEP: the tar's ``.wh.`` files (unprivileged).
    The values are what ``layers.json`` and reports say.
    """

    RESOLVE = "resolved"
    OVERLAY = "overlay"
    KEEP = "wh-files"


@dataclass(frozen=True)
class LayerRecord:
    """One podman-style record of a layer."""

    id: str
    created: str
    compressed_diff_digest: str
    diff_digest: str
    diff_size: int
    whiteouts: Whiteouts

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "compressed-diff-digest": self.compressed_diff_digest,
            "diff-digest": self.diff_digest,
            "diff-size": self.diff_size,
            "unpacked-whiteouts": self.whiteouts.value,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> LayerRecord:
        """One record of a ``layers.json``; a missing whiteout form is the overlay one (the
        form written before the field existed). ``KeyError``/``ValueError``/``TypeError``."""
        size = value["diff-size"]
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"diff-size {size!r} is not an integer")
        texts = {
            key: value[key] for key in ("id", "created", "compressed-diff-digest", "diff-digest")
        }
        if not all(isinstance(text, str) for text in texts.values()):
            raise TypeError("id, created and the digests must be strings")
        return cls(
            id=texts["id"],
            created=texts["created"],
            compressed_diff_digest=texts["compressed-diff-digest"],
            diff_digest=texts["diff-digest"],
            diff_size=size,
            whiteouts=Whiteouts(value.get("unpacked-whiteouts", Whiteouts.OVERLAY.value)),
        )


def parse_layer_records(raw: bytes | None, *, what: str) -> list[dict[str, Any]]:
    """The records of a ``layers.json`` as plain dicts (empty when there is none)."""
    if raw is None:
        return []
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{what}: malformed layers.json: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"{what}: malformed layers.json: not a list of objects")
    return value


def read_layer_records(raw: bytes | None, *, what: str) -> tuple[LayerRecord, ...]:
    """The records of a ``layers.json``, typed (empty when there is none); ``ValueError``."""
    try:
        return tuple(LayerRecord.from_json(item) for item in parse_layer_records(raw, what=what))
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{what}: malformed layers.json: {exc}") from exc


def merge_layer_records(
    existing: list[dict[str, Any]], records: Iterable[LayerRecord]
) -> bytes | None:
    """``layers.json`` with ``records`` added, or None when all their ids are there already."""
    known = {item.get("id") for item in existing}
    added = []
    for record in records:
        if record.id not in known:
            known.add(record.id)
            added.append(record.to_json())
    return _dump([*existing, *added]) if added else None


@dataclass(frozen=True)
class ImageStatus:
    """``status.json``: what a user (or the next run) needs to know about one image."""

    reference: str
    digest: str
    media_type: str
    manifest_digest: str
    image_id: str
    platform: str
    last_check: str
    last_change: str
    last_error: str | None = None

    def to_bytes(self) -> bytes:
        return _dump({_camel(key): value for key, value in asdict(self).items()})

    @classmethod
    def from_bytes(cls, raw: bytes) -> ImageStatus:
        """Parse a ``status.json``; ``ValueError`` if it is not one of ours."""
        try:
            value = json.loads(raw)
            return cls(**{key: value[_camel(key)] for key in _STATUS_FIELDS})
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed status.json: {exc}") from exc


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


_STATUS_FIELDS = tuple(ImageStatus.__dataclass_fields__)


@dataclass(frozen=True)
class ScheduledRemoval:
    """An image (flat tree) that lost its last public link at ``unlinked``."""

    image_id: str
    reference: str
    unlinked: str


@dataclass(frozen=True)
class RemovalSchedule:
    """``.metadata/remove-schedule.json``: images waiting for garbage collection.

    Garbage collection removes an entry's flat tree once the grace period since
    ``unlinked`` has passed and nothing links to the image again; converting an image
    takes it off the schedule.
    """

    entries: tuple[ScheduledRemoval, ...] = ()

    def image_ids(self) -> frozenset[str]:
        return frozenset(entry.image_id for entry in self.entries)

    def add(self, image_id: str, reference: str, unlinked: str) -> RemovalSchedule:
        """Schedule ``image_id`` unless it is already (the first unlinking time counts)."""
        if image_id in self.image_ids():
            return self
        return RemovalSchedule((*self.entries, ScheduledRemoval(image_id, reference, unlinked)))

    def without(self, image_ids: Iterable[str]) -> RemovalSchedule:
        drop = set(image_ids)
        return RemovalSchedule(tuple(e for e in self.entries if e.image_id not in drop))

    def to_bytes(self) -> bytes:
        """``{"images": [{"imageId", "reference", "unlinked"}, ...], "version": 1}``, indented."""
        entries = sorted(self.entries, key=lambda e: (e.unlinked, e.image_id))
        items = [
            f'    {{\n      "imageId": {_quote(e.image_id)},\n'
            f'      "reference": {_quote(e.reference)},\n'
            f'      "unlinked": {_quote(e.unlinked)}\n    }}'
            for e in entries
        ]
        return _dump_list("images", items, ',\n  "version": 1')

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> RemovalSchedule:
        """Parse the schedule (None: no file yet, so empty); ``ValueError`` if malformed."""
        if raw is None:
            return cls()
        try:
            value = json.loads(raw)
            entries = tuple(
                ScheduledRemoval(item["imageId"], item["reference"], item["unlinked"])
                for item in value["images"]
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed remove-schedule.json: {exc}") from exc
        return cls(entries)
