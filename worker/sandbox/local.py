"""The local backend: each candidate in a fresh directory as its own process group.

The process runs from an argv list (no shell ever sees the objective), under resource
limits, and is killed whole (its process group) at the deadline.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from worker.records import Limits
from worker.sandbox.base import Download, ExecResult, LogFn, SandboxError, SandboxRequest
from worker.sandbox.capture import TailBuffer, pump


def _limit_setter(limits: Limits, timeout: int):
    """preexec_fn: applied in the child after fork, before exec."""
    cpu = limits.cpu_seconds or max(timeout * 2, 5)

    def apply() -> None:
        os.setsid()
        mem = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        fsize = limits.max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


class LocalSandbox:
    def __init__(self, request: SandboxRequest, root: str):
        self.request = request
        self.id = f"local-{uuid.uuid4().hex[:12]}"
        self.root = root
        self.workdir = os.path.join(root, "work")
        os.mkdir(self.workdir, 0o700)
        self.isolation = "process group + rlimits (no filesystem isolation)"

    def _inside(self, path: str) -> str:
        real = os.path.normpath(path)
        if os.path.commonpath([real, self.workdir]) != self.workdir:
            raise SandboxError("path", f"{path!r} is outside the sandbox", self.id)
        return real

    def upload(self, content: bytes, path: str, timeout: int) -> None:
        target = self._inside(path)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)

    def _env(self) -> dict[str, str]:
        home = self.workdir
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": home,
            "TMPDIR": home,
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env.update(self.request.env)
        return env

    def exec(self, argv: list[str], timeout: int, output_cap: int) -> ExecResult:
        if argv and argv[0] == "python3":
            argv = [candidate_python(), *argv[1:]]
        buffer = TailBuffer(output_cap)
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_limit_setter(self.request.limits, timeout),
                close_fds=True,
            )
        except OSError as exc:
            raise SandboxError("Execution", f"could not start the process: {exc}", self.id) from exc
        reader = pump(proc.stdout, buffer)  # type: ignore[arg-type]
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            self._kill_group(proc.pid)
            proc.wait()
        reader.join(timeout=5)
        return ExecResult(
            exit_code=None if timed_out else proc.returncode,
            output=buffer.text(),
            timed_out=timed_out,
            output_dropped_bytes=buffer.dropped,
            duration=time.monotonic() - t0,
        )

    @staticmethod
    def _kill_group(pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def download(self, path: str, max_bytes: int, timeout: int) -> Download:
        target = self._inside(path)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return Download(None)
        except OSError as exc:
            if os.path.islink(target):
                return Download(None, problem="artifact is a symlink: not followed, ignored")
            return Download(None, problem=f"artifact unreadable: {exc}")
        with os.fdopen(fd, "rb") as fh:
            import stat

            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return Download(None, problem="artifact is not a regular file: ignored")
            data = fh.read(max_bytes + 1)
        return Download(data[:max_bytes], truncated=len(data) > max_bytes)

    def delete(self) -> None:
        shutil.rmtree(self.root, ignore_errors=False)


def candidate_python() -> str:
    """The worker's base interpreter, outside any virtualenv (candidates get no packages)."""
    return os.path.realpath(sys.executable)


class LocalBackend:
    name = "local"
    label = "Local"

    def create(self, request: SandboxRequest, log: LogFn) -> LocalSandbox:
        try:
            root = tempfile.mkdtemp(prefix=f"forge-{request.candidate_id}-")
            return LocalSandbox(request, root)
        except OSError as exc:
            raise SandboxError("Sandbox creation", str(exc)) from exc
