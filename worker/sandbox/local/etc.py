"""The sandbox's ``/etc``: one read-only bind of a skeleton directory, cached per process.

The skeleton holds copies of the public files and directories in ``visible.ETC_FILES``
(symlinks stay symlinks, modes are kept) and the generated passwd/group/hosts/
resolv.conf (``visible.generated_etc``). One mount instead of ~20: bwrap re-reads the
mount table for every bind it makes, so each bind cost 0.2-0.7 ms of its CPU per sandbox
on a slow day (bench/README.md, issue 17); the public directories (TLS roots, alternatives,
ld.so.conf.d) are copied for that reason too. A skeleton is made once per process and
network mode (``prepare``: when the process starts, not in a candidate's time), and
made again when a source changes: every source path, and every directory and regular
file inside a public directory, is compared by ``lstat`` before each sandbox (a package
upgrade rewriting ld.so.cache, or update-ca-certificates replacing the bundle). A file
the worker cannot read is left out: the sandbox, never more privileged than the worker,
could not have read it either.
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass

from worker.sandbox import netns
from worker.sandbox.local import cleanup, owner
from worker.sandbox.visible import ETC_FILES, generated_etc


@dataclass(frozen=True)
class _Skeleton:
    path: str
    args: list[str]
    watched: tuple[str, ...]  # the sources, and the directories and files inside them
    signature: tuple  # their lstat when they were copied


_etc_cache: dict[str, _Skeleton] = {}  # network mode -> its skeleton
# One skeleton made at a time (threads starting together wait), and none removed while
# one is being made (``_remove``).
_making = threading.RLock()


def _stamp(path: str) -> tuple | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def etc_binds(network: str, parent: str, owner_id: str | None = None,
              sources: tuple[str, ...] = ETC_FILES, root: str = "/etc") -> list[str]:
    """bwrap arguments giving the sandbox its /etc for ``network`` ("slirp4netns", ...);
    ``sources``: the public paths, under ``root`` (tests pass their own)."""
    cached = _etc_cache.get(network)
    if _current(cached):
        return cached.args
    with _making:
        cached = _etc_cache.get(network)
        if not _current(cached):
            cached = _etc_cache[network] = _make_etc(network, parent, owner_id, sources,
                                                     root)
        return cached.args


def _current(cached: _Skeleton | None) -> bool:
    """Nothing it was copied from has changed (a symlink inside a directory is covered
    by the directory: replacing one changes the directory's mtime)."""
    return cached is not None and os.path.isdir(cached.path) \
        and tuple(map(_stamp, cached.watched)) == cached.signature


def prepare(parent: str, owner_id: str | None = None) -> None:
    """Make the skeleton of the default network mode (outbound through slirp4netns, or
    none where it cannot work), so no candidate waits for it (5-12 ms). The other mode
    is made by its first sandbox: every skeleton is also ~700 unlinks at exit, on an
    embedded run's path."""
    etc_binds("slirp4netns" if netns.slirp4netns_path() else "none", parent, owner_id)


class _Copy:
    """What a skeleton was copied from, each path stamped just before it was read: a
    change during the copy shows at the next check."""

    def __init__(self):
        self.watched: list[str] = []
        self.signature: list[tuple | None] = []

    def stamp(self, path: str) -> tuple | None:
        stamp = _stamp(path)
        self.watched.append(path)
        self.signature.append(stamp)
        return stamp

    def file(self, src: str, dest: str) -> None:
        """A file (with its mode and times) or a symlink; left out if unreadable."""
        try:
            shutil.copy2(src, dest, follow_symlinks=False)
        except OSError:
            pass

    def tree(self, src: str, dest: str) -> None:
        """A public directory: directories with their modes, symlinks as symlinks,
        regular files as ``file``. An unreadable listing, and anything else (a FIFO, a
        socket), is left out. Not ``shutil.copytree``: its per-link ``copystat`` and
        xattr calls made it 2.5x slower on /etc's ~700 links."""
        mode = stat.S_IMODE(os.lstat(src).st_mode)
        os.mkdir(dest, 0o700)
        try:
            with os.scandir(src) as entries:
                for entry in entries:
                    target = os.path.join(dest, entry.name)
                    if entry.is_symlink():
                        os.symlink(os.readlink(entry.path), target)
                    elif entry.is_dir(follow_symlinks=False):
                        self.stamp(entry.path)
                        self.tree(entry.path, target)
                    elif entry.is_file(follow_symlinks=False):
                        self.stamp(entry.path)
                        self.file(entry.path, target)
        except OSError:
            pass
        os.chmod(dest, mode)


def _make_etc(network: str, parent: str, owner_id: str | None,
              sources: tuple[str, ...], root: str) -> _Skeleton:
    top = tempfile.mkdtemp(prefix="forge-etc-", dir=parent)
    os.chmod(top, 0o711)
    owner.mark(top, owner_id)  # lets a later worker sweep it if this process dies first
    cleanup.register(functools.partial(_remove, top))
    etc = os.path.join(top, "etc")
    os.mkdir(etc, 0o755)
    copy, trees = _Copy(), []
    for path in sources:
        dest = os.path.join(etc, os.path.relpath(path, root))
        if copy.stamp(path) is None:
            continue
        os.makedirs(os.path.dirname(dest), 0o755, exist_ok=True)
        if os.path.isdir(path) and not os.path.islink(path):
            trees.append((path, dest))
        else:
            copy.file(path, dest)
    write_etc(etc, network)
    for base, dirs, _files in os.walk(etc):  # the skeleton's own directories, not copies
        for d in dirs:
            os.chmod(os.path.join(base, d), 0o755)
    for src, dest in trees:
        copy.tree(src, dest)
    return _Skeleton(etc, ["--ro-bind", etc, "/etc"], tuple(copy.watched),
                     tuple(copy.signature))


def _remove(top: str) -> None:
    """A skeleton's undo (``cleanup``), never in the middle of a copy: a thread still
    copying (an embedded run's warm-up, as the command exits) would go on filling a tree
    whose owner mark was removed, which no sweep would ever find."""
    locked = _making.acquire(timeout=10)
    try:
        for network, skeleton in list(_etc_cache.items()):
            if os.path.dirname(skeleton.path) == top:
                del _etc_cache[network]
        shutil.rmtree(top, ignore_errors=True)
    finally:
        if locked:
            _making.release()


def write_etc(etc_dir: str, network: str) -> None:
    """Write the generated files of the /etc skeleton."""
    for name, text in generated_etc(network).items():
        with open(os.path.join(etc_dir, name), "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(os.path.join(etc_dir, name), 0o644)
