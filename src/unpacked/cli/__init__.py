"""Command line: parse arguments, call the library, render results, map errors to exit codes.

This package is the only place that writes to stdout/stderr. Library code logs through
``logging``; here a handler renders those records for people (stderr) and results go to
stdout, as text or as JSON (``--json``). ``main(argv) -> int`` never raises for an
expected error: the mapping from exceptions to exit codes below is the only one.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from unpacked import errors
from unpacked.cli._parser import build_parser

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
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE, as a shell reports a command whose reader went away (``| head``)."""

# Most specific first: the first matching class decides the exit code.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.InvalidReferenceError, EXIT_INPUT),
    (errors.ConfigError, EXIT_INPUT),
    (errors.WishlistError, EXIT_INPUT),
    (errors.RepositoryFullError, EXIT_PUBLISH),
    (errors.NotFoundError, EXIT_NOT_FOUND),
    (errors.AuthenticationError, EXIT_AUTH),
    (errors.RegistryError, EXIT_REGISTRY),
    (errors.VerificationError, EXIT_VERIFICATION),
    (errors.LayerError, EXIT_LAYER),
    (errors.PublishError, EXIT_PUBLISH),
    (errors.UnpackedError, EXIT_FAILURE),
)


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception that reached the command line."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILURE


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


def _handler(name: str) -> Callable[[argparse.Namespace], int]:
    """The function ``"<module>:<function>"`` of this package, imported now."""
    module, _, function = name.partition(":")
    handler: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(f"unpacked.cli.{module}"), function
    )
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (never raises for expected errors)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits for --help, --version and usage errors
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    _configure_logging(args.verbose, args.quiet)
    try:
        return _handler(args.handler)(args)
    except KeyboardInterrupt:
        print("unpacked: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except errors.UnpackedError as exc:
        print(f"unpacked: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)


def main_entry() -> None:
    """Console-script entry point."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (``| head``): nothing more to say to it, and no traceback. Point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code)
