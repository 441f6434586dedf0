"""The sandbox's ``/etc``: one read-only bind of a skeleton directory, cached per process.

The skeleton holds copies of the public files in ``visible.ETC_FILES`` (symlinks stay
symlinks), the generated passwd/group/hosts/resolv.conf (``visible.generated_etc``), and
empty mount points where the public directories are bound. One mount instead of ~20:
bwrap re-reads the mount table for every bind, which was a third of its cost. A skeleton
is made once per process and network mode, and made again when a source changes (a
package upgrade rewriting ld.so.cache, say).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from worker.sandbox.local import cleanup, owner
from worker.sandbox.visible import ETC_FILES, generated_etc

_etc_cache: dict[str, tuple[tuple, str, list[str]]] = {}  # network: (sig, skeleton, args)


def _etc_signature() -> tuple:
    sig = []
    for path in ETC_FILES:
        try:
            st = os.lstat(path)
            sig.append((path, st.st_mtime_ns, st.st_size))
        except OSError:
            sig.append((path, None, None))
    return tuple(sig)


def etc_binds(network: str, parent: str, owner_id: str | None = None) -> list[str]:
    """bwrap arguments giving the sandbox its /etc for ``network`` ("slirp4netns", ...)."""
    sig = _etc_signature()
    cached = _etc_cache.get(network)
    if cached is None or cached[0] != sig or not os.path.isdir(cached[1]):
        skeleton = _make_etc(network, parent, owner_id)
        args = ["--ro-bind", skeleton, "/etc"]
        for path, mtime, _size in sig:
            if mtime is not None and os.path.isdir(path) and not os.path.islink(path):
                args += ["--ro-bind", path, path]
        cached = _etc_cache[network] = (sig, skeleton, args)
    return cached[2]


def _make_etc(network: str, parent: str, owner_id: str | None) -> str:
    top = tempfile.mkdtemp(prefix="forge-etc-", dir=parent)
    os.chmod(top, 0o711)
    owner.mark(top, owner_id)  # lets a later worker sweep it if this process dies first
    etc = os.path.join(top, "etc")
    os.mkdir(etc, 0o755)
    for path in ETC_FILES:
        dest = os.path.join(etc, os.path.relpath(path, "/etc"))
        if not os.path.lexists(path):
            continue
        os.makedirs(os.path.dirname(dest), 0o755, exist_ok=True)
        if os.path.isdir(path) and not os.path.islink(path):
            os.makedirs(dest, 0o755, exist_ok=True)  # a mount point
        else:
            shutil.copy2(path, dest, follow_symlinks=False)
    write_etc(etc, network)
    for root, dirs, _files in os.walk(etc):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    cleanup.register(lambda: shutil.rmtree(top, ignore_errors=True))
    return etc


def write_etc(etc_dir: str, network: str) -> None:
    """Write the generated files of the /etc skeleton."""
    for name, text in generated_etc(network).items():
        with open(os.path.join(etc_dir, name), "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(os.path.join(etc_dir, name), 0o644)
