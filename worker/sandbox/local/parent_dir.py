"""Where sandbox roots live on this machine (the tmpfs parent)."""

from __future__ import annotations

import functools
import os
import tempfile

from worker.settings import settings


@functools.lru_cache(maxsize=1)
def sandbox_parent() -> str:
    """Where sandbox roots live: ``FORGE_SANDBOX_DIR``, else a tmpfs (``/dev/shm``) when
    there is one, else the temp directory.

    A sandbox is a few directories, files and links made and removed per candidate; on a
    journaling disk that metadata was a fifth of a trivial candidate's cost. On tmpfs the
    files a candidate writes are memory charged to its own memory cgroup, so its limit
    covers them too.
    """
    chosen = settings.sandbox_dir
    if chosen:
        return chosen
    if is_tmpfs("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def is_tmpfs(path: str) -> bool:
    try:
        with open("/proc/self/mounts") as fh:
            return any(line.split()[1:3] == [path, "tmpfs"] for line in fh)
    except OSError:
        return False
