"""Packing a directory candidate into one deterministic tar (a ``Bundle``), at planning.

What ships: every regular file and directory under the project, with its permission
bits, minus what the default ignores and the project's ``.forgeignore`` (gitignore
syntax) leave out. Symlinks ship as links, and only when they resolve inside the
project; one pointing outside is refused, so nothing of the planning machine outside
the directory can reach a sandbox. Special files (FIFOs, sockets, devices) are refused.

Deterministic: entries sorted, fixed mtime, owner 0, no user or group names. The same
tree gives the same bytes, hence the same sha256, on any machine: the hash in
summary.json ties a result to exactly the code that produced it.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pathspec

from worker.bundles import ARCHIVE_NAME, BUNDLE_MTIME, sha256_bytes
from worker.lifecycle import OUTPUT_NAME

IGNORE_FILE = ".forgeignore"
# Left out of every project (gitignore syntax; a project's .forgeignore can add more,
# or re-include a file with "!name" where its directory is not itself excluded).
# Any directory holding a pyvenv.cfg is a virtualenv, whatever its name, and is left out too.
DEFAULT_IGNORES = (
    ".git/", ".hg/", ".svn/", ".jj/",
    "__pycache__/", "*.pyc", "*.pyo",
    ".venv/", "venv/", ".virtualenv/", ".tox/", ".nox/", "*.egg-info/",
    ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", ".ipynb_checkpoints/",
    "node_modules/", ".DS_Store",
)
RESERVED = (ARCHIVE_NAME, OUTPUT_NAME)  # top-level names the sandbox itself uses


class PackError(ValueError):
    """A project that cannot ship; the manifest loader names the candidate."""


@dataclass(frozen=True)
class Bundle:
    """A packed project: the tar, its sha256, and what went into it."""

    sha256: str
    data: bytes
    size: int  # bytes of file content (what the size cap counts)
    files: frozenset[str]  # relative paths of the regular files shipped


@dataclass(frozen=True)
class _Entry:
    rel: str
    kind: str  # "dir" | "file" | "link"
    mode: int
    size: int = 0
    target: str = ""


def _ignore_spec(root: Path) -> pathspec.GitIgnoreSpec:
    lines = list(DEFAULT_IGNORES)
    ignore_file = root / IGNORE_FILE
    if ignore_file.is_file():
        try:
            lines += ignore_file.read_text("utf-8").splitlines()
        except UnicodeDecodeError:
            raise PackError(f"{IGNORE_FILE} is not UTF-8 text") from None
    try:
        return pathspec.GitIgnoreSpec.from_lines(lines)
    except Exception as exc:  # noqa: BLE001 - pathspec raises several kinds on bad patterns
        raise PackError(f"{IGNORE_FILE} has a pattern gitignore syntax refuses: {exc}") from None


def _walk(root: Path, real_root: str, spec) -> list[_Entry]:
    """The project's entries, sorted, depth first; raises PackError on an outside link."""
    out: list[_Entry] = []

    def visit(directory: str, prefix: str) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise PackError(f"cannot list {prefix or '.'}: {exc.strerror}") from None
        for name in names:
            rel = prefix + name
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise PackError(f"cannot read {rel}: {exc.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                if spec.match_file(rel + "/") or os.path.isfile(os.path.join(path, "pyvenv.cfg")):
                    continue
                out.append(_Entry(rel, "dir", stat.S_IMODE(st.st_mode)))
                visit(path, rel + "/")
                continue
            if spec.match_file(rel):
                continue
            if not prefix and name in RESERVED:
                raise PackError(f"the project has {name!r} at its top level, a name the sandbox "
                                f"uses itself; rename it or list it in {IGNORE_FILE}")
            if stat.S_ISLNK(st.st_mode):
                out.append(_Entry(rel, "link", 0o777, target=_link_target(path, rel, real_root)))
            elif stat.S_ISREG(st.st_mode):
                out.append(_Entry(rel, "file", stat.S_IMODE(st.st_mode), st.st_size))
            else:
                raise PackError(f"{rel} is not a regular file, directory or symlink (a FIFO, "
                                f"socket or device); remove it or list it in {IGNORE_FILE}")

    visit(str(root), "")
    return out


def _link_target(path: str, rel: str, real_root: str) -> str:
    """The link as shipped: relative, resolving inside the project; else PackError."""
    target = os.readlink(path)
    real = os.path.realpath(path)
    if real != real_root and os.path.commonpath([real, real_root]) != real_root:
        raise PackError(f"symlink {rel} -> {target} points outside the project directory "
                        f"(to {real}); links are never followed out of it: copy the file in, "
                        f"or list the link in {IGNORE_FILE}")
    return os.path.relpath(real, os.path.realpath(os.path.dirname(path)))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def pack_directory(root: str | os.PathLike, max_bytes: int) -> Bundle:
    """Pack ``root`` (see the module docstring); PackError past ``max_bytes`` of files."""
    root = Path(root)
    real_root = os.path.realpath(root)
    entries = _walk(root, real_root, _ignore_spec(root))
    size = sum(e.size for e in entries)
    if size > max_bytes:
        biggest = sorted((e for e in entries if e.kind == "file"), key=lambda e: -e.size)[:3]
        raise PackError(
            f"the project is {_mb(size)} ({size:,} bytes), over the size cap of "
            f"{_mb(max_bytes)} ({max_bytes:,} bytes); largest: "
            + ", ".join(f"{e.rel} ({_mb(e.size)})" for e in biggest)
            + f". Leave data out with {IGNORE_FILE}, or raise FORGE_PROJECT_MAX_MB")
    # Written block by block and joined once: tarfile's own writer copies every file in
    # 16 KiB pieces into a growing buffer, three times slower for a 5 MB project.
    chunks: list[bytes] = []
    for e in entries:
        info = tarfile.TarInfo(e.rel)
        info.mtime, info.mode = BUNDLE_MTIME, e.mode
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        content = b""
        if e.kind == "dir":
            info.type = tarfile.DIRTYPE
        elif e.kind == "link":
            info.type, info.linkname = tarfile.SYMTYPE, e.target
        else:
            try:
                with open(os.path.join(root, e.rel), "rb") as fh:
                    content = fh.read()
            except OSError as exc:
                raise PackError(f"cannot read {e.rel}: {exc.strerror}; make it readable or "
                                f"list it in {IGNORE_FILE}") from None
            info.size = len(content)  # as read: a file changing under us stays consistent
        chunks.append(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        if content:
            chunks += (content, bytes(-len(content) % tarfile.BLOCKSIZE))
    end = 2 * tarfile.BLOCKSIZE  # two zero blocks close the archive; pad to a whole record
    used = sum(map(len, chunks)) + end
    chunks.append(bytes(end + -used % tarfile.RECORDSIZE))
    data = b"".join(chunks)
    return Bundle(sha256=sha256_bytes(data), data=data,
                  size=size, files=frozenset(e.rel for e in entries if e.kind == "file"))
