"""Command line: parse arguments, call the library, render results, map errors to exit codes.

This package is the only place that writes to stdout/stderr. Library code logs through
``logging``; here a handler renders those records for people (stderr) and results go to
stdout, as text or as JSON (``--json``). ``main(argv) -> int`` never raises for an
expected error: the mapping from exceptions to exit codes below is the only one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from unpacked import __version__, errors
from unpacked.cli import _commands as commands
from unpacked.cli import _gc, _verify
from unpacked.cli._options import (
    add_registry_options,
    add_repo_option,
    add_skip_options,
    duration,
)
from unpacked.wishlist import WishlistError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_REGISTRY = 6
EXIT_VERIFICATION = 7
EXIT_LAYER = 8
EXIT_PUBLISH = 9
EXIT_INTERRUPTED = 130

# Most specific first: the first matching class decides the exit code.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.InvalidReferenceError, EXIT_INPUT),
    (errors.ConfigError, EXIT_INPUT),
    (WishlistError, EXIT_INPUT),
    (errors.NotFoundError, EXIT_NOT_FOUND),
    (errors.AuthenticationError, EXIT_AUTH),
    (errors.RegistryError, EXIT_REGISTRY),
    (errors.VerificationError, EXIT_VERIFICATION),
    (errors.LayerError, EXIT_LAYER),
    (errors.PublishError, EXIT_PUBLISH),
    (errors.UnpackedError, EXIT_FAILURE),
)

EXIT_CODE_HELP = """exit codes:
  0  success
  1  failure (for wish lists: at least one image failed; see the summary)
  2  bad command line
  3  bad input: image reference, wish list, configuration
  4  image, tag or blob not found in the registry
  5  authentication refused
  6  registry unreachable, rate-limited or answering nonsense
  7  content did not match its digest
  8  a layer could not be applied
  9  the repository could not be published to (locked, file system error)
  130 interrupted
"""


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception that reached the command line."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILURE


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: Callable[[argparse.Namespace], int],
    summary: str,
    description: str,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=summary, description=description)
    parser.set_defaults(handler=handler)
    return parser


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _add_image_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    inspect = _command(
        sub,
        "inspect",
        commands.inspect,
        "show what a reference resolves to in its registry",
        "Resolve an image reference in its registry and show its digest, platforms, config "
        "and layers (reads manifests and the config, no layers).",
    )
    inspect.add_argument("reference", help="image reference, e.g. ubuntu:22.04")
    _json_option(inspect)
    add_registry_options(inspect)

    single = _command(
        sub,
        "convert-single-image",
        commands.convert_single_image,
        "publish one image into a repository",
        "Publish one image (its layers, its flat tree, metadata and public link) into a "
        "repository in one transaction. An image that did not change costs one manifest "
        "HEAD request.",
    )
    single.add_argument("reference", help="image reference, e.g. ubuntu:22.04")
    add_repo_option(single)
    add_skip_options(single)
    _json_option(single)
    add_registry_options(single)

    expand = _command(
        sub,
        "expand-wildcard",
        commands.expand_wildcard,
        "list the images a wildcard reference stands for",
        "List the tags of the repository that match the reference's tag pattern "
        "(* any run of characters, ? one character; the whole tag must match).",
    )
    expand.add_argument("reference", help="e.g. 'ghcr.io/org/app:1.*'")
    expand.add_argument("--yaml", action="store_true", help="as wish-list 'input:' entries")
    _json_option(expand)
    add_registry_options(expand, platform=False)


def _add_wishlist_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, handler, summary in (
        ("convert", commands.convert, "publish every image of a wish list"),
        ("loop", commands.loop, "convert a wish list again and again (a service)"),
    ):
        parser = _command(
            sub,
            name,
            handler,
            summary,
            f"{summary[0].upper()}{summary[1:]}. One failing image never stops the others; "
            "each image gets a few attempts with backoff; SIGTERM/SIGINT stop between images.",
        )
        parser.add_argument("wishlist", help="DUCC recipe (YAML) or plain list of references")
        add_repo_option(parser, required=False)
        add_skip_options(parser)
        parser.add_argument("--strict", action="store_true", help="wish-list warnings are errors")
        parser.add_argument(
            "--attempts",
            type=int,
            default=3,
            help="attempts per image, with backoff, for errors that may pass (default: "
            "%(default)s); each attempt's requests are retried by the registry client too",
        )
        _json_option(parser)
        add_registry_options(parser)
    sub.choices["convert"].add_argument(
        "--dry-run",
        action="store_true",
        help="only check that every image exists in its registry (HEAD requests); "
        "publishes nothing",
    )
    sub.choices["loop"].add_argument(
        "--interval",
        type=duration,
        default=900.0,
        help="pause between two runs: 90, 30s, 15m, 2h (default: 15m)",
    )

    check = _command(
        sub,
        "check-image-syntax",
        commands.check_image_syntax,
        "validate wish lists and references",
        "Check the syntax of wish-list files and image references, without network access "
        "(for merge-request checks; see also 'convert --dry-run').",
    )
    check.add_argument("items", nargs="+", metavar="WISHLIST|REF")
    check.add_argument("--strict", action="store_true", help="wish-list warnings are errors")
    _json_option(check)


def _add_repository_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = _command(
        sub,
        "stats",
        commands.stats,
        "summarise a repository",
        "Images, layers, bytes (each inode once) and the largest would-be CernVM-FS "
        "catalogs of a repository.",
    )
    add_repo_option(stats)
    _json_option(stats)

    status = _command(
        sub,
        "status",
        commands.status,
        "show the status of every image of a repository",
        "Per image: reference, digest, platform, last check, last change and last error, "
        "from the repository's status.json records.",
    )
    add_repo_option(status)
    _json_option(status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unpacked",
        description="Keep a read-only file-system tree filled with unpacked container images.",
        epilog=EXIT_CODE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_image_commands(sub)
    _add_wishlist_commands(sub)
    _add_repository_commands(sub)
    _gc.add_commands(sub)
    _verify.add_commands(sub)
    return parser


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when created.

    ``main()`` may run many times in one process (tests, embedding); a handler bound to
    an earlier, since closed ``sys.stderr`` would fail on every later record.
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _configure_logging(verbose: int, quiet: bool) -> None:
    levels = (logging.WARNING, logging.INFO, logging.DEBUG)
    level = logging.ERROR if quiet else levels[min(verbose, 2)]
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO; that is noise unless asked for with -vv.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (never raises for expected errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help, --version and usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _configure_logging(args.verbose, args.quiet)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("unpacked: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except errors.UnpackedError as exc:
        print(f"unpacked: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
