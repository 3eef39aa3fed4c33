"""The commands about one image: inspect, convert-single-image."""

from __future__ import annotations

import argparse
import sys

from unpacked import errors
from unpacked.cli import EXIT_OK
from unpacked.cli import _render as render
from unpacked.cli._context import publisher_for, registry_options
from unpacked.convert import (
    ConvertOptions,
    convert_image,
    record_failure,
    start_spare_workers,
)
from unpacked.layers import SizeLimit
from unpacked.platform import Platform
from unpacked.reference import parse as parse_reference
from unpacked.registry import RegistryClient
from unpacked.summary import summarize


def inspect(args: argparse.Namespace) -> int:
    reference = parse_reference(args.reference)
    with RegistryClient(registry_options(args)) as client:
        resolved = client.resolve_image(reference, Platform.parse(args.platform))
    summary = summarize(resolved)
    if args.json:
        render.print_json(summary.to_json())
    else:
        render.print_text(render.summary_text(summary))
    return EXIT_OK


def convert_options(args: argparse.Namespace) -> ConvertOptions:
    return ConvertOptions(
        platform=Platform.parse(args.platform),
        skip_flat=args.skip_flat,
        skip_layers=args.skip_layers,
        unpack_workers=args.unpack_workers,
        max_layer_size=SizeLimit(fixed=args.max_layer_size),
    )


def convert_single_image(args: argparse.Namespace) -> int:
    reference = parse_reference(args.reference)
    publisher = publisher_for(args.repo)
    options = convert_options(args)
    progress = render.Progress() if interactive(args) else None
    try:
        # The spare starts first, so that it is ready when the first new layer arrives.
        with (
            start_spare_workers(options) as spare,
            RegistryClient(registry_options(args)) as client,
        ):
            result = convert_image(
                reference,
                client=client,
                publisher=publisher,
                options=options,
                on_event=progress,
                spare_workers=spare,
            )
    except errors.UnpackedError as exc:
        record_failure(publisher, reference, exc)
        if args.json:
            render.print_json({"reference": str(reference), "outcome": "failed", "error": str(exc)})
        raise
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        render.print_json(render.result_json(result))
    else:
        render.print_text(render.result_text(result, publisher.root))
    return EXIT_OK


def interactive(args: argparse.Namespace) -> bool:
    return sys.stderr.isatty() and not args.json and not args.quiet
