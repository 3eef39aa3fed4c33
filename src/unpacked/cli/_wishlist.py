"""The commands about wish lists: convert, loop, check-image-syntax, expand-wildcard."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from unpacked import errors
from unpacked.batch import BatchOptions, BatchReport, expand_wish
from unpacked.cli import EXIT_FAILURE, EXIT_INPUT, EXIT_OK
from unpacked.cli import _render as render
from unpacked.cli._context import publisher_for, registry_options
from unpacked.cli._image import convert_options
from unpacked.cli._source import names_a_file, read_wishlist, require_rereadable
from unpacked.events import CycleDone, Event
from unpacked.loop import Loop, convert_once, stop_on_signals
from unpacked.reference import Reference
from unpacked.reference import parse as parse_reference
from unpacked.registry import RegistryClient, RegistryOptions, scheme_for
from unpacked.wishlist import Wish, WishList

logger = logging.getLogger("unpacked")


def _load_wishlist(args: argparse.Namespace) -> WishList:
    wishlist = read_wishlist(args.wishlist, strict=args.strict)
    for warning in wishlist.warnings:
        logger.warning("%s", warning)
    return wishlist


def _batch_options(args: argparse.Namespace) -> BatchOptions:
    return BatchOptions(
        convert=convert_options(args),
        attempts=args.attempts,
        registry_concurrency=args.registry_concurrency,
    )


def _client_options(args: argparse.Namespace) -> RegistryOptions:
    """The registry options, with as many requests in flight per registry as images
    checked at once: each check is one request, on a connection of its own."""
    return replace(registry_options(args), max_concurrency=args.registry_concurrency)


def convert(args: argparse.Namespace) -> int:
    wishlist = _load_wishlist(args)
    if args.dry_run:
        return _dry_run(args, wishlist)
    publisher = publisher_for(args.repo, wishlist.repository)
    summary = _Summary(args)
    with RegistryClient(_client_options(args)) as client, stop_on_signals() as stop:
        report = convert_once(
            wishlist,
            client=client,
            publisher=publisher,
            options=_batch_options(args),
            stop=stop,
            on_event=summary,
        )
    summary.raise_failure()
    return EXIT_FAILURE if report.failed or report.stopped else EXIT_OK


class _Summary:
    """Renders the batch summary of every ``CycleDone``, flushed so that a service's log
    shows each cycle as it ends.

    A consumer's exception is dropped by ``events.emit``; the first one (a reader that
    went away: ``BrokenPipeError``) stops the work and is raised again by ``raise_failure``,
    as it was raised before the summary became a consumer.
    """

    def __init__(self, args: argparse.Namespace, stop: threading.Event | None = None) -> None:
        self._args = args
        self._stop = stop
        self._failure: Exception | None = None

    def __call__(self, event: Event) -> None:
        if not isinstance(event, CycleDone) or event.report is None or self._failure:
            return
        try:
            _render_batch(self._args, event.report)
            sys.stdout.flush()
        except Exception as exc:
            self._failure = exc
            if self._stop is not None:
                self._stop.set()

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


def _render_batch(args: argparse.Namespace, report: BatchReport) -> None:
    if args.json:
        render.print_json(render.batch_json(report))
    else:
        render.print_text(render.batch_text(report))


def loop(args: argparse.Namespace) -> int:
    """``convert`` every ``--interval`` until SIGTERM/SIGINT; the wish list is re-read each time."""
    require_rereadable(args.wishlist)
    with stop_on_signals() as stop, RegistryClient(_client_options(args)) as client:
        summary = _Summary(args, stop)
        Loop(
            functools.partial(_load_wishlist, args),
            client=client,
            open_publisher=lambda wishlist: publisher_for(args.repo, wishlist.repository),
            options=_batch_options(args),
            interval=args.interval,
            stop=stop,
            on_event=summary,
        ).run()
    summary.raise_failure()
    return EXIT_OK


@dataclass(frozen=True)
class _Check:
    text: str
    line: int | None
    ok: bool
    detail: str


def _dry_run(args: argparse.Namespace, wishlist: WishList) -> int:
    """Every image exists in its registry (manifest HEAD; a wildcard lists its tags, then
    HEADs each matched tag, ``--registry-concurrency`` at a time)."""
    with RegistryClient(_client_options(args)) as client:
        checks = [_check_wish(client, wish, args.registry_concurrency) for wish in wishlist.wishes]
    _render_checks(args, checks)
    pairs = zip(checks, wishlist.wishes, strict=True)
    failed = [check for check, wish in pairs if not check.ok and not wish.ignore_errors]
    return EXIT_FAILURE if failed else EXIT_OK


def _check_wish(client: RegistryClient, wish: Wish, concurrency: int) -> _Check:
    try:
        if wish.reference.is_wildcard:
            return _check_wildcard(client, wish, concurrency)
        descriptor = client.head_manifest(wish.reference)
    except errors.UnpackedError as exc:
        return _Check(wish.text, wish.line, False, str(exc))
    return _Check(wish.text, wish.line, True, str(descriptor.digest))


def _check_wildcard(client: RegistryClient, wish: Wish, concurrency: int) -> _Check:
    """A listed tag may still have no manifest (deleted since, or a broken push)."""
    matches = expand_wish(wish, client)
    if not matches:
        return _Check(wish.text, wish.line, False, "the wildcard matches no tag")
    head = functools.partial(_head_error, client)
    with ThreadPoolExecutor(max_workers=min(concurrency, len(matches))) as pool:
        failures = [error for error in pool.map(head, matches) if error is not None]
    if failures:
        detail = f"{len(failures)} of {len(matches)} tags fail: " + "; ".join(failures)
        return _Check(wish.text, wish.line, False, detail)
    return _Check(wish.text, wish.line, True, f"{len(matches)} tags")


def _head_error(client: RegistryClient, reference: Reference) -> str | None:
    try:
        client.head_manifest(reference)
    except errors.UnpackedError as exc:
        return str(exc)
    return None


def _render_checks(args: argparse.Namespace, checks: list[_Check]) -> None:
    if args.json:
        render.print_json([c.__dict__ for c in checks])
        return
    for check in checks:
        where = f"line {check.line}: " if check.line else ""
        render.print_text(f"{'ok  ' if check.ok else 'FAIL'} {where}{check.text}: {check.detail}")


def check_image_syntax(args: argparse.Namespace) -> int:
    """Validate wish lists (``-``, files, pipes) and references (anything else)."""
    checks = [_check_syntax(item, args.strict) for item in args.items]
    _render_checks(args, checks)
    return EXIT_OK if all(check.ok for check in checks) else EXIT_INPUT


def _check_syntax(item: str, strict: bool) -> _Check:
    try:
        if names_a_file(item):
            wishlist = read_wishlist(item, strict=strict)
            warnings = "".join(f"\n    warning: {w}" for w in wishlist.warnings)
            count = len(wishlist.wishes)
            images = f"{count} image{'' if count == 1 else 's'}"
            return _Check(item, None, True, f"{images}{warnings}")
        return _Check(item, None, True, str(parse_reference(item)))
    except errors.UnpackedError as exc:
        return _Check(item, None, False, str(exc))


def expand_wildcard(args: argparse.Namespace) -> int:
    reference = parse_reference(args.reference)
    wish = Wish(reference, args.reference, 0, ())
    options = registry_options(args)
    with RegistryClient(options) as client:
        references = expand_wish(wish, client)
    if not references:
        # Empty output alone reads like a failure, or like success with a typo in the pattern.
        logger.warning("%s matches no tag of %s now", args.reference, reference.repository)
    if args.yaml:
        render.print_text("\n".join(f"  - '{_url_form(ref, options)}'" for ref in references))
    elif args.json:
        render.print_json([str(ref) for ref in references])
    else:
        render.print_text("\n".join(str(ref) for ref in references))
    return EXIT_OK


def _url_form(reference: Reference, options: RegistryOptions) -> str:
    """DUCC's URL form, with the scheme the tags were listed over: a registry reached over
    plain HTTP (loopback, --insecure-registry) must not come back as https://."""
    return replace(reference, scheme=scheme_for(reference, options)).url_form()
