"""Convert a whole wish list: expand wildcards, convert every image, never stop at one failure.

Registries proceed in parallel (a bounded pool), so a slow or failing registry does not
hold up the others. Within one registry, the first image goes alone, then up to
``registry_concurrency`` images at once: each is checked (manifest HEAD; a no-op run is
nothing else) and fetched concurrently, while publishing stays one transaction at a time
in this process. Every image gets a bounded number of attempts with backoff for errors
that may pass (network, rate limits, a busy repository lock); errors that will not pass
(not found, refused, a broken layer) fail at once, and once a registry cannot even be
connected to, its images not yet started fail untried. A stop request
(``threading.Event``) is honoured between images, never in the middle of publishing one.

What happens is reported through one callback (``unpacked.events``): each image's
``ImageStarted`` (once, whatever its attempts), its layers' ``LayerProgress``, its
``ImageDone``. ``CycleDone`` belongs to the caller that knows the cycle (``unpacked.loop``:
it also covers reading the wish list and opening the repository).
"""

from __future__ import annotations

import functools
import logging
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from unpacked import errors
from unpacked.convert import (
    ConvertOptions,
    ConvertResult,
    convert_image,
    record_checks,
    record_failure,
    utc_now,
)
from unpacked.events import (
    Event,
    EventCallback,
    ImageDone,
    ImageStarted,
    LayerProgress,
    emit,
)
from unpacked.platform import DEFAULT, Platform
from unpacked.publish import Capabilities, PrivateArea, Publisher, Transaction
from unpacked.reference import Reference
from unpacked.registry import RegistryClient
from unpacked.wishlist import Wish, WishList

logger = logging.getLogger(__name__)

# Errors that a later attempt cannot fix: retrying them only delays the report.
_FINAL_ERRORS: tuple[type[errors.UnpackedError], ...] = (
    errors.NotFoundError,
    errors.AuthenticationError,
    errors.InvalidReferenceError,
    errors.ConfigError,
    errors.LayerError,
)


@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one concrete image of the wish list."""

    wish: Wish
    reference: Reference
    platform: Platform
    outcome: str  # "added" | "updated" | "unchanged" | "failed"
    attempts: int
    error: str | None = None
    result: ConvertResult | None = None
    options: ConvertOptions = field(default_factory=ConvertOptions)
    """The options the image was converted with (where its status lives)."""


@dataclass(frozen=True)
class ExpansionFailure:
    """A wildcard whose tags could not be listed: its published images are kept as they are."""

    wish: Wish
    error: str


@dataclass(frozen=True)
class BatchReport:
    images: tuple[ImageOutcome, ...]
    expansion_failures: tuple[ExpansionFailure, ...] = ()
    stopped: bool = False

    def count(self, outcome: str) -> int:
        return sum(1 for image in self.images if image.outcome == outcome)

    @property
    def failed(self) -> bool:
        """Whether anything failed that the wish list did not allow to fail."""
        failures = [i.wish for i in self.images if i.outcome == "failed"]
        failures += [f.wish for f in self.expansion_failures]
        return any(not wish.ignore_errors for wish in failures)


@dataclass(frozen=True)
class BatchOptions:
    convert: ConvertOptions = field(default_factory=ConvertOptions)
    attempts: int = 3
    backoff: float = 5.0
    """Seconds before the second attempt; doubled for each further one (with jitter)."""
    parallel_registries: int = 4
    registry_concurrency: int = 8
    """Images of one registry checked and fetched at once (publishing is one at a time)."""

    def __post_init__(self) -> None:
        for name in ("parallel_registries", "registry_concurrency"):
            if getattr(self, name) < 1:
                raise errors.ConfigError(f"batch option {name} must be at least 1")


@dataclass(frozen=True)
class Job:
    """One image for one platform. The wish's first platform is the primary one: it gets
    the public link; with several platforms, each also gets a ``.multiarch`` link."""

    wish: Wish
    reference: Reference
    platform: Platform
    primary: bool = True
    multiarch: bool = False

    @property
    def label(self) -> str:
        return f"{self.reference} [{self.platform}]" if self.multiarch else str(self.reference)


def expand_wish(wish: Wish, client: RegistryClient) -> list[Reference]:
    """The concrete references of a wish: itself, or every matching tag of a wildcard."""
    if not wish.reference.is_wildcard:
        return [wish.reference]
    tags = client.list_tags(wish.reference)
    return [wish.reference.with_tag(tag) for tag in sorted(tags) if wish.reference.matches_tag(tag)]


def plan_jobs(
    wishes: Iterable[Wish], client: RegistryClient
) -> tuple[list[Job], list[ExpansionFailure]]:
    """Expand every wish; a listing failure is reported, never taken as "no tags"."""
    jobs: list[Job] = []
    failures: list[ExpansionFailure] = []
    seen: set[Reference] = set()
    for wish in wishes:
        try:
            references = expand_wish(wish, client)
        except errors.UnpackedError as exc:
            logger.error("%s (line %d): cannot list tags: %s", wish.text, wish.line, exc)
            failures.append(ExpansionFailure(wish, str(exc)))
            continue
        for reference in references:
            if reference not in seen:  # a tag named explicitly and matched by a wildcard
                seen.add(reference)
                jobs += _platform_jobs(wish, reference)
    return jobs, failures


def _platform_jobs(wish: Wish, reference: Reference) -> list[Job]:
    platforms = wish.platforms or (DEFAULT,)
    multiarch = len(platforms) > 1
    return [
        Job(wish, reference, platform, primary=index == 0, multiarch=multiarch)
        for index, platform in enumerate(platforms)
    ]


def convert_wishlist(
    wishlist: WishList,
    *,
    client: RegistryClient,
    publisher: Publisher,
    options: BatchOptions = BatchOptions(),
    stop: threading.Event | None = None,
    sleep: Callable[[float], bool] | None = None,
    on_event: EventCallback | None = None,
) -> BatchReport:
    """Convert every image of ``wishlist``; failures are collected, not raised."""
    stop = stop or threading.Event()
    wait = sleep if sleep is not None else stop.wait  # True when stopping: backoff ends early
    jobs, failures = plan_jobs(wishlist.wishes, client)
    by_registry: dict[str, list[Job]] = {}
    for job in jobs:
        by_registry.setdefault(job.reference.registry, []).append(job)
    runner = _Runner(client, _OneAtATime(publisher), options, stop, wait, on_event)
    workers = max(1, min(options.parallel_registries, len(by_registry)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="registry") as pool:
        batches = list(pool.map(runner.run_all, by_registry.values()))
    outcomes = tuple(outcome for batch in batches for outcome in batch)
    _record_checks(publisher, outcomes, options)
    return BatchReport(outcomes, tuple(failures), stopped=stop.is_set())


def _record_checks(
    publisher: Publisher, outcomes: Sequence[ImageOutcome], options: BatchOptions
) -> None:
    """lastCheck of every unchanged image, in one transaction for the whole batch."""
    checked = [
        (image.reference, image.options) for image in outcomes if image.outcome == "unchanged"
    ]
    try:
        record_checks(publisher, checked, utc_now(), options.convert.lock_timeout)
    except errors.UnpackedError as exc:
        logger.warning("could not record the check times of unchanged images: %s", exc)


@dataclass
class _Runner:
    client: RegistryClient
    publisher: Publisher
    options: BatchOptions
    stop: threading.Event
    wait: Callable[[float], bool]
    on_event: EventCallback | None = None

    def run_all(self, jobs: list[Job]) -> list[ImageOutcome]:
        """The images of one registry: the first alone, then the rest concurrently.

        The first image tells whether the registry answers at all. Once it proved
        unreachable (no connection, after every attempt), the images not yet started
        fail at once, untried: each would spend its attempts and backoff on the same
        wall (minutes per image for a host that drops packets), and hold up the end of
        the run, hence a service's next cycle, by as much.
        """
        if not jobs:
            return []
        state = _RegistryState()
        first = self._run_one(jobs[0], state)
        workers = max(1, min(self.options.registry_concurrency, len(jobs) - 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image") as pool:
            rest = list(pool.map(functools.partial(self._run_one, state=state), jobs[1:]))
        return [outcome for outcome in (first, *rest) if outcome is not None]

    def _run_one(self, job: Job, state: _RegistryState) -> ImageOutcome | None:
        """The image's outcome; None when a stop request came before it started."""
        if self.stop.is_set():
            return None
        unreachable = state.unreachable
        if unreachable is not None:
            outcome = self._not_tried(job, unreachable)
        else:
            emit(self.on_event, ImageStarted(job.reference, job.platform))
            outcome, error = self.run(job)
            if isinstance(error, errors.RegistryUnreachableError):
                state.unreachable = error
        emit(self.on_event, ImageDone(outcome))
        return outcome

    def run(self, job: Job) -> tuple[ImageOutcome, errors.UnpackedError | None]:
        """The image's outcome, and the error it failed with, if it did."""
        convert_options = _options_for(job, self.options.convert)
        attempt = 0
        while True:
            attempt += 1
            try:
                result = convert_image(
                    job.reference,
                    client=self.client,
                    publisher=self.publisher,
                    options=convert_options,
                    on_event=None if self.on_event is None else self._layer_events,
                )
            except errors.UnpackedError as exc:
                if self._give_up(job, exc, attempt):
                    return self._failed(job, exc, attempt, convert_options), exc
                continue
            except Exception as exc:
                # A bug met by one image must not stop the others (nor a service's next
                # cycles): the image fails, with the traceback in the log, not retried.
                logger.exception("%s: unexpected error", job.label)
                unexpected = errors.UnpackedError(f"unexpected error: {type(exc).__name__}: {exc}")
                return self._failed(job, unexpected, attempt, convert_options), unexpected
            outcome = result.outcome.value
            done = ImageOutcome(
                job.wish,
                job.reference,
                job.platform,
                outcome,
                attempt,
                None,
                result,
                options=convert_options,
            )
            return done, None

    def _layer_events(self, event: Event) -> None:
        """A conversion's events but its ``ImageStarted`` (sent once, before any attempt)."""
        if isinstance(event, LayerProgress):
            emit(self.on_event, event)

    def _failed(
        self, job: Job, error: errors.UnpackedError, attempt: int, options: ConvertOptions
    ) -> ImageOutcome:
        record_failure(self.publisher, job.reference, error, options)
        return ImageOutcome(
            job.wish, job.reference, job.platform, "failed", attempt, str(error), options=options
        )

    def _not_tried(self, job: Job, unreachable: errors.RegistryUnreachableError) -> ImageOutcome:
        error = errors.RegistryUnreachableError(
            f"not tried: registry {job.reference.registry} was unreachable earlier in this "
            f"run ({unreachable})"
        )
        logger.error("%s: %s", job.label, error)
        options = _options_for(job, self.options.convert)
        return self._failed(job, error, 0, options)

    def _give_up(self, job: Job, exc: errors.UnpackedError, attempt: int) -> bool:
        if isinstance(exc, _FINAL_ERRORS) or attempt >= self.options.attempts:
            logger.error("%s: failed (attempt %d): %s", job.label, attempt, exc)
            return True
        delay = self.options.backoff * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)  # noqa: S311
        logger.warning(
            "%s: attempt %d failed (%s); retrying in %.0f s", job.label, attempt, exc, delay
        )
        return self.wait(delay)  # a stop request ends the retries


@dataclass
class _RegistryState:
    """What the images of one registry learn from each other (assignments are atomic)."""

    unreachable: errors.RegistryUnreachableError | None = None


class _OneAtATime(Publisher):
    """``publisher`` with its transactions (and lock holds) taking turns between this
    process's threads: the repository lock keeps other processes out, not our threads,
    and one image's download and unpacking inside its transaction is already parallel."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self.spec = publisher.spec
        self.root = publisher.root
        self._turn = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return self._publisher.capabilities

    @contextmanager
    def transaction(
        self, *, lease: PurePosixPath | None = None, lock_timeout: float = 600.0
    ) -> Iterator[Transaction]:
        with (
            self._turn,
            self._publisher.transaction(lease=lease, lock_timeout=lock_timeout) as tx,
        ):
            yield tx

    @contextmanager
    def locked(self, *, lock_timeout: float = 600.0) -> Iterator[None]:
        with self._turn, self._publisher.locked(lock_timeout=lock_timeout):
            yield

    def private_area(self) -> PrivateArea | None:
        return self._publisher.private_area()


def _options_for(job: Job, base: ConvertOptions) -> ConvertOptions:
    return replace(
        base,
        record_check=False,
        platform=job.platform,
        public_link=job.primary,
        multiarch=job.multiarch,
        skip_flat=base.skip_flat or job.wish.skip_flat,
        skip_layers=base.skip_layers or job.wish.skip_layers,
    )
