"""The worker of the concurrent-publish test: ``celery -A tests.barrier_worker worker``.

The real app (``worker.app``, every task it includes) with two changes, in this process
only: every run takes the large-run publish path (one pipelined producer, the RunSpec
stored by reference), and the publishes of the competitions ``first`` and ``second``
meet at a ``threading.Barrier`` while both are inside their Celery overrides. Then
``first`` publishes and leaves its overrides while ``second`` waits; ``second`` writes
down whether its own overrides are still in place (JSON, to FORGE_TEST_BARRIER_REPORT)
and publishes.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import nullcontext

import dispatcher.scheduling  # noqa: F401 - the task (the app includes it by name too)
from dispatcher import dispatch
from worker.app import app

BARRIER = threading.Barrier(2, timeout=60)
FIRST_LEFT = threading.Event()
REPORT = os.environ["FORGE_TEST_BARRIER_REPORT"]

dispatch.SPEC_INLINE_MAX = 0  # every run publishes through the batched producer

_build_chord = dispatch.build_chord
_publish = dispatch.publish


def _overrides_in_place() -> dict[str, bool]:
    """This thread's overrides: the app hands out the batch's producer, and a result is
    not registered with the backend's consumer (no SUBSCRIBE)."""
    producer = isinstance(app.producer_or_acquire(), nullcontext)
    pending = app.backend._pending_results.concrete
    before = len(pending)
    app.AsyncResult("barrier-probe").then(lambda *_: None)
    registered = len(app.backend._pending_results.concrete) > before
    app.backend.remove_pending_result(app.AsyncResult("barrier-probe"))
    return {"producer": producer, "not_registered": not registered}


def build_chord(plan):
    canvas = _build_chord(plan)  # called inside publish()'s never_joined + batched producer
    BARRIER.wait()
    if plan.run.competition == "second":
        if not FIRST_LEFT.wait(60):
            raise RuntimeError("first never finished publishing")
        with open(REPORT, "w", encoding="utf-8") as fh:
            json.dump(_overrides_in_place(), fh)
    return canvas


def publish(plan):
    try:
        return _publish(plan)
    finally:
        if plan.run.competition == "first":
            FIRST_LEFT.set()


dispatch.build_chord = build_chord
dispatch.publish = publish
