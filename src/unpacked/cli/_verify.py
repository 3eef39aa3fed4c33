"""``unpacked verify --repo R [--repair] [--json]``: check a repository, fix what needs no registry.

Exit code 0 when the repository is clean (after the repair, with ``--repair``), 1 when
problems remain; the remaining ones are listed with the command that fixes them when
that is a re-conversion. ``--json`` prints one object::

    {"repository": "dir:/srv/unpacked", "clean": false,
     "findings": [{"kind": "link-dangling", "path": "...", "message": "...",
                   "remedy": "repair" | "reconvert" | "manual", "references": ["..."]}],
     "reconvert": [{"reference": "...", "command": "unpacked convert-single-image ..."}]}

and with ``--repair``, describing the state after the repair, plus ``"found"`` (the
findings before it), ``"repairs"`` (the changes made, one line each) and
``"recovered"`` (stale staging the publisher's recovery handled).
"""

from __future__ import annotations

import argparse
import os
import shlex

from unpacked.cli import EXIT_FAILURE, EXIT_OK
from unpacked.cli import _render as render
from unpacked.cli import _verify_deep as deep
from unpacked.cli._context import publisher_for
from unpacked.errors import ConfigError
from unpacked.publish import Publisher, backend_of
from unpacked.verify import (
    Finding,
    RepairReport,
    VerifyOptions,
    VerifyReport,
    describe,
    repair_repository,
    verify_repository,
)


def verify(args: argparse.Namespace) -> int:
    backend, location = backend_of(args.repo), args.repo.partition(":")[2]
    if backend is not None and backend.local_directory and location and not os.path.isdir(location):
        # Opening a dir: publisher creates a missing directory, which would verify clean.
        raise ConfigError(f"{args.repo}: no such repository directory")
    publisher = publisher_for(args.repo)
    options = VerifyOptions(skip_layers=args.skip_layers)
    command = _Reconvert(publisher.spec, args.skip_layers)
    if args.deep:
        return _with_deep(args, publisher, options, command)
    if args.repair:
        repaired = repair_repository(publisher, options=options, lock_timeout=args.lock_timeout)
        report = repaired.after
        if args.json:
            render.print_json(_repair_json(repaired, command))
        else:
            render.print_text(_repair_text(repaired, command))
    else:
        report = verify_repository(publisher, options=options, lock_timeout=args.lock_timeout)
        if args.json:
            render.print_json(_report_json(report, command))
        else:
            render.print_text(_report_text(report, command))
    return EXIT_OK if report.clean else EXIT_FAILURE


def _with_deep(
    args: argparse.Namespace, publisher: Publisher, options: VerifyOptions, command: _Reconvert
) -> int:
    """The structural check (or repair) first: the content check reads its records."""
    if args.repair:
        repaired = repair_repository(publisher, options=options, lock_timeout=args.lock_timeout)
        value, text = _repair_json(repaired, command), _repair_text(repaired, command)
    else:
        report = verify_repository(publisher, options=options, lock_timeout=args.lock_timeout)
        value, text = _report_json(report, command), _report_text(report, command)
    result = deep.deep(args, publisher)
    if args.repair:  # the structure once more: a re-conversion may have failed half-way
        report = verify_repository(publisher, options=options, lock_timeout=args.lock_timeout)
        value = {**value, **_report_json(report, command)}
        text = f"{text}\n{_report_text(report, command)}" if not report.clean else text
    if args.json:
        render.print_json({**value, "deep": deep.to_json(result)})
    else:
        render.print_text(f"{text}\n{deep.to_text(result)}")
    return EXIT_OK if report.clean and deep.succeeded(result) else EXIT_FAILURE


class _Reconvert:
    """The command that re-converts one image into the verified repository."""

    def __init__(self, spec: str, skip_layers: bool) -> None:
        self._tail = f" --repo {shlex.quote(spec)}" + (" --skip-layers" if skip_layers else "")

    def __call__(self, reference: str) -> str:
        return f"unpacked convert-single-image {shlex.quote(reference)}{self._tail}"


def _report_json(report: VerifyReport, command: _Reconvert) -> dict[str, object]:
    return {
        "repository": report.repository,
        "clean": report.clean,
        "findings": [finding.to_json() for finding in report.findings],
        "reconvert": [
            {"reference": ref, "command": command(ref)} for ref in report.references_to_reconvert()
        ],
    }


def _repair_json(repaired: RepairReport, command: _Reconvert) -> dict[str, object]:
    return {
        **_report_json(repaired.after, command),
        "found": [finding.to_json() for finding in repaired.before.findings],
        "repairs": [describe(change) for change in repaired.changes],
        "recovered": [str(path) for path in repaired.recovered],
    }


def _finding_line(finding: Finding) -> str:
    return f"  {finding.kind}: {finding.message} [{finding.remedy}]"


def _report_text(report: VerifyReport, command: _Reconvert) -> str:
    if report.clean:
        return f"{report.repository}: clean"
    lines = [f"{report.repository}: {len(report.findings)} problem(s)"]
    lines += [_finding_line(finding) for finding in report.findings]
    references = report.references_to_reconvert()
    if references:
        lines.append("re-convert (then run verify again):")
        lines += [f"  {command(ref)}" for ref in references]
    return "\n".join(lines)


def _repair_text(repaired: RepairReport, command: _Reconvert) -> str:
    found = len(repaired.before.findings)
    lines = [f"{repaired.before.repository}: {found} problem(s) found"]
    if repaired.recovered:
        lines.append("stale staging handled by the publisher's recovery:")
        lines += [f"  {path}" for path in repaired.recovered]
    if repaired.changes:
        lines.append(f"repaired ({len(repaired.changes)} change(s) in one transaction):")
        lines += [f"  {describe(change)}" for change in repaired.changes]
    lines.append(_report_text(repaired.after, command))
    return "\n".join(lines)
