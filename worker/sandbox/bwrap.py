"""Bubblewrap: the argv that builds a candidate's sandbox, and a once-per-process probe.

What the sandbox sees (everything else of the host is absent, not merely read-only):

* ``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or directories, read-only;
* a short list of harmless ``/etc`` files (loader cache, TLS roots, nsswitch, time
  zone...), read-only; ``passwd``, ``group``, ``hosts`` and ``resolv.conf`` are
  generated per sandbox, so no host account or resolver detail leaks in;
* the candidate interpreter's installation prefix (``sys.base_prefix``), read-only;
* ``/sandbox``: the private working directory (script + output), the only writable
  host directory; ``/tmp`` and ``/dev/shm``: size-capped tmpfs; a fresh ``/proc`` for
  the sandbox's own PID namespace (bwrap keeps ``/proc/sys`` read-only); minimal ``/dev``.

Namespaces: user (uid 65534, all capabilities dropped, no nested user namespaces),
PID, IPC, UTS, cgroup (when possible) and network (always new; see ``netns``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

INSIDE_WORKDIR = "/sandbox"
SANDBOX_UID = 65534
SANDBOX_HOSTNAME = "forge-sandbox"

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Read-only and public. Deliberately NOT /etc/ssl as a whole (ssl/private holds keys).
_ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/mime.types",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust",
)
GENERATED_ETC = ("passwd", "group", "hosts", "resolv.conf")


def candidate_python() -> str:
    """The worker's base interpreter, outside any virtualenv (candidates get no packages)."""
    return os.path.realpath(sys.executable)


@functools.lru_cache(maxsize=1)
def system_binds() -> tuple[str, ...]:
    """Read-only system directories and /etc files, as bwrap arguments (computed once)."""
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in _ETC_FILES:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


@functools.lru_cache(maxsize=1)
def python_binds() -> tuple[str, ...]:
    """The interpreter's prefix (and its directory, if elsewhere), read-only."""

    def under(path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip("/") + "/")

    prefix = os.path.realpath(sys.base_prefix)
    exe_dir = os.path.dirname(candidate_python())
    args: list[str] = []
    if not under(prefix, "/usr"):
        args += ["--ro-bind", prefix, prefix]
    if not under(exe_dir, "/usr") and not under(exe_dir, prefix):
        args += ["--ro-bind", exe_dir, exe_dir]
    return tuple(args)


def write_etc(etc_dir: str, network: str) -> None:
    """Per-sandbox passwd/group/hosts/resolv.conf (bound read-only into /etc)."""
    files = {
        "passwd": f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:{INSIDE_WORKDIR}:/bin/sh\n",
        "group": f"sandbox:x:{SANDBOX_UID}:\n",
        "hosts": f"127.0.0.1 localhost {SANDBOX_HOSTNAME}\n::1 localhost\n",
        # slirp4netns answers DNS on 10.0.2.3 (forwarding to the host's resolver).
        "resolv.conf": "nameserver 10.0.2.3\n" if network == "slirp4netns" else "",
    }
    for name, text in files.items():
        with open(os.path.join(etc_dir, name), "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(os.path.join(etc_dir, name), 0o644)


def build_argv(
    bwrap: str,
    *,
    host_workdir: str,
    etc_dir: str,
    share_host_net: bool,
    tmpfs_bytes: int,
    info_fd: int,
    block_fd: int,
    command: list[str],
) -> list[str]:
    """The full bwrap command line for one candidate."""
    argv = [
        bwrap,
        "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--disable-userns",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", SANDBOX_HOSTNAME,
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        *system_binds(),
        *python_binds(),
    ]
    argv += ["--unshare-net"] if not share_host_net else ["--share-net"]
    for name in GENERATED_ETC:
        argv += ["--ro-bind", os.path.join(etc_dir, name), f"/etc/{name}"]
    argv += [
        # All of /proc read-only: when the worker is root the sandbox's uid maps to host
        # uid 0 (without capabilities), and some /proc files (sysctls, sysrq-trigger, irq
        # affinity) check only the uid. A read-only mount refuses every write.
        "--proc", "/proc", "--remount-ro", "/proc",
        "--dev", "/dev",
        "--size", str(tmpfs_bytes), "--tmpfs", "/dev/shm",
        "--size", str(tmpfs_bytes), "--tmpfs", "/tmp",
        "--bind", host_workdir, INSIDE_WORKDIR,
        "--chdir", INSIDE_WORKDIR,
        "--remount-ro", "/",
        "--info-fd", str(info_fd),
        "--block-fd", str(block_fd),
        "--",
        *command,
    ]
    return argv


@dataclass(frozen=True)
class Probe:
    ok: bool
    bwrap: str | None
    reason: str  # why not (for the warning), or "ok"


@functools.lru_cache(maxsize=1)
def probe() -> Probe:
    """Can bwrap create our namespaces and run the candidate interpreter? Cached."""
    if os.environ.get("FORGE_SANDBOX", "").strip().lower() == "plain":
        return Probe(False, None, "FORGE_SANDBOX=plain forces the fallback")
    if not sys.platform.startswith("linux"):
        return Probe(False, None, f"not Linux ({sys.platform})")
    path = shutil.which("bwrap")
    if path is None:
        return Probe(False, None, "bwrap not found on PATH")
    argv = [
        path,
        "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--disable-userns",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
        "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        *system_binds(), *python_binds(),
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
        "--", candidate_python(), "-S", "-c", "print('forge-ok')",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=20, env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(False, path, f"bwrap failed to start: {exc}")
    if done.returncode != 0 or b"forge-ok" not in done.stdout:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = err[-1] if err else f"exit code {done.returncode}"
        return Probe(False, path, f"bwrap cannot create namespaces here: {detail}")
    return Probe(True, path, "ok")
