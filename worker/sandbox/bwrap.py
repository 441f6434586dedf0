"""Bubblewrap: the argv that builds a candidate's sandbox, and a once-per-process probe.

What the sandbox sees (everything else of the host is absent, not merely read-only):

* ``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or directories, read-only;
* a short list of harmless ``/etc`` files (loader cache, TLS roots, nsswitch, time
  zone...), read-only; ``passwd``, ``group``, ``hosts`` and ``resolv.conf`` are
  generated, so no host account or resolver detail leaks in (all of it one read-only
  ``/etc`` skeleton per process and network mode, see ``etc_binds``);
* the candidate interpreter's installation prefix (``sys.base_prefix``), read-only;
* ``/sandbox``: the private working directory (script + output), and ``/opt/python``:
  the sandbox's own python environment (``python3`` without the host's site-packages,
  where requirements install), the only writable host directories; ``/tmp`` and
  ``/dev/shm``: size-capped tmpfs; a fresh, read-only ``/proc`` for the sandbox's own
  PID namespace; minimal ``/dev``.

Namespaces: user (uid 65534, all capabilities dropped, no nested user namespaces),
PID, IPC, UTS, cgroup (when possible) and network (always new; see ``netns``).
"""

from __future__ import annotations

import atexit
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
from collections.abc import Callable
from dataclasses import dataclass

INSIDE_WORKDIR = "/sandbox"
INSIDE_PYTHON_ENV = "/opt/python"  # the candidate's python3 environment (see python_env_files)
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
    import sysconfig

    for key in ("purelib", "platlib"):
        path = sysconfig.get_path(key, vars={"base": sys.base_prefix,
                                             "platbase": sys.base_exec_prefix})
        if path and os.path.isdir(os.path.join(path, "pip")):
            return path
    return None


@functools.lru_cache(maxsize=1)
def system_binds() -> tuple[str, ...]:
    """Read-only system directories, as bwrap arguments (computed once)."""
    args: list[str] = []
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


# --------------------------------------------------------------------------- /etc
#
# The sandbox's /etc is one read-only bind of a skeleton directory: copies of the public
# files above (symlinks stay symlinks), the generated passwd/group/hosts/resolv.conf, and
# empty mount points where the public directories are bound. One mount instead of ~20:
# bwrap re-reads the mount table for every bind, which was a third of its cost. A
# skeleton is made once per process and network mode, and made again when a source
# changes (a package upgrade rewriting ld.so.cache, say).

_etc_cache: dict[str, tuple[tuple, str, list[str]]] = {}  # network: (sig, skeleton, args)


def _etc_signature() -> tuple:
    sig = []
    for path in _ETC_FILES:
        try:
            st = os.lstat(path)
            sig.append((path, st.st_mtime_ns, st.st_size))
        except OSError:
            sig.append((path, None, None))
    return tuple(sig)


def etc_binds(network: str, parent: str, owner: str | None = None) -> list[str]:
    """bwrap arguments giving the sandbox its /etc for ``network`` ("slirp4netns", ...)."""
    sig = _etc_signature()
    cached = _etc_cache.get(network)
    if cached is None or cached[0] != sig or not os.path.isdir(cached[1]):
        skeleton = _make_etc(network, parent, owner)
        args = ["--ro-bind", skeleton, "/etc"]
        for path, mtime, _size in sig:
            if mtime is not None and os.path.isdir(path) and not os.path.islink(path):
                args += ["--ro-bind", path, path]
        cached = _etc_cache[network] = (sig, skeleton, args)
    return cached[2]


def _make_etc(network: str, parent: str, owner: str | None) -> str:
    top = tempfile.mkdtemp(prefix="forge-etc-", dir=parent)
    os.chmod(top, 0o711)
    if owner:  # lets a later worker sweep it if this process dies without cleaning up
        with open(os.path.join(top, ".forge-owner"), "w") as fh:
            fh.write(owner)
    etc = os.path.join(top, "etc")
    os.mkdir(etc, 0o755)
    for path in _ETC_FILES:
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
    _cleanup.append((os.getpid(), lambda: shutil.rmtree(top, ignore_errors=True)))
    return etc


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

    def spawn(self, argv: list[str], rlimits: list[tuple[int, int, int]]
              ) -> tuple[list[str], Callable[[], None] | None]:
        """(argv, preexec_fn) that start ``argv`` as this launch's uid with ``rlimits``.

        The preexec_fn is None whenever util-linux can do the work, so the caller vforks.
        """
        helpers = launch_helpers()
        if self.uid is None or self._mounts or helpers is None:
            return argv, self.preexec(rlimits)
        setpriv, prlimit = helpers
        limits = [f"{_PRLIMIT_OPTS[which]}={soft}:{hard}" for which, soft, hard in rlimits]
        return [setpriv, f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--",
                prlimit, *limits, "--", *argv], None

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
        if uid is None or prefix not in hidden_prefixes():
            binds.append((prefix, prefix))
        elif prefix in (_process_view or {}):
            binds.append((_process_view[prefix], prefix))
        else:
            point = os.path.join(stage_dir, f"prefix{i}")
            os.mkdir(point, 0o755)
            mounts.append((prefix.encode(), point.encode()))
            binds.append((point, prefix))
    return Launch(uid, binds, mounts)


# Spawning bwrap through a preexec_fn forks the whole worker process (a Celery pool
# process is ~60 MB) and runs Python in the child: page-table copies, copy-on-write
# faults on both sides, the exec tearing the copy down: a fifth of a trivial candidate's
# CPU. Without a preexec_fn, subprocess uses vfork. So the uid switch and the rlimits
# go to two small util-linux programs exec'd in front of bwrap (``setpriv``,
# ``prlimit``), and the interpreter prefix the sandbox uid cannot reach is bind-mounted
# once per process, in a mount namespace of that process only (a slave of the host's:
# host mounts still arrive, ours never leave), instead of once per sandbox.

_process_view: dict[str, str] | None = None  # prefix -> where this process shows it
_MS_SLAVE = 1 << 19
_MS_REMOUNT = 32
_MS_RDONLY = 1
_MNT_DETACH = 2


@functools.lru_cache(maxsize=1)
def hidden_prefixes() -> tuple[str, ...]:
    """The interpreter prefixes an unrelated unprivileged uid cannot reach (computed once)."""
    return tuple(p for p in python_prefixes() if not _traversable_by_anyone(p))


@functools.lru_cache(maxsize=1)
def launch_helpers() -> tuple[str, str] | None:
    """(setpriv, prlimit) when both are installed (util-linux), else None."""
    setpriv, prlimit = shutil.which("setpriv"), shutil.which("prlimit")
    return (setpriv, prlimit) if setpriv and prlimit else None


def share_prefixes(parent: str, owner: str | None = None) -> str | None:
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
    _cleanup.append((os.getpid(), lambda: release_view(libc, top)))
    if owner:
        with open(os.path.join(top, ".forge-owner"), "w") as fh:
            fh.write(owner)
    _process_view = {}
    if libc.unshare(_CLONE_NEWNS) != 0:
        return f"unshare(CLONE_NEWNS): {os.strerror(ctypes.get_errno())}"
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None) != 0:
        return f"mount --make-rslave /: {os.strerror(ctypes.get_errno())}"
    for i, prefix in enumerate(hidden_prefixes()):
        point = os.path.join(top, f"p{i}")
        os.mkdir(point, 0o755)
        if libc.mount(prefix.encode(), point.encode(), None, _MS_BIND | _MS_REC, None) != 0:
            os.rmdir(point)
            continue
        if libc.mount(b"none", point.encode(), None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY,
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
            if name == ".forge-owner":
                os.unlink(path)
            else:
                os.rmdir(path)
        except OSError:
            pass
    try:
        os.rmdir(top)
    except OSError:
        pass


_cleanup: list[tuple[int, Callable[[], None]]] = []  # (pid that made it, undo)


def release_process() -> None:
    """Remove what this process made for its sandboxes (/etc skeletons, the prefix view);
    run at exit, and by a Celery pool process when it shuts down (it leaves by _exit).
    What a forked child inherited stays its parent's to remove."""
    while _cleanup:
        pid, undo = _cleanup.pop()
        if pid == os.getpid():
            try:
                undo()
            except OSError:
                pass


atexit.register(release_process)


def _thread_count() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 1


_PRLIMIT_OPTS = {
    resource.RLIMIT_AS: "--as",
    resource.RLIMIT_CPU: "--cpu",
    resource.RLIMIT_FSIZE: "--fsize",
    resource.RLIMIT_NOFILE: "--nofile",
    resource.RLIMIT_CORE: "--core",
    resource.RLIMIT_NPROC: "--nproc",
}


def write_etc(etc_dir: str, network: str) -> None:
    """The generated passwd/group/hosts/resolv.conf of the /etc skeleton."""
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
    etc: list[str],
    share_host_net: bool,
    tmpfs_bytes: int,
    info_fd: int,
    block_fd: int,
    command: list[str],
    python_binds: list[tuple[str, str]],
    python_env: str,
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
    argv += etc
    argv += [
        # All of /proc read-only: when the worker is root the sandbox's uid maps to host
        # uid 0 (without capabilities), and some /proc files (sysctls, sysrq-trigger, irq
        # affinity) check only the uid. A read-only mount refuses every write.
        "--proc", "/proc", "--remount-ro", "/proc",
        "--dev", "/dev",
        "--size", str(tmpfs_bytes), "--tmpfs", "/dev/shm",
        "--size", str(tmpfs_bytes), "--tmpfs", "/tmp",
        "--bind", host_workdir, INSIDE_WORKDIR,
        "--bind", python_env, INSIDE_PYTHON_ENV,
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
