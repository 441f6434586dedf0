"""No bubblewrap: a candidate as a plain process of the worker's uid.

Rlimits, a scrubbed environment, the deadline, a process-group (and cgroup) kill, and
NO filesystem or network isolation: ``isolation`` starts with "NONE:".
"""

from __future__ import annotations

import os
import resource
import subprocess
import time

from worker.sandbox.base import (
    Boundary,
    ExecResult,
    NetworkAccess,
    Phase,
    SandboxError,
    SandboxRequest,
)
from worker.sandbox.capture import TailBuffer, pump
from worker.sandbox.local import process
from worker.sandbox.local.sandbox import LocalSandbox


class PlainSandbox(LocalSandbox):
    """No bubblewrap: rlimits, scrubbed env, deadline, group + cgroup kill. No fs isolation."""

    def __init__(self, request: SandboxRequest, root: str, reason: str):
        super().__init__(request, root, "")
        self.workdir = self.host_workdir
        self.tmpdir = os.path.join(root, "tmp")
        os.mkdir(self.tmpdir, 0o700)
        self.boundaries = frozenset({Boundary.LIMITS})
        self.network = NetworkAccess.HOST  # network=false cannot be enforced here
        extra = self.cgroups.describe()
        self.isolation = (
            f"NONE: {reason}; only rlimits, scrubbed env, deadline and process-group kill"
            + (f", {extra}" if extra else "")
        )

    def exec(self, argv: list[str], timeout: int, output_cap: int) -> ExecResult:
        limits = process.rlimits(self.request.limits, timeout)
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
            raise SandboxError(Phase.EXECUTION, f"could not start the process: {exc}",
                               self.id) from exc
        os.close(out_w)
        reader = pump(out_r, buffer)
        timed_out = False
        usage = None
        try:
            timed_out = not process.wait(proc, timeout)
        finally:
            process.kill_group(proc.pid)
            usage = process.reap(proc)
            self.cgroups.kill_all()
        return self._finish(proc, reader, buffer, t0, timed_out, self._cpu(cpu0, usage))
