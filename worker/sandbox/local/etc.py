"""The sandbox's ``/etc``: one read-only bind of a skeleton directory, cached per process.

The skeleton holds copies of the public files and directories in ``visible.ETC_FILES``
(symlinks stay symlinks, modes are kept) and the generated passwd/group/hosts/
resolv.conf (``visible.generated_etc``). One mount instead of ~20: bwrap re-reads the
mount table for every bind it makes, so each bind cost ~0.6 ms of CPU per sandbox on a
slow day (bench/README.md, issue 17); the public directories (TLS roots, alternatives,
ld.so.conf.d) are copied for that reason too. A skeleton is made once per process and
network mode, and made again when a source changes: every source path, and every
directory and regular file inside a public directory, is compared by ``lstat`` before
each sandbox (a package upgrade rewriting ld.so.cache, or update-ca-certificates
replacing the bundle). A file the worker cannot read is left out: the sandbox, never
more privileged than the worker, could not have read it either.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from worker.sandbox.local import cleanup, owner
from worker.sandbox.visible import ETC_FILES, generated_etc


@dataclass(frozen=True)
class _Skeleton:
    watched: tuple[str, ...]  # what a change of means a new skeleton
    signature: tuple
    path: str
    args: list[str]


_etc_cache: dict[str, _Skeleton] = {}  # network mode -> its skeleton


def watched_paths(sources: Iterable[str]) -> tuple[str, ...]:
    """``sources``, and every directory and regular file inside those that are
    directories. A symlink inside is covered by its directory: replacing it changes the
    directory's mtime."""
    found: list[str] = []
    for path in sources:
        found.append(path)
        if os.path.isdir(path) and not os.path.islink(path):
            for root, dirs, files in os.walk(path):
                found += [os.path.join(root, d) for d in dirs]
                found += [f for f in (os.path.join(root, n) for n in files)
                          if not os.path.islink(f)]
    return tuple(found)


def signature(watched: Iterable[str]) -> tuple:
    sig = []
    for path in watched:
        try:
            st = os.lstat(path)
            sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            sig.append(None)
    return tuple(sig)


def etc_binds(network: str, parent: str, owner_id: str | None = None,
              sources: tuple[str, ...] = ETC_FILES, root: str = "/etc") -> list[str]:
    """bwrap arguments giving the sandbox its /etc for ``network`` ("slirp4netns", ...);
    ``sources``: the public paths, under ``root`` (tests pass their own)."""
    cached = _etc_cache.get(network)
    if cached is not None and cached.signature == signature(cached.watched) \
            and os.path.isdir(cached.path):
        return cached.args
    watched = watched_paths(sources)
    sig = signature(watched)  # before the copy: a change during it shows next time
    skeleton = _make_etc(network, parent, owner_id, sources, root)
    _etc_cache[network] = _Skeleton(watched, sig, skeleton, ["--ro-bind", skeleton, "/etc"])
    return _etc_cache[network].args


def _make_etc(network: str, parent: str, owner_id: str | None,
              sources: tuple[str, ...], root: str) -> str:
    top = tempfile.mkdtemp(prefix="forge-etc-", dir=parent)
    os.chmod(top, 0o711)
    owner.mark(top, owner_id)  # lets a later worker sweep it if this process dies first
    etc = os.path.join(top, "etc")
    os.mkdir(etc, 0o755)
    trees = []
    for path in sources:
        dest = os.path.join(etc, os.path.relpath(path, root))
        if not os.path.lexists(path):
            continue
        os.makedirs(os.path.dirname(dest), 0o755, exist_ok=True)
        if os.path.isdir(path) and not os.path.islink(path):
            trees.append((path, dest))
        else:
            _copy_readable(path, dest)
    write_etc(etc, network)
    for root, dirs, _files in os.walk(etc):  # the skeleton's own directories, not copies
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    for src, dest in trees:
        try:
            shutil.copytree(src, dest, symlinks=True, copy_function=_copy_readable)
        except shutil.Error:  # an unreadable directory inside: the rest is copied
            pass
    cleanup.register(lambda: shutil.rmtree(top, ignore_errors=True))
    return etc


def _copy_readable(src: str, dest: str) -> None:
    """``src`` copied with its mode (a symlink as a symlink), or left out if unreadable."""
    try:
        shutil.copy2(src, dest, follow_symlinks=False)
    except OSError:
        pass


def write_etc(etc_dir: str, network: str) -> None:
    """Write the generated files of the /etc skeleton."""
    for name, text in generated_etc(network).items():
        with open(os.path.join(etc_dir, name), "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(os.path.join(etc_dir, name), 0o644)
