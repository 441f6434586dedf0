"""Bubblewrap: the argv that builds a candidate's sandbox, and a once-per-process probe.

What the sandbox sees (everything else of the host is absent, not merely read-only):

* ``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or directories, read-only;
* a short list of harmless ``/etc`` files (loader cache, TLS roots, nsswitch, time
  zone...), read-only; ``passwd``, ``group``, ``hosts`` and ``resolv.conf`` are
  generated per sandbox, so no host account or resolver detail leaks in;
* the candidate interpreter's installation prefix (``sys.base_prefix``), read-only;
* ``/sandbox``: the private working directory (script + output), the only writable
  host directory; ``/tmp`` and ``/dev/shm``: size-capped tmpfs; a fresh, read-only
  ``/proc`` for the sandbox's own PID namespace; minimal ``/dev``.

Namespaces: user (uid 65534, all capabilities dropped, no nested user namespaces),
PID, IPC, UTS, cgroup (when possible) and network (always new; see ``netns``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
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


# --------------------------------------------------------------------------- launching
#
# As root, bwrap itself runs as a fresh, unprivileged host uid per sandbox (the sandbox's
# uid 65534 maps to it): nothing in the sandbox is host uid 0, RLIMIT_NPROC counts only
# that sandbox's processes, and a bwrap bug would land as a nobody. The interpreter may
# live where that uid cannot look (pyenv under /root, mode 0700): then, in a private
# mount namespace of the launching child only, the prefix is bind-mounted on an empty
# world-readable directory in the sandbox's root, from where bwrap binds it back to its
# real path inside the sandbox. The host's mount table never changes.

UID_BASE = 1_800_000_000
UID_SPAN = 1 << 24
_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18


def sandbox_host_uid() -> int | None:
    """A fresh unprivileged host uid for one sandbox when we are root, else None."""
    if os.geteuid() != 0 or os.environ.get("FORGE_SANDBOX_UID", "").strip() == "keep":
        return None
    return UID_BASE + secrets.randbelow(UID_SPAN)


@dataclass
class Launch:
    """How to start bwrap: as which uid, and where it finds the interpreter's prefix."""

    uid: int | None
    binds: list[tuple[str, str]]  # (source seen by bwrap, path inside the sandbox)
    _mounts: list[tuple[bytes, bytes]]

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
                if unshare(_CLONE_NEWNS) != 0:
                    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
                if mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
                    raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
                for src, dst in mounts:
                    if mount(src, dst, None, _MS_BIND | _MS_REC, None) != 0:
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
        if uid is None or _traversable_by_anyone(prefix):
            binds.append((prefix, prefix))
            continue
        point = os.path.join(stage_dir, f"prefix{i}")
        os.mkdir(point, 0o755)
        mounts.append((prefix.encode(), point.encode()))
        binds.append((point, prefix))
    return Launch(uid, binds, mounts)


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
    python_binds: list[tuple[str, str]],
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
    ]
    for src, dest in python_binds:
        argv += ["--ro-bind", src, dest]
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
    drop_uid: bool = False  # run bwrap as a fresh unprivileged uid (we are root)


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
    uid = sandbox_host_uid()
    problem = _try(path, uid)
    if problem is None:
        return Probe(True, path, "ok", drop_uid=uid is not None)
    if uid is not None and _try(path, None) is None:
        # e.g. unprivileged user namespaces disabled: bwrap as root still works.
        return Probe(True, path, f"ok (running as root: {problem})", drop_uid=False)
    return Probe(False, path, problem)


def _try(path: str, uid: int | None) -> str | None:
    """Run the candidate interpreter in a minimal sandbox; None if that works."""
    stage = tempfile.mkdtemp(prefix="forge-probe-")
    try:
        os.chmod(stage, 0o711)
        launch = plan_launch(stage, uid)
        argv = [
            path,
            "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--disable-userns",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            *system_binds(),
        ]
        for src, dest in launch.binds:
            argv += ["--ro-bind", src, dest]
        argv += ["--proc", "/proc", "--remount-ro", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                 "--", candidate_python(), "-S", "-c", "print('forge-ok')"]
        done = subprocess.run(argv, capture_output=True, timeout=20,
                              env={"PATH": "/usr/bin:/bin"}, preexec_fn=launch.preexec())
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap failed to start: {exc}"
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if done.returncode != 0 or b"forge-ok" not in done.stdout:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = err[-1] if err else f"exit code {done.returncode}"
        return f"bwrap cannot create namespaces here: {detail}"
    return None
