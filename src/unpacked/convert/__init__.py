"""The conversion pipeline: one image reference in, one published image (or an error) out.

    HEAD manifest ─▶ unchanged? ─yes─▶ status.json: last check ─▶ done (no blob requests)
        │no
    manifest (index → platform) + config
        │
    one transaction:
        download missing layers (in parallel, verified, to scratch files)
        ─▶ each new layer unpacked once into .layers/<l2>/<l>/layerfs
        ─▶ flat tree composed from the layer directories with hard links, plus the
           Apptainer files ─▶ .flat/<c2>/<c>
        ─▶ origin.json / layers.json of every layer, manifest.json, status.json
        ─▶ public link swapped last

Inside the transaction, each output is a writer (``_writers``: layer directories, flat tree,
metadata and links; ``writers_for`` picks them from the options) around the layer
scheduling (``_job.LayerStack``), which yields one immutable result per layer.

Anything that fails inside the transaction leaves the repository as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from unpacked.convert._context import ImageContext
from unpacked.convert._current import is_current, record_checks, record_failure
from unpacked.convert._job import LayerStack, wanted_workers
from unpacked.convert._model import (
    ConvertOptions,
    ConvertResult,
    Outcome,
    Placement,
    Stacked,
    placement,
    utc_now,
)
from unpacked.convert._space import space_errors
from unpacked.convert._writers import Writer, writers_for
from unpacked.digest import Digest
from unpacked.errors import ConfigError
from unpacked.events import EventCallback, ImageStarted, LayerProgress, emit
from unpacked.layers import SpareWorkers
from unpacked.platform import Platform
from unpacked.publish import Publisher, Transaction
from unpacked.reference import Reference
from unpacked.registry import RegistryClient
from unpacked.status import read_status

__all__ = [
    "ConvertOptions",
    "ConvertResult",
    "LayerProgress",
    "Outcome",
    "Placement",
    "Writer",
    "convert_image",
    "placement",
    "read_status",
    "record_checks",
    "record_failure",
    "start_spare_workers",
    "utc_now",
    "writers_for",
]

logger = logging.getLogger(__name__)


def convert_image(
    reference: Reference,
    *,
    client: RegistryClient,
    publisher: Publisher,
    options: ConvertOptions = ConvertOptions(),
    on_event: EventCallback | None = None,
    now: Callable[[], str] = utc_now,
    spare_workers: SpareWorkers | None = None,
) -> ConvertResult:
    """Publish ``reference`` into ``publisher``'s repository, or find it up to date.

    New layers are unpacked by ``spare_workers`` (``start_spare_workers``) before any
    worker of the conversion's own is started. ``on_event`` gets ``ImageStarted``, then
    the ``LayerProgress`` of each layer downloaded and unpacked.
    """
    _check_options(reference, options)
    started = time.monotonic()
    emit(on_event, ImageStarted(reference, options.platform))
    place = placement(reference, options)
    head = client.head_manifest(reference)
    previous = read_status(publisher.root, reference, place.status_file)
    if previous is not None and is_current(publisher.root, place, head, previous, options):
        if options.record_check:
            record_checks(publisher, [(reference, options)], now(), options.lock_timeout)
        logger.info("%s: unchanged (%s)", reference, head.digest)
        return ConvertResult(
            reference,
            Outcome.UNCHANGED,
            head.digest,
            Digest.parse(previous.image_id),
            Platform.parse(previous.platform),
            place.links[0] if place.links else None,
            seconds=time.monotonic() - started,
        )
    resolved = client.resolve_image(reference, options.platform)
    with (
        space_errors(publisher.root, str(reference), list(resolved.layers)),
        publisher.transaction(lock_timeout=options.lock_timeout) as tx,
    ):
        context = ImageContext(reference, place, resolved, publisher.root, options, previous, now())
        stack = LayerStack(context, tx, client, on_event, spare_workers)
        stacked = _publish(tx, context, stack, writers_for(options))
    outcome = Outcome.ADDED if previous is None else Outcome.UPDATED
    logger.info("%s: %s as %s", reference, outcome.value, resolved.image_id)
    return _result(context, stacked, outcome, time.monotonic() - started)


def _publish(
    tx: Transaction, context: ImageContext, stack: LayerStack, writers: list[Writer]
) -> Stacked:
    """Run ``writers`` around the layer scheduling; what it produced, with every warning."""
    trees = [tree for writer in writers if (tree := writer.begin(tx, context)) is not None]
    tree = trees[0] if trees else None  # one writer at most composes the layers
    layer_trees = any(writer.layer_trees for writer in writers)
    work = stack.plan(layer_trees)
    if layer_trees:
        stacked = stack.into_layer_dirs(work, tree)
    elif tree is not None:
        stacked = stack.onto_flat(work, tree)
    else:
        stacked = Stacked()
    warnings = list(stacked.warnings)
    for writer in writers:
        warnings += writer.finish(tx, context, stacked)
    return Stacked(stacked.layers, tuple(warnings), stacked.downloaded)


def _result(
    context: ImageContext, stacked: Stacked, outcome: Outcome, seconds: float
) -> ConvertResult:
    image, links = context.image, context.place.links
    return ConvertResult(
        context.reference,
        outcome,
        image.top.digest,
        image.image_id,
        image.platform,
        links[0] if links else None,
        stacked.digests(reused=False),
        stacked.digests(reused=True),
        stacked.downloaded,
        stacked.warnings,
        seconds,
    )


def start_spare_workers(options: ConvertOptions) -> SpareWorkers:
    """Start, ahead of knowing whether it has changed, the worker that converting an
    image with these options would start first (none when it would unpack in-process).

    For a caller that converts one image expecting it to be new, such as
    ``convert-single-image``: the worker starts while the registry client is set up and the
    image resolved. An image that turns out unchanged, or to need no worker, costs one
    process, killed unused.
    """
    return SpareWorkers(1 if wanted_workers(options) >= 2 else 0)


def _check_options(reference: Reference, options: ConvertOptions) -> None:
    if reference.is_wildcard:
        raise ConfigError(f"{reference}: a wildcard reference must be expanded before converting")
    if options.skip_flat and options.skip_layers:
        raise ConfigError(f"{reference}: --skip-flat and --skip-layers leave nothing to publish")
    if options.download_workers < 1:
        raise ConfigError("download workers must be at least 1")
    if options.unpack_workers is not None and options.unpack_workers < 1:
        raise ConfigError("unpack workers must be at least 1")
