"""The Celery app and the settings that keep results from being lost.

Without ``CELERY_BROKER_URL`` the app is configured for *embedded* mode: memory broker
and in-memory result backend, used by ``forge run``'s in-process worker. With it, Redis
carries tasks and results for any number of ``celery -A worker worker`` processes.
"""

from __future__ import annotations

from celery import Celery

from worker import config

config.load_dotenv_once()

# The longest candidate deadline we plan for; the visibility timeout must exceed it,
# or Redis redelivers a task that is still running (it would run twice).
MAX_DEADLINE = config.env_int("FORGE_MAX_DEADLINE", 3600)
VISIBILITY_TIMEOUT = config.env_int("FORGE_VISIBILITY_TIMEOUT", MAX_DEADLINE + 300)
# A run can wait behind a long backlog; its chord state must outlive that wait.
RESULT_EXPIRES = config.env_int("FORGE_RESULT_EXPIRES", 7 * 24 * 3600)
MAX_ATTEMPTS = config.env_int("FORGE_MAX_ATTEMPTS", 3)

app = Celery("dream_foundry", include=["worker.tasks", "worker.maintenance"])

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
    result_extended=True,
    result_expires=RESULT_EXPIRES,
    result_chord_expires=RESULT_EXPIRES,
    result_compression=None,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        # Embedded mode's memory broker is polled: a short poll starts a run at once.
        **({} if _broker else {"polling_interval": 0.02}),
    },
    result_backend_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "retry_policy": {"timeout": 30.0},
    },
    redis_socket_connect_timeout=5,
    redis_socket_timeout=30,
    redis_retry_on_timeout=True,
    redis_backend_health_check_interval=10,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    worker_send_task_events=True,
    task_send_sent_event=True,
    worker_cancel_long_running_tasks_on_connection_loss=False,
    worker_soft_shutdown_timeout=config.env_int("FORGE_SOFT_SHUTDOWN_TIMEOUT", 60),
    worker_enable_soft_shutdown_on_idle=True,
    worker_hijack_root_logger=False,
    task_routes={"worker.tasks.*": {"queue": "celery"}},
    timezone="UTC",
    enable_utc=True,
)
