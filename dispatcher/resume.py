"""``forge resume RUN_ID``: finish an interrupted run, re-running only what has no result.

The run record (``dispatcher.runs``) holds the run as it was published. Candidates with
a stored SUCCESS result are kept (read back by task id in the chord body); the rest are
published again under their own task ids, in a new chord whose body also receives the
kept task ids. A run whose competition definition changed since (manifest scripts,
objective, judge, deadlines) is refused: its kept results would not be comparable.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

from rich.console import Console

from dispatcher import console as ui
from dispatcher import runs
from dispatcher.manifest import ManifestError, load_manifest
from dispatcher.plan import RunPlan, plan_run
from worker import config, keys
from worker.rundir import read_summary
from worker.validation import InvalidInput, check_run_id, check_run_spec


class ResumeRefused(Exception):
    """Resuming would be wrong; the message says why and what to do instead."""


@dataclass(frozen=True)
class ResumePlan:
    full: RunPlan  # every task of the run (what the tracker follows)
    missing: RunPlan  # the tasks published again
    kept_task_ids: tuple[str, ...]


def _replan(record: runs.RunRecord) -> RunPlan:
    """The record's run planned again from today's files: its stored request as it is
    (same run id and overrides) and the execution mode it ran in."""
    request = record.run_request
    spec = record.spec
    if not request.candidates:
        raise ResumeRefused(f"run {spec.run_id} has no manifest path in its record; "
                            "start a new run with 'forge run'")
    return plan_run(request, load_manifest(request.candidates),
                    execution_mode=spec.execution_mode)


def plan_resume(app, record: runs.RunRecord, force: bool = False) -> ResumePlan:
    spec = record.spec
    replanned = _replan(record)
    now = replanned.run.definition_sha256
    if now != spec.definition_sha256:
        raise ResumeRefused(
            f"run {spec.run_id}'s competition definition changed since it was dispatched "
            f"(definition sha256 {spec.definition_sha256[:12]} then, {now[:12]} now: the "
            f"manifest {record.run_request.candidates}, a script or the objective differs). "
            "Its kept results would not be comparable; start a new run with 'forge run'.")
    # Same fingerprint: the re-planned tasks are the published ones (scripts by sha256).
    tasks = list(replanned.tasks)
    metas = runs.task_metas(app, [t.task_id for t in tasks])
    kept = [t for t in tasks if (metas.get(t.task_id) or {}).get("status") == "SUCCESS"]
    missing = [t for t in tasks if t not in kept]
    if not force and record.status == "published" and missing:
        where = runs.locate(app, {t.unit: t.task_id for t in missing})
        if where.queued or where.delivered:
            raise ResumeRefused(_refusal(spec.run_id, where, len(missing)))
    request = record.run_request
    return ResumePlan(full=RunPlan(run=spec, tasks=tuple(tasks), request=request),
                      missing=RunPlan(run=spec, tasks=tuple(missing), request=request,
                                      bundles=replanned.bundles),
                      kept_task_ids=tuple(t.task_id for t in kept))


def _refusal(run_id: str, where: runs.Whereabouts, missing: int) -> str:
    """Why resume waits, truthfully: what is lost, what is still queued or with a worker,
    and what --force would do."""
    force = (f"--force publishes all {missing} unfinished candidate(s) again now (one still "
             "running may then run twice; the first result stored is kept)")
    busy = runs.busy_text(where)
    if not where.lost:
        return (f"run {run_id} is still in progress and no candidate is lost: {busy}. Follow "
                f"it with 'forge status {run_id}', or: {force}.")
    return (f"run {run_id}: {len(where.lost)} candidate(s) lost, neither queued nor running "
            f"({runs.some(where.lost)}; purged from the queue?), while {busy}. Run 'forge "
            f"resume {run_id}' again once those have finished to re-run only the lost ones, "
            f"or: {force}.")


def publish_resume(app, record: runs.RunRecord, rp: ResumePlan):
    """Publish the missing candidates plus a body that also reads the kept ones."""
    # start-up: the Celery app loads on first use (`forge --help` imports this module)
    from dispatcher.dispatch import build_chord, never_joined, store_bundles
    from worker.tasks import collect_results

    store_bundles(rp.missing)  # an expired project bundle is stored again
    record.status, record.resumes, record.published_at = "publishing", record.resumes + 1, None
    runs.save(app, record)
    kept = list(rp.kept_task_ids)
    with never_joined():  # we poll the backend; never subscribe per task
        if rp.missing.tasks:
            canvas = build_chord(rp.missing)
            canvas.body.kwargs["kept_task_ids"] = kept
            result = canvas.apply_async()
        else:  # every candidate finished; only the body was lost
            result = collect_results.apply_async(
                ([], record.run), {"kept_task_ids": kept},
                task_id=keys.body_task_id(record.run_id))
    runs.after_publish(app, record)
    return result


def cmd_resume(args: argparse.Namespace) -> int:
    # start-up: the Celery app loads on first use (`forge --help` imports this module)
    from dispatcher import dispatch
    from worker.app import app

    err = Console(stderr=True, highlight=False)

    def refuse(message: str) -> int:
        err.print(f"forge: error: {message}", markup=False, soft_wrap=True)  # one line
        return 2

    try:
        check_run_id(args.run_id)
    except InvalidInput as exc:
        return refuse(str(exc))
    if not config.is_distributed():
        return refuse("resume needs the broker the run was dispatched to: set "
                      "CELERY_BROKER_URL (embedded runs end with their process)")
    try:
        dispatch.check_broker()
        record = runs.load(app, args.run_id)
        if record is None:
            return refuse(f"no record of run {args.run_id!r} in the result backend (never "
                          "dispatched here, or older than FORGE_RESULT_EXPIRES)")
        spec = check_run_spec(record.spec)  # read back from Redis: input like any other
        if spec.run_id != args.run_id:
            return refuse(f"the record of run {args.run_id!r} names run {spec.run_id!r}; "
                          "refusing a record that is not the run's own")
        if read_summary(spec.artifacts_dir, spec.run_id) is not None:
            print(f"run {spec.run_id} already finished: see 'forge status {spec.run_id}'")
            return 0
        rp = plan_resume(app, record, force=args.force)
        publish_resume(app, record, rp)
    except (ResumeRefused, ManifestError, config.ConfigError, InvalidInput) as exc:
        return refuse(str(exc))
    out = Console(stderr=args.json, highlight=False)
    what = "candidates" if spec.trials <= 1 else f"trials ({spec.trials} per candidate)"
    out.print(f"Resuming run {spec.run_id}: re-running {len(rp.missing.tasks)} of "
              f"{len(rp.full.tasks)} {what}, keeping {len(rp.kept_task_ids)} results",
              markup=False)
    if args.detach:
        print(spec.run_id)
        return 0
    t0 = time.monotonic()
    try:
        result = dispatch.wait(rp.full)
    except config.ConfigError as exc:
        return refuse(str(exc))
    except RuntimeError as exc:
        err.print(f"forge: run failed: {exc}", markup=False)
        return 1
    ui.summary(out, result, time.monotonic() - t0)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "resume", help="finish an interrupted run (re-run only candidates without a result)",
        description="Re-run only the candidates of an interrupted or partial distributed run "
                    "that have no result, keep the rest, and write the run directory. "
                    "Refused (exit 2) if the competition definition changed since.")
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--detach", action="store_true", help="publish and return at once")
    p.add_argument("--force", action="store_true",
                   help="publish missing candidates even if some are still queued or running")
    p.add_argument("--json", action="store_true", help="print the ForgeResult as JSON")
    p.set_defaults(func=cmd_resume)
