"""What a conversion, a batch and the service loop report while they run.

One callback (``EventCallback``) receives every event, from any thread. The CLI's progress
line and summary, and the service's status page and metrics, are consumers; the library
never renders. A consumer must be quick and must not raise: it runs on the converting
thread (an exception it raises is logged and dropped by ``emit``).

The events are values: they hold what happened, not the objects that did it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unpacked.digest import Digest
from unpacked.platform import Platform
from unpacked.reference import Reference

if TYPE_CHECKING:  # annotations only: batch and convert import this module
    from unpacked.batch import BatchReport, ImageOutcome

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageStarted:
    """An image (one platform of one reference) is being checked and, if needed, converted."""

    reference: Reference
    platform: Platform


@dataclass(frozen=True)
class LayerProgress:
    """Bytes of one layer: ``phase`` is "download", "unpack" or "done"."""

    reference: Reference
    digest: Digest
    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class ImageDone:
    """An image of a batch is finished, with its outcome (added, updated, unchanged, failed)."""

    image: ImageOutcome


@dataclass(frozen=True)
class CycleDone:
    """A whole wish list was worked through (one ``convert``, or one cycle of the loop).

    ``report`` is None when the cycle failed before any image (``error`` says why: the
    wish list could not be read, the repository could not be opened).
    """

    report: BatchReport | None
    started: float
    """``time.time()`` when the cycle started."""
    seconds: float
    error: str | None = None


Event = ImageStarted | LayerProgress | ImageDone | CycleDone
EventCallback = Callable[[Event], None]


def emit(callback: EventCallback | None, event: Event) -> None:
    """Give ``event`` to ``callback`` (if any); a consumer's failure never stops the work."""
    if callback is None:
        return
    try:
        callback(event)
    except Exception:
        logger.exception("event consumer failed on %s", type(event).__name__)
