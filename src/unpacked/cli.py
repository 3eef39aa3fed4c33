"""Command line: parse arguments, call the library, render results, map errors to exit codes.

This is the only module that writes to stdout/stderr. Library code logs through
``logging``; here a handler renders those records for people (stderr) and results go to
stdout, as text or as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unpacked import __version__, errors
from unpacked.convert import (
    ConvertOptions,
    ConvertResult,
    LayerProgress,
    convert_image,
    record_failure,
)
from unpacked.platform import DEFAULT as DEFAULT_PLATFORM
from unpacked.platform import Platform
from unpacked.publish import open_publisher
from unpacked.reference import parse as parse_reference
from unpacked.registry import RegistryClient, RegistryOptions
from unpacked.stats import RepositoryStats, repository_stats
from unpacked.summary import ImageSummary, summarize

logger = logging.getLogger("unpacked")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_NOT_FOUND = 4
EXIT_AUTH = 5
EXIT_REGISTRY = 6
EXIT_VERIFICATION = 7
EXIT_LAYER = 8
EXIT_INTERRUPTED = 130

# Most specific first: the first matching class decides the exit code.
_EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.InvalidReferenceError, EXIT_INPUT),
    (errors.ConfigError, EXIT_INPUT),
    (errors.NotFoundError, EXIT_NOT_FOUND),
    (errors.AuthenticationError, EXIT_AUTH),
    (errors.RegistryError, EXIT_REGISTRY),
    (errors.VerificationError, EXIT_VERIFICATION),
    (errors.LayerError, EXIT_LAYER),
    (errors.UnpackedError, EXIT_FAILURE),
)

EXIT_CODE_HELP = """exit codes:
  0  success
  1  failure (see message)
  2  bad command line
  3  bad input: image reference, configuration
  4  image, tag or blob not found in the registry
  5  authentication refused
  6  registry unreachable, rate-limited or answering nonsense
  7  content did not match its digest
  8  a layer could not be applied
  130 interrupted
"""


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an exception that reached the command line."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILURE


def _add_registry_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("registry access")
    group.add_argument(
        "--platform",
        default=str(DEFAULT_PLATFORM),
        help="platform to select from an index: os/arch[/variant] (default: %(default)s)",
    )
    group.add_argument(
        "--auth-file",
        type=Path,
        help="docker config.json with credentials "
        "(default: $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json, ~/.docker/config.json)",
    )
    group.add_argument("--ca-bundle", type=Path, help="PEM file of CA certificates to trust")
    group.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this registry over plain HTTP (repeatable); "
        "localhost and 127.0.0.0/8 are plain HTTP already",
    )
    group.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="REGISTRY=URL",
        help="pull REGISTRY's images through this mirror endpoint (repeatable)",
    )
    group.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per request (default: %(default)s)"
    )


def _registry_options(args: argparse.Namespace) -> RegistryOptions:
    mirrors: dict[str, str] = {}
    for item in args.mirror:
        registry, sep, url = item.partition("=")
        if not sep or not registry or not url:
            raise errors.ConfigError(f"--mirror {item!r}: expected REGISTRY=URL")
        mirrors[registry] = url
    return RegistryOptions(
        ca_bundle=args.ca_bundle,
        insecure=frozenset(args.insecure_registry),
        mirrors=mirrors,
        timeout=args.timeout,
        auth_file=args.auth_file,
    )


def _cmd_inspect(args: argparse.Namespace) -> int:
    reference = parse_reference(args.reference)
    with RegistryClient(_registry_options(args)) as client:
        resolved = client.resolve_image(reference, Platform.parse(args.platform))
    summary = summarize(resolved)
    if args.json:
        _print_json(summary.to_json())
    else:
        print(_render_summary(summary))
    return EXIT_OK


def _cmd_convert_single_image(args: argparse.Namespace) -> int:
    reference = parse_reference(args.reference)
    publisher = open_publisher(args.repo)
    options = ConvertOptions(
        platform=Platform.parse(args.platform),
        skip_flat=args.skip_flat,
        skip_layers=args.skip_layers,
    )
    progress = _Progress() if sys.stderr.isatty() and not args.json and not args.quiet else None
    try:
        with RegistryClient(_registry_options(args)) as client:
            result = convert_image(
                reference, client=client, publisher=publisher, options=options, progress=progress
            )
    except errors.UnpackedError as exc:
        record_failure(publisher, reference, exc)
        if args.json:
            _print_json({"reference": str(reference), "outcome": "failed", "error": str(exc)})
        raise
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        _print_json(_result_json(result))
    else:
        print(_render_result(result, publisher.root))
    return EXIT_OK


def _result_json(result: ConvertResult) -> dict[str, Any]:
    return {
        "reference": str(result.reference),
        "outcome": result.outcome.value,
        "digest": str(result.digest),
        "imageId": str(result.image_id),
        "platform": str(result.platform),
        "publicLink": None if result.public_link is None else str(result.public_link),
        "layersUnpacked": [str(d) for d in result.layers_unpacked],
        "layersReused": [str(d) for d in result.layers_reused],
        "bytesDownloaded": result.bytes_downloaded,
        "warnings": list(result.warnings),
        "seconds": round(result.seconds, 3),
    }


def _render_result(result: ConvertResult, root: Path) -> str:
    lines = [f"{result.reference}: {result.outcome.value} ({result.digest})"]
    if result.public_link is not None:
        lines.append(f"  image:  {root / result.public_link}")
    lines.append(f"  id:     {result.image_id} ({result.platform})")
    if result.layers_unpacked or result.layers_reused:
        lines.append(
            f"  layers: {len(result.layers_unpacked)} unpacked, {len(result.layers_reused)} "
            f"already present; {_human_bytes(result.bytes_downloaded)} downloaded "
            f"in {result.seconds:.1f} s"
        )
    lines += [f"  warning: {warning}" for warning in result.warnings]
    return "\n".join(lines)


def _cmd_stats(args: argparse.Namespace) -> int:
    publisher = open_publisher(args.repo)
    stats = repository_stats(publisher.root)
    if args.json:
        _print_json(stats.to_json())
    else:
        print(_render_stats(stats))
    return EXIT_OK


def _render_stats(stats: RepositoryStats) -> str:
    lines = [
        f"images (public links): {stats.images}",
        f"flat trees:            {stats.flat_trees}",
        f"layers:                {stats.layers}",
        f"bytes (inodes once):   {_human_bytes(stats.bytes)}",
        f"entries:               {stats.entries}",
        f"catalogs (markers):    {stats.catalogs}",
        "largest catalogs:",
    ]
    lines += [f"  {c.entries:>10}  {c.path}" for c in stats.largest_catalogs]
    return "\n".join(lines)


class _Progress:
    """One status line on a terminal, updated at most ten times a second (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._last = 0.0
        self._width = 0

    def __call__(self, event: LayerProgress) -> None:
        with self._lock:
            key = event.digest.hex[:12]
            now = time.monotonic()
            started = self._started.setdefault(key, now)
            if event.phase == "download" and now - self._last < 0.1 and event.done < event.total:
                return
            self._last = now
            rate = event.done / max(now - started, 1e-3)
            line = (
                f"{event.phase:>8} {key}  {_human_bytes(event.done)} / "
                f"{_human_bytes(event.total)}  {_human_bytes(int(rate))}/s"
            )
            self._write(line)

    def _write(self, line: str) -> None:
        sys.stderr.write("\r" + line.ljust(self._width))
        sys.stderr.flush()
        self._width = len(line)

    def close(self) -> None:
        with self._lock:
            if self._width:
                sys.stderr.write("\r" + " " * self._width + "\r")
                sys.stderr.flush()


def _render_summary(summary: ImageSummary) -> str:
    rows = [
        ("Reference", summary.reference),
        ("Digest", summary.digest),
        ("Media type", summary.media_type),
    ]
    if summary.platforms:
        rows.append(("Platforms", ", ".join(summary.platforms)))
    rows += [
        ("Platform", summary.platform),
        ("Manifest", f"{summary.manifest_digest} ({summary.manifest_media_type})"),
        ("Config", summary.config_digest),
        ("Created", summary.created or "-"),
        ("Layers", f"{len(summary.layers)}, {_human_bytes(summary.total_size)} compressed"),
    ]
    lines = [f"{name + ':':<12} {value}" for name, value in rows]
    lines += [
        f"  {layer.digest}  {_human_bytes(layer.size):>9}  {layer.media_type}"
        for layer in summary.layers
    ]
    return "\n".join(lines)


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


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
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    inspect = commands.add_parser(
        "inspect",
        help="show what a reference resolves to in its registry",
        description="Resolve an image reference in its registry and show its digest, "
        "platforms, config and layers (reads manifests and the config, no layers).",
    )
    inspect.add_argument("reference", help="image reference, e.g. ubuntu:22.04")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    _add_registry_options(inspect)
    inspect.set_defaults(handler=_cmd_inspect)

    convert = commands.add_parser(
        "convert-single-image",
        help="publish one image into a repository",
        description="Publish one image (its layers, its flat tree, metadata and public link) "
        "into a repository in one transaction. An image that did not change costs one "
        "manifest HEAD request.",
    )
    convert.add_argument("reference", help="image reference, e.g. ubuntu:22.04")
    _add_repo_option(convert)
    convert.add_argument(
        "--skip-flat", action="store_true", help="do not build the flat tree (layers only)"
    )
    convert.add_argument(
        "--skip-layers", action="store_true", help="do not store layer directories (flat only)"
    )
    convert.add_argument("--json", action="store_true", help="machine-readable output")
    _add_registry_options(convert)
    convert.set_defaults(handler=_cmd_convert_single_image)

    stats = commands.add_parser(
        "stats",
        help="summarise a repository",
        description="Images, layers, bytes (each inode once) and the largest would-be "
        "CernVM-FS catalogs of a repository.",
    )
    _add_repo_option(stats)
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(handler=_cmd_stats)
    return parser


def _add_repo_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo",
        required=True,
        metavar="BACKEND:WHERE",
        help="the repository: dir:/path/to/directory",
    )


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    )
    handler = logging.StreamHandler(sys.stderr)
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
