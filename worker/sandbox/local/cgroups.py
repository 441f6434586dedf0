"""Per-sandbox cgroups: process and memory caps, equal CPU and I/O weight, CPU time.

Best effort: a controller whose hierarchy is not writable is left out, and
``Cgroups.describe`` says what is in force. ``FORGE_NO_CGROUPS=1`` makes none.
"""

from __future__ import annotations

import glob
import os
import signal
import threading
import time
from collections.abc import Callable

from worker.settings import settings

MiB = 1024 * 1024

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
        if settings.no_cgroups:
            return
        made: dict[str, bool] = {}  # real path -> made by us
        for controller in controllers:
            base = controller_base(controller)
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

    def add_beside(self, pid: int) -> Callable[[], None]:
        """``add(pid)`` in a thread of its own; returns the wait for it, which raises
        what ``add`` raised (call it on every path, before the process may run).

        A v1 ``cgroup.procs`` write can sleep ~10 ms for an RCU grace period (the first
        attach after a quiet spell): no CPU, only time, which the network set-up can use.
        """
        if not self.dirs:
            return lambda: None
        failed: list[BaseException] = []

        def attach() -> None:
            try:
                self.add(pid)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiter
                failed.append(exc)

        thread = threading.Thread(target=attach, name="forge-cgroup-attach", daemon=True)
        thread.start()

        def wait() -> None:
            thread.join()
            if failed:
                raise failed[0]
        return wait

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
            if _is_v2(os.path.dirname(path)):  # v1 has no cgroup.kill: not tried there
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


def controller_base(controller: str) -> str | None:
    """Where a sandbox cgroup for ``controller`` goes (looked up once per process: ~0.1
    ms each, five per sandbox). v1 names the I/O controller blkio, v2 io; cpuacct is v1
    only (on v2, cpu.stat exists in every cgroup)."""
    key = (os.getpid(), controller)
    if key not in _bases:
        _bases[key] = _find_controller_base(controller)
    return _bases[key]


def _find_controller_base(controller: str) -> str | None:
    if controller == "io":
        base = cgroup_base("blkio", v2=False)
        if base is None:
            return cgroup_base("io")
        # No weight file: no proportional I/O scheduler (none, mq-deadline): no cgroup.
        return base if any(os.path.exists(os.path.join(base, f)) for f, _ in IO_WEIGHTS_V1) \
            else None
    if controller == "cpuacct":
        return cgroup_base("cpuacct", v2=False)
    return cgroup_base(controller)


def cgroup_base(controller: str, v2: bool = True) -> str | None:
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


def sweep_stale(prefix: str, older_than: float) -> None:
    """Remove the empty cgroups named ``prefix*`` not touched for ``older_than`` seconds
    (a dead worker's; a cgroup with a process still inside is refused by the kernel)."""
    now = time.time()
    for controller in ALL_CONTROLLERS:
        base = controller_base(controller)
        if base is None:
            continue
        for path in glob.glob(os.path.join(base, prefix + "*")):
            try:
                if now - os.stat(path).st_mtime > older_than:
                    _rmdir(path)
            except OSError:
                pass
