"""What this process made for its sandboxes and must undo when it ends.

The ``/etc`` skeletons (``etc``) and the interpreter prefix view (``prefix_view``) live
as long as the process. Each is registered here when made; ``release_process`` undoes
them, at exit (registered with ``atexit`` on the first registration, not at import) and
when a Celery pool process shuts down (it leaves by ``_exit``, skipping ``atexit``).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable

_cleanup: list[tuple[int, Callable[[], None]]] = []  # (pid that made it, undo)
_at_exit = False


def register(undo: Callable[[], None]) -> None:
    """Call ``undo`` when this process ends (not when a forked child does)."""
    global _at_exit
    if not _at_exit:
        atexit.register(release_process)
        _at_exit = True
    _cleanup.append((os.getpid(), undo))


def release_process() -> None:
    """Remove what this process made for its sandboxes (/etc skeletons, the prefix view).
    What a forked child inherited stays its parent's to remove."""
    while _cleanup:
        pid, undo = _cleanup.pop()
        if pid == os.getpid():
            try:
                undo()
            except OSError:
                pass
