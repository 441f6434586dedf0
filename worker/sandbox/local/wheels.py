"""A project's own pure wheels, installed into a local sandbox's python environment from
the host: no process to start (``worker.local_wheels`` applies the same rules inside a
sandbox, for backends whose files the worker cannot write).

The requirements file and the wheels are the project's files, so hostile, like the
archive ``untar`` unpacked them from: each is opened one path component at a time with
``O_NOFOLLOW`` (no link is followed, even one that stays inside); a wheel qualifies only
by ``local_wheels.plan`` (plain relative member names, no links, pure, no dependencies,
scripts or data), under ``MAX_BYTES`` and ``MAX_FILES`` in all, sizes counted as
written; files are created exclusively in the environment's site-packages, which
nothing has touched since the sandbox was made (no candidate code has run yet), and
owned by the sandbox's user.
Anything else is left to pip, in the sandbox.
"""

from __future__ import annotations

import os
import stat

from worker import local_wheels
from worker.sandbox.local.untar import DIR_FLAGS, descend

MAX_BYTES = 64 * 1024 * 1024  # the wheels' files together; larger: pip, under the limits
# Files the host creates (in the worker's memory, outside the sandbox's cgroup: a wheel
# of a million empty members must not cost the worker a gigabyte of inodes).
MAX_FILES = 10_000
MAX_REQUIREMENTS = 64 * 1024
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def open_parent(root: str, parts: list[str]) -> int:
    """An fd of the directory ``root/parts[:-1]``; raises OSError if any component is a
    link or not a directory (the local sandbox's uploads and downloads use it too)."""
    root_fd = os.open(root, DIR_FLAGS)
    try:
        return descend(root_fd, parts[:-1])
    finally:
        os.close(root_fd)


def open_inside(root: str, rel: str) -> int | None:
    """An fd of the regular file ``root/rel``, reached without following any link; None
    if any component is a link, missing, or the file is not a regular one."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    try:
        fd = open_parent(root, parts)
    except OSError:
        return None
    try:
        leaf = os.open(parts[-1], _FILE, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        return None
    return leaf


def _open_wheel(workdir: str):
    def opener(path: str):
        fd = open_inside(workdir, path)
        return None if fd is None else os.fdopen(fd, "rb")
    return opener


def install_own_wheels(workdir: str, requirements_file: str, site: str,
                       uid: int | None) -> list[str] | None:
    """Install the wheels ``requirements_file`` (in ``workdir``) lists into ``site``;
    returns a line per wheel installed, or None (nothing written) when pip must do it.
    Raises OSError when writing fails part-way (the install has failed)."""
    fd = open_inside(workdir, requirements_file)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(MAX_REQUIREMENTS + 1)
    try:
        paths = local_wheels.parse(raw.decode("utf-8")) if len(raw) <= MAX_REQUIREMENTS \
            else None
    except UnicodeDecodeError:
        return None
    if not paths:
        return None
    return local_wheels.install_listed(paths, _open_wheel(workdir), site, uid,
                                       MAX_BYTES, MAX_FILES)
