"""What a scored run's ``ForgeResult`` takes from its ``RunSpec``, for both scoring paths
(one trial per candidate, and K trials): one place, so the two cannot drift apart."""

from __future__ import annotations

import os
from typing import Any

from worker.records import RunSpec


def run_fields(run: RunSpec, no_cpu: list[str]) -> dict[str, Any]:
    """The ForgeResult fields that come from the run itself.

    ``no_cpu``: successful results without a CPU figure; when speed is scored on CPU
    time, a note names them (they were scored on wall time)."""
    notes = list(run.notes)
    if run.speed == "cpu" and no_cpu:
        notes.append(f"Speed is scored on CPU time, but {', '.join(no_cpu)} had no CPU "
                     "figure (no writable cpu cgroup on the worker): scored on wall time")
    return {"run_id": run.run_id, "objective": run.objective, "timestamp": run.timestamp,
            "execution_mode": run.execution_mode,
            "artifacts_dir": os.path.join(run.artifacts_dir, run.run_id),
            "judge": run.judge, "competition": run.competition,
            "definition_sha256": run.definition_sha256, "notes": notes, "speed": run.speed}
