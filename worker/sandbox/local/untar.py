"""Unpacking a project bundle into a local sandbox's work directory, from the host.

The local backend's fast path (a Daytona sandbox unpacks its own copy, see
``worker.lifecycle``): no process to start, so shipping a project costs what writing its
files costs. The archive came out of the result backend, so it is treated as hostile even
though its hash matched: every path component is opened with ``O_NOFOLLOW`` relative to
the directory above it, so no link (in the archive or already on disk) is ever followed;
only regular files, directories and links whose target stays inside are accepted;
setuid/setgid/sticky bits are dropped; everything is owned by the sandbox's user.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeArchive(ValueError):
    """A member the extractor refuses (the message names it)."""


def _parts(name: str) -> list[str]:
    norm = posixpath.normpath(name)
    parts = norm.split("/")
    if not name or "\x00" in name or norm.startswith("/") or norm == "." or ".." in parts:
        raise UnsafeArchive(f"member {name!r}: not a plain relative path")
    return parts


def descend(dir_fd: int, parts: list[str], *, make: bool = False,
            uid: int | None = None) -> int:
    """An fd of ``dir_fd/parts``, never through a link: OSError if a component is a link
    or not a directory; with ``make``, missing directories are made (owned by ``uid``),
    else FileNotFoundError (the local sandbox's wheels, uploads and downloads use it)."""
    fd = os.dup(dir_fd)
    try:
        for part in parts:
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not make:
                    raise
                os.mkdir(part, 0o700, dir_fd=fd)
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
                if uid is not None:
                    os.fchown(nxt, uid, uid)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def extract(archive: bytes, root: str, uid: int | None = None) -> int:
    """Unpack ``archive`` (a tar) into the directory ``root``; returns the files written.
    Raises UnsafeArchive, tarfile.TarError or OSError."""
    root_fd = os.open(root, DIR_FLAGS)
    dir_modes: list[tuple[list[str], int]] = []  # applied last, as tar does
    files = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar:
                parts = _parts(member.name)
                mode = stat.S_IMODE(member.mode) & 0o777
                if member.isdir():
                    os.close(descend(root_fd, parts, make=True, uid=uid))
                    dir_modes.append((parts, mode))
                    continue
                parent = descend(root_fd, parts[:-1], make=True, uid=uid)
                try:
                    if member.issym():
                        target = member.linkname
                        inside = posixpath.normpath(posixpath.join(*parts[:-1] or ["."], target))
                        if target.startswith("/") or inside.split("/")[0] == "..":
                            raise UnsafeArchive(f"link {member.name} -> {target} leaves the "
                                                "project")
                        os.symlink(target, parts[-1], dir_fd=parent)
                        if uid is not None:
                            os.chown(parts[-1], uid, uid, dir_fd=parent, follow_symlinks=False)
                    elif member.isreg() and not member.issparse():
                        source = tar.extractfile(member)
                        fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
                        with os.fdopen(fd, "wb") as out:
                            out.write(source.read())
                            if uid is not None:
                                os.fchown(fd, uid, uid)
                            os.fchmod(fd, mode)
                            os.utime(fd, (member.mtime, member.mtime))
                        files += 1
                    else:
                        raise UnsafeArchive(f"member {member.name!r}: only regular files, "
                                            "directories and links are unpacked")
                finally:
                    os.close(parent)
        for parts, mode in reversed(dir_modes):
            fd = descend(root_fd, parts, make=True, uid=uid)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
    finally:
        os.close(root_fd)
    return files
