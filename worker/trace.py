"""Phase timestamps for the benchmarks (bench/embedded_startup.py's breakdown of a run).

Off unless ``FORGE_TRACE`` names a file, and then ``mark(label)`` appends one line
``<epoch seconds> <pid> <label>`` to it: one ``O_APPEND`` write per mark, so threads and
processes can share the file. Off, a mark is one global read and a return. Not a log:
labels are fixed words and ids, never a candidate's output.
"""

from __future__ import annotations

import os
import time

from worker import config

_PATH = config.env("FORGE_TRACE")  # read once: a process traces from start or not at all


def enabled() -> bool:
    return _PATH is not None


def mark(label: str) -> None:
    """Stamp ``label`` now (when tracing is on)."""
    if _PATH is None:
        return
    line = f"{time.time():.6f} {os.getpid()} {label}\n".encode()
    try:
        fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:  # a benchmark aid: never a reason for a run to fail
        pass
