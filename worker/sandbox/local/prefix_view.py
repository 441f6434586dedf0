"""This process's view of an interpreter prefix the sandbox's uid cannot reach.

As root, bwrap runs as a fresh unprivileged uid (see ``launch``), and the interpreter may
live where that uid cannot look (pyenv under /root, mode 0700). Once per process, while
it is single-threaded (a pool process at start), the hidden prefixes are bind-mounted
read-only at world-traversable mount points in a mount namespace of this process only
(a slave of the host's: host mounts still arrive, ours never leave). Doing it per
sandbox instead would need a preexec_fn, and so a fork of the whole worker (see
``launch``). The host's mount table never changes.
"""

from __future__ import annotations

import ctypes
import functools
import os
import stat
import tempfile

from worker.sandbox.local import cleanup, owner
from worker.sandbox.local.pyenv import python_prefixes

CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
_MS_SLAVE = 1 << 19
_MS_REMOUNT = 32
_MS_RDONLY = 1
_MNT_DETACH = 2

_process_view: dict[str, str] | None = None  # prefix -> where this process shows it


def shown_at(prefix: str) -> str | None:
    """Where this process shows ``prefix`` to an unprivileged uid, if it does."""
    return (_process_view or {}).get(prefix)


def _traversable_by_anyone(path: str) -> bool:
    """Can an unrelated unprivileged uid reach and list ``path``?"""
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def hidden_prefixes() -> tuple[str, ...]:
    """The interpreter prefixes an unrelated unprivileged uid cannot reach (computed once)."""
    return tuple(p for p in python_prefixes() if not _traversable_by_anyone(p))


def share_prefixes(parent: str, owner_id: str | None = None) -> str | None:
    """Once per process, while it is single-threaded (a pool process at start): show the
    unreachable interpreter prefixes at world-traversable mount points of this process's
    own mount namespace. Returns why not, or None when done (or nothing to do)."""
    global _process_view
    if _process_view is not None:
        return None
    if not hidden_prefixes() or os.geteuid() != 0:
        _process_view = {}
        return None
    if _thread_count() > 1:  # unshare(CLONE_NEWNS) refuses; try again later
        return "the process already runs threads"
    libc = ctypes.CDLL(None, use_errno=True)
    top = tempfile.mkdtemp(prefix="forge-view-", dir=parent)
    os.chmod(top, 0o711)
    cleanup.register(lambda: release_view(libc, top))
    owner.mark(top, owner_id)
    _process_view = {}
    if libc.unshare(CLONE_NEWNS) != 0:
        return f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}"
    if libc.mount(b"none", b"/", None, MS_REC | _MS_SLAVE, None) != 0:
        return f"mount --make-rslave /: {os.strerror(ctypes.get_errno())}"
    for i, prefix in enumerate(hidden_prefixes()):
        point = os.path.join(top, f"p{i}")
        os.mkdir(point, 0o755)
        if libc.mount(prefix.encode(), point.encode(), None, MS_BIND | MS_REC, None) != 0:
            os.rmdir(point)
            continue
        if libc.mount(b"none", point.encode(), None, _MS_REMOUNT | MS_BIND | _MS_RDONLY,
                      None) != 0:  # never leave a writable view of the interpreter around
            libc.umount2(point.encode(), _MNT_DETACH)
            os.rmdir(point)
            continue
        _process_view[prefix] = point
    return None


def release_view(libc, top: str) -> None:
    """Undo ``share_prefixes`` (process exit): unmount, then remove the empty dirs. Never
    a recursive delete: below a mount point lies the interpreter itself."""
    global _process_view
    for point in (_process_view or {}).values():
        libc.umount2(point.encode(), _MNT_DETACH)
    _process_view = {}
    remove_view_dir(top)


def remove_view_dir(top: str) -> None:
    """Remove a ``forge-view-*`` directory (ours, or a dead process's) without recursing:
    a mount point still in use somewhere stays, and nothing below one is touched."""
    try:
        names = os.listdir(top)
    except OSError:
        return
    for name in names:
        path = os.path.join(top, name)
        try:
            if name == owner.OWNER_FILE:
                os.unlink(path)
            else:
                os.rmdir(path)
        except OSError:
            pass
    try:
        os.rmdir(top)
    except OSError:
        pass


def _thread_count() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 1
