"""Notes a scored run carries beside its scores (the single-run and the trials path)."""

from __future__ import annotations

from worker.records import RunSpec


def run_notes(run: RunSpec, no_cpu: list[str]) -> list[str]:
    """The run's notes, plus one naming who was scored on wall time although speed is
    scored on CPU time (``no_cpu``: successful results without a CPU figure)."""
    notes = list(run.notes)
    if run.speed == "cpu" and no_cpu:
        notes.append(f"Speed is scored on CPU time, but {', '.join(no_cpu)} had no CPU "
                     "figure (no writable cpu cgroup on the worker): scored on wall time")
    return notes
