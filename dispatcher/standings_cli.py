"""``forge standings COMPETITION [--since DATE] [--json]``: a competition's season table.

Read from the run store (the runs of a forge.toml competition form its season): each
candidate's Bradley-Terry rating with its 95% bootstrap interval, wins, podiums, current
win streak, average score, trend, and a regression flag for a candidate whose latest
score fell below the interval of its previous runs (worker/judge/season.py,
docs/trials.md). Exit 2 with the fix for bad input or no store; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text


def _since(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: use YYYY-MM-DD or an ISO 8601 timestamp "
            "(e.g. 2026-01-31 or 2026-01-31T09:00:00+00:00)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _window(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of runs") from None
    if value < 2:
        raise argparse.ArgumentTypeError("must be at least 2 (previous runs to compare with)")
    return value


def _err(message: str) -> int:
    print(f"forge: error: {message}", file=sys.stderr)
    return 2


def table(data: dict) -> Table:
    """The standings as a rich table (``data``: worker.standings.as_dict)."""
    conf = f"{data.get('confidence', 0.95):.0%}"
    out = Table(title=f"Season standings: {data['competition']} ({data['runs']} runs, "
                      f"{(data.get('first_timestamp') or '')[:10]} to "
                      f"{(data.get('last_timestamp') or '')[:10]})", title_justify="left")
    for col, just in (("#", "right"), ("Candidate", "left"), ("Rating", "right"),
                      (f"{conf} interval", "center"), ("Runs", "right"), ("Wins", "right"),
                      ("Podiums", "right"), ("Streak", "right"), ("Avg", "right"),
                      ("Last", "right"), ("Trend/run", "right"), ("Regression", "left")):
        out.add_column(col, justify=just)
    for s in data["standings"]:
        reg = s.get("regression") or {}
        flag = Text(f"REGRESSED ({s['last_score']:.1f} < {reg['low']:.1f})", style="red") \
            if s.get("regressed") else ""
        out.add_row(
            str(s["position"]), f"{s['name']} ({s['candidate_id']})" if s["name"] !=
            s["candidate_id"] else s["candidate_id"],
            f"{s['rating']:.0f}", f"{s['rating_low']:.0f} - {s['rating_high']:.0f}",
            str(s["runs"]), str(s["wins"]), str(s["podiums"]),
            str(s["streak"]) if s["streak"] else "-", f"{s['average_score']:.1f}",
            "-" if s["last_score"] is None else f"{s['last_score']:.1f}",
            "-" if s["trend"] is None else f"{s['trend']:+.2f}", flag)
    return out


def cmd_standings(args: argparse.Namespace) -> int:
    from dispatcher import store_cli
    from worker import config
    from worker.standings import as_dict, compute
    from worker.store import StoreError

    if not config.store_enabled():
        return _err("the run store is off (FORGE_STORE=off); standings are read from it: "
                    "turn it on, then 'forge import' the run directories")
    root = args.artifacts_dir or config.artifacts_dir()
    store, problem = store_cli.read_store(root)
    if store is None:
        return _err(problem or f"no run store for {root} (no runs yet): run the competition, "
                    "or point FORGE_DATABASE_URL / --artifacts-dir at its store")
    try:
        known = [c.name for c in store.competitions() if c.name]
        if args.competition not in known:
            return _err(f"no runs of competition {args.competition!r} in {store.display} "
                        f"(competitions with runs: {', '.join(known) or 'none'}); check the "
                        "name in forge.toml")
        window = args.window or config.regression_window()
        data = as_dict(compute(store, args.competition, since=args.since, window=window),
                       args.competition, window=window)
    except StoreError as exc:
        return _err(f"{exc}; start the database or fix FORGE_DATABASE_URL")
    except ValueError as exc:
        return _err(str(exc))
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, 140))
    if not data["standings"]:
        console.print(f"No finished runs of {args.competition} since "
                      f"{args.since:%Y-%m-%d}.", markup=False)
        return 0
    console.print(table(data))
    leader = data["standings"][0]
    half = (leader["rating_high"] - leader["rating_low"]) / 2
    console.print(f"Season leader: {leader['name']}, {leader['rating']:.0f} ± {half:.0f}. "
                  f"Regression: latest score below the 95% prediction interval of the "
                  f"previous {data['regression_window']} runs.", markup=False)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "standings", help="a competition's season standings (ratings, wins, streaks)",
        description="The season table of a competition (a forge.toml name) from the run "
                    "store: Bradley-Terry ratings with 95%% bootstrap intervals, wins, "
                    "podiums, streak, average score, trend, regressions.")
    p.add_argument("competition", metavar="COMPETITION")
    p.add_argument("--since", type=_since, metavar="DATE",
                   help="only runs from this date on (YYYY-MM-DD or ISO 8601, UTC)")
    p.add_argument("--window", type=_window, metavar="N",
                   help="previous runs a regression is judged against (default "
                        "FORGE_REGRESSION_WINDOW, 8)")
    p.add_argument("--artifacts-dir", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print the standings as JSON")
    p.set_defaults(func=cmd_standings)
