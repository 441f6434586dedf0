"""One thread of a root worker, briefly, as a sandbox's host uid: bwrap starts by vfork.

Linux keeps credentials per thread. glibc's ``setresuid()`` changes every thread of the
process (POSIX asks for that), the raw system call only the caller's. So the thread
that starts a sandbox, and no other:

1. drops its supplementary groups and takes the sandbox's gid, then its uid, as real and
   effective ids. The saved ids stay the worker's: they are how it comes back, and while
   they are root the kernel keeps the thread's permitted capabilities (the effective ones
   go, as for any non-zero effective uid);
2. starts bwrap. Without a ``preexec_fn`` subprocess uses vfork, and the child runs with
   this thread's credentials, so bwrap is exec'd as the sandbox's uid: real, effective and
   (by the exec) saved ids, no groups, no capabilities. That is what ``setpriv --reuid
   --regid --clear-groups`` left, without its exec, nor ``prlimit``'s, nor a fork of the
   pool process (launch.py says what those cost);
3. sets the candidate's rlimits on the sandbox's first process, still held on bwrap's
   block fd: ``prlimit(2)`` lets a caller whose real ids equal the target's do that,
   which an unprivileged-uid target otherwise refuses to a root without CAP_SYS_RESOURCE;
4. takes back its ids and groups, then the two attributes the kernel resets when an
   effective id changes: the thread's parent-death signal, and the process's dumpable
   flag, which every thread shares: it goes back to what it was before any thread
   switched (read when this module loads), not to what a thread saw while another
   one was switched.

No other thread ever runs as the sandbox's uid, and the thread runs nothing else
meanwhile. Used only where it is exact: a known system call table (x86-64, arm64), a
root thread whose effective capabilities are its permitted ones (they are what comes
back) and no securebits; otherwise the launch forks with a ``preexec_fn``. A thread that
cannot take its ids back ends the process at once (a pool process left as nobody would
run the next task as nobody; billiard starts a fresh one).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

# (setgroups, setresuid, setresgid) system call numbers, per architecture.
_SYSCALLS = {"x86_64": (116, 117, 119), "aarch64": (159, 147, 149)}
_PR_GET_PDEATHSIG, _PR_SET_PDEATHSIG = 2, 1
_PR_GET_DUMPABLE, _PR_SET_DUMPABLE = 3, 4
_PR_GET_SECUREBITS = 27


_LIBC = ctypes.CDLL(None, use_errno=True)
_DUMPABLE = _LIBC.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0)  # before any switch (see 4.)


def _caps(field: str) -> str:
    with open("/proc/thread-self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return line.split()[1]
    return ""


@functools.lru_cache(maxsize=1)
def usable() -> bool:
    """Whether this process can switch one thread exactly (see the module docstring)."""
    if platform.machine() not in _SYSCALLS or os.getresuid() != (0, 0, 0):
        return False
    try:
        if _LIBC.prctl(_PR_GET_SECUREBITS, 0, 0, 0, 0) != 0:
            return False
        return _caps("CapEff") == _caps("CapPrm") != ""
    except OSError:
        return False


def _call(number: int, *args) -> None:
    if _LIBC.syscall(ctypes.c_long(number), *args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ids(number: int, ids: tuple[int, int, int]) -> None:
    _call(number, *(ctypes.c_long(i) for i in ids))


def _groups(number: int, groups: list[int]) -> None:
    array = (ctypes.c_uint * max(len(groups), 1))(*groups)
    _call(number, ctypes.c_long(len(groups)), array)


@contextmanager
def become(uid: int) -> Iterator[None]:
    """This thread as host uid and gid ``uid`` with no groups, until the block ends.

    Raises:
        OSError: the switch was refused (the thread is as it was).
    """
    setgroups, setresuid, setresgid = _SYSCALLS[platform.machine()]
    resuid, resgid, groups = os.getresuid(), os.getresgid(), os.getgroups()
    deathsig = ctypes.c_int(0)
    _LIBC.prctl(_PR_GET_PDEATHSIG, ctypes.byref(deathsig), 0, 0, 0)
    try:
        _groups(setgroups, [])
        _ids(setresgid, (uid, uid, resgid[2]))
        _ids(setresuid, (uid, uid, resuid[2]))
        yield
    finally:
        interrupted: BaseException | None = None
        while True:  # every step is idempotent: an exception between two (a signal
            try:     # handler's) must not leave the rest undone, so all run again
                _ids(setresuid, resuid)  # first: the saved root uid gives back the caps
                _ids(setresgid, resgid)
                _groups(setgroups, groups)
                _LIBC.prctl(_PR_SET_DUMPABLE, _DUMPABLE, 0, 0, 0)
                _LIBC.prctl(_PR_SET_PDEATHSIG, deathsig.value, 0, 0, 0)
                break
            except OSError:
                os._exit(70)  # EX_SOFTWARE; see the module docstring
            except BaseException as exc:  # noqa: BLE001 - raised again once restored
                interrupted = exc
        if interrupted is not None:
            raise interrupted
