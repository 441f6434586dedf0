"""A candidate's processes: their rlimits, and waiting for, reaping and killing them."""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import time

from worker.records import Limits

MiB = 1024 * 1024


def rlimits(limits: Limits, timeout: int) -> list[tuple[int, int, int]]:
    """(resource, soft, hard) for a sandbox's first process; its children inherit them."""
    cpu = limits.cpu_seconds or max(timeout * 2, 5)
    mem = limits.memory_mb * MiB
    fsize = limits.max_file_mb * MiB
    return [
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes),
    ]


def kill_group(pgid: int) -> None:
    """SIGKILL a process group that may already be gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for ``proc`` to exit, without reaping it (``reap`` does, for its rusage);
    False on timeout.

    Popen.wait(timeout) polls with sleeps of up to 50 ms, which would be most of a quick
    candidate's overhead; a pidfd wakes us the moment the process exits.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    return bool(ready)


def reap(proc: subprocess.Popen):
    """Wait for ``proc`` and return its rusage (its own CPU time and that of the
    descendants it waited for); None if it was reaped already. Sets ``proc.returncode``
    as Popen.wait would."""
    if proc.returncode is not None:
        return None
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        proc.wait()
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


def read_child_pid(fd: int, timeout: float) -> int | None:
    """bwrap's --info-fd JSON, read until EOF; None if bwrap died first."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None
