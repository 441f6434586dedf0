"""What ``forge`` shows a person: the seed's header and phases, rich progress, tables."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from dispatcher.plan import RunPlan
from dispatcher.tracker import RunTracker
from worker.records import ForgeResult
from worker.validation import shorten

RULE = "=" * 60
MAX_LOG_CANDIDATES = 50  # above this, per-line logs give way to counts
STYLE = {"QUEUED": "dim", "RUNNING": "yellow", "WAITING": "magenta", "DONE": "green",
         "FAILED": "red"}


def wide_console(stderr: bool = False) -> Console:
    """Rich console; wide enough in CI logs that tables stay readable."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=max(console.width, 120))
    return console


def error(message: str) -> int:
    """``forge: error: ...`` on stderr; the exit code of bad input (2)."""
    print(f"forge: error: {message}", file=sys.stderr)
    return 2


def header(console: Console, plan: RunPlan, mode_line: str) -> None:
    run = plan.run
    console.print(RULE, markup=False, highlight=False)
    console.print("DREAM FOUNDRY - Forge Loop", markup=False, highlight=False)
    console.print(RULE, markup=False, highlight=False)
    console.print(f"Objective: {shorten(run.objective)}", markup=False, highlight=False)
    if run.trials > 1:
        console.print(f"Candidates: {len(run.candidates)} x {run.trials} trials "
                      f"({len(plan.tasks)} sandboxes)", markup=False, highlight=False)
    else:
        console.print(f"Candidates: {len(plan.tasks)}", markup=False, highlight=False)
    console.print(f"Execution: {run.execution_mode.upper()}", markup=False, highlight=False)
    for note in run.notes:
        console.print(note, markup=False, highlight=False)
    console.print(f"Mode: {mode_line}", markup=False, highlight=False)
    console.print(f"Run: {run.run_id}", markup=False, highlight=False)
    console.print()


class Progress:
    """Live table on a terminal; plain log lines everywhere (CI logs stay readable).

    Under the live table every print redraws the table, holding the GIL that an
    embedded worker's threads share: the lines one poll brings (a finished candidate's
    last few, as its run's chord body starts) go out as one print at the poll's tick."""

    def __init__(self, console: Console, plan: RunPlan):
        self.console = console
        self.plan = plan
        self.t0 = time.monotonic()
        self.verbose = len(plan.tasks) <= MAX_LOG_CANDIDATES
        self.live: Live | None = None
        self._last_counts: dict[str, int] | None = None
        self._last_print = 0.0
        self._pending: list[str] = []  # log lines for the next print, under a live table

    def __enter__(self) -> Progress:
        self.console.print("PHASE: Running Candidates", markup=False, highlight=False)
        if self.console.is_terminal:
            self.live = Live(Text("starting..."), console=self.console, transient=True,
                             refresh_per_second=8)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._flush()
        if self.live is not None:
            self.live.__exit__(*exc)

    def log(self, candidate_id: str, message: str) -> None:
        if not self.verbose:
            return
        if self.live is None:
            self.console.print(f"[{candidate_id}] {message}", markup=False, highlight=False)
        else:
            self._pending.append(f"[{candidate_id}] {message}")

    def _flush(self) -> None:
        if self._pending:
            self.console.print("\n".join(self._pending), markup=False, highlight=False)
            self._pending.clear()

    def tick(self, tracker: RunTracker) -> None:
        self._flush()
        counts = tracker.counts
        if self.live is not None:
            self.live.update(self._table(tracker))
        elif not self.verbose and counts != self._last_counts and \
                time.monotonic() - self._last_print > 2:
            self._last_print = time.monotonic()
            self.console.print(self._counts_line(counts), markup=False, highlight=False)
        self._last_counts = counts

    def _counts_line(self, c: dict[str, int]) -> str:
        waiting = f"  waiting for a sandbox {c['WAITING']}" if c.get("WAITING") else ""
        return (f"  {time.monotonic() - self.t0:6.1f}s  queued {c['QUEUED']}  running "
                f"{c['RUNNING']}{waiting}  done {c['DONE']}  failed {c['FAILED']}")

    def _table(self, tracker: RunTracker) -> Table:
        table = Table(title=self._counts_line(tracker.counts).strip(), title_justify="left",
                      expand=False)
        for col in ("Candidate", "State", "Time", "Worker", "Last message"):
            table.add_column(col)
        now = time.monotonic()
        rows = sorted(tracker.states.values(),
                      key=lambda s: {"RUNNING": 0, "WAITING": 1, "FAILED": 2, "DONE": 3,
                                     "QUEUED": 4}[s.state])
        for st in rows[:20]:
            if st.runtime is not None:
                elapsed = f"{st.runtime:.1f}s"
            elif st.first_seen is not None:
                elapsed = f"{now - st.first_seen:.1f}s"
            else:
                elapsed = "-"
            table.add_row(st.candidate_id, Text(st.state.lower(), style=STYLE[st.state]),
                          elapsed, (st.worker or "-").split("@")[-1][:20], st.last_line[:60])
        if len(rows) > 20:
            table.caption = f"... and {len(rows) - 20} more"
        return table


def results_table(result: ForgeResult) -> Table:
    names = {c.id: c.name for c in result.candidates}
    title = "PHASE: Scoring" + (" (speed on CPU time)" if result.speed == "cpu" else "")
    table = Table(title=title, title_justify="left")
    for col, just in (("Candidate", "left"), ("Success", "right"), ("Quality", "right"),
                      ("Speed", "right"), ("TOTAL", "right"), ("Gates", "center"),
                      ("Time", "right"), ("Note", "left")):
        table.add_column(col, justify=just)
    results = {r.candidate_id: r for r in reversed(result.results)}  # first one wins
    for s in sorted(result.scores, key=lambda s: s.rank):
        r = results.get(s.candidate_id)
        gate = Text("PASS", style="green") if s.qualified else Text("FAIL", style="red")
        note = s.disqualified_reason or ""
        table.add_row(
            f"{names.get(s.candidate_id, s.candidate_id)} ({s.candidate_id})",
            f"{s.success:.1f}", f"{s.quality_score:.1f}", f"{s.speed_score:.1f}",
            f"{s.total_score:.1f}", gate,
            _time(r, result.speed), note[:60],
        )
    return table


def trials_table(result: ForgeResult) -> Table:
    """The leaderboard of a run of repeated trials: rank by mean, with its 95% interval,
    pass rate, pass^K and flaky (worker/judge/trials.py)."""
    names = {c.id: c.name for c in result.candidates}
    k = result.trials
    title = f"PHASE: Scoring ({k} trials per candidate, ranked by mean, 95% intervals)"
    table = Table(title=title, title_justify="left")
    for col, just in (("#", "right"), ("Candidate", "left"), ("Mean", "right"),
                      ("95% CI", "center"), ("Trials", "left"), ("Pass", "right"),
                      (f"pass^{k}", "center"), ("Flaky", "center"), ("Note", "left")):
        table.add_column(col, justify=just)
    contenders = set((result.verdict or {}).get("contenders") or ())
    for s in result.trial_summaries:
        cid = s["candidate_id"]
        note = ""
        if result.tied and cid in contenders:
            note = "tied" + (" (post)" if cid == result.winner_id else "")
        elif cid == result.winner_id:
            note = "winner"
        table.add_row(
            str(s["rank"]), f"{names.get(cid, cid)} ({cid})", f"{s['mean']:.1f}",
            f"{s['ci_low']:.1f} - {s['ci_high']:.1f}",
            " ".join(f"{x:.1f}" for x in s["scores"]),
            f"{s['passes']}/{s['trials']}",
            Text("yes", style="green") if s["pass_all"] else Text("no", style="red"),
            Text("FLAKY", style="yellow") if s["flaky"] else "", note)
    return table


def verdict_lines(result: ForgeResult) -> list[str]:
    """What the console says of the winner of a run of repeated trials."""
    verdict = result.verdict or {}
    names = {c.id: c.name for c in result.candidates}
    if not result.winner_id:
        return ["No winner: no candidate passed the gates in any trial."]
    win = result.summary_for(result.winner_id) or {}
    who = f"{names.get(result.winner_id, result.winner_id)} ({result.winner_id})"
    mean = f"mean {win.get('mean', 0):.1f}/100, 95% CI {win.get('ci_low', 0):.1f}-" \
        f"{win.get('ci_high', 0):.1f} over {win.get('trials', result.trials)} trials"
    if result.tied:
        tied = ", ".join(names.get(c, c) for c in verdict.get("contenders") or ())
        return [f"STATISTICALLY TIED: {tied} (the 95% interval of the difference of their "
                "means includes zero); no outright winner.",
                f"Post goes to {who}, {mean}: {verdict.get('reason', '')}"]
    return [f"WINNER: {who} with {mean}", f"Verdict: {verdict.get('reason', '')}"]


def _time(r, speed: str) -> str:
    if r is None:
        return "-"
    if speed == "cpu":
        cpu = "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.2f}s"
        return f"{cpu} cpu / {r.runtime_seconds:.2f}s"
    return f"{r.runtime_seconds:.2f}s"


RUN_TIME_LABEL = "Run time (first candidate start to last finish)"


def run_time(result: ForgeResult) -> float | None:
    """The run's elapsed time from its results: earliest ``started_at`` to latest
    ``finished_at`` (candidates run in parallel, so their runtimes do not add up).
    None when no result carries both times."""
    def when(text: str | None) -> datetime | None:
        try:
            t = datetime.fromisoformat(text) if text else None
        except (TypeError, ValueError):
            return None
        return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t

    starts = [t for r in result.results if (t := when(r.started_at)) is not None]
    ends = [t for r in result.results if (t := when(r.finished_at)) is not None]
    if not starts or not ends:
        return None
    return max(0.0, (max(ends) - min(starts)).total_seconds())


def summary(console: Console, result: ForgeResult, wall: float | None,
            wall_label: str = "Wall time") -> None:
    console.print()
    if result.trials > 1:
        console.print(trials_table(result))
        for line in verdict_lines(result):
            console.print(line, markup=False, highlight=False)
    else:
        console.print(results_table(result))
    names = {c.id: c for c in result.candidates}
    if result.trials > 1:
        pass
    elif result.winner_id:
        c = names.get(result.winner_id)
        label = f"{c.name} ({c.description})" if c and c.description else result.winner_id
        console.print(f"WINNER: {label} with {result.winner_score:.1f}/100",
                      markup=False, highlight=False)
    else:
        console.print("No winner: no candidate passed the gates.", markup=False,
                      highlight=False)
    if result.discord:
        d = result.discord
        msg = (f"Discord: posted {d.get('messages', 0)} message(s)" if d.get("posted")
               else f"Discord: not posted ({d.get('error') or d.get('skipped') or 'skipped'})")
        console.print(msg, markup=False, highlight=False)
    console.print(f"Artifacts: {result.artifacts_dir}", markup=False, highlight=False)
    shown = "unknown (no candidate start and finish times)" if wall is None else f"{wall:.2f}s"
    console.print(f"{wall_label}: {shown}", markup=False, highlight=False)
