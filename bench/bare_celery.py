"""A bare Celery app for ``overhead.py --floor``: what Celery alone costs per task.

The same transport and the per-task settings the forge's app uses where they cost a
round trip (Redis broker and result backend, JSON, late acks, prefetch 1), and nothing
of the forge: a no-op task, a chord body that counts. No task events: the forge sends
them for Flower (batched, worker/celery_compat.py), so leaving them out here keeps this
a lower bound. Its workers are started by the benchmark
(``celery -A bench.bare_celery worker``).
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("bare", broker=os.environ["CELERY_BROKER_URL"],
             backend=os.environ["CELERY_RESULT_BACKEND"], set_as_current=False)
app.conf.update(
    task_serializer="json", result_serializer="json", accept_content=["json"],
    task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
    worker_send_task_events=False, task_send_sent_event=False,
    task_default_queue="bare",  # not the forge's queue: the two clusters share one Redis
)


@app.task(name="bare.noop")
def noop(i: int) -> dict:
    return {"candidate_id": f"c{i:04d}", "success": True}


@app.task(name="bare.count")
def count(results: list) -> int:
    return len(results)
