"""Which process owns a sandbox directory, so a later worker can sweep what a dead one
left behind (see ``leftovers``).

A directory made for sandboxes holds ``OWNER_FILE``: its maker's pid and start time (a
pid alone could be reused by an unrelated process).
"""

from __future__ import annotations

import os

OWNER_FILE = ".forge-owner"


def identity(pid: int) -> str | None:
    """``pid:starttime`` of a live process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat_line = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat_line.rsplit(")", 1)[-1].split()
    return f"{pid}:{fields[19]}" if len(fields) > 19 else None


_own: tuple[int, str | None] | None = None


def own_identity() -> str | None:
    """This process's ``identity``, read once per process (a fork gets its own)."""
    global _own
    if _own is None or _own[0] != os.getpid():
        _own = (os.getpid(), identity(os.getpid()))
    return _own[1]


def mark(top: str, owner: str | None) -> None:
    """Record ``owner`` (an ``identity``) in directory ``top``; nothing if unknown."""
    if owner:
        with open(os.path.join(top, OWNER_FILE), "w") as fh:
            fh.write(owner)
