"""Starting bwrap: as which host uid, with which rlimits, seeing which interpreter.

As root, bwrap itself runs as a fresh, unprivileged host uid per sandbox (the sandbox's
uid 65534 maps to it): nothing in the sandbox is host uid 0, RLIMIT_NPROC counts only
that sandbox's processes, and a bwrap bug would land as a nobody.

Spawning bwrap through a preexec_fn forks the whole worker process (a Celery pool
process is ~60 MB) and runs Python in the child: page-table copies, copy-on-write
faults on both sides, the exec tearing the copy down: a fifth of a trivial candidate's
CPU. Without a preexec_fn, subprocess uses vfork. So the uid switch and the rlimits go
to two small util-linux programs exec'd in front of bwrap (``setpriv``, ``prlimit``),
and an interpreter prefix the sandbox uid cannot reach is shown once per process
(``prefix_view``). Where that view is missing, the launching child alone bind-mounts the
prefix, in a private mount namespace, on an empty world-readable directory in the
sandbox's root, from where bwrap binds it back to its real path inside the sandbox.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from worker.sandbox.local import prefix_view
from worker.sandbox.local.prefix_view import CLONE_NEWNS, MS_BIND, MS_REC
from worker.sandbox.local.pyenv import python_prefixes
from worker.settings import settings

UID_BASE = 1_800_000_000
UID_SPAN = 1 << 24
_MS_PRIVATE = 1 << 18

_PRLIMIT_OPTS = {
    resource.RLIMIT_AS: "--as",
    resource.RLIMIT_CPU: "--cpu",
    resource.RLIMIT_FSIZE: "--fsize",
    resource.RLIMIT_NOFILE: "--nofile",
    resource.RLIMIT_CORE: "--core",
    resource.RLIMIT_NPROC: "--nproc",
}


def sandbox_host_uid() -> int | None:
    """A fresh unprivileged host uid for one sandbox when we are root, else None."""
    if os.geteuid() != 0 or settings.sandbox_uid == "keep":
        return None
    return UID_BASE + secrets.randbelow(UID_SPAN)


@functools.lru_cache(maxsize=1)
def launch_helpers() -> tuple[str, str] | None:
    """(setpriv, prlimit) when both are installed (util-linux), else None."""
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    return (setpriv, prlimit) if setpriv and prlimit else None


@dataclass
class Launch:
    """How to start bwrap: as which uid, and where it finds the interpreter's prefix."""

    uid: int | None
    binds: list[tuple[str, str]]  # (source seen by bwrap, path inside the sandbox)
    _mounts: list[tuple[bytes, bytes]]

    def spawn(self, argv: list[str], rlimits: list[tuple[int, int, int]]
              ) -> tuple[list[str], Callable[[], None] | None]:
        """(argv, preexec_fn) that start ``argv`` as this launch's uid with ``rlimits``.

        The preexec_fn is None whenever util-linux can do the work, so the caller vforks.
        """
        helpers = launch_helpers()
        if self.uid is None or self._mounts or helpers is None:
            return argv, self.preexec(rlimits)
        setpriv, prlimit = helpers
        limits = [f"{_PRLIMIT_OPTS[which]}={soft}:{hard}" for which, soft, hard in rlimits]
        return [setpriv, f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--",
                prlimit, *limits, "--", *argv], None

    def preexec(self, rlimits: list[tuple[int, int, int]] | None = None):
        """The Popen preexec_fn (None when nothing needs doing in the child).

        With a fresh uid, the rlimits are set here, before bwrap starts: root may not
        prlimit() another uid's process on every kernel, and the uid is this sandbox's
        alone, so even RLIMIT_NPROC counts only the sandbox's processes.
        """
        if self.uid is None:
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
