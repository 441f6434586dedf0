"""The seed's Daytona entry points, kept importable for existing callers.

``run_candidate_in_daytona`` runs one candidate synchronously through the shared
lifecycle and the Daytona backend, so it behaves exactly like a candidate in a full
competition; only the surrounding Celery chord is missing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from worker.config import get_daytona_config, is_daytona_configured
from worker.records import CandidateTask, DaytonaResult, sha256_text

__all__ = [
    "DaytonaResult",
    "get_daytona_config",
    "is_daytona_configured",
    "run_candidate_in_daytona",
]


def run_candidate_in_daytona(
    candidate_id: str,
    script_path: str,
    objective: str,
    output_file: str,
    log_callback: Callable[[str, str], None] | None = None,
    timeout: int = 60,
) -> DaytonaResult:
    """Run one candidate script in a fresh Daytona sandbox; write its artifact to
    ``output_file``. Never raises: every failure is a result with ``success=False``."""
    from worker.lifecycle import run_lifecycle
    from worker.sandbox import get_backend

    def log(message: str) -> None:
        if log_callback is not None:
            log_callback(candidate_id, message)

    try:
        with open(script_path, encoding="utf-8") as fh:
            script = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        result = DaytonaResult(candidate_id=candidate_id, execution_mode="daytona",
                               error_message=f"Cannot read script {script_path}: {exc}")
        log(f"[Error] {result.error_message}")
        return result

    task = CandidateTask(
        run_id=f"compat-{uuid.uuid4().hex[:12]}",
        candidate_id=candidate_id,
        name=candidate_id,
        script_name=os.path.basename(script_path),
        script=script,
        script_sha256=sha256_text(script),
        objective=objective,
        execution_mode="daytona",
        timeout=timeout,
    )
    result = run_lifecycle(get_backend("daytona"), task, log)
    if result.artifact_content is not None:
        try:
            parent = os.path.dirname(os.path.abspath(output_file))
            os.makedirs(parent, exist_ok=True)
            tmp = f"{output_file}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(result.artifact_content)
            os.replace(tmp, output_file)
        except OSError as exc:
            result.warnings.append(f"could not write {output_file}: {exc}")
            log(f"[Warn] could not write {output_file}: {exc}")
    return result
