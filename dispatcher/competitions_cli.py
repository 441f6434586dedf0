"""``forge competitions``: the scheduled competitions of forge.toml and their next run."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from dispatcher.manifest import ManifestError, load_manifest
from worker.validation import shorten


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "competitions", help="list scheduled competitions and their next run",
        description="List the competitions of forge.toml (celery beat runs them) with the "
                    "next time each one fires. Exit 2 when the file is missing or invalid.")
    parser.add_argument("--file", metavar="PATH",
                        help="the competitions file (default: env FORGE_COMPETITIONS, "
                             "else ./forge.toml)")
    parser.set_defaults(func=cmd_competitions)


def cmd_competitions(args: argparse.Namespace) -> int:
    # start-up: Celery (crontab arithmetic)
    from dispatcher.competitions import CompetitionsError, competitions_path, load_competitions

    try:
        comps = load_competitions(args.file)
        counts = {name: len(load_manifest(c.candidates).candidates)
                  for name, c in comps.items()}
    except (CompetitionsError, ManifestError) as exc:
        Console(stderr=True).print(f"forge: error: {exc}", markup=False, highlight=False,
                                         soft_wrap=True)
        return 2
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, 140))
    source = competitions_path(args.file)
    if not comps:
        console.print(f"No competitions in {source}.", markup=False)
        return 0
    now = datetime.now(UTC)
    table = Table(title=f"Competitions in {source}", title_justify="left")
    for col in ("Name", "Schedule", "Next run", "Objective", "Candidates", "Mode", "Post"):
        table.add_column(col, overflow="fold")
    for name, comp in comps.items():
        if comp.enabled:
            nxt = comp.next_run(now)
            local = nxt.astimezone(comp.zone)
            when = f"{local:%a %Y-%m-%d %H:%M:%S %Z} ({nxt:%Y-%m-%d %H:%M} UTC)"
        else:
            when = "disabled"
        table.add_row(name, comp.describe_schedule(), when, shorten(comp.objective),
                      str(counts[name]), comp.execution, "yes" if comp.post else "no")
    console.print(table)
    return 0
