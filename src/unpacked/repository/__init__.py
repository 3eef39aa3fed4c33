"""The read-side view of a published repository: one reader, next to ``layout``.

Garbage collection, verify, stats, status and convert list and read what is published
through this package, so that they agree by construction on what an image is
(``is_image``: a metadata directory with a ``status.json``), what a public link is, how
a link names its flat tree, and how time stamps are written.

- ``_model``: the pure part (rules, time format, typed listings); no I/O imports.
- ``_read``: listing (fan-outs, links, ``.metadata``) and reading (status, manifest,
  ``origin.json``, ``layers.json``, the removal schedule), strict or tolerant as the
  caller chooses (see its docstring).
"""

from __future__ import annotations

from unpacked.repository._model import (
    ORPHAN,
    TIME_FORMAT,
    Fanout,
    Link,
    MetadataTree,
    belongs_in,
    flat_target_image,
    format_time,
    is_image,
    is_image_name,
    is_public_link,
    parse_time,
    public_name_of,
    utc_now,
)
from unpacked.repository._read import (
    PublishedImage,
    fanout,
    find_manifest,
    find_status,
    flat_trees,
    is_real_dir,
    layer_records,
    link_target,
    links,
    list_statuses,
    live_layers,
    metadata_tree,
    published_image,
    published_images,
    read_manifest_layers,
    read_optional,
    read_origin,
    read_schedule,
    read_status,
)

__all__ = [
    "ORPHAN",
    "TIME_FORMAT",
    "Fanout",
    "Link",
    "MetadataTree",
    "PublishedImage",
    "belongs_in",
    "fanout",
    "find_manifest",
    "find_status",
    "flat_target_image",
    "flat_trees",
    "format_time",
    "is_image",
    "is_image_name",
    "is_public_link",
    "is_real_dir",
    "layer_records",
    "link_target",
    "links",
    "list_statuses",
    "live_layers",
    "metadata_tree",
    "parse_time",
    "public_name_of",
    "published_image",
    "published_images",
    "read_manifest_layers",
    "read_optional",
    "read_origin",
    "read_schedule",
    "read_status",
    "utc_now",
]
