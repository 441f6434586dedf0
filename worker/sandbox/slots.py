"""Core slots: at most as many ``exclusive`` candidates at once per worker machine as it
has cores, across every pool process and worker on it.

A slot is an exclusive ``flock`` on one of N files (N = the cores this process may run
on) in one directory of the machine. flock needs no daemon and no bookkeeping: the kernel
drops the lock when its holder's descriptor closes, which includes the holder dying by
SIGKILL or OOM, so a slot can never leak. A waiting candidate polls the files; its wait
is not part of its runtime (the lifecycle starts the clock once the slot is held).
"""

from __future__ import annotations

import fcntl
import os
import random
import time
from collections.abc import Callable

POLL_SECONDS = 0.02


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class CoreSlot:
    """One held slot; ``release`` is idempotent."""

    def __init__(self, fd: int, index: int, waited: float):
        self._fd: int | None = fd
        self.index = index
        self.waited = waited  # seconds spent waiting for it

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def acquire(directory: str, cores: int | None = None,
            on_wait: Callable[[], None] | None = None) -> CoreSlot:
    """Block until one of the ``cores`` slot files in ``directory`` is ours.

    ``on_wait`` is called once if every slot is taken (to log that we wait)."""
    n = max(1, cores or machine_cores())
    os.makedirs(directory, 0o755, exist_ok=True)
    t0 = time.monotonic()
    told = False
    while True:
        for index in random.sample(range(n), n):  # spread waiters over the files
            fd = os.open(os.path.join(directory, f"core-{index}"),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return CoreSlot(fd, index, time.monotonic() - t0)
        if not told and on_wait is not None:
            on_wait()
            told = True
        time.sleep(POLL_SECONDS)
