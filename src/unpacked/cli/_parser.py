"""The command line's grammar: every command, its options and its handler.

Handlers are named ``"<module>:<function>"`` (modules of this package) and imported
only when their command runs, so that ``--help``, ``check-image-syntax`` and friends
start without loading the registry client, the layer applier or YAML.
"""

from __future__ import annotations

import argparse

from unpacked import __version__
from unpacked.cli._options import (
    add_convert_options,
    add_registry_options,
    add_repo_option,
    duration,
    grace_period,
    positive_int,
)

_GRACE_DEFAULT = "7d"

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


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    handler: str,
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
        "_image:inspect",
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
        "_image:convert_single_image",
        "publish one image into a repository",
        "Publish one image (its layers, its flat tree, metadata and public link) into a "
        "repository in one transaction. An image that did not change costs one manifest "
        "HEAD request.",
    )
    single.add_argument("reference", help="image reference, e.g. ubuntu:22.04")
    add_repo_option(single)
    add_convert_options(single)
    _json_option(single)
    add_registry_options(single)

    expand = _command(
        sub,
        "expand-wildcard",
        "_wishlist:expand_wildcard",
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
        ("convert", "_wishlist:convert", "publish every image of a wish list"),
        ("loop", "_wishlist:loop", "convert a wish list again and again (a service)"),
    ):
        parser = _command(
            sub,
            name,
            handler,
            summary,
            f"{summary[0].upper()}{summary[1:]}. One failing image never stops the others; "
            "each image gets a few attempts with backoff; SIGTERM/SIGINT stop between images.",
        )
        parser.add_argument(
            "wishlist",
            help="DUCC recipe (YAML) or plain list of references: a file, a pipe, or - for "
            "standard input (loop re-reads it every cycle, so it needs a regular file)",
        )
        add_repo_option(parser, required=False)
        add_convert_options(parser)
        parser.add_argument("--strict", action="store_true", help="wish-list warnings are errors")
        parser.add_argument(
            "--attempts",
            type=positive_int,
            default=3,
            help="attempts per image, with backoff, for errors that may pass (default: "
            "%(default)s); each attempt's requests are retried by the registry client too",
        )
        parser.add_argument(
            "--registry-concurrency",
            type=positive_int,
            default=8,
            metavar="N",
            help="images of one registry checked at once, and requests in flight to it "
            "(default: %(default)s); publishing is one image at a time",
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
        "_wishlist:check_image_syntax",
        "validate wish lists and references",
        "Check the syntax of wish-list files and image references, without network access "
        "(for merge-request checks; see also 'convert --dry-run').",
    )
    check.add_argument(
        "items",
        nargs="+",
        metavar="WISHLIST|REF",
        help="an existing path (file, pipe, /dev/stdin) or - is a wish list; anything else "
        "a reference",
    )
    check.add_argument("--strict", action="store_true", help="wish-list warnings are errors")
    _json_option(check)


def _add_repository_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = _command(
        sub,
        "stats",
        "_repository:stats",
        "summarise a repository",
        "Images, layers, bytes (each inode once) and the largest would-be CernVM-FS "
        "catalogs of a repository.",
    )
    add_repo_option(stats)
    _json_option(stats)

    status = _command(
        sub,
        "status",
        "_repository:status",
        "show the status of every image of a repository",
        "Per image: reference, digest, platform, last check, last change and last error, "
        "from the repository's status.json records.",
    )
    add_repo_option(status)
    _json_option(status)


def _add_gc_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this module's commands."""
    _add_gc(sub)
    _add_delete(sub)
    _add_prune(sub)


def _add_gc(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "garbage-collection",
        help="remove images unlinked longer than the grace period, and unused layers",
        description=(
            "Remove the flat trees of images on the removal schedule whose grace period "
            "has passed and that nothing links again, the layers no image uses any more, "
            "and schedule orphaned flat trees. Works in transactions of at most 50 "
            "removals. Exit 1 when something could not be read (it is kept)."
        ),
    )
    parser.set_defaults(handler="_gc:garbage_collection")
    add_repo_option(parser)
    parser.add_argument(
        "--grace",
        type=grace_period,
        default=grace_period(_GRACE_DEFAULT),
        help="how long an unlinked image stays: 90, 30s, 15m, 2h, 7d; 0 removes at once, "
        f"with a warning (default: {_GRACE_DEFAULT})",
    )
    parser.add_argument(
        "--max-removals",
        type=positive_int,
        metavar="N",
        help="remove at most N images and layers in this cycle (oldest first)",
    )
    parser.add_argument(
        "--wishlist",
        metavar="W",
        help="also keep expired images whose reference W names and that are not "
        "published now (the next conversion would link them again)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan the sweep would carry out"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _add_delete(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "delete-image",
        help="unlink one image now; garbage collection removes it after the grace period",
        description=(
            "In one transaction, remove the public link, the .multiarch links and the "
            ".metadata directory of REF, and schedule its image for removal unless "
            "another reference uses it. Exit 3 if REF is not published in the repository."
        ),
    )
    parser.set_defaults(handler="_gc:delete")
    parser.add_argument("reference", help="the published reference, e.g. ubuntu:22.04")
    add_repo_option(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _add_prune(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "prune",
        help="unlink every published image the wish list no longer asks for",
        description=(
            "Unlink (as delete-image, all in one transaction) every published reference "
            "the wish list no longer names. A wildcard's tags are listed in its registry; "
            "if that fails, every published reference the wildcard could match is kept "
            "and the exit code is 1: a registry error never causes removals."
        ),
    )
    parser.set_defaults(handler="_gc:prune_command")
    parser.add_argument(
        "--wishlist", required=True, metavar="W", help="the wish list (- for standard input)"
    )
    add_repo_option(parser, required=False)
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be unlinked; change nothing"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_registry_options(parser, platform=False)


_DESCRIPTION = (
    "Check that a repository is what the layout promises: public links are relative and "
    "lead to flat trees, metadata records parse and agree, every layer of every image is "
    "there, origin.json lists exactly the images using each layer, nothing is orphaned, "
    "catalog markers are in place and no staging is left. Holds the repository lock while "
    "it looks (it waits for a running conversion) and changes nothing. "
    "--repair fixes, in one transaction, what needs no registry: origin.json, catalog "
    "markers, absolute links, stale staging, temporary files; orphan flat trees are "
    "scheduled for garbage collection, never deleted. What needs a re-conversion is "
    "listed with the command to run. "
    "--deep also reads every file: each layer against the content index recorded when it "
    "was unpacked, each flat tree against its layers' indexes composed in order, naming "
    "each changed, added or missing file and the images it affects (flat trees share "
    "inodes with layers and other images); with --repair it removes the damaged layers "
    "and flat trees and converts their images again from the registry."
)


def _add_verify_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``verify``."""
    parser = sub.add_parser(
        "verify", help="check a repository (and repair what can be)", description=_DESCRIPTION
    )
    parser.set_defaults(handler="_verify:verify")
    add_repo_option(parser)
    parser.add_argument(
        "--repair", action="store_true", help="fix what can be fixed without the registry"
    )
    parser.add_argument(
        "--skip-layers",
        action="store_true",
        help="the repository is published with --skip-layers: do not expect layer directories",
    )
    parser.add_argument(
        "--deep",
        action="store_true",
        help="check every file of every layer and flat tree against the content indexes "
        "(with --repair: re-create what differs from the registry)",
    )
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long to wait for a running transaction (default: %(default)g)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_registry_options(parser, platform=False)


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
    _add_gc_commands(sub)
    _add_verify_command(sub)
    return parser
