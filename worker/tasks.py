"""The two tasks of a run: one sandbox lifecycle per candidate, and the chord body.

``run_candidate`` never raises: a crash, a timeout or a backend failure is a result
record, so the chord body always runs. Progress goes through Celery's own task state
(``PROGRESS`` meta holding the newest log lines) so the dispatcher sees it in embedded
and distributed mode alike.
"""

from __future__ import annotations

import gc
import json
import logging
import resource
import threading
import time
from typing import Any

from celery import shared_task
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from worker import config, keys, observability, tasklog, trace
from worker.bundles import fetch_bundle
from worker.delivery import DeliveryGuard, exhausted_message
from worker.lifecycle import run_lifecycle, worker_name
from worker.progress import CandidateProgress
from worker.records import CandidateResult, CandidateTask, ForgeResult, RunSpec
from worker.rundir import write_run_dir
from worker.sandbox import get_backend
from worker.states import stored_results
from worker.store.hooks import record_finished
from worker.validation import InvalidInput, check_run_id, check_run_spec, check_task

logger = logging.getLogger("dream_foundry")

tasklog.install()  # Celery's success line without the return value (see worker/tasklog.py)


@worker_process_init.connect
@worker_ready.connect
def _warm_up(**_kwargs) -> None:
    """Probe bubblewrap once per pool process at start, not in a candidate's time."""
    try:
        # start-up: the local sandbox package loads in workers, not in a dispatcher
        from worker.sandbox.local import bwrap, prepare_process

        get_backend("local")
        if bwrap.probe().drop_uid:
            prepare_process()
    except Exception as exc:  # noqa: BLE001 - the first candidate will report it properly
        logger.warning("sandbox warm-up failed: %s", exc)
    gc.freeze()  # the modules loaded so far are never garbage: keep them out of every GC


@worker_process_init.connect
def _warm_sandboxes(**_kwargs) -> None:
    """A pool process readies what its first sandboxes would wait for (the main process,
    at ``worker_ready`` above, runs none), in a thread: the sweep of a killed worker's
    leftovers is unbounded, and a pool process that does not report up within
    ``worker_proc_alive_timeout`` (4 s) is killed and replaced."""
    from worker.sandbox.local import warm_process  # start-up: workers only

    threading.Thread(target=warm_process, name="forge-warm-process", daemon=True).start()


@worker_process_shutdown.connect
def _release(**_kwargs) -> None:
    """A pool process leaves through os._exit (no atexit): remove its sandbox helpers."""
    from worker.sandbox.local.cleanup import release_process  # start-up: workers only

    release_process()


# track_started off: its first PROGRESS write ("[Run] Starting...") follows at once and
# says the same, so STARTED would be one more encode and Redis write per candidate.
@shared_task(bind=True, name="worker.tasks.run_candidate", acks_late=True,
             reject_on_worker_lost=True, track_started=False,
             resultrepr_maxsize=tasklog.RESULT_REPR_MAX)
def run_candidate(self, task_data: dict[str, Any]) -> dict[str, Any]:
    """Run one candidate in a fresh sandbox; always return a CandidateResult dict.

    A message that breaks the input rules (worker/validation.py: anyone who can publish
    to the broker can send one) is a failed result at once: nothing is run or written.
    """
    entered, t_enter = time.time(), time.monotonic()
    try:
        task = check_task(_task_from(task_data))
    except InvalidInput as exc:
        return _refused(self, task_data, str(exc))
    guard = DeliveryGuard(self)
    arrival = guard.arrive()
    if arrival.earlier is not None:
        return arrival.earlier
    me = self.request.hostname or worker_name()  # the Celery node name, e.g. w1@host
    progress = CandidateProgress(self, task.run_id, task.candidate_id, me, arrival.attempt,
                                 entered, trial=task.trial)
    if arrival.exhausted:
        return _gave_up(task, progress)
    progress.log("[Run] Starting...")
    result = _run_in_sandbox(task, progress, t_enter, self.backend)
    progress.close()
    result.timings["entered_at"] = round(entered, 6)
    result.timings["progress"] = round(progress.seconds, 6)
    result.timings["task"] = round(time.monotonic() - t_enter, 6)
    result.worker, result.attempt, result.log = me, arrival.attempt, progress.lines
    result.trial = task.trial
    logger.info("[%s] %s %s in %.2fs%s", task.run_id, task.candidate_id,
                "succeeded" if result.success else "failed", result.runtime_seconds,
                "" if result.success else f": {result.error_message}")
    return guard.finish(result.to_dict())


def _gave_up(task: CandidateTask, progress: CandidateProgress) -> dict[str, Any]:
    """The result of a candidate delivered too often (it keeps killing its worker)."""
    result = CandidateResult(candidate_id=task.candidate_id,
                             execution_mode=task.execution_mode, worker=progress.worker,
                             attempt=progress.attempt, trial=task.trial,
                             error_message=exhausted_message(progress.attempt))
    progress.log(f"[Error] {result.error_message}")
    progress.close()
    result.log = progress.lines
    return result.to_dict()


def _run_in_sandbox(task: CandidateTask, progress: CandidateProgress,
                    t_enter: float, backend_of_results: Any) -> CandidateResult:
    """The sandbox lifecycle on the task's backend; a backend that cannot even be made
    (the SDK missing on this worker, say) is a failed result. ``backend_of_results``:
    the Celery result backend, where a project's bundle is fetched from."""
    try:
        backend = get_backend(task.execution_mode)
    except Exception as exc:  # noqa: BLE001 - e.g. the SDK missing on this worker
        observability.report(exc, "sandbox_backend", backend=task.execution_mode)
        progress.log(f"[Error] {exc}")
        return CandidateResult(candidate_id=task.candidate_id,
                               execution_mode=task.execution_mode,
                               worker=progress.worker, error_message=f"{exc}")

    def bundle(sha256: str) -> bytes:  # a project's files, by hash, cached per process
        return fetch_bundle(backend_of_results, sha256)

    t_life = time.monotonic()
    result = run_lifecycle(backend, task, progress.log, owner=progress.worker,
                           on_state=progress.on_state, bundles=bundle)
    result.timings["pre"] = round(t_life - t_enter, 6)
    return result


def _task_from(task_data: Any) -> CandidateTask:
    if not isinstance(task_data, dict):
        raise InvalidInput(f"a candidate task is a CandidateTask dict, not "
                           f"{type(task_data).__name__}")
    try:
        return CandidateTask.from_dict(task_data)
    except (TypeError, ValueError) as exc:  # a required field missing, or not a mapping
        raise InvalidInput(f"malformed candidate task ({type(exc).__name__}: {exc})") from None


def _refused(task, task_data: Any, reason: str) -> dict[str, Any]:
    """The failed result of a task refused before it ran."""
    cid = task_data.get("candidate_id") if isinstance(task_data, dict) else None
    trial = task_data.get("trial") if isinstance(task_data, dict) else 0
    logger.warning("%s: candidate task refused: %s", task.request.id, reason)
    return CandidateResult(
        candidate_id=cid if isinstance(cid, str) else "", worker=task.request.hostname,
        trial=trial if isinstance(trial, int) and not isinstance(trial, bool) else 0,
        error_message=f"Refused: {reason}", log=[f"[Error] Refused: {reason}"],
    ).to_dict()


def _sandboxes_alive(forge: ForgeResult) -> int | None:
    """The end-of-run audit: how many of the run's Daytona sandboxes still exist (notes
    say which, and which got stuck); None (and a note) when the API cannot tell:
    counting must never cost the run its summary."""
    run_id, notes = forge.run_id, forge.notes
    stuck = [(r.candidate_id, i) for r in forge.results for i in r.stuck_sandboxes]
    if stuck:
        notes.append(f"{len(stuck)} Daytona sandbox(es) got stuck (never started, or never "
                     "finished deleting, within their deadline): "
                     + ", ".join(f"{sid} ({cid})" for cid, sid in stuck))
    try:
        alive = get_backend("daytona").left_behind(run_id)  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - any SDK/transport failure
        notes.append(f"Could not count the run's live Daytona sandboxes ({type(exc).__name__});"
                     " 'forge reap' sweeps any left behind")
        logger.warning("[%s] could not count live sandboxes: %s", run_id, type(exc).__name__)
        return None
    if alive:
        notes.append(f"{len(alive)} Daytona sandbox(es) of this run still alive at its end: "
                     + ", ".join(f"{sid} ({state})" for sid, state in alive)
                     + "; 'forge reap' removes them")
        logger.warning("[%s] %d sandbox(es) still alive", run_id, len(alive))
    return len(alive)


# throws: a refused run (InvalidInput) is logged as expected, on one line, no traceback.
@shared_task(bind=True, name="worker.tasks.collect_results", acks_late=True,
             throws=(InvalidInput,), resultrepr_maxsize=tasklog.RESULT_REPR_MAX)
def collect_results(self, results: list[dict[str, Any]],
                    run_data: dict[str, Any],
                    kept_task_ids: list[str] | None = None) -> dict[str, Any]:
    """Chord body: score, write the run directory (atomic, idempotent), post the winner.

    ``kept_task_ids`` (from ``forge resume``): finished tasks of an earlier, interrupted
    publish of this run, whose stored results join the ones this chord produced.
    The RunSpec is checked (worker/validation.py) before anything touches the disk: a
    message breaking the rules fails with InvalidInput and writes nothing.
    """
    entered, t0 = time.time(), time.monotonic()
    trace.mark("body.entered")
    run = _run_spec(_load_run_data(self.backend, run_data))
    if kept_task_ids:
        results = stored_results(self.backend, kept_task_ids) + list(results)
    # start-up: the judge (and worker.discord, which uses its event blocks) load only in
    # the chord body: importing the tasks, as every publisher does, stays light
    # (tests/test_daytona_e2e.py checks it)
    from worker.discord import post_winner
    from worker.judge.scoring import build_forge_result
    from worker.standings import for_run

    forge = build_forge_result(results, run)
    forge.standings = for_run(forge, run.artifacts_dir)  # a competition's season, if any
    t_scored = time.monotonic()
    trace.mark("body.scored")
    if run.execution_mode == "daytona":
        forge.sandboxes_alive = _sandboxes_alive(forge)
    run_path = write_run_dir(forge, run.artifacts_dir)
    t_written = time.monotonic()
    trace.mark("body.written")
    logger.info("[%s] run written: winner %s", run.run_id, forge.winner_id)
    if run.post_to_discord:
        # Claimed once per run directory: a redelivered callback does not post again.
        forge.discord = post_winner(forge, run_path, config.discord_webhook_url())
    t_store = time.monotonic()
    record_finished(forge)  # one transaction; if it fails, owed and retried (never raises)
    t_stored = time.monotonic()
    trace.mark("body.stored")
    out = forge.to_dict()
    # Not part of summary.json (it varies per delivery): ForgeResult.from_dict drops it.
    out["body_timings"] = {"entered_at": entered, "score": t_scored - t0,
                           "write": t_written - t_scored, "store": t_stored - t_store,
                           "total": time.monotonic() - t0,
                           "maxrss_mb": _maxrss_mb()}
    return out


def warm_body(judge: str) -> None:
    """Load what the chord body needs (its judge, scoring, standings, the run directory's
    writer and reports, the Discord post) before it runs, so the end of a run, its
    critical path, never waits for imports (~20-50 ms of CPU): an embedded run calls this
    while its candidates execute, a distributed worker before it forks its pool
    (``_warm_body_before_fork``). Never raises: the body reports any problem itself."""
    try:
        # start-up: loading these early, off the critical path, is the point of this function
        from worker import discord, report, rundir, standings  # noqa: F401
        from worker.judge import get_judge, scoring  # noqa: F401

        get_judge(judge)
    except Exception as exc:  # noqa: BLE001
        logger.debug("chord body not warmed: %s", exc)


@worker_init.connect
def _warm_body_before_fork(**_kwargs) -> None:
    """A distributed worker's main process loads the chord body's modules once, and every
    pool process it forks has them: otherwise each pool process's first chord body would
    import them after its run's last candidate. (An embedded worker runs in the
    dispatcher, which warms the body in a thread while the candidates run.)"""
    if config.is_distributed():
        warm_body(RunSpec.judge)  # the default judge


def _run_spec(data: Any) -> RunSpec:
    if not isinstance(data, dict):
        raise InvalidInput(f"a run is a RunSpec dict, not {type(data).__name__}")
    try:
        spec = RunSpec.from_dict(data)
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"malformed RunSpec ({type(exc).__name__}: {exc})") from None
    return check_run_spec(spec)


spec_key = keys.run_spec_key  # worker/keys.py


def _load_run_data(backend, run_data: dict[str, Any]) -> dict[str, Any]:
    """The RunSpec dict: inline, or stored by the dispatcher under ``spec_key``."""
    if not isinstance(run_data, dict) or "spec_key" not in run_data:
        return run_data
    if run_data["spec_key"] != spec_key(check_run_id(run_data.get("run_id"))):
        raise InvalidInput(f"spec_key {run_data['spec_key']!r} is not this run's "
                           f"({spec_key(run_data['run_id'])!r})")
    raw = backend.get(run_data["spec_key"])
    if raw is None:
        raise RuntimeError(f"run {run_data.get('run_id')}: its stored RunSpec "
                           f"{run_data['spec_key']} is gone (expired?)")
    return json.loads(raw)


def _maxrss_mb() -> float:
    """Peak resident memory of this (pool) process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
