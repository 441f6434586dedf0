"""The seed's Daytona entry points, kept importable for existing callers.

``run_candidate_in_daytona`` runs one candidate synchronously through the shared
lifecycle and the Daytona backend, so it behaves exactly like a candidate in a full
competition; only the surrounding Celery chord is missing.
``run_all_candidates_in_daytona`` keeps the seed's signature but runs the candidates
through the chord (in parallel, embedded or distributed), not one after another.

They were ``worker.daytona_compat``; as client entry points they now live in the
dispatcher, above the worker (worker/ never imports dispatcher/).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dispatcher.manifest import ID_RE, Candidate, Manifest, ManifestError
from dispatcher.request import RunRequest
from dispatcher.runner import execute, plan_request
from worker.config import get_daytona_config, is_daytona_configured
from worker.lifecycle import run_lifecycle
from worker.records import CandidateTask, DaytonaResult, sha256_text
from worker.sandbox import get_backend
from worker.sandbox.daytona import NO_KEY, NO_KEY_MESSAGE
from worker.validation import InvalidInput, check_objective, check_timeout

__all__ = [
    "DaytonaResult",
    "get_daytona_config",
    "is_daytona_configured",
    "run_all_candidates_in_daytona",
    "run_candidate_in_daytona",
]

REPO_ROOT = Path(__file__).resolve().parent.parent

logger = logging.getLogger("dream_foundry")


def run_candidate_in_daytona(
    candidate_id: str,
    script_path: str,
    objective: str,
    output_file: str,
    log_callback: Callable[[str, str], None] | None = None,
    timeout: int = 60,
) -> DaytonaResult:
    """Run one candidate script in a fresh Daytona sandbox; write its artifact to
    ``output_file``. Never raises: every failure is a result with ``success=False``.

    As in the seed, without a key the ``error_message`` is exactly ``Daytona API key not
    configured``; the hint (which variable to set) goes to the log line."""
    def log(message: str) -> None:
        if log_callback is not None:
            log_callback(candidate_id, message)

    def failed(message: str, line: str | None = None) -> DaytonaResult:
        result = DaytonaResult(candidate_id=candidate_id, execution_mode="daytona",
                               error_message=message)
        log(f"[Error] {line or message}")
        logger.warning("%s: %s", candidate_id, line or message)
        return result

    if not is_daytona_configured():
        return failed(NO_KEY_MESSAGE, NO_KEY)
    try:
        check_objective(objective)
        check_timeout(timeout)
    except InvalidInput as exc:
        return failed(str(exc))

    try:
        with open(script_path, encoding="utf-8") as fh:
            script = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        return failed(f"Cannot read script {script_path}: {exc}")

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


def _field(candidate: Any, *names: str) -> Any:
    for name in names:
        value = candidate.get(name) if isinstance(candidate, dict) else getattr(
            candidate, name, None)
        if value not in (None, ""):
            return value
    return None


def _script_path(raw: str | os.PathLike[str]) -> Path:
    """A seed path is relative to the working directory, or else to the repository."""
    path = Path(raw)
    if path.is_absolute() or path.is_file():
        return path.resolve()
    return (REPO_ROOT / path).resolve()


def _as_candidate(candidate: Any) -> Any:
    """A ``dispatcher.manifest.Candidate`` from the seed's dict (``id``, ``name``,
    ``description``, ``script``/``script_path``) or any object with those attributes."""
    if isinstance(candidate, Candidate):
        return candidate
    cid = _field(candidate, "id", "candidate_id")
    if not isinstance(cid, str) or not ID_RE.fullmatch(cid):
        raise ManifestError(f"candidate {candidate!r}: 'id' must be 1-64 characters from "
                            "a-z, 0-9, _ and -")
    raw = _field(candidate, "script_path", "script")
    if raw is None:
        raise ManifestError(f"candidate '{cid}': no 'script' path given")
    path = _script_path(raw)
    try:
        script = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"candidate '{cid}': cannot read script {path}: {exc}") from None
    timeout = _field(candidate, "timeout")
    return Candidate(
        id=cid,
        name=str(_field(candidate, "name") or cid),
        description=str(_field(candidate, "description") or ""),
        script_path=path,
        script=script,
        script_sha256=sha256_text(script),
        timeout=int(timeout) if timeout else None,
        requirements=tuple(_field(candidate, "requirements") or ()),
    )


def run_all_candidates_in_daytona(
    candidates: Sequence[Any],
    objective: str,
    artifacts_dir: str,
    log_callback: Callable[[str, str], None] | None = None,
    timeout: int | None = None,
) -> list[DaytonaResult]:
    """Run every candidate in its own Daytona sandbox, in parallel, through the chord.

    Results come back in the order of ``candidates``; the run directory (summary,
    report, per-candidate artifacts) is written under ``artifacts_dir/<run_id>/``.
    Without a configured key the run falls back to local sandboxes, as ``forge run
    --daytona`` does (the result's ``execution_mode`` says which ran). Raises
    ``ManifestError`` for an unusable candidate list, before anything is started.
    """
    converted = [_as_candidate(c) for c in candidates]
    if not converted:
        raise ManifestError("no candidates given")
    ids = [c.id for c in converted]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ManifestError(f"duplicate candidate ids: {', '.join(duplicates)}")
    manifest = Manifest(path=converted[0].script_path.parent / "candidates.toml",
                        candidates=tuple(converted))
    request = RunRequest(objective=objective, daytona=True, artifacts_dir=artifacts_dir,
                         timeout=timeout, post=False)
    plan = plan_request(request, manifest)
    forge = execute(plan, log_callback)
    by_id = {r.candidate_id: r for r in forge.results}
    return [by_id.get(cid) or DaytonaResult(candidate_id=cid,
                                            execution_mode=plan.run.execution_mode,
                                            error_message="No result reached the callback")
            for cid in ids]
