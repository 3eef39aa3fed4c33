"""Retrying what may pass: bounded exponential backoff with jitter, and ``Retry-After``."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from unpacked.errors import RateLimitedError

from ._errors import Transient

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Run an attempt until it succeeds, fails for good, or ``retries`` more tries fail.

    An attempt signals "may pass" by raising ``Transient``; everything else
    propagates at once. Delays double from ``backoff_base`` up to
    ``backoff_max`` and are jittered into [delay/2, delay] so that many
    workers hit by one outage do not come back in step. A ``Retry-After`` is
    obeyed as given, unless it exceeds ``max_retry_after``. The backoff counts from the
    start of the failed attempt: one that hung until its timeout has spaced the requests
    out already, and waiting its delay again on top would only stretch how long a dead
    registry takes to give up on (5 timeouts of 5 s: 25 s, not 31).

    With ``cancel`` set (by another thread: the work this attempt is part of failed
    already), the last failure is raised at once instead of waiting and trying again.
    """

    retries: int
    backoff_base: float
    backoff_max: float
    max_retry_after: float
    sleep: Callable[[float], None]
    jitter: Callable[[], float] = random.random
    clock: Callable[[], float] = time.monotonic

    def run(self, attempt: Callable[[], T], cancel: threading.Event | None = None) -> T:
        failures = 0
        while True:
            started = self.clock()
            try:
                return attempt()
            except Transient as transient:
                if cancel is not None and cancel.is_set():
                    raise transient.error from transient.__cause__
                delay = self._delay_after(transient, failures, self.clock() - started)
                failures += 1
                logger.warning(
                    "%s; retrying in %.1f s (attempt %d of %d)",
                    transient.error,
                    delay,
                    failures + 1,
                    self.retries + 1,
                )
                if cancel is None:
                    self.sleep(delay)
                elif cancel.wait(delay):
                    raise transient.error from transient.__cause__

    def _delay_after(self, transient: Transient, failures: int, spent: float) -> float:
        """How long to wait before the next attempt, ``spent`` seconds after the failed one
        started; raise if there is none."""
        if failures >= self.retries:
            raise transient.error from transient.__cause__
        wait = transient.retry_after
        if wait is not None and wait > self.max_retry_after:
            raise RateLimitedError(
                f"{transient.error}; it asks to wait {wait:.0f} s, more than the "
                f"{self.max_retry_after:.0f} s we accept"
            ) from transient.__cause__
        if wait is not None:
            return wait
        delay = min(self.backoff_max, self.backoff_base * 2.0**failures)
        return max(0.0, delay / 2 + self.jitter() * delay / 2 - spent)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or HTTP date); None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
