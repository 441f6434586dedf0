"""Dream Foundry's worker side: ``celery -A worker worker`` finds ``worker.app``.

Kept light on purpose: the Celery app loads on first use of ``worker.app`` (so records
and configuration import without it), the Daytona SDK and the judge only where used.
"""

from __future__ import annotations

from typing import Any

from worker.config import get_daytona_config, is_daytona_configured

__all__ = ["app", "celery", "get_daytona_config", "is_daytona_configured"]


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        # start-up: records and configuration import without the Celery app
        from worker.app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
