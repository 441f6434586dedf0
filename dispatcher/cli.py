"""``forge``: run competitions and read their results.

Exit codes: 0 done, 1 the run itself failed, 2 bad input or configuration (the
message names the problem and the fix).
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import json
import sys
import time
from types import SimpleNamespace

from rich.console import Console
from rich.table import Table

from dispatcher import console as ui
from dispatcher import store_cli
from dispatcher.manifest import ManifestError
from dispatcher.request import RunRequest
from dispatcher.runs import status_pending
from worker import config, observability, trace
from worker.records import DEFAULT_OBJECTIVE
from worker.rundir import SUMMARY, list_runs, read_summary
from worker.validation import (
    TIMEOUT_MAX,
    TIMEOUT_MIN,
    TRIALS_MAX,
    InvalidInput,
    check_artifacts_dir,
    check_run_id,
    check_timeout,
    check_trials,
    contained,
    shorten,
)

# Modules that add a subcommand: each has register(subparsers) setting func=handler.
EXTRA_COMMANDS: list[str] = []
EXTRA_COMMANDS.append("dispatcher.reap")
EXTRA_COMMANDS.append("dispatcher.resume")
EXTRA_COMMANDS.append("dispatcher.competitions_cli")
EXTRA_COMMANDS.append("dispatcher.store_cli")
EXTRA_COMMANDS.append("dispatcher.standings_cli")
EXTRA_COMMANDS.append("dispatcher.doctor")
EXTRA_COMMANDS.append("dispatcher.web.cli")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of seconds ({TIMEOUT_MIN}-{TIMEOUT_MAX})") from None
    try:
        return check_timeout(value)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _trials(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of trials (1-{TRIALS_MAX})") from None
    try:
        return check_trials(value, "--trials")
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forge",
        description="Dream Foundry: run competitions between AI agents on Celery workers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a competition",
                         description="Run every candidate in its own sandbox, judge, rank.")
    run.add_argument("objective_arg", nargs="?", metavar="OBJECTIVE",
                     help=f"what the candidates must do (default: {DEFAULT_OBJECTIVE!r})")
    run.add_argument("-o", "--objective", help="the objective (same as the positional)")
    run.add_argument("-d", "--daytona", action="store_true",
                     help="run candidates in Daytona sandboxes (needs DAYTONA_API_KEY)")
    run.add_argument("--candidates", metavar="PATH",
                     help="a candidates.toml manifest, or a directory holding one")
    run.add_argument("--artifacts-dir", metavar="PATH",
                     help="where run directories go (default: artifacts/, env FORGE_ARTIFACTS_DIR)")
    run.add_argument("--run-id", metavar="ID", help="use this run id instead of a new one")
    run.add_argument("--timeout", type=_positive_int, metavar="SECONDS",
                     help="per-candidate deadline (default 60, or the manifest's)")
    run.add_argument("--no-network", action="store_true",
                     help="candidates get no network but loopback")
    run.add_argument("--no-post", action="store_true", help="do not post the winner to Discord")
    run.add_argument("--max-sandboxes", type=_count, metavar="N",
                     help="Daytona sandboxes alive at once, for this run (default: the "
                          "manifest's, else FORGE_DAYTONA_MAX_SANDBOXES, 10)")
    run.add_argument("--trials", type=_trials, metavar="K",
                     help="run each candidate K times, each in a fresh sandbox; rank by "
                          "mean with 95%% intervals (default: the manifest's, else 1)")
    run.add_argument("--detach", action="store_true",
                     help="print the run id and return; workers finish the run (needs a broker)")
    run.add_argument("--json", action="store_true", help="print the ForgeResult as JSON")

    status = sub.add_parser("status", help="show a run's result",
                            description="Show one run: from the run store, else its run "
                                        "directory, else the broker's record.")
    status.add_argument("run_id", metavar="RUN_ID")
    status.add_argument("--artifacts-dir", metavar="PATH")
    status.add_argument("--json", action="store_true", help="print summary.json")

    lst = sub.add_parser("list", help="list recent runs",
                         description="Recent runs, newest first, with winner and time "
                                     "(from the run store).")
    lst.add_argument("--artifacts-dir", metavar="PATH")
    lst.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")

    post = sub.add_parser("post", help="post a finished run's winner to Discord again",
                          description="Re-post a finished run's winner (on purpose: bypasses "
                                      "the once-per-run guard). Needs DISCORD_WEBHOOK_URL.")
    post.add_argument("run_id", metavar="RUN_ID")
    post.add_argument("--artifacts-dir", metavar="PATH")

    for module in EXTRA_COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


_console = ui.wide_console
_err = ui.error


def cmd_run(args: argparse.Namespace) -> int:
    # start-up: the Celery app loads only for the commands that use it
    from dispatcher.runner import execute, plan_request

    if args.objective and args.objective_arg:
        return _err("give the objective once: either positionally or with -o/--objective")
    objective = args.objective or args.objective_arg or DEFAULT_OBJECTIVE
    out = _console(stderr=args.json)
    try:
        plan = plan_request(RunRequest(
            objective=objective,
            daytona=args.daytona,
            candidates=args.candidates,
            artifacts_dir=args.artifacts_dir,
            run_id=args.run_id,
            timeout=args.timeout,
            network=False if args.no_network else None,
            post=False if args.no_post else None,
            max_sandboxes=args.max_sandboxes,
            trials=args.trials,
        ))
        distributed = config.is_distributed()
        if args.detach and not distributed:
            return _err("--detach needs a broker: set CELERY_BROKER_URL (and run workers); "
                        "embedded runs live inside this process")
        mode = (f"distributed (broker {config.redact_url(config.broker_url() or '')})"
                if distributed else "embedded (in-process worker)")
        ui.header(out, plan, mode)
        trace.mark("planned")
        t0 = time.monotonic()
        if args.detach:
            from dispatcher import dispatch  # start-up: the Celery app

            dispatch.check_broker()
            dispatch.publish(plan)
            out.print(f"Detached: run {plan.run.run_id} dispatched; follow it with "
                      f"'forge status {plan.run.run_id}'", markup=False)
            if args.json:
                print(json.dumps({"run_id": plan.run.run_id}))
            else:
                print(plan.run.run_id)
            return 0
        with ui.Progress(out, plan) as progress:
            result = execute(plan, log_callback=progress.log, on_tick=progress.tick)
        trace.mark("display.closed")
    except (ManifestError, config.ConfigError, ValueError) as exc:
        return _err(str(exc))
    except KeyboardInterrupt:
        return _err("interrupted; a distributed run goes on on the workers "
                    "(see 'forge status RUN_ID')")
    except RuntimeError as exc:
        Console(stderr=True).print(f"forge: run failed: {exc}", markup=False)
        return 1
    ui.summary(out, result, time.monotonic() - t0)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    trace.mark("printed")
    return 0


def _run_target(args: argparse.Namespace) -> tuple[str, str]:
    """(artifacts root, run id) of status/post, both checked: a run id is a plain name,
    so the run directory stays inside the root (InvalidInput: exit 2)."""
    check_run_id(args.run_id)
    return check_artifacts_dir(args.artifacts_dir or config.artifacts_dir()), args.run_id


def cmd_status(args: argparse.Namespace) -> int:
    from worker.store import StoreError  # start-up: SQLAlchemy

    root, run_id = _run_target(args)
    store, problem = store_cli.read_store(root)
    detail = None
    if store is not None:
        try:
            detail = store.get_run(run_id)
        except StoreError as exc:
            problem = str(exc)
    if problem:
        store_cli.warn(problem, root)
    result = detail.forge_result() if detail is not None else None
    if result is None:
        result = read_summary(root, run_id)  # the store behind, or not reachable
    if result is None:
        pending = None
        if config.is_distributed():  # the broker's record tells a cut-short fan-out
            from worker.app import app  # start-up: the Celery app

            pending = status_pending(app, run_id)
        if detail is not None and (pending is None or pending[1] == 2):
            pending = store_cli.describe(detail)
        if pending is not None:
            print(pending[0])
            return pending[1]
        where = store.display if store is not None else root
        return _err(f"no finished run {run_id!r} in {where} (no {run_id}/{SUMMARY} "
                    f"in {root}); see 'forge list'")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
    out = _console()
    out.print(f"Run {result.run_id}  {result.timestamp}  {result.execution_mode.upper()}",
              markup=False)
    out.print(f"Objective: {shorten(result.objective)}", markup=False)
    ui.summary(out, result, ui.run_time(result), wall_label=ui.RUN_TIME_LABEL)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from worker.store import StoreError  # start-up: SQLAlchemy

    root = args.artifacts_dir or config.artifacts_dir()
    limit = max(args.limit, 1)
    store, problem = store_cli.read_store(root)
    if store is not None:
        try:
            runs = store.list_runs(per_page=limit).items
        except StoreError as exc:
            store, problem = None, str(exc)
    if store is None:
        if problem:
            store_cli.warn(problem, root)
        runs = [_dir_row(r) for r in list_runs(root)[:limit]]
    where = store.display if store is not None else root
    if not runs:
        Console().print(f"No runs in {where}.", markup=False)
        return 0
    table = Table(title=f"Runs in {where}", title_justify="left")
    for col in ("Run", "Time", "Competition", "Status", "Mode", "Candidates", "Winner",
                "Score"):
        table.add_column(col)
    for r in runs:
        when = r.timestamp if isinstance(r.timestamp, str) else \
            r.timestamp.isoformat(timespec="seconds")
        table.add_row(r.run_id, when, r.competition or "-", r.status, r.execution_mode,
                      str(r.candidates_total), r.winner_id or "-",
                      f"{r.winner_score:.1f}" if r.winner_score else "-")
    _console().print(table)
    return 0


def _dir_row(r):
    """A run directory's summary as a runs-list row (the store's RunSummary fields)."""
    return SimpleNamespace(run_id=r.run_id, timestamp=r.timestamp, competition=r.competition,
                           status="finished", execution_mode=r.execution_mode,
                           candidates_total=len(r.candidates), winner_id=r.winner_id,
                           winner_score=r.winner_score)


def cmd_post(args: argparse.Namespace) -> int:
    root, run_id = _run_target(args)
    result = read_summary(root, run_id)
    if result is None:
        return _err(f"no finished run {run_id!r} in {root}; see 'forge list'")
    url = config.discord_webhook_url()
    if url is None:
        return _err("DISCORD_WEBHOOK_URL is not set (or is a placeholder); set it in .env")
    run_dir = contained(root, run_id)
    # start-up: urllib.request, http.client and ssl, off `forge run`'s path (its chord
    # body loads them while the candidates execute)
    from worker.discord import post_winner

    record = post_winner(result, run_dir, url, force=True)
    from worker.store.hooks import record_run_dir  # start-up: Celery

    record_run_dir(run_dir)  # the store's copy of discord.json
    if record.get("posted"):
        print(f"Posted {record.get('messages', 0)} message(s) for run {run_id}")
        return 0
    reason = record.get("error") or record.get("skipped") or "unknown"
    Console(stderr=True).print(f"forge: not posted: {reason}", markup=False)
    return 1


COMMANDS = {"run": cmd_run, "status": cmd_status, "list": cmd_list, "post": cmd_post}


def _exit_quickly() -> None:
    """At exit, leave every object alive to the OS instead of the interpreter's last
    garbage collections: after a run they walked every object the run made (Celery,
    the embedded worker, the results) for 0.1-0.3 s, on the command's critical path.
    Only cyclic garbage goes uncollected; exit handlers and stream flushes still run."""
    gc.freeze()


_exit_registered = False


def main(argv: list[str] | None = None) -> int:
    global _exit_registered
    trace.mark("cli.main")
    if not _exit_registered:  # runs once, at interpreter exit (tests: pytest's)
        atexit.register(_exit_quickly)
        _exit_registered = True
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = getattr(args, "func", None) or COMMANDS[args.command]
    try:
        # doctor reports a bad setting instead of stopping; the web app sets itself up
        if args.command not in ("doctor", "web"):
            observability.setup_process("cli")  # JSON logs, Sentry: when configured
        return handler(args)
    except (config.ConfigError, InvalidInput) as exc:
        return _err(str(exc))


if __name__ == "__main__":
    sys.exit(main())
