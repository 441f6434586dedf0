"""A candidate in bubblewrap: namespaces, the mounts of ``visible``, rlimits, cgroups,
its own network (``netns``/``egress``), and a deadline that kills its PID namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import time

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

# The network modes: what the candidate gets, and the /etc skeleton's key (etc.py).
_NET_MODES = {"none": NetworkAccess.NONE, "slirp4netns": NetworkAccess.OUTBOUND,
              "host": NetworkAccess.HOST}
BOUNDARIES = frozenset({Boundary.FILESYSTEM, Boundary.PROCESSES, Boundary.USER,
                        Boundary.NETWORK, Boundary.LIMITS})


class BwrapSandbox(LocalSandbox):
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

    def exec(self, argv: list[str], timeout: int, output_cap: int) -> ExecResult:
        command = self._argv(argv)
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
                    pass_fds=(info_w, block_r),
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
        reader = pump(out_r, buffer)
        pidfd = None
        slirp = None
        attached = None
        timed_out = False
        try:
            child = process.read_child_pid(info_r, 10.0)
            if child is None:  # bwrap failed before starting the sandbox: say why
                proc.wait(timeout=10)
                reader.finish(grace=2.0)
                raise SandboxError(
                    Phase.EXECUTION, f"bwrap could not set up the sandbox: {buffer.text()[-500:]}",
                    self.id)
            pidfd = os.pidfd_open(child)
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
                    slirp = netns.Slirp(child)
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
            try:
                os.write(block_w, b"1")  # let the command start
            except BrokenPipeError:  # the sandbox died during setup: say why
                proc.wait(timeout=10)
                reader.finish(grace=2.0)
                raise SandboxError(
                    Phase.EXECUTION, f"the sandbox died during setup (exit {proc.returncode}): "
                    f"{buffer.text()[-500:]}", self.id) from None
            os.close(block_w)
            block_w = -1
            timed_out = not process.wait(proc, max(timeout - (time.monotonic() - t0), 0.1))
        finally:
            if attached is not None:  # set-up failed before the wait: let the thread end
                try:
                    attached()
                except OSError:
                    pass
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
                process.kill_group(proc.pid)
            process.reap(proc)
            self.cgroups.kill_all()
            if slirp is not None:
                slirp.stop()
        # No rusage fallback here: with a PID namespace, bwrap's outer process exits once
        # the command has, without waiting for the namespace's init, so its rusage holds
        # none of the candidate's time. Without a cpu cgroup the figure is unknown.
        return self._finish(proc, reader, buffer, t0, timed_out, self._cpu(cpu0, None))
