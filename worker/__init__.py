"""Dream Foundry's worker side: ``celery -A worker worker`` finds ``worker.app``.

Kept light on purpose: the Daytona SDK and the judge load only where used.
"""

from __future__ import annotations

from worker.app import app
from worker.config import get_daytona_config, is_daytona_configured

celery = app

__all__ = ["app", "celery", "get_daytona_config", "is_daytona_configured"]
