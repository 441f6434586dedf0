"""The dashboard's two actions, the same code paths as the cluster's and the CLI's.

* **Start a competition now** publishes ``dispatcher.scheduling.start_competition`` with
  slot ``"now"``, exactly what an on-demand firing of beat's entry is: a worker claims
  the slot, publishes the run, and returns its run id, which the page then opens. It
  needs a broker (distributed mode): an embedded run lives inside the process that
  starts it, and a web server is no place for one.
* **Re-post a winner** is ``forge post RUN_ID``: the finished run's winner announced
  again on purpose (``force``), its record written to the run directory when this
  machine has it, and to the store either way.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from worker import config
from worker.discord import RECORD, post_winner
from worker.rundir import SUMMARY
from worker.states import task_metas
from worker.store.hooks import record_run_dir
from worker.validation import contained

logger = logging.getLogger("dream_foundry.web")

START_TASK = "dispatcher.scheduling.start_competition"
START_WAIT = 8.0  # seconds the page waits for a worker to name the new run


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    run_id: str | None = None
    task_id: str | None = None


def start_now(name: str) -> Outcome:
    """Publish the competition's on-demand run and wait briefly for its run id."""
    if not config.is_distributed():
        return Outcome(False, "Starting a competition needs a broker: set CELERY_BROKER_URL "
                              "(and run workers: `celery -A worker worker`), then restart "
                              "`forge web`. Without one, run it here with `forge run`.")
    # start-up: the Celery app loads only when an action publishes
    from dispatcher.dispatch import check_broker
    from worker.app import app

    try:
        check_broker(timeout=5.0)
    except config.ConfigError as exc:
        return Outcome(False, str(exc))
    task_id = app.send_task(START_TASK, args=[name, "now"]).id
    logger.info("dashboard: competition %s started now (task %s)", name, task_id)
    deadline = time.monotonic() + START_WAIT
    while time.monotonic() < deadline:
        meta = task_metas(app.backend, [task_id]).get(task_id) or {}
        status, info = meta.get("status"), meta.get("result")
        if status == "SUCCESS" and isinstance(info, dict):
            if info.get("status") == "dispatched":
                return Outcome(True, f"Competition {name} started as run {info['run_id']}.",
                               run_id=info.get("run_id"), task_id=task_id)
            return Outcome(False, f"Competition {name} not started: "
                                  f"{info.get('reason') or info.get('status')}.",
                           task_id=task_id)
        if status in ("FAILURE", "REVOKED"):
            return Outcome(False, f"Competition {name} could not be started (the task "
                                  f"ended in state {status}; the worker's log says why).",
                           task_id=task_id)
        time.sleep(0.1)
    return Outcome(True, f"Competition {name} is queued: no worker has taken it within "
                         f"{START_WAIT:.0f} s (are workers running and free?). It starts "
                         "when one does; it will appear in the runs list.", task_id=task_id)


def repost(store, artifacts_dir: str, run_id: str) -> Outcome:
    """Post the finished run's winner to Discord again (``forge post``'s force)."""

    result = store.load_result(run_id)
    if result is None:
        return Outcome(False, f"Run {run_id} has not finished: nothing to post yet.")
    if not result.winner_id:
        return Outcome(False, f"Run {run_id} has no winner: nothing to post.")
    url = config.discord_webhook_url()
    if url is None:
        return Outcome(False, "DISCORD_WEBHOOK_URL is not set for the dashboard; set it "
                              "(in .env or the web service's environment) and restart.")
    run_dir = contained(artifacts_dir, run_id)
    if (run_dir / SUMMARY).is_file():  # this machine has the run directory: as forge post
        record = post_winner(result, run_dir, url, force=True)
        record_run_dir(run_dir)
    else:  # the store is all there is here: the record goes to the store only
        with tempfile.TemporaryDirectory(prefix="forge-repost-") as tmp:
            record = post_winner(result, Path(tmp), url, force=True)
            if not os.path.isfile(os.path.join(tmp, RECORD)):
                logger.warning("dashboard: re-post of %s left no record", run_id)
        result.discord = record
        store.write_finished(result)
    if record.get("posted"):
        return Outcome(True, f"Posted {record.get('messages', 0)} message(s) for run "
                             f"{run_id}.", run_id=run_id)
    reason = record.get("error") or record.get("skipped") or "unknown"
    return Outcome(False, f"Not posted: {reason}", run_id=run_id)
