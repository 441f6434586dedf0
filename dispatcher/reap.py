"""``forge reap``: delete Daytona sandboxes that no running task will ever delete.

A worker killed between create and delete leaves its sandbox behind. Ours carry the
``dream-foundry`` labels; one older than the longest deadline plus a margin belongs to
no running task (see ``worker.maintenance``, which beat runs periodically).
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from dispatcher.console import error, wide_console
from worker import config
from worker.sandbox import get_backend


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more seconds")
    return value


def register(subparsers) -> None:
    reap = subparsers.add_parser(
        "reap", help="delete orphaned Daytona sandboxes",
        description="List and delete Daytona sandboxes carrying Dream Foundry's labels that "
                    "are older than any running task could be (default: FORGE_MAX_DEADLINE "
                    "plus a margin). Needs DAYTONA_API_KEY.")
    reap.add_argument("--max-age", type=_seconds, metavar="SECONDS",
                      help="only sandboxes older than this (default: FORGE_MAX_DEADLINE + "
                           "FORGE_REAP_MARGIN, 3600 + 600); 0 takes every one of ours")
    reap.add_argument("--dry-run", action="store_true", help="list only, delete nothing")
    reap.add_argument("--owner", metavar="NAME",
                      help="only sandboxes created by this worker (its node name)")
    reap.add_argument("--json", action="store_true", help="print the list as JSON")
    reap.set_defaults(func=cmd_reap)


def _table(found: list[dict], dry_run: bool, max_age: float) -> Table:
    verb = "would delete" if dry_run else "deleted"
    table = Table(title=f"Orphaned Daytona sandboxes (older than {max_age:g}s): "
                        f"{len(found)} {verb}", title_justify="left")
    for col in ("Sandbox", "Run", "Candidate", "Owner", "State", "Age", "Action"):
        table.add_column(col, overflow="fold")
    for e in found:
        action = ("listed" if dry_run else "deleted" if e["deleted"]
                  else f"FAILED: {e['error']}")
        table.add_row(e["id"], e.get("run_id") or "-", e.get("candidate_id") or "-",
                      e.get("owner") or "-", e.get("state") or "-",
                      f"{e.get('age_seconds', 0):.0f}s", action)
    return table


def cmd_reap(args: argparse.Namespace) -> int:
    # start-up: Celery (the sweep is also beat's task)
    from worker.maintenance import NOT_CONFIGURED, default_max_age, sweep

    if not config.is_daytona_configured():
        return error(f"{NOT_CONFIGURED}; there is nothing to reap without it")
    try:
        max_age = default_max_age() if args.max_age is None else args.max_age
    except config.ConfigError as exc:
        return error(str(exc))
    try:
        found = sweep(max_age, dry_run=args.dry_run, owner=args.owner)
    except Exception as exc:  # noqa: BLE001 - SDK/transport errors, worded once
        message = get_backend("daytona").scrub(str(exc))  # type: ignore[attr-defined]
        Console(stderr=True).print(f"forge: reap failed: {type(exc).__name__}: {message}",
                                   markup=False, highlight=False)
        return 1
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        out = wide_console()
        if found:
            out.print(_table(found, args.dry_run, max_age))
        else:
            out.print(f"No orphaned Daytona sandboxes (none of ours older than {max_age:g}s).",
                      markup=False)
    return 1 if any(e["error"] for e in found) else 0
