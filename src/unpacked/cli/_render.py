"""Results rendered for people (text) or programs (JSON). The only writers to stdout."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unpacked.events import Event, LayerProgress  # light: values only

if TYPE_CHECKING:  # each command imports only the library parts it runs
    from unpacked.batch import BatchReport, ImageOutcome
    from unpacked.convert import ConvertResult
    from unpacked.records import ImageStatus
    from unpacked.stats import RepositoryStats
    from unpacked.summary import ImageSummary


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_text(text: str) -> None:
    print(text)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def summary_text(summary: ImageSummary) -> str:
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
        ("Layers", f"{len(summary.layers)}, {human_bytes(summary.total_size)} compressed"),
    ]
    lines = [f"{name + ':':<12} {value}" for name, value in rows]
    lines += [
        f"  {layer.digest}  {human_bytes(layer.size):>9}  {layer.media_type}"
        for layer in summary.layers
    ]
    return "\n".join(lines)


def result_json(result: ConvertResult) -> dict[str, Any]:
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


def result_text(result: ConvertResult, root: Path) -> str:
    lines = [f"{result.reference}: {result.outcome.value} ({result.digest})"]
    if result.public_link is not None:
        lines.append(f"  image:  {root / result.public_link}")
    lines.append(f"  id:     {result.image_id} ({result.platform})")
    if result.layers_unpacked or result.layers_reused:
        lines.append(
            f"  layers: {len(result.layers_unpacked)} unpacked, {len(result.layers_reused)} "
            f"already present; {human_bytes(result.bytes_downloaded)} downloaded "
            f"in {result.seconds:.1f} s"
        )
    lines += [f"  warning: {warning}" for warning in result.warnings]
    return "\n".join(lines)


def _image_json(image: ImageOutcome) -> dict[str, Any]:
    value: dict[str, Any] = {
        "wish": image.wish.text,
        "line": image.wish.line,
        "reference": str(image.reference),
        "platform": str(image.platform),
        "outcome": image.outcome,
        "attempts": image.attempts,
        "error": image.error,
        "ignoreErrors": image.wish.ignore_errors,
    }
    if image.result is not None:
        value.update(result_json(image.result))
    return value


OUTCOMES = ("added", "updated", "unchanged", "failed")


def batch_json(report: BatchReport) -> dict[str, Any]:
    return {
        "summary": {outcome: report.count(outcome) for outcome in OUTCOMES},
        "images": [_image_json(image) for image in report.images],
        "expansionFailures": [
            {"wish": f.wish.text, "line": f.wish.line, "error": f.error}
            for f in report.expansion_failures
        ],
        "stopped": report.stopped,
        "failed": report.failed,
    }


def batch_text(report: BatchReport) -> str:
    counts = ", ".join(f"{report.count(outcome)} {outcome}" for outcome in OUTCOMES)
    lines = [f"{len(report.images)} images: {counts}"]
    for image in report.images:
        name = f"{image.reference} [{image.platform}]"
        if image.outcome == "failed":
            note = " (ignored: ignoreErrors)" if image.wish.ignore_errors else ""
            lines.append(f"  FAILED {name}{note}: {image.error}")
        elif image.outcome != "unchanged":
            lines.append(f"  {image.outcome} {name}")
    for failure in report.expansion_failures:
        lines.append(
            f"  FAILED to list tags of {failure.wish.text} (line {failure.wish.line}): "
            f"{failure.error}; its published images are kept"
        )
    if report.stopped:
        lines.append("stopped before the end of the list (signal)")
    return "\n".join(lines)


def stats_text(stats: RepositoryStats) -> str:
    lines = [
        f"images (public links): {stats.images}",
        f"flat trees:            {stats.flat_trees}",
        f"layers:                {stats.layers}",
        f"bytes (inodes once):   {human_bytes(stats.bytes)}",
        f"entries:               {stats.entries}",
        f"catalogs (markers):    {stats.catalogs}",
        "largest catalogs:",
    ]
    lines += [f"  {c.entries:>10}  {c.path}" for c in stats.largest_catalogs]
    return "\n".join(lines)


def status_json(status: ImageStatus) -> dict[str, Any]:
    return json.loads(status.to_bytes())  # type: ignore[no-any-return]


def statuses_text(statuses: list[ImageStatus]) -> str:
    if not statuses:
        return "no images"
    header = ("REFERENCE", "DIGEST", "PLATFORM", "LAST CHECK", "LAST CHANGE", "LAST ERROR")
    rows = [
        (
            s.reference,
            s.digest.removeprefix("sha256:")[:12],
            s.platform,
            s.last_check,
            s.last_change,
            s.last_error or "-",
        )
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in (header, *rows)
    )


class Progress:
    """One status line on a terminal, updated at most ten times a second (thread-safe):
    a consumer of the events (``EventCallback``) that shows the layer progress."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._last = 0.0
        self._width = 0

    def __call__(self, event: Event) -> None:
        if not isinstance(event, LayerProgress):
            return  # the summary is rendered from the outcome, at the end
        with self._lock:
            key = event.digest.hex[:12]
            now = time.monotonic()
            started = self._started.setdefault(key, now)
            if event.phase == "download" and now - self._last < 0.1 and event.done < event.total:
                return
            self._last = now
            rate = event.done / max(now - started, 1e-3)
            self._write(
                f"{event.phase:>8} {key}  {human_bytes(event.done)} / "
                f"{human_bytes(event.total)}  {human_bytes(int(rate))}/s"
            )

    def _write(self, line: str) -> None:
        sys.stderr.write("\r" + line.ljust(self._width))
        sys.stderr.flush()
        self._width = len(line)

    def close(self) -> None:
        with self._lock:
            if self._width:
                sys.stderr.write("\r" + " " * self._width + "\r")
                sys.stderr.flush()
