"""The commands that read a repository: stats, status."""

from __future__ import annotations

import argparse

from unpacked.cli import EXIT_OK
from unpacked.cli import _render as render
from unpacked.cli._context import publisher_for
from unpacked.stats import repository_stats
from unpacked.status import list_statuses


def stats(args: argparse.Namespace) -> int:
    result = repository_stats(publisher_for(args.repo, create=False).root)
    if args.json:
        render.print_json(result.to_json())
    else:
        render.print_text(render.stats_text(result))
    return EXIT_OK


def status(args: argparse.Namespace) -> int:
    statuses = list_statuses(publisher_for(args.repo, create=False).root)
    if args.json:
        render.print_json([render.status_json(s) for s in statuses])
    else:
        render.print_text(render.statuses_text(statuses))
    return EXIT_OK
