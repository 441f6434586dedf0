"""The report's row model: every candidate with its score and result, in rank order."""

from __future__ import annotations

from worker.records import CandidateInfo, CandidateResult, ForgeResult, Score
from worker.report.text import cpu, runtime

NO_WINNER = "No winner: no candidate passed the gates"


def speed_words(result: ForgeResult) -> str:
    """What the speed score measured in this run."""
    if result.speed == "cpu":
        return "CPU time of each candidate's processes (not wall time)"
    return "wall time of each candidate's run"


class Row:
    """One leaderboard row: a candidate with its score and result, any of them missing."""

    def __init__(self, cid: str, info: CandidateInfo | None, score: Score | None,
                 result: CandidateResult | None) -> None:
        self.cid, self.info, self.score, self.result = cid, info, score, result

    @property
    def name(self) -> str:
        return self.info.name if self.info and self.info.name else self.cid

    @property
    def description(self) -> str:
        return self.info.description if self.info else ""

    @property
    def passed(self) -> bool:
        return bool(self.score and self.score.qualified)

    @property
    def reason(self) -> str:
        s, r = self.score, self.result
        if s and s.disqualified_reason:
            return s.disqualified_reason
        if not s:
            return (r.error_message if r else None) or "not scored"
        return ""


def ranked_rows(result: ForgeResult) -> list[Row]:
    """Every candidate, in rank order (unranked ones last, in run order)."""
    infos = {c.id: c for c in result.candidates}
    ids = [c.id for c in result.candidates]
    ids += [s.candidate_id for s in result.scores if s.candidate_id not in infos]
    ids += [r.candidate_id for r in result.results]
    ids = list(dict.fromkeys(ids))
    scores = {s.candidate_id: s for s in reversed(result.scores)}  # first one wins
    results = {r.candidate_id: r for r in reversed(result.results)}
    rows = [Row(i, infos.get(i), scores.get(i), results.get(i)) for i in ids]
    order = {i: n for n, i in enumerate(ids)}

    def key(row: Row) -> tuple[int, int]:
        rank = row.score.rank if row.score and isinstance(row.score.rank, int) else 0
        return (rank if rank > 0 else 10**9, order[row.cid])

    return sorted(rows, key=key)


def winner_row(result: ForgeResult, rows: list[Row]) -> Row | None:
    return next((r for r in rows if result.winner_id and r.cid == result.winner_id), None)


def winner_post(result: ForgeResult) -> str | None:
    if result.winner_artifact is not None:
        return result.winner_artifact
    r = result.result_for(result.winner_id) if result.winner_id else None
    return r.artifact_content if r else None


def row_facts(row: Row) -> list[tuple[str, str]]:
    """A candidate's facts: the code it ran (script or project, and its content sha256,
    which ties the result to exactly that code), then its result's."""
    info, r = row.info, row.result
    facts = []
    if info and (info.script or info.content_sha256):
        facts.append(("Code", " · ".join(x for x in (
            info.script, f"sha256 {info.content_sha256}" if info.content_sha256 else "") if x)))
    if r is not None and "install" in (r.timings or {}):
        facts.append(("Install", f"{r.timings['install']:.2f}s (before its clock started)"))
    return facts + result_facts(r)


def result_facts(r: CandidateResult | None) -> list[tuple[str, str]]:
    if r is None:
        return [("Result", "no result reached the callback")]
    facts = [
        ("Exit code", "—" if r.exit_code is None else str(r.exit_code)),
        ("Runtime", runtime(r)),
        ("CPU time", cpu(r)),
        ("Started", r.started_at or "—"),
        ("Finished", r.finished_at or "—"),
        ("Mode", r.execution_mode or "—"),
        ("Worker", r.worker or "—"),
        ("Sandbox", r.sandbox_id or "—"),
        ("Attempt", str(r.attempt)),
    ]
    if r.isolation:
        facts.append(("Isolation", r.isolation))
    if r.timed_out:
        facts.append(("Timed out", "yes"))
    if r.output_dropped_bytes:
        facts.append(("Output dropped", f"{r.output_dropped_bytes} bytes (head of output)"))
    if r.artifact_truncated:
        facts.append(("Artifact", "truncated at the size limit"))
    if r.error_message:
        facts.append(("Error", r.error_message))
    for w in r.warnings or []:
        facts.append(("Warning", str(w)))
    return facts
