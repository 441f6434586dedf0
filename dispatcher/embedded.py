"""Embedded mode: an in-process Celery worker (memory broker, thread pool).

It runs the very same chord as distributed mode, so a newcomer's first ``forge run``
exercises the real pipeline with nothing to install or start.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from worker import celery_compat

# The previous embedded worker's thread. Celery's synchronous consumer loop only sees a
# stop between 2-second broker polls, so waiting for it on the way out cost every run
# up to 2 s; instead the next embedded worker in this process waits for it (before it
# may share the in-process broker), and a CLI run simply exits (the thread is a daemon).
_winding_down: threading.Thread | None = None


def _warm_local_sandboxes() -> threading.Thread:
    """Load the local sandbox backend, probe bubblewrap (it starts a sandbox once, ~40
    ms, mostly waiting) and do the rest of ``warm_process`` (sweep what killed workers
    left, the /etc skeleton, the egress policy), in a thread, while the worker starts.
    Left to the first candidates, every one of them probed: the probe is cached once
    done, not while it runs. A failure is left for the first candidate to report."""
    def warm() -> None:
        try:
            # start-up: the sandbox modules load in this thread, beside the worker's start
            from worker.sandbox import get_backend
            from worker.sandbox.local import warm_process

            get_backend("local")
            warm_process()
        except Exception:  # noqa: BLE001, S110
            pass

    # The probe may start bwrap through a fork with a preexec_fn, which runs the at-fork
    # hooks. concurrent.futures.thread (imported by the worker's thread pool as it starts)
    # registers a lock's acquire and release there; imported between a fork's "before"
    # and "after" hooks, it releases a lock never acquired ("release unlocked lock",
    # printed to the command's stderr). Imported first, it is registered before any fork.
    import concurrent.futures.thread  # noqa: F401  # start-up: see above

    thread = threading.Thread(target=warm, name="forge-warm-sandboxes", daemon=True)
    thread.start()
    return thread


@contextmanager
def embedded_worker(app, concurrency: int, local: bool = True) -> Iterator[object]:
    """Start a thread-pool worker consuming the in-memory broker; stop it on exit.
    ``local``: the run has local candidates (their sandbox backend is readied too)."""
    global _winding_down
    warming = _warm_local_sandboxes() if local else None

    if _winding_down is not None:
        _winding_down.join(10)
        _winding_down = None

    # The memory result backend is an LRU of 5,000 keys by default; a large embedded
    # run keeps a meta key per candidate plus the chord's, so give it room.
    celery_compat.widen_memory_backend(200_000)
    app.finalize()
    app.set_current()
    app.set_default()
    # Nothing outside this process can reach its memory broker: no monitor reads task
    # events there, no `celery inspect` reaches a remote-control mailbox. Without them the
    # worker starts fewer consumers and each candidate publishes nothing it need not.
    app.conf.worker_enable_remote_control = False
    # The worker's pool sets a process-wide Celery flag as it is built: undone on exit.
    with celery_compat.joins_restored():
        ready = threading.Event()
        worker = app.WorkController(
            hostname=f"embedded@{socket.gethostname()}",
            pool="threads",
            concurrency=concurrency,
            loglevel="WARNING",
            task_events=False,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            ready_callback=lambda consumer: ready.set(),
        )
        thread = threading.Thread(target=worker.start, name="forge-embedded-worker", daemon=True)
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("the embedded worker did not start within 30 s")
        if warming is not None:
            warming.join(30)
        try:
            yield worker
        finally:
            worker.stop(in_sighandler=False)
            _winding_down = thread
