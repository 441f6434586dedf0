"""The local backend: each candidate in a bubblewrap sandbox on the worker's own machine.

Candidates are untrusted code. With bubblewrap available (probed once per process) a
candidate runs in fresh user/PID/IPC/UTS/cgroup/network namespaces, sees a read-only
minimum of the system (see ``worker.sandbox.bwrap``) plus a private writable
``/sandbox``, and nothing of the repository, the worker's home, the artifacts directory,
other candidates or the worker's environment. Its network is either nothing but its own
loopback, or outbound-only through slirp4netns (see ``worker.sandbox.netns``).

Limits: rlimits (address space, CPU time, file size, open files, no core dumps,
processes) are set on the sandbox's first process before it starts the command; a
per-sandbox pids and memory cgroup is added where the cgroup tree is writable. The
deadline kills the sandbox's PID namespace, which takes every descendant with it,
daemonised or not.

Without bubblewrap (or with ``FORGE_SANDBOX=plain``) candidates still run with the
rlimits, a scrubbed environment, the deadline and a process-group (and cgroup) kill,
but with NO filesystem or network isolation: ``isolation`` then starts with "NONE:"
and a warning is logged. ``FORGE_REQUIRE_ISOLATION=1`` turns that into an error.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import resource
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid

from worker.records import Limits
from worker.sandbox import bwrap, egress, netns, rtnetlink, slots
from worker.sandbox.base import (
    CreateStatus,
    Download,
    ExecResult,
    LogFn,
    SandboxError,
    SandboxRequest,
)
from worker.sandbox.bwrap import candidate_python, python_env_files
from worker.sandbox.capture import TailBuffer, pump

MiB = 1024 * 1024
INSTALL_HINT = "apt-get install bubblewrap slirp4netns (or dnf install bubblewrap slirp4netns)"


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------- limits


def _rlimits(limits: Limits, timeout: int) -> list[tuple[int, int, int]]:
    cpu = limits.cpu_seconds or max(timeout * 2, 5)
    mem = limits.memory_mb * MiB
    fsize = limits.max_file_mb * MiB
    return [
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes),
    ]


CPU_PERIOD_US = 100_000  # the CFS period a CPU cap is expressed in (the kernel default)
# Each sandbox gets the same CPU and I/O weight: the kernel shares the machine between
# sibling cgroups by weight, so a candidate running 50 processes gets no more of it than
# one running a single process. A new cgroup starts at the kernel's default CPU weight
# (v1 cpu.shares 1024, v2 cpu.weight 100: nothing is inherited), the same for every
# sandbox; the I/O weights below are the defaults too, written because the files must
# exist for the weight to mean anything.
IO_WEIGHTS_V1 = (("blkio.bfq.weight", "100"), ("blkio.weight", "500"))
IO_WEIGHTS_V2 = (("io.bfq.weight", "default 100"), ("io.weight", "default 100"))
# Per-sandbox cgroups: process and memory caps, equal CPU/I-O weight and an optional CPU
# cap, CPU-time accounting. "io" is blkio on v1; cpuacct exists on v1 only (v2's cpu.stat).
ALL_CONTROLLERS = ("pids", "memory", "cpu", "cpuacct", "io")


class Cgroups:
    """Best-effort per-sandbox cgroups (v1 or v2), under our own cgroup.

    ``pids``/``memory``: caps for the whole sandbox. ``cpu``: the equal weight, and the
    competition's CPU cap (``Limits.cpus``) as a CFS quota. ``io``: the equal I/O weight
    where the block layer has one (BFQ, or CFQ on old kernels). ``cpuacct`` (v1; v2 has
    ``cpu.stat`` everywhere): the CPU time every process of the sandbox used, the
    figure a speed-on-CPU competition scores. A controller whose hierarchy is not
    writable is left out, and ``describe`` says what is in force.
    """

    def __init__(self, name: str, pids_max: int, memory_bytes: int,
                 controllers: tuple[str, ...] = ALL_CONTROLLERS, cpus: float = 0):
        self.dirs: dict[str, str] = {}  # controller -> its directory (shared on v2)
        self.pids_max = pids_max
        self.memory_bytes = memory_bytes
        self.cpus = cpus
        self.wanted = controllers
        self._usage_fd: int | None = None  # cpuacct.usage (v1) or cpu.stat (v2)
        if _truthy("FORGE_NO_CGROUPS"):
            return
        made: dict[str, bool] = {}  # real path -> made by us
        for controller in controllers:
            base = _controller_base(controller)
            if base is None:
                continue
            path = os.path.join(base, name)
            real = _realpath(base)  # cpu and cpuacct are often one hierarchy
            if real not in made:
                try:
                    os.mkdir(path)
                    made[real] = True
                except OSError:
                    made[real] = False
            if not made[real]:
                continue
            try:
                self._configure(controller, path)
            except OSError:
                continue
            self.dirs[controller] = path
        used = {_realpath(os.path.dirname(p)) for p in self.dirs.values()}
        for real, ok in made.items():  # a hierarchy we made a directory in, then did not use
            if ok and real not in used:
                _rmdir(os.path.join(real, name))
        if self._usage_fd is None:  # v2: cpu.stat is in every cgroup, cpu controller or not
            for path in self.paths():
                if _is_v2(os.path.dirname(path)):
                    self._usage_fd = os.open(os.path.join(path, "cpu.stat"),
                                             os.O_RDONLY | os.O_CLOEXEC)
                    break

    def _configure(self, controller: str, path: str) -> None:
        v2 = _is_v2(os.path.dirname(path))
        if controller == "pids":
            _write(os.path.join(path, "pids.max"), str(self.pids_max))
        elif controller == "memory":
            if v2:
                _write(os.path.join(path, "memory.max"), str(self.memory_bytes))
                _try_write(os.path.join(path, "memory.swap.max"), "0")
            else:
                _write(os.path.join(path, "memory.limit_in_bytes"), str(self.memory_bytes))
                _try_write(os.path.join(path, "memory.memsw.limit_in_bytes"),
                           str(self.memory_bytes))
                _try_write(os.path.join(path, "memory.swappiness"), "0")
        elif controller == "cpu":
            quota = int(self.cpus * CPU_PERIOD_US) if self.cpus else 0
            if quota and v2:
                _write(os.path.join(path, "cpu.max"), f"{quota} {CPU_PERIOD_US}")
            elif quota:
                _write(os.path.join(path, "cpu.cfs_period_us"), str(CPU_PERIOD_US))
                _write(os.path.join(path, "cpu.cfs_quota_us"), str(quota))
        elif controller == "cpuacct":  # read at every exec: kept open, read with pread
            self._usage_fd = os.open(os.path.join(path, "cpuacct.usage"),
                                     os.O_RDONLY | os.O_CLOEXEC)
        elif controller == "io":
            for file, value in IO_WEIGHTS_V2 if v2 else IO_WEIGHTS_V1:
                if os.path.exists(os.path.join(path, file)):
                    _write(os.path.join(path, file), value)
                    return
            raise OSError("no I/O weight here (no BFQ/CFQ scheduler)")

    def describe(self) -> str:
        parts = []
        if "pids" in self.dirs:
            parts.append(f"pids cgroup {self.pids_max}")
        if "memory" in self.dirs:
            parts.append(f"memory cgroup {self.memory_bytes // MiB} MiB")
        if "cpu" in self.wanted:
            if "cpu" in self.dirs:
                parts.append(("cpu+io" if "io" in self.dirs else "cpu") + " equal weight"
                             + (f", cpu cap {self.cpus:g}" if self.cpus else ""))
            else:
                parts.append("cpu unweighted" + (" (no cap)" if self.cpus else ""))
        return ", ".join(parts)

    def paths(self) -> list[str]:
        return list(dict.fromkeys(self.dirs.values()))

    def add(self, pid: int) -> None:
        for path in self.paths():
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def cpu_ns(self) -> int | None:
        """CPU time used so far by the sandbox's processes, or None (no accounting)."""
        if self._usage_fd is None:
            return None
        try:
            text = os.pread(self._usage_fd, 4096, 0).decode()
            if text.startswith("usage_usec "):  # v2 cpu.stat
                return int(text.split()[1]) * 1000
            return int(text)
        except (OSError, ValueError, IndexError):
            return None

    def members(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths():
            try:
                with open(os.path.join(path, "cgroup.procs")) as fh:
                    found.update(int(line) for line in fh if line.strip())
            except OSError:
                pass
        return found

    def kill_all(self) -> None:
        for path in self.paths():
            _try_write(os.path.join(path, "cgroup.kill"), "1")  # v2: atomic
        for _ in range(50):  # v1: no cgroup.kill; SIGKILL until empty (forks race us)
            pids = self.members()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.002)

    def remove(self) -> None:
        if self._usage_fd is not None:
            os.close(self._usage_fd)
            self._usage_fd = None
        for path in self.paths():
            for _ in range(100):
                if _rmdir(path):
                    break
                time.sleep(0.005)
        self.dirs = {}


_bases: dict[tuple[int, str], str | None] = {}
_facts: dict[tuple[str, str], object] = {}  # per-process answers about cgroup directories


def _realpath(path: str) -> str:
    key = ("real", path)
    if key not in _facts:
        _facts[key] = os.path.realpath(path)
    return _facts[key]  # type: ignore[return-value]


def _is_v2(base: str) -> bool:
    """Is ``base`` (one of our cgroup directories' parent) on the unified hierarchy?"""
    key = ("v2", base)
    if key not in _facts:
        _facts[key] = os.path.exists(os.path.join(base, "cgroup.controllers"))
    return bool(_facts[key])


def _controller_base(controller: str) -> str | None:
    """Where a sandbox cgroup for ``controller`` goes (looked up once per process: ~0.1
    ms each, five per sandbox). v1 names the I/O controller blkio, v2 io; cpuacct is v1
    only (on v2, cpu.stat exists in every cgroup)."""
    key = (os.getpid(), controller)
    if key not in _bases:
        _bases[key] = _find_controller_base(controller)
    return _bases[key]


def _find_controller_base(controller: str) -> str | None:
    if controller == "io":
        base = _cgroup_base("blkio", v2=False)
        if base is None:
            return _cgroup_base("io")
        # No weight file: no proportional I/O scheduler (none, mq-deadline): no cgroup.
        return base if any(os.path.exists(os.path.join(base, f)) for f, _ in IO_WEIGHTS_V1) \
            else None
    if controller == "cpuacct":
        return _cgroup_base("cpuacct", v2=False)
    return _cgroup_base(controller)


def _cgroup_base(controller: str, v2: bool = True) -> str | None:
    """Our own cgroup directory for ``controller``, if that hierarchy is writable."""
    try:
        with open("/proc/self/cgroup") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier != "0" and controller in controllers.split(","):
            base = os.path.join("/sys/fs/cgroup", controller) + path
            if os.access(os.path.join(base, "cgroup.procs"), os.W_OK):
                return base
    for line in lines:  # cgroup v2: the controller must be enabled for our children
        if v2 and line.startswith("0::"):
            base = "/sys/fs/cgroup" + line[3:]
            try:
                with open(os.path.join(base, "cgroup.subtree_control")) as fh:
                    enabled = fh.read().split()
            except OSError:
                return None
            if controller in enabled and os.access(base, os.W_OK):
                return base
    return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def _try_write(path: str, text: str) -> None:
    try:
        _write(path, text)
    except OSError:
        pass


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=1)
def sandbox_parent() -> str:
    """Where sandbox roots live: ``FORGE_SANDBOX_DIR``, else a tmpfs (``/dev/shm``) when
    there is one, else the temp directory.

    A sandbox is a few directories, files and links made and removed per candidate; on a
    journaling disk that metadata was a fifth of a trivial candidate's cost. On tmpfs the
    files a candidate writes are memory charged to its own memory cgroup, so its limit
    covers them too.
    """
    chosen = os.environ.get("FORGE_SANDBOX_DIR", "").strip()
    if chosen:
        return chosen
    if _is_tmpfs("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def _is_tmpfs(path: str) -> bool:
    try:
        with open("/proc/self/mounts") as fh:
            return any(line.split()[1:3] == [path, "tmpfs"] for line in fh)
    except OSError:
        return False


# --------------------------------------------------------------------------- sandboxes


class _BaseSandbox:
    """Files: a host directory ``root`` holding ``work`` (the candidate's workdir)."""

    isolation: str

    def __init__(self, request: SandboxRequest, root: str, workdir: str,
                 host_uid: int | None = None, controllers: tuple[str, ...] = ALL_CONTROLLERS):
        self.request = request
        self.host_uid = host_uid
        self.id = f"local-{uuid.uuid4().hex[:12]}"
        self.root = root
        self.host_workdir = os.path.join(root, "work")
        os.mkdir(self.host_workdir, 0o700)
        if host_uid is not None:
            os.chown(self.host_workdir, host_uid, host_uid)
        self.workdir = workdir  # as the candidate sees it
        # The candidate's own python3: the base interpreter with no host site-packages.
        self.host_python_env = os.path.join(root, "python")
        _make_python_env(self.host_python_env, host_uid)
        self.python_env = self.host_python_env  # as the candidate sees it
        self.tmpfs_bytes = max(request.limits.max_file_mb, 16) * MiB
        self.cgroups = Cgroups(
            f"forge-{self.id}",
            request.limits.max_processes,
            request.limits.memory_mb * MiB + 2 * self.tmpfs_bytes,
            controllers,
            request.limits.cpus,
        )

    # -- paths: only inside the workdir, never through a symlink, parents included

    def _parts(self, path: str) -> list[str]:
        norm = os.path.normpath(path)
        if os.path.commonpath([norm, self.workdir]) != self.workdir or norm == self.workdir:
            raise SandboxError("path", f"{path!r} is outside the sandbox", self.id)
        return os.path.relpath(norm, self.workdir).split(os.sep)

    def _open_parent(self, parts: list[str]) -> int:
        """An fd of the directory holding ``parts[-1]``; no component may be a symlink."""
        fd = os.open(self.host_workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for part in parts[:-1]:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    def upload(self, content: bytes, path: str, timeout: int) -> None:
        parts = self._parts(path)
        try:
            dfd = self._open_parent(parts)
            try:
                fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                             0o600, dir_fd=dfd)
            finally:
                os.close(dfd)
            with os.fdopen(fd, "wb") as fh:
                if self.host_uid is not None:
                    os.fchown(fh.fileno(), self.host_uid, self.host_uid)
                fh.write(content)
        except OSError as exc:
            raise SandboxError("Upload", f"could not write {path!r}: {exc}", self.id) from exc

    def download(self, path: str, max_bytes: int, timeout: int) -> Download:
        parts = self._parts(path)
        try:
            dfd = self._open_parent(parts)
        except FileNotFoundError:
            return Download(None)
        except OSError:
            return Download(None, problem="artifact's directory is a symlink or not a "
                                          "directory: not followed, ignored")
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                         dir_fd=dfd)
        except FileNotFoundError:
            return Download(None)
        except OSError as exc:
            try:
                is_link = stat.S_ISLNK(os.lstat(parts[-1], dir_fd=dfd).st_mode)
            except OSError:
                is_link = False
            if is_link:
                return Download(None, problem="artifact is a symlink: not followed, ignored")
            return Download(None, problem=f"artifact unreadable: {exc.strerror}")
        finally:
            os.close(dfd)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return Download(None, problem="artifact is not a regular file: ignored")
            data = fh.read(max_bytes + 1)
        return Download(data[:max_bytes], truncated=len(data) > max_bytes)

    def delete(self) -> None:
        self.cgroups.kill_all()
        self.cgroups.remove()

        def fix_and_retry(func, path, _exc):  # a candidate may chmod 000 its own dirs
            try:
                os.chmod(os.path.dirname(path), 0o700)
                if os.path.isdir(path) and not os.path.islink(path):
                    os.chmod(path, 0o700)
                func(path)
            except FileNotFoundError:
                pass

        shutil.rmtree(self.root, onerror=fix_and_retry)

    # -- execution helpers

    def _env(self, home: str, tmp: str, command: list[str]) -> dict[str, str]:
        env = dict(self.request.env)  # the allow-list, filtered by the lifecycle
        if command[1:3] == ["-m", "pip"] and bwrap.base_pip_dir():
            # pip (alone, not the host's other packages) for the installer only, which
            # installs into the sandbox's python environment.
            env["PYTHONPATH"] = f"{self.python_env}/{PIP_SHIM}"
        env.update({
            "PATH": f"{self.python_env}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": tmp,
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        return env

    def _argv(self, argv: list[str]) -> list[str]:
        if argv and argv[0] == "python3":
            return [f"{self.python_env}/bin/python3", *argv[1:]]
        return list(argv)

    def _cpu(self, before: int | None, usage) -> float | None:
        """The command's CPU seconds: its cgroup's delta, else the reaped rusage (which
        counts the command and the descendants it waited for), else None."""
        after = self.cgroups.cpu_ns() if before is not None else None
        if before is not None and after is not None:
            return round((after - before) / 1e9, 6)
        if usage is not None:
            return round(usage.ru_utime + usage.ru_stime, 6)
        return None

    def _finish(self, proc: subprocess.Popen, reader, buffer: TailBuffer, t0: float,
                timed_out: bool, cpu_seconds: float | None = None) -> ExecResult:
        reader.finish(grace=2.0)
        code = None if timed_out else proc.returncode
        if code is not None and code < 0:
            code = 128 - code  # killed by a signal: report it the shell's way
        return ExecResult(
            exit_code=code,
            output=buffer.text(),
            timed_out=timed_out,
            output_dropped_bytes=buffer.dropped,
            duration=time.monotonic() - t0,
            cpu_seconds=cpu_seconds,
        )


class BwrapSandbox(_BaseSandbox):
    def __init__(self, request: SandboxRequest, root: str, probe: bwrap.Probe, log: LogFn):
        net = "none"
        if request.network:
            if netns.slirp4netns_path():
                net = "slirp4netns"
            else:
                if _truthy("FORGE_REQUIRE_ISOLATION"):
                    raise SandboxError(
                        "Sandbox creation",
                        "network isolation unavailable: slirp4netns (or /dev/net/tun) missing and "
                        f"FORGE_REQUIRE_ISOLATION=1; fix: {INSTALL_HINT}",
                    )
                net = "host"
                log("[Warn] Network isolation is OFF: slirp4netns or /dev/net/tun unavailable; "
                    "the candidate shares the worker's network, loopback services included")
        self.policy: egress.Policy | None = None
        if net == "slirp4netns":
            try:
                self.policy = egress.build(request.egress)
            except (egress.EgressError, OSError) as exc:
                raise SandboxError("Sandbox creation", f"egress policy: {exc}") from exc
            egress.log_once(self.policy)
            for note in self.policy.notes:
                log(f"[Warn] {note}")
        host_uid = bwrap.sandbox_host_uid() if probe.drop_uid else None
        # RLIMIT_NPROC is ignored for host uid 0: then only a pids cgroup caps processes.
        as_host_root = host_uid is None and os.geteuid() == 0
        super().__init__(request, root, bwrap.INSIDE_WORKDIR, host_uid,
                         ALL_CONTROLLERS if as_host_root
                         else tuple(c for c in ALL_CONTROLLERS if c != "pids"))
        self.python_env = bwrap.INSIDE_PYTHON_ENV
        try:
            self.launch = bwrap.plan_launch(root, host_uid)
            self.net = net
            self.bwrap = probe.bwrap or "bwrap"
            self.etc = bwrap.etc_binds(self.net, sandbox_parent(), _own_identity())
        except BaseException:
            self.cgroups.remove()
            raise
        net_words = {
            "none": "net ns (no network)",
            "slirp4netns": "net ns + slirp4netns outbound-only ("
                           + (self.policy.words() if self.policy else "") + ")",
            "host": "HOST NETWORK (slirp4netns missing)",
        }[self.net]
        if as_host_root and "pids" not in self.cgroups.dirs:
            log("[Warn] No process cap: the sandbox runs as host uid 0 (RLIMIT_NPROC does not "
                "apply) and no pids cgroup is writable; a fork bomb runs until the deadline")
        if host_uid is not None:
            who = f"host uid {host_uid}"
        elif as_host_root:
            who = "host uid 0 without capabilities"
        else:
            who = f"host uid {os.geteuid()}"
        extra = self.cgroups.describe()
        self.isolation = (
            f"bubblewrap: fs ro + private /sandbox, user ns ({who}), pid/ipc/uts ns, "
            f"{net_words}, rlimits" + (f", {extra}" if extra else "")
        )

    def exec(self, argv: list[str], timeout: int, output_cap: int) -> ExecResult:
        command = self._argv(argv)
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        out_r, out_w = os.pipe()
        full = bwrap.build_argv(
            self.bwrap,
            host_workdir=self.host_workdir,
            etc=self.etc,
            share_host_net=self.net == "host",
            tmpfs_bytes=self.tmpfs_bytes,
            info_fd=info_w,
            block_fd=block_r,
            command=command,
            python_binds=self.launch.binds,
            python_env=self.host_python_env,
        )
        limits = _rlimits(self.request.limits, timeout)
        full, preexec = self.launch.spawn(full, limits)
        buffer = TailBuffer(output_cap)
        cpu0 = self.cgroups.cpu_ns()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=out_w,
                pass_fds=(info_w, block_r),
                env=self._env(bwrap.INSIDE_WORKDIR, "/tmp", command),
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in (info_r, info_w, block_r, block_w, out_r, out_w):
                os.close(fd)
            raise SandboxError("Execution", f"could not start bwrap: {exc}", self.id) from exc
        for fd in (info_w, block_r, out_w):
            os.close(fd)
        reader = pump(out_r, buffer)
        pidfd = None
        slirp = None
        timed_out = False
        try:
            child = _read_child_pid(info_r, 10.0)
            if child is None:  # bwrap failed before starting the sandbox: say why
                proc.wait(timeout=10)
                reader.finish(grace=2.0)
                raise SandboxError(
                    "Execution", f"bwrap could not set up the sandbox: {buffer.text()[-500:]}",
                    self.id)
            pidfd = os.pidfd_open(child)
            self.cgroups.add(child)
            if self.launch.uid is None:  # else set by the launch, before bwrap started
                for which, soft, hard in limits:
                    resource.prlimit(child, which, (soft, hard))
            if self.net == "slirp4netns":
                try:
                    slirp = netns.Slirp(child)
                except OSError as exc:
                    raise SandboxError("Execution", f"network setup failed: {exc}",
                                       self.id) from exc
                try:  # before the command is released: it never runs without the policy
                    rtnetlink.install(child, self.policy.routes, egress.IPV6_OFF)
                except OSError as exc:
                    raise SandboxError(
                        "Execution", f"the egress policy could not be installed ({exc}); "
                        "the candidate did not run", self.id) from exc
            try:
                os.write(block_w, b"1")  # let the command start
            except BrokenPipeError:  # the sandbox died during setup: say why
                proc.wait(timeout=10)
                reader.finish(grace=2.0)
                raise SandboxError(
                    "Execution", f"the sandbox died during setup (exit {proc.returncode}): "
                    f"{buffer.text()[-500:]}", self.id) from None
            os.close(block_w)
            block_w = -1
            timed_out = not _wait(proc, max(timeout - (time.monotonic() - t0), 0.1))
        finally:
            if block_w != -1:
                os.close(block_w)
            # Killing the PID namespace's init kills every process in the sandbox.
            if pidfd is not None:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except (ProcessLookupError, OSError):
                    pass
                os.close(pidfd)
            if proc.returncode is None:  # not reaped: the group cannot be someone else's
                _kill_group(proc.pid)
            _reap(proc)
            self.cgroups.kill_all()
            if slirp is not None:
                slirp.stop()
        # No rusage fallback here: with a PID namespace, bwrap's outer process exits once
        # the command has, without waiting for the namespace's init, so its rusage holds
        # none of the candidate's time. Without a cpu cgroup the figure is unknown.
        return self._finish(proc, reader, buffer, t0, timed_out, self._cpu(cpu0, None))


PIP_SHIM = "installer"  # in the python env: a directory holding only a link to the host's pip


def _make_python_env(path: str, host_uid: int | None) -> None:
    """A venv skeleton over the base interpreter: ``python3`` starts with the standard
    library and whatever the candidate's requirements install here, nothing of the host's
    site-packages (no host packages, no host ``.pth`` code at every start)."""
    files = python_env_files()
    for rel in files.dirs:
        os.makedirs(os.path.join(path, rel), 0o755, exist_ok=True)
    with open(os.path.join(path, "pyvenv.cfg"), "w", encoding="utf-8") as fh:
        fh.write(files.pyvenv_cfg)
    for name in ("python3", "python"):
        os.symlink(candidate_python(), os.path.join(path, "bin", name))
    pip_dir = bwrap.base_pip_dir()
    if pip_dir:
        os.mkdir(os.path.join(path, PIP_SHIM), 0o755)
        os.symlink(os.path.join(pip_dir, "pip"), os.path.join(path, PIP_SHIM, "pip"))
    if host_uid is not None:  # the installer runs as the sandbox's uid
        for rel in ("", *files.dirs):
            os.chown(os.path.join(path, rel), host_uid, host_uid)


def _kill_group(pgid: int) -> None:
    """SIGKILL a process group that may already be gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for ``proc`` to exit, without reaping it (``_reap`` does, for its rusage);
    False on timeout.

    Popen.wait(timeout) polls with sleeps of up to 50 ms, which would be most of a quick
    candidate's overhead; a pidfd wakes us the moment the process exits.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    return bool(ready)


def _reap(proc: subprocess.Popen):
    """Wait for ``proc`` and return its rusage (its own CPU time and that of the
    descendants it waited for); None if it was reaped already. Sets ``proc.returncode``
    as Popen.wait would."""
    if proc.returncode is not None:
        return None
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        proc.wait()
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage


def _read_child_pid(fd: int, timeout: float) -> int | None:
    """bwrap's --info-fd JSON, read until EOF; None if bwrap died first."""
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


class PlainSandbox(_BaseSandbox):
    """No bubblewrap: rlimits, scrubbed env, deadline, group + cgroup kill. No fs isolation."""

    def __init__(self, request: SandboxRequest, root: str, reason: str):
        super().__init__(request, root, "")
        self.workdir = self.host_workdir
        self.tmpdir = os.path.join(root, "tmp")
        os.mkdir(self.tmpdir, 0o700)
        extra = self.cgroups.describe()
        self.isolation = (
            f"NONE: {reason}; only rlimits, scrubbed env, deadline and process-group kill"
            + (f", {extra}" if extra else "")
        )

    def exec(self, argv: list[str], timeout: int, output_cap: int) -> ExecResult:
        limits = _rlimits(self.request.limits, timeout)
        if os.geteuid() != 0:
            # Per-uid, counting all the worker's processes: leave it to the pids cgroup.
            limits = [lim for lim in limits if lim[0] != resource.RLIMIT_NPROC]
        procs_files = [os.path.join(p, "cgroup.procs") for p in self.cgroups.paths()]

        def apply() -> None:  # preexec_fn: in the child after fork, before exec
            for path in procs_files:
                with open(path, "w") as fh:
                    fh.write("0")
            for which, soft, hard in limits:
                resource.setrlimit(which, (soft, hard))

        out_r, out_w = os.pipe()
        buffer = TailBuffer(output_cap)
        cpu0 = self.cgroups.cpu_ns()
        t0 = time.monotonic()
        command = self._argv(argv)
        try:
            proc = subprocess.Popen(
                command,
                cwd=self.host_workdir,
                env=self._env(self.host_workdir, self.tmpdir, command),
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=out_w,
                preexec_fn=apply,
                start_new_session=True,
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            os.close(out_r)
            os.close(out_w)
            raise SandboxError("Execution", f"could not start the process: {exc}",
                               self.id) from exc
        os.close(out_w)
        reader = pump(out_r, buffer)
        timed_out = False
        usage = None
        try:
            timed_out = not _wait(proc, timeout)
        finally:
            _kill_group(proc.pid)
            usage = _reap(proc)
            self.cgroups.kill_all()
        return self._finish(proc, reader, buffer, t0, timed_out, self._cpu(cpu0, usage))


# --------------------------------------------------------------------------- leftovers
#
# A worker killed with SIGKILL never runs ``delete``: its sandboxes' processes die with it
# (--die-with-parent), but their directories and cgroups stay. Each sandbox root holds
# its owner's pid and start time; the first sandbox a process creates sweeps the roots
# whose owner is gone, and empty forge cgroups older than ten minutes.

OWNER_FILE = ".forge-owner"

_swept = False


def _identity(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat_line = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = stat_line.rsplit(")", 1)[-1].split()
    return f"{pid}:{fields[19]}" if len(fields) > 19 else None


_own: tuple[int, str | None] | None = None


def _own_identity() -> str | None:
    """This process's ``_identity``, read once per process (a fork gets its own)."""
    global _own
    if _own is None or _own[0] != os.getpid():
        _own = (os.getpid(), _identity(os.getpid()))
    return _own[1]


def _sweep_leftovers() -> None:
    global _swept
    if _swept:
        return
    _swept = True
    for owner in glob.glob(os.path.join(sandbox_parent(), "forge-*", OWNER_FILE)):
        try:
            with open(owner) as fh:
                recorded = fh.read().strip()
            pid = int(recorded.split(":")[0])
        except (OSError, ValueError):
            continue
        if _identity(pid) != recorded:
            top = os.path.dirname(owner)
            if os.path.basename(top).startswith("forge-view-"):
                bwrap.remove_view_dir(top)  # never recursive: may hold a mount point
            else:
                shutil.rmtree(top, ignore_errors=True)
    now = time.time()
    for controller in ALL_CONTROLLERS:
        base = _controller_base(controller)
        if base is None:
            continue
        for path in glob.glob(os.path.join(base, "forge-local-*")):
            try:
                if now - os.stat(path).st_mtime > 600:
                    _rmdir(path)  # refused while any process is still inside
            except OSError:
                pass


def prepare_process() -> None:
    """Per-process set-up that must happen while the process is single-threaded (a pool
    process calls it at start; later calls are cheap no-ops): see bwrap.share_prefixes."""
    try:
        bwrap.share_prefixes(sandbox_parent(), _own_identity())
    except OSError:
        pass  # sandboxes then mount the prefix themselves, per launch


class LocalBackend:
    name = "local"
    label = "Local"

    slots_dir: str | None = None  # default: forge-cores in the sandbox parent directory

    def reserve(self, request: SandboxRequest, log: LogFn) -> slots.CoreSlot:
        """A core of this machine for an ``exclusive`` candidate (see ``slots``): shared
        by every worker process on the machine through the sandbox parent directory."""
        return slots.acquire(
            self.slots_dir or os.path.join(sandbox_parent(), "forge-cores"),
            on_wait=lambda: log("[Local] Waiting for a free core (exclusive competition)..."))

    def create(self, request: SandboxRequest, log: LogFn,
               status: CreateStatus | None = None) -> BwrapSandbox | PlainSandbox:
        try:
            _sweep_leftovers()
        except Exception:  # noqa: BLE001 - housekeeping must never stop a run
            pass
        probe = bwrap.probe()
        if probe.drop_uid:
            prepare_process()
        if not probe.ok and _truthy("FORGE_REQUIRE_ISOLATION"):
            raise SandboxError(
                "Sandbox creation",
                f"filesystem isolation unavailable ({probe.reason}) and "
                f"FORGE_REQUIRE_ISOLATION=1; fix: {INSTALL_HINT}",
            )
        root = None
        try:
            root = tempfile.mkdtemp(prefix=f"forge-{_safe(request.candidate_id)}-",
                                    dir=sandbox_parent())
            os.chmod(root, 0o711)
            me = _own_identity()
            if me:
                with open(os.path.join(root, OWNER_FILE), "w") as fh:
                    fh.write(me)
            if probe.ok:
                return BwrapSandbox(request, root, probe, log)
            sandbox = PlainSandbox(request, root, f"bubblewrap unavailable ({probe.reason})")
            log(f"[Warn] Filesystem isolation is OFF: bubblewrap unavailable ({probe.reason}); "
                f"the candidate can read and write whatever the worker can. Fix: {INSTALL_HINT}")
            return sandbox
        except SandboxError:
            if root:
                shutil.rmtree(root, ignore_errors=True)
            raise
        except OSError as exc:
            if root:
                shutil.rmtree(root, ignore_errors=True)
            raise SandboxError("Sandbox creation", str(exc)) from exc


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
