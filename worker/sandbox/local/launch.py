"""Starting bwrap: as which host uid, with which rlimits, seeing which interpreter.

As root, bwrap itself runs as a fresh, unprivileged host uid per sandbox (the sandbox's
uid 65534 maps to it): nothing in the sandbox is host uid 0, RLIMIT_NPROC counts only
that sandbox's processes, and a bwrap bug would land as a nobody.

Spawning bwrap through a preexec_fn forks the whole worker process (a Celery pool
process is ~60 MB) and runs Python in the child: page-table copies, copy-on-write
faults on both sides, the exec tearing the copy down: a fifth of a trivial candidate's
CPU. Without a preexec_fn, subprocess uses vfork. So the calling thread alone takes the
sandbox's uid for the spawn, and the rlimits go onto the sandbox's first process while
bwrap holds it (``thread_creds``; ``setpriv`` and ``prlimit`` exec'd in front of bwrap
did the same for 2-3 ms of CPU more), and an interpreter prefix the sandbox uid cannot
reach is shown once per process (``prefix_view``). Where that view is missing, or the
thread cannot switch alone, the launch forks: the child bind-mounts the prefix, in a
private mount namespace, on an empty world-readable directory in the sandbox's root,
from where bwrap binds it back to its real path inside the sandbox.
"""

from __future__ import annotations

import ctypes
import os
import resource
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from worker.sandbox.local import prefix_view, thread_creds
from worker.sandbox.local.prefix_view import CLONE_NEWNS, MS_BIND, MS_REC
from worker.sandbox.local.pyenv import python_prefixes
from worker.settings import settings

UID_BASE = 1_800_000_000
UID_SPAN = 1 << 24
_MS_PRIVATE = 1 << 18


def sandbox_host_uid() -> int | None:
    """A fresh unprivileged host uid for one sandbox when we are root, else None."""
    if os.geteuid() != 0 or settings.sandbox_uid == "keep":
        return None
    return UID_BASE + secrets.randbelow(UID_SPAN)


@dataclass
class Launch:
    """How to start bwrap: as which uid, and where it finds the interpreter's prefix."""

    uid: int | None
    binds: list[tuple[str, str]]  # (source seen by bwrap, path inside the sandbox)
    _mounts: list[tuple[bytes, bytes]]

    @property
    def forks(self) -> bool:
        """Whether bwrap starts through a ``preexec_fn`` (a fork of the worker): a fresh
        uid with a prefix to mount in the child, or a thread that cannot switch alone."""
        return self.uid is not None and (bool(self._mounts) or not thread_creds.usable())

    @contextmanager
    def identity(self) -> Iterator[None]:
        """The credentials to spawn bwrap with, and to set its rlimits with: this thread
        as the sandbox's uid (``thread_creds``); as it is when there is no fresh uid, or
        when the launch forks (the ``preexec_fn`` switches in the child)."""
        if self.uid is None or self.forks:
            yield
            return
        with thread_creds.become(self.uid):
            yield

    def limit(self, pid: int, rlimits: list[tuple[int, int, int]]) -> None:
        """``rlimits`` on the sandbox's first process (bwrap holds it on its block fd, so
        the command inherits them), unless the ``preexec_fn`` set them before bwrap.

        Raises:
            OSError: the kernel refused a limit (the candidate must not run).
        """
        if self.forks:
            return
        with self.identity():
            for which, soft, hard in rlimits:
                resource.prlimit(pid, which, (soft, hard))

    def preexec(self, rlimits: list[tuple[int, int, int]] | None = None):
        """The Popen preexec_fn when the launch forks, else None (nothing to do in a child).

        With a fresh uid, the rlimits are set here, before bwrap starts: root may not
        prlimit() another uid's process on every kernel, and the uid is this sandbox's
        alone, so even RLIMIT_NPROC counts only the sandbox's processes.
        """
        if not self.forks:
            return None
        uid, mounts, limits = self.uid, self._mounts, list(rlimits or ())
        libc = ctypes.CDLL(None, use_errno=True) if mounts else None
        unshare = libc.unshare if libc else None
        mount = libc.mount if libc else None

        def child() -> None:  # after fork, before exec: no imports, no locks
            if mounts:
                if unshare(CLONE_NEWNS) != 0:
                    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
                if mount(b"none", b"/", None, MS_REC | _MS_PRIVATE, None) != 0:
                    raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
                for src, dst in mounts:
                    if mount(src, dst, None, MS_BIND | MS_REC, None) != 0:
                        raise OSError(ctypes.get_errno(), "bind mount of the python prefix")
            for which, soft, hard in limits:
                resource.setrlimit(which, (soft, hard))
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)

        return child


def plan_launch(stage_dir: str, uid: int | None) -> Launch:
    """Decide how bwrap reaches the interpreter; ``stage_dir`` is ours, mode 0711."""
    binds: list[tuple[str, str]] = []
    mounts: list[tuple[bytes, bytes]] = []
    for i, prefix in enumerate(python_prefixes()):
        shown = prefix_view.shown_at(prefix)
        if uid is None or prefix not in prefix_view.hidden_prefixes():
            binds.append((prefix, prefix))
        elif shown is not None:
            binds.append((shown, prefix))
        else:
            point = os.path.join(stage_dir, f"prefix{i}")
            os.mkdir(point, 0o755)
            mounts.append((prefix.encode(), point.encode()))
            binds.append((point, prefix))
    return Launch(uid, binds, mounts)
