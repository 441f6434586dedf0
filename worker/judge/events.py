"""Placeholder events judge (gates only) until the full judge lands."""

from __future__ import annotations

from worker.judge import JudgeContext
from worker.records import CandidateResult, Score


class EventsJudge:
    name = "events"

    def score(self, results: list[CandidateResult], context: JudgeContext) -> list[Score]:
        out = []
        for r in results:
            ok = r.success and bool(r.artifact_content) and len(r.artifact_content or "") > 10
            speed = max(0.0, 100.0 * (1 - r.runtime_seconds / max(context.timeout, 1)))
            s = Score(candidate_id=r.candidate_id, success=100.0 if ok else 0.0,
                      quality_score=100.0 if ok else 0.0, speed_score=speed if ok else 0.0,
                      qualified=ok, gates={"success": ok},
                      disqualified_reason=None if ok else (r.error_message or "failed"))
            s.total_score = round(0.2 * s.success + 0.6 * s.quality_score + 0.2 * s.speed_score, 2)
            out.append(s)
        return out
