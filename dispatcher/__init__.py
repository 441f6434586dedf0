"""Dream Foundry's client side: plan a run, publish its chord, follow it.

``run_forge`` is the Python API; ``forge`` (``dispatcher.cli``) is the CLI.
"""

from __future__ import annotations

from dispatcher.runner import run_forge
from worker.records import DEFAULT_OBJECTIVE, CandidateResult, DaytonaResult, ForgeResult

__all__ = ["DEFAULT_OBJECTIVE", "CandidateResult", "DaytonaResult", "ForgeResult", "run_forge"]
