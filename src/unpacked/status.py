"""Reading the images' ``status.json`` records of a published repository (tolerantly).

A thin user of the read-side view (``unpacked.repository``): an image is what the view
says it is, and an unreadable status is logged and skipped, never fatal here.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from unpacked import layout, repository
from unpacked.records import ImageStatus
from unpacked.reference import Reference


def read_status(
    root: Path, reference: Reference, status_file: PurePosixPath | None = None
) -> ImageStatus | None:
    """The image's published ``status.json``, or None (missing, or unreadable: logged).

    ``status_file`` overrides the default place (the image of a further platform keeps
    its status under ``.metadata/.multiarch/``).
    """
    return repository.find_status(root, status_file or layout.status_file(reference), reference)


def list_statuses(root: Path) -> list[ImageStatus]:
    """Every image status under ``.metadata``, sorted by reference; unreadable ones logged."""
    return repository.list_statuses(root)
