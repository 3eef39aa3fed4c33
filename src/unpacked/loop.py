"""The service loop: convert a wish list again and again, until asked to stop.

Each cycle re-reads the wish list (a merge request may have changed it), opens the
repository it names, converts it (``batch.convert_wishlist``) and ends with one
``CycleDone`` event: the report, or the error that failed the cycle before any image. A
service keeps running through a bad cycle: the wish list may be fixed by the next merge
request, a registry may come back. Between cycles the loop pauses ``interval`` seconds;
``next_cycle_at`` says when the next one starts (for a status page).

Stopping is a ``threading.Event``: the batch honours it between images, never in the middle
of publishing one, and the pause ends as soon as it is set. ``stop_on_signals`` sets it on
SIGTERM and SIGINT. The loop logs; it never prints: consumers of its events render.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from unpacked import errors
from unpacked.batch import BatchOptions, BatchReport, convert_wishlist
from unpacked.events import CycleDone, EventCallback, emit
from unpacked.publish import Publisher
from unpacked.registry import RegistryClient
from unpacked.wishlist import WishList

logger = logging.getLogger(__name__)

LoadWishlist = Callable[[], WishList]
"""Reads the wish list afresh; raises an ``UnpackedError`` naming the culprit."""
OpenPublisher = Callable[[WishList], Publisher]
"""Opens the repository a wish list is published into (``--repo``, else its own)."""


class Loop:
    """Cycles of ``convert`` every ``interval`` seconds until ``stop`` is set."""

    def __init__(
        self,
        load: LoadWishlist,
        *,
        client: RegistryClient,
        open_publisher: OpenPublisher,
        options: BatchOptions,
        interval: float,
        stop: threading.Event,
        on_event: EventCallback | None = None,
    ) -> None:
        self._load = load
        self._client = client
        self._open_publisher = open_publisher
        self._options = options
        self._interval = interval
        self._stop = stop
        self._on_event = on_event
        self._next_cycle_at: float | None = None

    @property
    def next_cycle_at(self) -> float | None:
        """``time.time()`` when the next cycle starts; None while one runs or once stopped."""
        return self._next_cycle_at

    def run(self) -> None:
        """Cycle until ``stop`` is set; returns after the cycle running then, or at once if idle."""
        while not self._stop.is_set():
            self.cycle()
            self._next_cycle_at = time.time() + self._interval
            stopped = self._stop.wait(self._interval)
            self._next_cycle_at = None
            if stopped:
                break
        logger.info("loop stopped")

    def cycle(self) -> CycleDone:
        """One cycle; a failure to read the wish list or open the repository is its error."""
        started, clock = time.time(), time.monotonic()
        try:
            wishlist = self._load()
            report = convert_wishlist(
                wishlist,
                client=self._client,
                publisher=self._open_publisher(wishlist),
                options=self._options,
                stop=self._stop,
            )
        except errors.UnpackedError as exc:
            logger.error("cycle failed: %s", exc)
            done = CycleDone(None, started, time.monotonic() - clock, error=str(exc))
        else:
            done = CycleDone(report, started, time.monotonic() - clock)
        emit(self._on_event, done)
        return done


def convert_once(
    wishlist: WishList,
    *,
    client: RegistryClient,
    publisher: Publisher,
    options: BatchOptions,
    stop: threading.Event,
    on_event: EventCallback | None = None,
) -> BatchReport:
    """One cycle over a wish list already read (``unpacked convert``), ending with
    ``CycleDone``; unlike a cycle of the loop, an error is raised to the caller."""
    started, clock = time.time(), time.monotonic()
    report = convert_wishlist(
        wishlist, client=client, publisher=publisher, options=options, stop=stop
    )
    emit(on_event, CycleDone(report, started, time.monotonic() - clock))
    return report


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT, so work stops between images, never mid-publish.

    The previous handlers come back on exit. Signal handlers can only be installed from the
    main thread: a service embedding the loop elsewhere sets the event itself.
    """
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        logger.warning("%s received: stopping after the current image", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
