"""Sweeping what a killed worker left behind.

A worker killed with SIGKILL never runs ``delete``: its sandboxes' processes die with it
(--die-with-parent), but their directories and cgroups stay. Each sandbox root (and
each /etc skeleton and prefix view) holds its owner's identity (``owner``); the first
sandbox a process creates sweeps the directories whose owner is gone, and empty forge
cgroups older than ten minutes.
"""

from __future__ import annotations

import glob
import os
import shutil

from worker.sandbox.local import cgroups, owner
from worker.sandbox.local.parent_dir import sandbox_parent
from worker.sandbox.local.prefix_view import remove_view_dir

STALE_CGROUP_SECONDS = 600

_swept = False


def sweep_leftovers() -> None:
    """Once per process: remove dead owners' sandbox directories and stale cgroups."""
    global _swept
    if _swept:
        return
    _swept = True
    for marker in glob.glob(os.path.join(sandbox_parent(), "forge-*", owner.OWNER_FILE)):
        try:
            with open(marker) as fh:
                recorded = fh.read().strip()
            pid = int(recorded.split(":")[0])
        except (OSError, ValueError):
            continue
        if owner.identity(pid) != recorded:
            top = os.path.dirname(marker)
            if os.path.basename(top).startswith("forge-view-"):
                remove_view_dir(top)  # never recursive: may hold a mount point
            else:
                shutil.rmtree(top, ignore_errors=True)
    cgroups.sweep_stale("forge-local-", STALE_CGROUP_SECONDS)
