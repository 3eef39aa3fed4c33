"""``verify --deep [--repair]``: the content check after the structural one.

Text: the structural report, then one line per changed, added or missing file (the
layer or flat tree, the path, the images affected), the notices (layers without a
content index) and, with ``--repair``, what was removed and converted again. ``--json``
adds ``"deep"``: ``{"clean", "findings": [{"kind", "tree", "path", "message",
"references", "layer", "imageId"}], "notices": [...]}`` and, with ``--repair``,
``"removed"``, ``"reconverted"``, ``"failed"`` and ``"found"`` (the findings before it).
"""

from __future__ import annotations

import argparse
import os

from unpacked import layout
from unpacked.cli._context import registry_options
from unpacked.convert import ConvertOptions, convert_image
from unpacked.platform import Platform
from unpacked.publish import Publisher
from unpacked.records import ImageStatus
from unpacked.reference import parse as parse_reference
from unpacked.registry import RegistryClient
from unpacked.verify import (
    DeepRepair,
    DeepReport,
    repair_content,
    verify_content,
)


def deep(args: argparse.Namespace, publisher: Publisher) -> DeepReport | DeepRepair:
    """Run the content check, or the content repair with ``--repair``."""
    if not args.repair:
        return verify_content(publisher, lock_timeout=args.lock_timeout)
    with RegistryClient(registry_options(args)) as client:
        reconverter = _Reconverter(client, publisher, args.lock_timeout)
        return repair_content(publisher, reconverter, lock_timeout=args.lock_timeout)


class _Reconverter:
    """``convert_image`` with the options the image was published with, as far as the
    repository tells (platform, links, flat tree)."""

    def __init__(self, client: RegistryClient, publisher: Publisher, lock_timeout: float) -> None:
        self._client = client
        self._publisher = publisher
        self._lock_timeout = lock_timeout

    def check(self, status: ImageStatus) -> None:
        self._client.head_manifest(parse_reference(status.reference))

    def convert(self, status: ImageStatus, name: str, with_flat: bool) -> None:
        reference = parse_reference(status.reference)
        platform = Platform.parse(status.platform)
        only_multiarch = name.startswith(f"{layout.MULTIARCH}/")
        link = layout.multiarch_link(platform, reference)
        options = ConvertOptions(
            platform=platform,
            skip_flat=not with_flat,
            public_link=not only_multiarch,
            multiarch=only_multiarch or os.path.lexists(self._publisher.root / link),
            lock_timeout=self._lock_timeout,
        )
        convert_image(reference, client=self._client, publisher=self._publisher, options=options)


def final(result: DeepReport | DeepRepair) -> DeepReport:
    return result.after if isinstance(result, DeepRepair) else result


def succeeded(result: DeepReport | DeepRepair) -> bool:
    """Clean, and (after a repair) every image converted again."""
    return final(result).clean and not (isinstance(result, DeepRepair) and result.failed)


def to_json(result: DeepReport | DeepRepair) -> dict[str, object]:
    report = final(result)
    value: dict[str, object] = {
        "clean": report.clean,
        "findings": [finding.to_json() for finding in report.problems],
        "notices": [finding.to_json() for finding in report.notices],
    }
    if isinstance(result, DeepRepair):
        value["found"] = [finding.to_json() for finding in result.before.problems]
        value["removed"] = [str(path) for path in result.removed]
        value["reconverted"] = list(result.reconverted)
        value["failed"] = [{"reference": ref, "error": error} for ref, error in result.failed]
        value["unreferenced"] = list(result.unreferenced)
    return value


def _report_lines(report: DeepReport) -> list[str]:
    lines = [f"  {f.kind}: {f.message}" for f in report.problems]
    lines += [f"  notice: {f.message}" for f in report.notices]
    return lines


def to_text(result: DeepReport | DeepRepair) -> str:
    lines = []
    if isinstance(result, DeepRepair):
        lines.append(f"content: {len(result.before.problems)} file(s) differed")
        lines += _report_lines(result.before)
        lines += [f"  removed {path}" for path in result.removed]
        lines += [f"  converted again: {ref}" for ref in result.reconverted]
        lines += [f"  not converted: {ref}: {error}" for ref, error in result.failed]
        lines += [
            f"  left: flat tree of {image_id}: no published image uses it "
            "(garbage collection removes it)"
            for image_id in result.unreferenced
        ]
    report = final(result)
    head = f"{report.checked_layers} layer(s), {report.checked_flat_trees} flat tree(s)"
    if report.clean:
        lines.append(f"content: clean ({head})")
        lines += [f"  notice: {f.message}" for f in report.notices]
    else:
        lines.append(f"content: {len(report.problems)} file(s) differ ({head})")
        lines += _report_lines(report)
        if not isinstance(result, DeepRepair):
            lines.append("  re-create them from the registry: unpacked verify --deep --repair")
    return "\n".join(lines)
