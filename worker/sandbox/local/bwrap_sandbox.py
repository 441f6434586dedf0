"""A candidate in bubblewrap: namespaces, the mounts of ``visible``, rlimits, cgroups,
its own network (``netns``/``egress``), and a deadline that kills its PID namespace."""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from worker.sandbox import egress, netns, rtnetlink
from worker.sandbox.base import (
    Boundary,
    ExecResult,
    LogFn,
    NetworkAccess,
    Phase,
    SandboxError,
    SandboxRequest,
)
from worker.sandbox.capture import TailBuffer, pump
from worker.sandbox.local import cgroups, process
from worker.sandbox.local.bwrap import INSTALL_HINT, Probe, require_isolation
from worker.sandbox.local.etc import etc_binds
from worker.sandbox.local.launch import plan_launch, sandbox_host_uid
from worker.sandbox.local.owner import own_identity
from worker.sandbox.local.parent_dir import sandbox_parent
from worker.sandbox.local.sandbox import LocalSandbox
from worker.sandbox.visible import INSIDE_PYTHON_ENV, INSIDE_WORKDIR, build_argv

logger = logging.getLogger(__name__)

# The network modes: what the candidate gets, and the /etc skeleton's key (etc.py).
_NET_MODES = {"none": NetworkAccess.NONE, "slirp4netns": NetworkAccess.OUTBOUND,
              "host": NetworkAccess.HOST}
BOUNDARIES = frozenset({Boundary.FILESYSTEM, Boundary.PROCESSES, Boundary.USER,
                        Boundary.NETWORK, Boundary.LIMITS})


class BwrapSandbox(LocalSandbox):
    warm: Warm | None = None  # its interpreter already started (``make_warm``)
    # A command was let go; what it returns is called when the command ended (warm pool).
    on_release: Callable[[], Callable[[], None] | None] | None = None

    def __init__(self, request: SandboxRequest, root: str, probe: Probe, log: LogFn):
        net = "none"
        if request.network:
            if netns.slirp4netns_path():
                net = "slirp4netns"
            else:
                if require_isolation():
                    raise SandboxError(
                        Phase.CREATE,
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
                raise SandboxError(Phase.CREATE, f"egress policy: {exc}") from exc
            egress.log_once(self.policy)
            for note in self.policy.notes:
                log(f"[Warn] {note}")
        host_uid = sandbox_host_uid() if probe.drop_uid else None
        # RLIMIT_NPROC is ignored for host uid 0: then only a pids cgroup caps processes.
        as_host_root = host_uid is None and os.geteuid() == 0
        super().__init__(request, root, INSIDE_WORKDIR, host_uid,
                         cgroups.ALL_CONTROLLERS if as_host_root
                         else tuple(c for c in cgroups.ALL_CONTROLLERS if c != "pids"))
        self.python_env = INSIDE_PYTHON_ENV
        try:
            self.launch = plan_launch(root, host_uid)
            self.net = net
            self.network = _NET_MODES[net]
            self.boundaries = BOUNDARIES if self.network is not NetworkAccess.HOST \
                else BOUNDARIES - {Boundary.NETWORK}
            self.bwrap = probe.bwrap or "bwrap"
            self.etc = etc_binds(self.net, sandbox_parent(), own_identity())
        except BaseException:
            self.cgroups.remove()
            raise
        net_words = {
            NetworkAccess.NONE: "net ns (no network)",
            NetworkAccess.OUTBOUND: "net ns + slirp4netns outbound-only ("
                                    + (self.policy.words() if self.policy else "") + ")",
            NetworkAccess.HOST: "HOST NETWORK (slirp4netns missing)",
        }[self.network]
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

    # -- running a command: started and held by bwrap, released, waited for, stopped

    def exec(self, argv: list[str], timeout: int, output_cap: int) -> ExecResult:
        """Run ``argv`` in this sandbox; the warm interpreter (``make_warm``) runs it when
        it can run it exactly as a cold ``python3`` would, else it is discarded first."""
        warm, self.warm = self.warm, None
        if warm is not None:
            spec = warm.spec_for(argv, timeout, output_cap,
                                 self._env(INSIDE_WORKDIR, "/tmp", argv))
            ran = None if spec is None or self.touched else self._go(warm, spec, timeout)
            if ran is not None:
                return ran
            warm.discard()
        held = self._start(self._argv(argv), timeout, output_cap)
        try:
            self._release(held)
        except BaseException:
            held.stop()
            raise
        return self._wait(held, held.t0, timeout)

    def make_warm(self, timeout: int, output_cap: int) -> None:
        """Set this sandbox up for a candidate not yet known: bwrap, cgroups, rlimits,
        network and egress policy as ``exec`` would for ``timeout`` and ``output_cap``,
        and ``python3`` started on ``zygote``, waiting for its command line."""
        go_r, go_w = os.pipe()
        try:
            command = [f"{INSIDE_PYTHON_ENV}/bin/python3", "-c", zygote_source(), str(go_r)]
            env = self._env(INSIDE_WORKDIR, "/tmp", ["python3"])
            held = self._start(command, timeout, output_cap, go_fd=go_r)
        except BaseException:
            os.close(go_w)
            raise
        finally:
            os.close(go_r)
        try:
            self._release(held)
        except BaseException:
            os.close(go_w)
            held.stop()
            raise
        self.warm = Warm(held, go_w, timeout, output_cap, env)

    def _go(self, warm: Warm, spec: bytes, timeout: int) -> ExecResult | None:
        """The warm interpreter runs the candidate from now: its deadline and CPU count
        from here. None if it died while it waited (nothing of the command ran)."""
        held = warm.held
        held.cpu0 = self.cgroups.cpu_ns()
        t0 = time.monotonic()
        try:
            warm.send(spec)
        except OSError as exc:
            logger.debug("warm interpreter gone before its command (%s): %s", exc,
                         held.buffer.text()[-200:])
            return None
        return self._wait(held, t0, timeout)

    def _wait(self, held: Held, t0: float, timeout: int) -> ExecResult:
        """The command runs from ``t0``: wait for it or its deadline, then stop everything
        it started. The warm pool hears when it starts and ends (``on_release``)."""
        ended = self.on_release() if self.on_release is not None else None
        try:
            timed_out = not process.wait(held.proc, max(timeout - (time.monotonic() - t0), 0.1))
        finally:
            if ended is not None:
                ended()
            held.stop()
        return self._finish(held.proc, held.reader, held.buffer, t0, timed_out,
                            self._cpu(held.cpu0, None))

    def _start(self, command: list[str], timeout: int, output_cap: int,
               go_fd: int | None = None) -> Held:
        """bwrap started and holding ``command``: in its cgroups, with its rlimits, its
        network up and the egress policy installed. Nothing of the command has run."""
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        out_r, out_w = os.pipe()
        full = build_argv(
            self.bwrap,
            host_workdir=self.host_workdir,
            etc=self.etc,
            share_host_net=self.network is NetworkAccess.HOST,
            tmpfs_bytes=self.tmpfs_bytes,
            info_fd=info_w,
            block_fd=block_r,
            command=command,
            python_binds=self.launch.binds,
            python_env=self.host_python_env,
        )
        limits = process.rlimits(self.request.limits, timeout)
        preexec = self.launch.preexec(limits)
        env = self._env(INSIDE_WORKDIR, "/tmp", command)
        buffer = TailBuffer(output_cap)
        cpu0 = self.cgroups.cpu_ns()
        t0 = time.monotonic()
        try:
            with self.launch.identity():  # vfork: bwrap starts as the sandbox's uid
                proc = subprocess.Popen(
                    full,
                    stdin=subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=out_w,
                    pass_fds=(info_w, block_r) + (() if go_fd is None else (go_fd,)),
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=preexec,
                )
        except (OSError, subprocess.SubprocessError) as exc:
            for fd in (info_r, info_w, block_r, block_w, out_r, out_w):
                os.close(fd)
            raise SandboxError(Phase.EXECUTION, f"could not start bwrap: {exc}", self.id) from exc
        for fd in (info_w, block_r, out_w):
            os.close(fd)
        held = Held(proc, pump(out_r, buffer), buffer, block_w, t0, cpu0, self.cgroups)
        attached = None
        try:
            child = process.read_child_pid(info_r, 10.0)
            if child is None:  # bwrap failed before starting the sandbox: say why
                proc.wait(timeout=10)
                held.reader.finish(grace=2.0)
                raise SandboxError(
                    Phase.EXECUTION, f"bwrap could not set up the sandbox: {buffer.text()[-500:]}",
                    self.id)
            held.pidfd = os.pidfd_open(child)
            if self.net == "slirp4netns":  # the cgroups joined while the network comes up
                attached = self.cgroups.add_beside(child)
            else:
                self.cgroups.add(child)
            try:  # held on the block fd: the command inherits them
                self.launch.limit(child, limits)
            except OSError as exc:
                raise SandboxError(Phase.EXECUTION, f"the rlimits could not be set ({exc}); "
                                   "the candidate did not run", self.id) from exc
            if self.network is NetworkAccess.OUTBOUND:
                try:
                    held.slirp = netns.Slirp(child)
                except OSError as exc:
                    raise SandboxError(Phase.EXECUTION, f"network setup failed: {exc}",
                                       self.id) from exc
                try:  # before the command is released: it never runs without the policy
                    rtnetlink.install(child, self.policy.routes, egress.IPV6_OFF)
                except OSError as exc:
                    raise SandboxError(
                        Phase.EXECUTION, f"the egress policy could not be installed ({exc}); "
                        "the candidate did not run", self.id) from exc
            if attached is not None:  # in its cgroups before it runs, as without the thread
                wait, attached = attached, None
                wait()
        except BaseException:
            if attached is not None:  # set-up failed before the wait: let the thread end
                try:
                    attached()
                except OSError:
                    pass
            held.stop()
            raise
        return held

    def _release(self, held: Held) -> None:
        """Let the held command start."""
        try:
            os.write(held.block_w, b"1")
        except BrokenPipeError:  # the sandbox died during setup: say why
            held.proc.wait(timeout=10)
            held.reader.finish(grace=2.0)
            raise SandboxError(
                Phase.EXECUTION, f"the sandbox died during setup (exit {held.proc.returncode}): "
                f"{held.buffer.text()[-500:]}", self.id) from None
        finally:
            os.close(held.block_w)
            held.block_w = -1

    def delete(self) -> None:
        warm, self.warm = self.warm, None
        if warm is not None:
            warm.discard()
        super().delete()


@functools.cache
def zygote_source() -> str:
    """The warm interpreter's program (it runs in the sandbox, so it travels as source)."""
    return (Path(__file__).parent / "zygote.py").read_text(encoding="utf-8")


class Held:
    """One bwrap process of a sandbox, from its start to ``stop``."""

    def __init__(self, proc: subprocess.Popen, reader, buffer: TailBuffer, block_w: int,
                 t0: float, cpu0: int | None, cgroups_: cgroups.Cgroups):
        self.proc = proc
        self.reader = reader
        self.buffer = buffer
        self.block_w = block_w
        self.t0 = t0
        self.cpu0 = cpu0
        self.cgroups = cgroups_
        self.pidfd: int | None = None
        self.slirp: netns.Slirp | None = None

    def stop(self) -> None:
        """Kill everything it started: its PID namespace (killing the namespace's init
        kills every process in it), its cgroups' members, its slirp4netns."""
        if self.block_w != -1:
            os.close(self.block_w)
            self.block_w = -1
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass
            os.close(self.pidfd)
            self.pidfd = None
        if self.proc.returncode is None:  # not reaped: the group cannot be someone else's
            process.kill_group(self.proc.pid)
        process.reap(self.proc)
        self.cgroups.kill_all()
        if self.slirp is not None:
            self.slirp.stop()
            self.slirp = None


class Warm:
    """A held sandbox's interpreter waiting on ``zygote`` for its command line."""

    def __init__(self, held: Held, go_w: int, timeout: int, output_cap: int,
                 env: dict[str, str]):
        self.held = held
        self.go_w = go_w
        self.timeout = timeout
        self.output_cap = output_cap
        self.env = env

    def spec_for(self, argv: list[str], timeout: int, output_cap: int,
                 env: dict[str, str]) -> bytes | None:
        """What to send for ``argv``; None when a cold start could differ: not ``python3
        SCRIPT ...`` or ``python3 -m MODULE ...``, or another deadline, output cap or
        environment than the interpreter was started with."""
        if len(argv) < 2 or argv[0] != "python3" or (
                argv[1].startswith("-") and (argv[1] != "-m" or len(argv) < 3)):
            return None
        if (timeout, output_cap, env) != (self.timeout, self.output_cap, self.env):
            return None
        if any("\0" in arg for arg in argv):
            return None
        return b"\0".join(os.fsencode(arg) for arg in argv[1:])

    def send(self, spec: bytes) -> None:
        """Hand the interpreter its command line: from here it runs."""
        try:
            view = memoryview(spec)
            while view:
                view = view[os.write(self.go_w, view):]
        finally:
            os.close(self.go_w)
            self.go_w = -1

    def discard(self) -> None:
        """Unused: the interpreter reads EOF and exits; the held sandbox is stopped."""
        if self.go_w != -1:
            os.close(self.go_w)
            self.go_w = -1
        self.held.stop()
