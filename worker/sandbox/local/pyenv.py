"""The candidate's interpreter: the worker's base python, in a fresh venv per sandbox.

A sandbox's ``python3`` starts with the standard library and whatever the candidate's
requirements install into its own environment, nothing of the host's site-packages (no
host packages, no host ``.pth`` code at every start). The installer alone gets pip,
through a directory holding a link to the host's (``visible.PIP_SHIM``).
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
from dataclasses import dataclass

from worker.sandbox.visible import PIP_SHIM


@functools.lru_cache(maxsize=1)
def candidate_python() -> str:
    """The worker's base interpreter, outside any virtualenv (candidates get no packages)."""
    return os.path.realpath(sys.executable)


@dataclass(frozen=True)
class PythonEnvFiles:
    dirs: tuple[str, ...]
    pyvenv_cfg: str


@functools.lru_cache(maxsize=1)
def python_env_files() -> PythonEnvFiles:
    """The layout of a sandbox's python environment: a venv over ``candidate_python()``
    without the host's site-packages, whose own site-packages takes requirements."""
    v = sys.version_info
    site = f"lib/python{v.major}.{v.minor}/site-packages"
    cfg = (f"home = {os.path.dirname(candidate_python())}\n"
           "include-system-site-packages = false\n"
           f"version = {v.major}.{v.minor}.{v.micro}\n")
    return PythonEnvFiles(("bin", "lib", os.path.dirname(site), site), cfg)


@functools.lru_cache(maxsize=1)
def base_pip_dir() -> str | None:
    """The host interpreter's site-packages directory holding pip (for installs only)."""
    for key in ("purelib", "platlib"):
        path = sysconfig.get_path(key, vars={"base": sys.base_prefix,
                                             "platbase": sys.base_exec_prefix})
        if path and os.path.isdir(os.path.join(path, "pip")):
            return path
    return None


@functools.lru_cache(maxsize=1)
def python_prefixes() -> tuple[str, ...]:
    """The interpreter's prefix (and its directory, if elsewhere): bound read-only."""

    def under(path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip("/") + "/")

    prefix = os.path.realpath(sys.base_prefix)
    exe_dir = os.path.dirname(candidate_python())
    found: list[str] = []
    if not under(prefix, "/usr"):
        found.append(prefix)
    if not under(exe_dir, "/usr") and not under(exe_dir, prefix):
        found.append(exe_dir)
    return tuple(found)


def make_python_env(path: str, host_uid: int | None) -> None:
    """Make a sandbox's python environment at ``path``: a venv skeleton over the base
    interpreter, plus the installer's pip shim."""
    files = python_env_files()
    for rel in files.dirs:
        os.makedirs(os.path.join(path, rel), 0o755, exist_ok=True)
    with open(os.path.join(path, "pyvenv.cfg"), "w", encoding="utf-8") as fh:
        fh.write(files.pyvenv_cfg)
    for name in ("python3", "python"):
        os.symlink(candidate_python(), os.path.join(path, "bin", name))
    pip_dir = base_pip_dir()
    if pip_dir:
        os.mkdir(os.path.join(path, PIP_SHIM), 0o755)
        os.symlink(os.path.join(pip_dir, "pip"), os.path.join(path, PIP_SHIM, "pip"))
    if host_uid is not None:  # the installer runs as the sandbox's uid
        for rel in ("", *files.dirs):
            os.chown(os.path.join(path, rel), host_uid, host_uid)
