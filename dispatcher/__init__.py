"""Dream Foundry's client side: plan a run, publish its chord, follow it.

``run_forge`` is the Python API; ``forge`` (``dispatcher.cli``) is the CLI. Input that
breaks a rule of ``worker.validation`` raises ``InvalidInput`` (a ``ValueError``). The Celery
app loads on first use, so ``forge --help`` and configuration errors stay fast and clear.
"""

from __future__ import annotations

from typing import Any

from worker.records import DEFAULT_OBJECTIVE, CandidateResult, DaytonaResult, ForgeResult
from worker.validation import InvalidInput

__all__ = ["DEFAULT_OBJECTIVE", "CandidateResult", "DaytonaResult", "ForgeResult",
           "InvalidInput", "run_forge"]


def __getattr__(name: str) -> Any:
    if name == "run_forge":
        # start-up: `import dispatcher` (every forge command) stays without the Celery app
        from dispatcher.runner import run_forge

        return run_forge
    raise AttributeError(f"module 'dispatcher' has no attribute {name!r}")
