"""Command-line options shared by several commands (argparse only: imported at every start)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from unpacked.platform import DEFAULT as DEFAULT_PLATFORM

_DURATION_RE = re.compile(r"^(?P<number>\d+(?:\.\d+)?)(?P<unit>[smhd]?)$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def add_registry_options(parser: argparse.ArgumentParser, *, platform: bool = True) -> None:
    group = parser.add_argument_group("registry access")
    if platform:
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


def add_repo_option(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument(
        "--repo",
        required=required,
        metavar="BACKEND:WHERE",
        help="the repository: dir:/path/to/directory"
        + ("" if required else " (default: the wish list's 'repository')"),
    )


def add_convert_options(parser: argparse.ArgumentParser) -> None:
    """What to publish of each image, and how much of the machine to use for it."""
    parser.add_argument(
        "--skip-flat", action="store_true", help="do not build flat trees (layers only)"
    )
    parser.add_argument(
        "--skip-layers", action="store_true", help="do not store layer directories (flat only)"
    )
    parser.add_argument(
        "--unpack-workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="layers of one image unpacked at once, each in its own process "
        "(default: one per CPU, at most 4, for images with 8 MiB of new layers or more; "
        "1: all in this process)",
    )
    parser.add_argument(
        "--max-layer-size",
        type=byte_size,
        default=None,
        metavar="SIZE",
        help="most a layer may decompress to, e.g. 500M, 20G (default: 100 times its "
        "compressed size, at least 1G, at most 64G); more fails the image (exit 8)",
    )


def byte_size(text: str) -> int:
    """Bytes from ``1048576``, ``512K``, ``500M``, ``20G`` or ``1T`` (argparse type)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().removesuffix("B").removesuffix("I"), ""
    if number[-1:] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 20G, not {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, not {text!r}")
    return value


def duration(text: str) -> float:
    """Seconds from ``90``, ``30s``, ``15m``, ``2h`` or ``1d``, more than zero (argparse type)."""
    seconds = _duration(text)
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: expected a positive number with s, m, h or d"
        )
    return seconds


def grace_period(text: str) -> float:
    """A duration as ``duration`` reads it, zero allowed (argparse type).

    A grace period of zero (or a fraction of a second) is a legitimate choice for a
    scratch repository or an urgent removal; the command warns about it.
    """
    seconds = _duration(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: expected a number (0 or more) with s, m, h or d"
        )
    return seconds


def _duration(text: str) -> float | None:
    match = _DURATION_RE.match(text.strip())
    if match is None:
        return None
    return float(match["number"]) * _UNIT_SECONDS[match["unit"]]
