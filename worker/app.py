"""The Celery app and the settings that keep results from being lost.

Without ``CELERY_BROKER_URL`` the app is configured for *embedded* mode: memory broker
and in-memory result backend, used by ``forge run``'s in-process worker. With it, Redis
carries tasks and results for any number of ``celery -A worker worker`` processes.
"""

from __future__ import annotations

from celery import Celery

from worker import celery_compat, config, observability
from worker.settings import settings

observability.install()  # Sentry, JSON logs, metrics: Celery signals, inert unless configured

# The longest candidate deadline we plan for; the visibility timeout must exceed it,
# or Redis redelivers a task that is still running (it would run twice).
MAX_DEADLINE = settings.max_deadline
# A Daytona candidate may first wait this long for a sandbox (worker/budget.py), inside
# its task: the visibility timeout covers the wait as well as the deadline.
SLOT_WAIT = settings.daytona_slot_wait
VISIBILITY_TIMEOUT = settings.visibility_timeout  # default: MAX_DEADLINE + SLOT_WAIT + 300
# How often each worker looks for unacked tasks past the visibility timeout (a dead
# node's tasks): kombu's default scans every 100 s; a cheap ZRANGE every few seconds
# redelivers them within VISIBILITY_TIMEOUT + RESTORE_INTERVAL.
RESTORE_INTERVAL = settings.restore_interval
# A run can wait behind a long backlog; its chord state must outlive that wait.
RESULT_EXPIRES = settings.result_expires
MAX_ATTEMPTS = settings.max_attempts
# A scheduled slot missed by more than this is skipped, not run late (dispatcher/scheduling.py).
SCHEDULE_GRACE = settings.schedule_grace

# Named by string, never imported here: the scheduled-competition task is a client entry
# point (dispatcher/scheduling.py), and worker/ never imports dispatcher/.
app = Celery("dream_foundry", include=["worker.tasks", "worker.maintenance", "worker.store.hooks",
                                       "dispatcher.scheduling"])

# A Redis result backend that stores a state in one round trip (worker/celery_compat.py).
app.loader.override_backends = dict(celery_compat.BACKEND_OVERRIDES)

_broker = config.broker_url()
_backend = config.result_backend_url()

app.conf.update(
    broker_url=_broker or "memory://",
    result_backend=_backend or "cache+memory://",
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # A task is acknowledged only once it finished: a dead worker's task is redelivered.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    # Not result_extended: it re-encodes a task's arguments (a candidate's whole script)
    # into every state it stores, and keeps them in Redis; nothing reads them back (Flower
    # gets names and the short argsrepr from task events).
    result_extended=False,
    result_expires=RESULT_EXPIRES,
    result_chord_expires=RESULT_EXPIRES,
    result_compression=None,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": RESTORE_INTERVAL,
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        # Embedded mode's memory broker is polled: a short poll starts a run at once, and
        # the chord body once the last candidate is in (two waits on the run's critical
        # path; a poll of the in-process queues costs microseconds).
        **({} if _broker else {"polling_interval": 0.005}),
    },
    result_backend_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "retry_policy": {"timeout": 30.0},
    },
    # A Redis restart must not turn a finished candidate into a FAILURE: backend writes
    # retry connection errors with backoff (FORGE_BACKEND_RETRIES tries, ~40 s in all).
    result_backend_always_retry=True,
    result_backend_max_retries=settings.backend_retries,
    result_backend_base_sleep_between_retries_ms=100,
    result_backend_max_sleep_between_retries_ms=5000,
    redis_socket_connect_timeout=5,
    redis_socket_timeout=30,
    redis_retry_on_timeout=True,
    redis_backend_health_check_interval=10,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    worker_send_task_events=True,
    # Task events leave a worker once per FORGE_EVENT_WINDOW_MS, many to a message
    # (worker/celery_compat.py), not one Redis PUBLISH per event.
    worker_consumer=celery_compat.CONSUMER,
    task_send_sent_event=True,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_soft_shutdown_timeout=settings.soft_shutdown_timeout,
    worker_enable_soft_shutdown_on_idle=True,
    worker_hijack_root_logger=False,
    task_routes={"worker.tasks.*": {"queue": "celery"}},
    timezone="UTC",
    enable_utc=True,
    # Beat: entries come from forge.toml (dispatcher/schedule.py), its state file lives on a
    # volume, and a crontab slot missed by more than the grace is not caught up late.
    beat_scheduler="dispatcher.schedule:CompetitionScheduler",
    beat_schedule_filename=settings.beat_schedule,
    beat_cron_starting_deadline=SCHEDULE_GRACE,
)
