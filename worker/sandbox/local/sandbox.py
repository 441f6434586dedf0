"""What every local sandbox has: a host directory, safe file transfer, and the result.

A sandbox root (in ``parent_dir.sandbox_parent()``) holds ``work``, the candidate's
working directory, and ``python``, its python environment (``pyenv``). Uploads and
downloads stay inside ``work`` and never follow a symlink, parents included: the
candidate owns that directory and may have planted one. A project is unpacked into
``work`` from the host (``untar``), before the candidate ever runs.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tarfile
import time
import uuid

from worker.sandbox.base import Download, ExecResult, Phase, SandboxError, SandboxRequest
from worker.sandbox.capture import TailBuffer
from worker.sandbox.local import untar
from worker.sandbox.local.cgroups import ALL_CONTROLLERS, Cgroups
from worker.sandbox.local.pyenv import base_pip_dir, make_python_env, python_env_files
from worker.sandbox.local.wheels import install_own_wheels, open_parent
from worker.sandbox.visible import candidate_env

MiB = 1024 * 1024


class LocalSandbox:
    """Files: a host directory ``root`` holding ``work`` (the candidate's workdir)."""

    isolation: str
    touched = False  # its python environment changed since the sandbox was made

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
        make_python_env(self.host_python_env, host_uid)
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
            raise SandboxError(Phase.PATH, f"{path!r} is outside the sandbox", self.id)
        return os.path.relpath(norm, self.workdir).split(os.sep)

    def _open_parent(self, parts: list[str]) -> int:
        """An fd of the directory holding ``parts[-1]``; no component may be a symlink."""
        return open_parent(self.host_workdir, parts)

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
            raise SandboxError(Phase.UPLOAD, f"could not write {path!r}: {exc}", self.id) from exc

    def unpack(self, archive: bytes, workdir: str, timeout: int) -> None:
        """A project bundle written straight into the work directory from the host: no
        process to start (``untar`` treats the archive as hostile and follows no link)."""
        if workdir != self.workdir:
            raise SandboxError(Phase.UPLOAD, f"{workdir!r} is not the work directory", self.id)
        try:
            untar.extract(archive, self.host_workdir, self.host_uid)
        except (OSError, ValueError, tarfile.TarError) as exc:
            raise SandboxError(Phase.UPLOAD, f"could not unpack the project: {exc}",
                               self.id) from exc

    def install_own_wheels(self, requirements_file: str, timeout: int) -> ExecResult | None:
        """A project's requirements when they are only its own pure wheels, installed from
        the host (``wheels``); None when pip must install them, in the sandbox."""
        self.touched = True  # an interpreter started before this would not see them
        t0 = time.monotonic()
        site = os.path.join(self.host_python_env, python_env_files().dirs[-1])
        try:
            lines = install_own_wheels(self.host_workdir, requirements_file, site,
                                       self.host_uid)
        except Exception as exc:  # noqa: BLE001 - a hostile zip: OSError, BadZipFile, EOFError
            return ExecResult(exit_code=1, output=f"installing the project's wheels: {exc}",
                              timed_out=False, output_dropped_bytes=0,
                              duration=time.monotonic() - t0)
        if lines is None:
            return None
        return ExecResult(exit_code=0, output="\n".join(lines), timed_out=False,
                          output_dropped_bytes=0, duration=time.monotonic() - t0)

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
        """The command's whole environment (see ``visible.candidate_env``)."""
        installer = command[1:3] == ["-m", "pip"] and base_pip_dir() is not None
        return candidate_env(self.request.env, home=home, tmp=tmp,
                             python_env=self.python_env, installer=installer)

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
