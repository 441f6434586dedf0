"""Coalescing a task's PROGRESS writes: one backend write per burst of log lines.

Every stored PROGRESS meta is a Redis round trip carrying the whole log window, and a
candidate's lifecycle logs most of its lines within milliseconds (create, upload,
execute). The first line is stored at once (the dispatcher sees the task running);
later lines are stored at most every ``interval`` seconds, by a timer when nothing
else comes, so a line announcing a long wait ("Executing...") still shows within
``interval``. The final result carries every line, so nothing is lost by coalescing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from worker import config

INTERVAL = config.env_int("FORGE_PROGRESS_INTERVAL_MS", 250) / 1000


class ProgressWriter:
    def __init__(self, store: Callable[[], None], interval: float = INTERVAL):
        self._store = store
        self.interval = interval
        self._lock = threading.Lock()
        self._last = float("-inf")
        self._timer: threading.Timer | None = None
        self._closed = False

    def line_added(self) -> None:
        with self._lock:
            if self._closed or self._timer is not None:
                return
            wait = self._last + self.interval - time.monotonic()
            if wait <= 0:
                self._write()
                return
            self._timer = threading.Timer(wait, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
            if not self._closed:
                self._write()

    def _write(self) -> None:  # under the lock
        self._last = time.monotonic()
        self._store()

    def close(self) -> None:
        """No write after this returns (the task's result is about to be stored)."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
