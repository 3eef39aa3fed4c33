"""Reading the images' ``status.json`` records of a published repository."""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

from unpacked import layout
from unpacked.records import ImageStatus
from unpacked.reference import Reference

logger = logging.getLogger(__name__)

STATUS_NAME = "status.json"


def read_status(
    root: Path, reference: Reference, status_file: PurePosixPath | None = None
) -> ImageStatus | None:
    """The image's published ``status.json``, or None (missing, or unreadable: logged).

    ``status_file`` overrides the default place (the image of a further platform keeps
    its status under ``.metadata/.multiarch/``).
    """
    path = root / (status_file or layout.status_file(reference))
    try:
        return ImageStatus.from_bytes(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("%s: ignoring unreadable %s: %s", reference, path, exc)
        return None


def list_statuses(root: Path) -> list[ImageStatus]:
    """Every image status under ``.metadata``, sorted by reference; unreadable ones logged."""
    statuses = []
    top = root / layout.METADATA
    for directory, subdirs, files in os.walk(top):
        subdirs.sort()
        if STATUS_NAME not in files:
            continue
        path = Path(directory) / STATUS_NAME
        try:
            statuses.append(ImageStatus.from_bytes(path.read_bytes()))
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable %s: %s", path, exc)
    return sorted(statuses, key=lambda status: status.reference)
