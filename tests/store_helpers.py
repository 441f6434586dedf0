"""Building runs for store tests, dumping a store, and checking it against a run directory."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from worker.records import (
    CandidateInfo,
    CandidateResult,
    ForgeResult,
    RunSpec,
    Score,
    sha256_text,
)


def spec(run_id: str = "r1", n: int = 3, competition: str | None = None,
         timestamp: str = "2026-11-20T10:00:00+00:00", artifacts_dir: str = "/nowhere"
         ) -> RunSpec:
    return RunSpec(run_id=run_id, objective="Write the post", timestamp=timestamp,
                   execution_mode="local", artifacts_dir=artifacts_dir,
                   candidates=[CandidateInfo(id=f"c{i}", name=f"Cand {i}",
                                             description=f"the {i}th", script=f"c{i}.py",
                                             content_sha256=sha256_text(f"c{i}.py"))
                               for i in range(n)],
                   competition=competition, definition_sha256="ab" * 32, notes=["a note"])


def candidate_result(cid: str, i: int = 0, ok: bool = True, output: str | None = None,
                     artifact: str | None = None) -> CandidateResult:
    return CandidateResult(
        candidate_id=cid, sandbox_id=f"sb-{cid}", success=ok,
        output=output if output is not None else f"[{cid}] line one\nline two\n",
        artifact_content=(artifact if artifact is not None else f"# Post by {cid}\n")
        if ok else None,
        runtime_seconds=0.25 + i, error_message=None if ok else "Script exited with code 1",
        exit_code=0 if ok else 1, started_at="2026-11-20T10:00:01.000+00:00",
        finished_at=(datetime(2026, 11, 20, 10, 0, 2, 125000, tzinfo=UTC)
                     + timedelta(seconds=i)).isoformat(timespec="milliseconds"),
        worker="w1@host", attempt=1,
        warnings=["a warning"] if i == 1 else [], isolation="bubblewrap",
        log=["[Run] Starting...", f"[Done] {cid}"], timings={"exec": 0.1 * (i + 1)})


def finished(run: RunSpec, winner: str | None = "c1", failed: tuple[str, ...] = (),
             results: dict[str, CandidateResult] | None = None) -> ForgeResult:
    """A judged ForgeResult of ``run`` (scores made here: ``winner`` ranks first)."""
    results = results or {}
    ids = [c.id for c in run.candidates]
    res = [results.get(cid) or candidate_result(cid, i, ok=cid not in failed)
           for i, cid in enumerate(ids)]
    order = sorted(ids, key=lambda c: (c != winner, c in failed, c))
    scores = [Score(candidate_id=c, success=0.0 if c in failed else 100.0,
                    quality_score=90.0 - 10 * r, speed_score=50.0, total_score=80.0 - 10 * r,
                    qualified=c == winner, gates={"artifact": c not in failed, "events": True},
                    disqualified_reason=None if c == winner else "gate events",
                    quality_details={"events": 3 - r, "checks": {"date": [1, 2]}}, rank=r + 1)
              for r, c in enumerate(order)]
    cands = [CandidateInfo(**{**c.to_dict(), "artifact": None if c.id in failed
                              else f"{c.id}/discord_post.md"}) for c in run.candidates]
    win = next((r for r in res if r.candidate_id == winner), None)
    return ForgeResult(run_id=run.run_id, objective=run.objective, timestamp=run.timestamp,
                       execution_mode=run.execution_mode, candidates=cands, scores=scores,
                       winner_id=winner, winner_score=80.0 if winner else None,
                       winner_artifact=win.artifact_content if win else None,
                       artifacts_dir=f"{run.artifacts_dir}/{run.run_id}", results=res,
                       judge=run.judge, competition=run.competition,
                       definition_sha256=run.definition_sha256, notes=list(run.notes))


def dump(store) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: two equal dumps are two identical stores."""
    from worker.store.models import Base

    out = {}
    with store.engine.connect() as conn:
        for name, table in sorted(Base.metadata.tables.items()):
            rows = conn.execute(select(table)).all()
            out[name] = sorted(tuple(json.dumps(v, sort_keys=True, default=str)
                                      for v in r) for r in rows)
    return out


def assert_store_agrees_with_run_dir(store, run_dir: Path) -> None:
    """Every field of summary.json and of each result.json equals the store's, and the
    reports rendered from the store are the run directory's files byte for byte."""
    from worker.discord import read_record
    from worker.rundir import summary_dict

    summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
    stored = store.load_result(summary["run_id"])
    assert stored is not None, "the run is not in the store"
    assert stored.discord == read_record(run_dir)  # discord.json, or None both
    stored.discord = summary["discord"]  # summary.json predates the post
    mine = summary_dict(stored)
    assert set(mine) == set(summary)
    for key in summary:
        assert mine[key] == summary[key], (key, mine[key], summary[key])
    for r in stored.results:
        on_disk = json.loads((run_dir / r.candidate_id / "result.json").read_text("utf-8"))
        for key, value in on_disk.items():
            assert r.to_dict()[key] == value, (r.candidate_id, key)
        assert (run_dir / r.candidate_id / "output.log").read_text("utf-8") == r.output
        post = run_dir / r.candidate_id / "discord_post.md"
        assert (post.read_text("utf-8") if post.exists() else None) == r.artifact_content
    assert store.report(summary["run_id"], "md") == (run_dir / "report.md").read_text("utf-8")
    assert store.report(summary["run_id"], "html") == \
        (run_dir / "report.html").read_text("utf-8")
    states = store.run_states(summary["run_id"])
    assert [s.candidate_id for s in states] == [c["id"] for c in summary["candidates"]]
    assert {s.state for s in states} == {"done"}
