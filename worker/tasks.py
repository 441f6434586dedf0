"""The two tasks of a run: one sandbox lifecycle per candidate, and the chord body.

``run_candidate`` never raises: a crash, a timeout or a backend failure is a result
record, so the chord body always runs. Progress goes through Celery's own task state
(``PROGRESS`` meta holding the newest log lines) so the dispatcher sees it in embedded
and distributed mode alike.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from celery import shared_task
from celery.signals import worker_process_init, worker_process_shutdown, worker_ready

from worker import observability, tasklog
from worker.app import MAX_ATTEMPTS, RESULT_EXPIRES, VISIBILITY_TIMEOUT
from worker.lifecycle import worker_name
from worker.progress import ProgressWriter
from worker.records import CandidateResult, CandidateTask, ForgeResult, RunSpec
from worker.validation import InvalidInput, check_run_id, check_run_spec, check_task

logger = logging.getLogger("dream_foundry")

LOG_WINDOW = 40  # newest log lines kept in the task's PROGRESS meta

tasklog.install()  # Celery's success line without the return value (see worker/tasklog.py)


@worker_process_init.connect
@worker_ready.connect
def _warm_up(**_kwargs) -> None:
    """Probe bubblewrap once per pool process at start, not in a candidate's time."""
    try:
        from worker.sandbox import bwrap, get_backend, local

        get_backend("local")
        if bwrap.probe().drop_uid:
            local.prepare_process()
    except Exception as exc:  # noqa: BLE001 - the first candidate will report it properly
        logger.warning("sandbox warm-up failed: %s", exc)
    import gc

    gc.freeze()  # the modules loaded so far are never garbage: keep them out of every GC


@worker_process_shutdown.connect
def _release(**_kwargs) -> None:
    """A pool process leaves through os._exit (no atexit): remove its sandbox helpers."""
    from worker.sandbox import bwrap

    bwrap.release_process()


def _attempt(task) -> int:
    """Count deliveries of this task id in the result backend (survives worker death)."""
    key = f"forge-attempts:{task.request.id}"
    backend = task.backend
    try:
        n = int(backend.incr(key))
        if hasattr(backend, "expire"):
            backend.expire(key, RESULT_EXPIRES)
        return n
    except Exception:  # noqa: BLE001 - a backend without incr: no bound, count once
        return 1


def _delivery(task) -> tuple[dict[str, Any] | None, int]:
    """(the stored result if an earlier delivery finished, this delivery's number).

    On Redis one pipelined round trip (GET meta, INCR and EXPIRE the counter) instead of
    three: at thousands of trivial candidates every round trip per task shows.
    """
    from celery.backends.redis import RedisBackend

    backend = task.backend
    if isinstance(backend, RedisBackend):
        key = f"forge-attempts:{task.request.id}"
        try:
            with backend.client.pipeline() as pipe:
                pipe.get(backend.get_key_for_task(task.request.id))
                pipe.incr(key)
                pipe.expire(key, RESULT_EXPIRES)
                raw, count, _ = pipe.execute()
            return _succeeded(backend.decode_result(raw) if raw else {}), int(count)
        except Exception:  # noqa: BLE001 - a Redis blip: the one-call-at-a-time path retries
            pass
    earlier = _finished_before(task)
    return (earlier, 0) if earlier is not None else (None, _attempt(task))


def _succeeded(meta: dict[str, Any]) -> dict[str, Any] | None:
    if meta.get("status") == "SUCCESS" and isinstance(meta.get("result"), dict):
        return meta["result"]
    return None


def _finished_before(task) -> dict[str, Any] | None:
    """A redelivered task whose earlier delivery already stored its result returns that."""
    try:
        meta = task.backend.get_task_meta(task.request.id)
    except Exception:  # noqa: BLE001
        return None
    return _succeeded(meta)


def _first_finished(task, result: dict[str, Any]) -> dict[str, Any]:
    """Of deliveries of one task that ran at the same time, the first to finish wins.

    Celery's own "never overwrite SUCCESS" is read-then-write; a SET NX here is atomic,
    so every delivery returns (and stores) the same record and the chord body, a re-sent
    body and ``forge resume`` all read one result. Kept while a duplicate could still run.
    """
    from celery.backends.redis import RedisBackend

    if not isinstance(task.backend, RedisBackend):  # embedded: one process, no duplicates
        earlier = _finished_before(task)
        return result if earlier is None else earlier
    client = task.backend.client
    key = f"forge-first:{task.request.id}"
    try:
        if client.set(key, json.dumps(result), nx=True, ex=2 * VISIBILITY_TIMEOUT + 60):
            return result
        raw = client.get(key)
    except Exception:  # noqa: BLE001 - Redis blip: Celery's own check still applies
        return result
    return json.loads(raw) if raw else result


# track_started off: its first PROGRESS write ("[Run] Starting...") follows at once and
# says the same, so STARTED would be one more encode and Redis write per candidate.
@shared_task(bind=True, name="worker.tasks.run_candidate", acks_late=True,
             reject_on_worker_lost=True, track_started=False)
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
    earlier, attempt = _delivery(self) if self.request.id else (None, 1)
    if earlier is not None:
        logger.info("%s: redelivered after it finished; keeping the stored result",
                    self.request.id)
        return earlier
    me = self.request.hostname or worker_name()  # the Celery node name, e.g. w1@host
    lines: list[str] = []
    progress_s = [0.0]  # time spent storing PROGRESS meta

    request = self.request  # thread-local: the progress timer thread has none of its own

    def store_progress() -> None:
        t = time.monotonic()
        try:  # progress is best effort: no retries, a Redis blip must not fail the task
            # update_state() with this task's own request, from any thread
            self.backend.store_result(request.id, state="PROGRESS", request=request,
                                      max_retries=0, result={
                "candidate_id": task.candidate_id,
                "seq": len(lines),
                "log": lines[-LOG_WINDOW:],
                "worker": me,
                "attempt": attempt,
                "started": entered,  # epoch: the dashboard's elapsed time counts from it
            })
        except Exception as exc:  # noqa: BLE001 - e.g. redis ConnectionError
            logger.warning("[%s] %s progress not stored: %s", task.run_id,
                           task.candidate_id, type(exc).__name__)
        progress_s[0] += time.monotonic() - t

    # Coalesces bursts of lines into one write (worker/progress.py); closed before the
    # result is returned so no PROGRESS write can land after it.
    progress = ProgressWriter(store_progress)

    def log(message: str) -> None:
        lines.append(message)
        # Every line reaches the dispatcher (PROGRESS) and result.json; the worker's log
        # gets them at DEBUG and one summary line at INFO (5,000 candidates x 10 lines
        # was most of a busy worker's log, and a measurable share of its CPU).
        logger.debug("[%s] %s %s", task.run_id, task.candidate_id, message)
        if self.request.id and not self.request.is_eager:
            progress.line_added()

    if attempt > MAX_ATTEMPTS:
        result = CandidateResult(
            candidate_id=task.candidate_id,
            execution_mode=task.execution_mode,
            worker=me,
            attempt=attempt,
            trial=task.trial,
            error_message=(
                f"Worker lost {attempt - 1} times while running this candidate "
                f"(retry limit {MAX_ATTEMPTS}); it may be killing its worker"
            ),
        )
        log(f"[Error] {result.error_message}")
        progress.close()
        result.log = lines
        return result.to_dict()

    log("[Run] Starting...")
    from worker.sandbox import get_backend

    try:
        backend = get_backend(task.execution_mode)
    except Exception as exc:  # noqa: BLE001 - e.g. the SDK missing on this worker
        observability.report(exc, "sandbox_backend", backend=task.execution_mode)
        result = CandidateResult(candidate_id=task.candidate_id,
                                 execution_mode=task.execution_mode, worker=me,
                                 error_message=f"{exc}")
        log(f"[Error] {exc}")
    else:
        from worker.lifecycle import run_lifecycle

        def on_state(state: str) -> None:
            """Flower shows it: its event state turns an unknown ``task-<x>`` event into
            state ``<X>`` (WAITING, then RUNNING once the sandbox has its slot); the run
            store shows it too."""
            from worker.store.hooks import mark_state

            mark_state(task.run_id, task.candidate_id, state, me, trial=task.trial)
            if self.request.id and not self.request.is_eager:
                try:
                    self.send_event(f"task-{state}")
                except Exception as exc:  # noqa: BLE001 - monitoring must not fail a task
                    logger.debug("task-%s event not sent: %s", state, exc)

        t_life = time.monotonic()
        result = run_lifecycle(backend, task, log, owner=me, on_state=on_state)
        result.timings["pre"] = round(t_life - t_enter, 6)
    progress.close()
    result.timings["entered_at"] = round(entered, 6)
    result.timings["progress"] = round(progress_s[0], 6)
    result.timings["task"] = round(time.monotonic() - t_enter, 6)
    result.worker = me
    result.attempt = attempt
    result.trial = task.trial
    result.log = lines
    logger.info("[%s] %s %s in %.2fs%s", task.run_id, task.candidate_id,
                "succeeded" if result.success else "failed", result.runtime_seconds,
                "" if result.success else f": {result.error_message}")
    return _first_finished(self, result.to_dict()) if self.request.id else result.to_dict()


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


def build_forge_result(results: list[dict[str, Any]], run: RunSpec) -> ForgeResult:
    """Score and rank the results of a run (pure: no I/O)."""
    if run.trials > 1:
        from worker.judge.aggregate import build_trials_result

        return build_trials_result(results, run)
    from worker.judge import JudgeContext, get_judge, rank, winner

    by_id: dict[str, CandidateResult] = {}
    for item in results:
        if isinstance(item, dict) and "candidate_id" in item:
            r = CandidateResult.from_dict(item)
            by_id.setdefault(r.candidate_id, r)
    ordered = []
    for c in run.candidates:
        ordered.append(by_id.get(c.id) or CandidateResult(
            candidate_id=c.id, error_message="No result reached the callback"))
    judge = get_judge(run.judge)
    scores = rank(judge.score(ordered, JudgeContext(run.objective, run.timestamp, run.timeout,
                                                    run.speed)))
    best = winner(scores)
    candidates = []
    for c in run.candidates:
        r = by_id.get(c.id)
        info = type(c)(**c.to_dict())
        info.artifact = f"{c.id}/discord_post.md" if r and r.artifact_content is not None else None
        candidates.append(info)
    win_result = by_id.get(best.candidate_id) if best else None
    notes = list(run.notes)
    if run.speed == "cpu":
        no_cpu = [r.candidate_id for r in ordered if r.success and r.cpu_seconds is None]
        if no_cpu:
            notes.append(f"Speed is scored on CPU time, but {', '.join(no_cpu)} had no CPU "
                         "figure (no writable cpu cgroup on the worker): scored on wall time")
    return ForgeResult(
        run_id=run.run_id,
        objective=run.objective,
        timestamp=run.timestamp,
        execution_mode=run.execution_mode,
        candidates=candidates,
        scores=scores,
        winner_id=best.candidate_id if best else None,
        winner_score=best.total_score if best else None,
        winner_artifact=win_result.artifact_content if win_result else None,
        artifacts_dir=os.path.join(run.artifacts_dir, run.run_id),
        results=ordered,
        judge=run.judge,
        competition=run.competition,
        definition_sha256=run.definition_sha256,
        notes=notes,
        speed=run.speed,
    )


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
        from worker.sandbox.daytona import left_behind

        alive = left_behind(run_id)
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
             throws=(InvalidInput,))
def collect_results(self, results: list[dict[str, Any]],
                    run_data: dict[str, Any],
                    kept_task_ids: list[str] | None = None) -> dict[str, Any]:
    """Chord body: score, write the run directory (atomic, idempotent), post the winner.

    ``kept_task_ids`` (from ``forge resume``): finished tasks of an earlier, interrupted
    publish of this run, whose stored results join the ones this chord produced.
    The RunSpec is checked (worker/validation.py) before anything touches the disk: a
    message breaking the rules fails with InvalidInput and writes nothing.
    """
    from worker.rundir import write_run_dir

    entered, t0 = time.time(), time.monotonic()
    run = _run_spec(_load_run_data(self.backend, run_data))
    if kept_task_ids:
        from worker.states import stored_results

        results = stored_results(self.backend, kept_task_ids) + list(results)
    forge = build_forge_result(results, run)
    from worker.standings import for_run

    forge.standings = for_run(forge, run.artifacts_dir)  # a competition's season, if any
    t_scored = time.monotonic()
    if run.execution_mode == "daytona":
        forge.sandboxes_alive = _sandboxes_alive(forge)
    run_path = write_run_dir(forge, run.artifacts_dir)
    t_written = time.monotonic()
    logger.info("[%s] run written: winner %s", run.run_id, forge.winner_id)
    if run.post_to_discord:
        from worker import config
        from worker.discord import post_winner

        # Claimed once per run directory: a redelivered callback does not post again.
        forge.discord = post_winner(forge, run_path, config.discord_webhook_url())
    from worker.store.hooks import record_finished

    t_store = time.monotonic()
    record_finished(forge)  # one transaction; if it fails, owed and retried (never raises)
    t_stored = time.monotonic()
    out = forge.to_dict()
    # Not part of summary.json (it varies per delivery): ForgeResult.from_dict drops it.
    out["body_timings"] = {"entered_at": entered, "score": t_scored - t0,
                           "write": t_written - t_scored, "store": t_stored - t_store,
                           "total": time.monotonic() - t0,
                           "maxrss_mb": _maxrss_mb()}
    return out


def _run_spec(data: Any) -> RunSpec:
    if not isinstance(data, dict):
        raise InvalidInput(f"a run is a RunSpec dict, not {type(data).__name__}")
    try:
        spec = RunSpec.from_dict(data)
    except (TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(f"malformed RunSpec ({type(exc).__name__}: {exc})") from None
    return check_run_spec(spec)


def spec_key(run_id: str) -> str:
    """Result-backend key of a large run's RunSpec (see dispatch._body_run_data)."""
    return f"forge-runspec:{run_id}"


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
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
