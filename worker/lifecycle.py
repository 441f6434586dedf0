"""One candidate's sandbox lifecycle, written once for every backend.

(fetch a project's bundle) → (reserve a core, if exclusive) → create → upload the script
or unpack the project → (install requirements, before the candidate's clock starts) →
execute with a deadline → retrieve artifact → delete, the delete in ``finally``. Every
outcome comes back as a ``CandidateResult``; nothing here raises into the caller,
because the caller is a chord header task and one exception would cost the whole run
its callback.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from worker import observability, trace
from worker.bundles import ARCHIVE_NAME, UNPACK, BundleError
from worker.records import CandidateResult, CandidateTask, ProjectRef
from worker.sandbox.base import (
    CapacityState,
    CreateStatus,
    NetworkAccess,
    Phase,
    SandboxBackend,
    SandboxError,
    SandboxRequest,
)
from worker.sandbox.visible import build_env

SCRIPT_NAME = "script.py"
OUTPUT_NAME = "discord_post.md"
EXECUTING_LINE = "[Run] Executing..."  # the candidate's own time begins (the tracker reads it)

LogFn = Callable[[str], None]
BundleFn = Callable[[str], bytes]  # a bundle's verified bytes by sha256 (worker.bundles)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def worker_name() -> str:
    return socket.gethostname()


def candidate_command(workdir: str, objective: str,
                      project: ProjectRef | None = None) -> list[str]:
    """The candidate contract: ``python3 SCRIPT "<objective>" <output_path>``, as argv.

    A project unpacked into ``workdir`` starts as ``python3 <workdir>/<entry> ...`` or
    ``python3 -m <module> ...``; commands run in ``workdir``, so ``-m`` finds it there."""
    output = f"{workdir}/{OUTPUT_NAME}"
    if project is None:
        return ["python3", f"{workdir}/{SCRIPT_NAME}", objective, output]
    if project.entry:
        return ["python3", f"{workdir}/{project.entry}", objective, output]
    return ["python3", "-m", project.module, objective, output]


def install_command(task: CandidateTask) -> list[str] | None:
    """pip, in the sandbox's own environment, for the project's requirements.txt and the
    manifest's requirements; None when there is nothing to install. It runs in the work
    directory, inside the sandbox, so the competition's network policy applies to it."""
    wanted: list[str] = []
    if task.project is not None and task.project.requirements_file:
        wanted += ["-r", task.project.requirements_file]
    wanted += task.requirements
    if not wanted:
        return None
    return ["python3", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-input", *wanted]


@functools.cache
def local_wheels_source() -> str:
    """The program that installs a project's own pure wheels without pip (it runs in the
    sandbox, so it travels as source)."""
    return (Path(__file__).parent / "local_wheels.py").read_text(encoding="utf-8")


def local_wheels_command(task: CandidateTask) -> list[str] | None:
    """The quick install, when the requirements are only the project's requirements file
    (which may list nothing but its own wheels); None when pip is needed anyway."""
    if task.project is None or not task.project.requirements_file or task.requirements:
        return None
    return ["python3", "-I", "-c", local_wheels_source(), task.project.requirements_file]


def output_tail(text: str, lines: int = 6, chars: int = 1200) -> str:
    """The last non-empty lines of a command's output, for an error message (pip's
    reason is at the end of what it printed)."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    tail = " | ".join(kept)
    return tail if len(tail) <= chars else "..." + tail[-chars:]


def _why(ran, timeout: int) -> str:
    return f"timed out after {timeout}s" if ran.timed_out else f"exit code {ran.exit_code}"


def shell_command(argv: list[str]) -> str:
    """For backends whose exec goes through a shell: every argument quoted."""
    return shlex.join(argv)


def run_lifecycle(
    backend: SandboxBackend,
    task: CandidateTask,
    log: LogFn,
    env_source: dict[str, str] | None = None,
    owner: str = "",
    on_state: Callable[[CapacityState], None] | None = None,
    bundles: BundleFn | None = None,
) -> CandidateResult:
    """Run one candidate in a fresh sandbox of ``backend`` and describe what happened.

    ``bundles``: how a directory candidate's bundle is fetched by its hash (the worker
    task passes its result backend's cache, ``worker.bundles.fetch_bundle``).

    ``on_state(WAITING)`` / ``on_state(RUNNING)`` (``CapacityState``): the sandbox waits
    for capacity (a budget slot, the account's quota) and then has it. That wait is not
    the candidate's time: it is left out of ``runtime_seconds`` and kept as
    ``timings["slot_wait"]``.
    """
    result = CandidateResult(
        candidate_id=task.candidate_id,
        execution_mode=backend.name,
        started_at=_now(),
        worker=worker_name(),
    )
    label = backend.label
    t0 = time.monotonic()
    trace.mark(f"cand.begin {task.candidate_id}")
    sandbox = None
    reservation = None
    mark = [t0]
    shown: list[CapacityState | None] = [None]

    def state(name: CapacityState) -> None:
        if name != shown[0]:
            shown[0] = name
            observability.candidate_state(backend.name, name)
            if on_state is not None:
                on_state(name)

    status = CreateStatus(on_state=state)

    def phase(name: str) -> None:
        """Seconds since the previous mark go to ``name`` (log calls included)."""
        t = time.monotonic()
        result.timings[name] = round(result.timings.get(name, 0.0) + t - mark[0], 6)
        mark[0] = t
        trace.mark(f"cand.{name} {task.candidate_id}")

    def fail(message: str, error: BaseException | None = None) -> CandidateResult:
        """``error``: the backend's or our own failure, not the candidate's: reported."""
        result.error_message = message
        log(f"[Error] {message}")
        if error is not None:
            observability.report(error, "sandbox_backend", backend=backend.name)
        return result

    try:
        archive = b""
        if task.project is None:
            if hashlib.sha256(task.script.encode("utf-8")).hexdigest() != task.script_sha256:
                return fail("script content does not match its sha256: refusing to run it")
        else:
            if bundles is None:
                return fail("a project candidate, but this worker was given no bundle store")
            try:
                archive = bundles(task.project.sha256)
            except BundleError as exc:
                return fail(f"Project unavailable: {exc}")
            phase("fetch")
        request = SandboxRequest(
            run_id=task.run_id,
            candidate_id=task.candidate_id,
            timeout=task.timeout,
            network=task.network,
            env=build_env(task.env_allow, os.environ if env_source is None else env_source),
            limits=task.limits,
            owner=owner,
            egress=task.egress,
            exclusive=task.exclusive,
            daytona=task.daytona,
            budget=task.budget,
        )
        if request.exclusive:
            try:
                reservation = backend.reserve(request, log)
            except OSError as exc:
                return fail(f"Could not reserve a core for this exclusive competition: {exc}", exc)
            phase("reserve")  # waiting for a core is not the candidate's runtime
            t0 = mark[0]
        log(f"[{label}] Creating sandbox...")
        try:
            sandbox = backend.create(request, log, status)
        except SandboxError as exc:
            result.sandbox_id = exc.sandbox_id
            return fail(f"{Phase.CREATE} failed: {exc}", exc)
        finally:
            result.warnings.extend(status.warnings)
            result.stuck_sandboxes.extend(status.stuck)
        if shown[0] is CapacityState.WAITING:
            state(CapacityState.RUNNING)
        phase("create")
        observability.sandbox_alive(backend.name, +1)
        result.sandbox_id = sandbox.id
        result.isolation = sandbox.isolation
        log(f"[{label}] Sandbox ready: {sandbox.id[:8]}...")
        if not request.network and sandbox.network is not NetworkAccess.NONE:
            log(f"[Warn] The competition allows no network, but this sandbox cannot block "
                f"it (network: {sandbox.network})")

        if task.project is None:
            try:
                sandbox.upload(task.script.encode("utf-8"), f"{sandbox.workdir}/{SCRIPT_NAME}",
                               task.upload_timeout)
            except SandboxError as exc:
                return fail(f"Upload failed: {exc}", exc)
            phase("upload")
            log(f"[{label}] Script uploaded")
        else:
            try:
                failed = _unpack(sandbox, task, archive)
            except SandboxError as exc:
                return fail(f"Upload failed: {exc}", exc)
            phase("upload")
            if failed:
                result.output = failed.output
                return fail(f"Unpacking the project failed ({_why(failed, task.upload_timeout)}):"
                            f" {output_tail(failed.output)}")
            p = task.project
            log(f"[{label}] Project uploaded: {p.files} files, {p.size:,} bytes, "
                f"sha256 {p.sha256[:12]}")

        pip = install_command(task)
        if pip is not None:
            shown = " ".join(pip[pip.index("--no-input") + 1:])
            log(f"[{label}] Installing Dependencies: {shown}")
            install = _own_wheels(sandbox, task)
            if install is None:
                install = sandbox.exec(pip, task.install_timeout, task.limits.output_bytes)
            else:
                log(f"[{label}] Only the project's own pure wheels: installed without pip")
            phase("install")  # its own phase, and not the candidate's time (runtime_seconds)
            if install.timed_out or install.exit_code != 0:
                result.output = install.output
                return fail(f"Installing requirements failed "
                            f"({_why(install, task.install_timeout)}): "
                            f"{output_tail(install.output) or 'pip printed nothing'}")
            log(f"[{label}] Dependencies installed in {result.timings['install']:.2f}s")

        log(EXECUTING_LINE)
        ran = sandbox.exec(
            candidate_command(sandbox.workdir, task.objective, task.project),
            task.timeout,
            task.limits.output_bytes,
        )
        phase("exec")
        result.output = ran.output
        result.output_dropped_bytes = ran.output_dropped_bytes
        result.exit_code = ran.exit_code
        result.timed_out = ran.timed_out
        result.cpu_seconds = ran.cpu_seconds
        if ran.output_dropped_bytes:
            log(f"[Warn] Output capped: {ran.output_dropped_bytes} earlier bytes dropped")
        if ran.timed_out:
            return fail(f"Execution timed out after {task.timeout}s (sandbox killed)")
        log(f"[Run] Exit code: {ran.exit_code}")

        got = sandbox.download(f"{sandbox.workdir}/{OUTPUT_NAME}", task.limits.artifact_bytes,
                               task.retrieve_timeout)
        phase("collect")
        if got.problem:
            result.warnings.append(got.problem)
            log(f"[Warn] {got.problem}")
        if got.content is not None:
            result.artifact_content = got.content.decode("utf-8", errors="replace")
            result.artifact_truncated = got.truncated
            if got.truncated:
                log(f"[Warn] Artifact truncated to {task.limits.artifact_bytes} bytes")
            log("[Done] Artifact retrieved")

        if ran.exit_code != 0:
            return fail(f"Script exited with code {ran.exit_code}")
        if result.artifact_content is None:
            return fail("Artifact missing: the script exited 0 but wrote no output file")
        result.success = True
        return result
    except SandboxError as exc:
        return fail(f"{exc.phase} failed: {exc}", exc)
    except Exception as exc:  # noqa: BLE001 - the chord must never see an exception
        return fail(f"Internal error ({type(exc).__name__}): {exc}", exc)
    finally:
        if sandbox is not None:
            phase("collect")
            log(f"[{label}] Cleaning up...")
            try:
                sandbox.delete()
            except Exception as exc:  # noqa: BLE001 - cleanup trouble is a warning only
                warning = f"Cleanup failed for sandbox {sandbox.id}: {exc}"
                result.warnings.append(warning)
                result.stuck_sandboxes.append(sandbox.id)
                log(f"[Warn] {warning}")
            observability.sandbox_alive(backend.name, -1)
            phase("delete")
        if reservation is not None:
            reservation.release()
        if status.waited:  # capacity waits: not the candidate's time, nor its create's
            result.timings["slot_wait"] = round(status.waited, 6)
            if "create" in result.timings:
                result.timings["create"] = round(max(0.0, result.timings["create"]
                                                     - status.waited), 6)
        if status.refused:
            result.timings["refused"] = status.refused
        # The candidate's clock: neither capacity waits nor installing its requirements.
        result.runtime_seconds = round(time.monotonic() - t0 - status.waited
                                       - result.timings.get("install", 0.0), 3)
        result.finished_at = _now()
        if result.success:
            log(f"[Done] {result.runtime_seconds:.2f}s")


def _own_wheels(sandbox, task: CandidateTask):
    """The install of a project whose requirements are only its own pure wheels, done
    without pip (worker/local_wheels.py): from the host where the sandbox can write its
    files itself (``install_own_wheels``: local sandboxes), else by that program in the
    sandbox. None when pip must install the requirements."""
    command = local_wheels_command(task)
    if command is None:
        return None
    own = getattr(sandbox, "install_own_wheels", None)
    if own is not None:
        return own(task.project.requirements_file, task.install_timeout)
    # start-up: the program's own module (zipfile, email) only where it runs in a sandbox
    from worker.local_wheels import NOT_HANDLED

    ran = sandbox.exec(command, task.install_timeout, task.limits.output_bytes)
    return None if ran.exit_code == NOT_HANDLED and not ran.timed_out else ran


def _unpack(sandbox, task: CandidateTask, archive: bytes):
    """Ship a project into the work directory; None when it worked, else the failed
    ExecResult. A backend whose sandbox can write the files itself (``unpack``: local
    sandboxes, from the host) does so; otherwise the tar goes in one upload and the
    sandbox's own python3 unpacks it (Daytona), as the candidate's user."""
    unpack = getattr(sandbox, "unpack", None)
    if unpack is not None:
        unpack(archive, sandbox.workdir, task.upload_timeout)
        return None
    path = f"{sandbox.workdir}/{ARCHIVE_NAME}"
    sandbox.upload(archive, path, task.upload_timeout)
    ran = sandbox.exec(["python3", "-c", UNPACK, path, sandbox.workdir], task.upload_timeout,
                       task.limits.output_bytes)
    return None if ran.exit_code == 0 and not ran.timed_out else ran
