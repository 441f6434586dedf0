"""The Daytona backend: each candidate in a fresh remote sandbox, through the real SDK.

Only the primitive steps live here (see ``worker.sandbox.base``); deadlines, caps,
logging and results are the shared lifecycle's. The SDK is imported lazily (it costs
about a second) and one ``Daytona`` client serves the whole process: the sync client
has no ``close()``, so a client per sandbox would leak connection pools.

Every sandbox is labelled (app, run, candidate, owner, attempt), ephemeral, auto-stopped
and given a TTL, so a worker that dies between create and delete leaves nothing that
``reap`` or Daytona itself will not remove.
"""

from __future__ import annotations

import math
import random
import shlex
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from worker.sandbox.base import (
    Download,
    ExecResult,
    LogFn,
    NoReservation,
    SandboxError,
    SandboxRequest,
)
from worker.sandbox.capture import TailBuffer

APP_LABEL = "dream-foundry"
RUN_LABEL = "dream-foundry-run"
CANDIDATE_LABEL = "dream-foundry-candidate"
OWNER_LABEL = "dream-foundry-owner"
ATTEMPT_LABEL = "dream-foundry-attempt"
FALLBACK_WORKDIR = "/home/daytona"
NOTHING_LEFT = "no sandbox left"
GONE_STATES = frozenset({"destroyed", "destroying"})

NO_SDK = "Daytona SDK not installed (pip install daytona)"
NO_KEY_MESSAGE = "Daytona API key not configured"  # the seed's exact error_message
NO_KEY_HINT = "set DAYTONA_API_KEY"
NO_KEY = f"{NO_KEY_MESSAGE} ({NO_KEY_HINT})"


def _sdk() -> Any:
    """The ``daytona`` module, imported on first use so ``import worker`` stays fast."""
    try:
        import daytona
    except ImportError as exc:
        raise SandboxError("Sandbox creation", NO_SDK) from exc
    return daytona


def _state(sandbox: Any) -> str:
    state = getattr(sandbox, "state", None)
    return str(getattr(state, "value", state) or "unknown")


def _retry_after(exc: Exception) -> float | None:
    """``Retry-After`` in seconds, when the error carries one."""
    for key, value in (getattr(exc, "headers", None) or {}).items():
        if str(key).lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                return None  # an HTTP date: fall back to our own backoff
    return None


def _age_seconds(created_at: str | None, now: float) -> float | None:
    if not created_at:
        return None
    try:
        when = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return now - when.timestamp()


class DaytonaSandbox:
    """One live Daytona sandbox; ``workdir`` is the sandbox's own working directory."""

    def __init__(self, backend: DaytonaBackend, sdk_sandbox: Any, workdir: str, network: bool):
        self._backend = backend
        self._sb = sdk_sandbox
        self.id: str = sdk_sandbox.id
        self.workdir = workdir
        self.isolation = "Daytona sandbox (remote, separate machine)" + (
            "" if network else "; all network blocked")

    def upload(self, content: bytes, path: str, timeout: int) -> None:
        # Bytes go as a multipart file part: nothing passes through a shell.
        try:
            self._sb.fs.upload_file(content, path, max(1, int(timeout)))
        except Exception as exc:  # noqa: BLE001 - any SDK/transport failure is the phase's
            raise SandboxError("Upload", self._backend.scrub(str(exc)), self.id) from exc

    def exec(self, argv: list[str], timeout: int, output_cap: int) -> ExecResult:
        sdk = _sdk()
        t0 = time.monotonic()
        try:
            # The daemon runs the command through a shell: every argument is quoted.
            response = self._sb.process.exec(shlex.join(argv), cwd=self.workdir,
                                             timeout=max(1, int(timeout)))
        except sdk.DaytonaTimeoutError:
            # The daemon killed the process group at the deadline (408), or it did not
            # answer in time at all; either way deleting the sandbox ends it.
            return ExecResult(None, "", timed_out=True, duration=time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001
            raise SandboxError("Execution", self._backend.scrub(str(exc)), self.id) from exc
        buffer = TailBuffer(output_cap)
        buffer.write((response.result or "").encode("utf-8", errors="replace"))
        return ExecResult(
            exit_code=response.exit_code,
            output=buffer.text(),
            output_dropped_bytes=buffer.dropped,
            duration=time.monotonic() - t0,
        )

    def download(self, path: str, max_bytes: int, timeout: int) -> Download:
        """Streamed, so a huge artifact costs at most ``max_bytes`` of memory."""
        sdk = _sdk()
        deadline = time.monotonic() + timeout
        data = bytearray()
        truncated = False
        try:
            stream = self._sb.fs.download_file_stream(path, max(1, int(timeout)))
            try:
                for chunk in stream:
                    data += chunk
                    if len(data) > max_bytes:
                        truncated = True
                        break
                    if time.monotonic() > deadline:
                        raise SandboxError("Artifact retrieval", f"timed out after {timeout}s",
                                           self.id)
            finally:
                stream.close()
        except sdk.DaytonaNotFoundError:
            return Download(None)
        except SandboxError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise SandboxError("Artifact retrieval", self._backend.scrub(str(exc)),
                               self.id) from exc
        return Download(bytes(data[:max_bytes]), truncated=truncated)

    def delete(self) -> None:
        self._backend.delete_sdk_sandbox(self._sb)


class DaytonaBackend:
    """Creates Daytona sandboxes; holds the one SDK client of this process."""

    name = "daytona"
    label = "Daytona"

    def reserve(self, request: SandboxRequest, log: LogFn) -> NoReservation:
        """``exclusive`` is about the worker's cores; Daytona sandboxes run elsewhere."""
        return NoReservation()

    def __init__(
        self,
        create_timeout: float = 60.0,
        delete_timeout: float = 30.0,
        create_attempts: int = 5,
        delete_attempts: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.create_timeout = create_timeout
        self.delete_timeout = delete_timeout
        self.create_attempts = max(1, create_attempts)
        self.delete_attempts = max(1, delete_attempts)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self._client: Any = None
        self._api_key: str | None = None
        self._lock = threading.Lock()

    # -- the client -------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """Error text with the API key blanked, in case any layer ever echoes it."""
        return text.replace(self._api_key, "***") if self._api_key else text

    def client(self, log: LogFn | None = None) -> Any:
        """The process-wide SDK client, made on first use (thread-safe)."""
        if self._client is not None:
            return self._client
        with self._lock:
            if self._client is None:
                from worker.config import get_daytona_config

                api_key, api_url = get_daytona_config()
                if not api_key:
                    raise SandboxError("Sandbox creation", NO_KEY)
                sdk = _sdk()
                if log:
                    log("[Daytona] Connecting...")
                self._api_key = api_key
                try:
                    with warnings.catch_warnings():  # DAYTONA_USE_DEPRECATED_POLLING is
                        warnings.simplefilter("ignore", DeprecationWarning)  # our choice
                        self._client = sdk.Daytona(sdk.DaytonaConfig(api_key=api_key,
                                                                     api_url=api_url))
                except Exception as exc:  # noqa: BLE001
                    raise SandboxError("Sandbox creation",
                                       f"Daytona client: {self.scrub(str(exc))}") from exc
        return self._client

    # -- create -----------------------------------------------------------------------

    def _params(self, request: SandboxRequest, attempt_id: str) -> Any:
        sdk = _sdk()
        ttl_seconds = request.ttl_seconds or request.timeout + 15 * 60
        return sdk.CreateSandboxFromSnapshotParams(
            language="python",
            labels={
                APP_LABEL: "1",
                RUN_LABEL: request.run_id,
                CANDIDATE_LABEL: request.candidate_id,
                OWNER_LABEL: request.owner or socket.gethostname(),
                ATTEMPT_LABEL: attempt_id,
            },
            env_vars=dict(request.env),  # allow-listed by the lifecycle; never os.environ
            ephemeral=True,  # deleted as soon as it stops
            auto_stop_interval=math.ceil(request.timeout / 60) + 5,
            ttl_minutes=math.ceil(ttl_seconds / 60),  # dead-man's switch
            network_block_all=not request.network,
        )

    def _backoff(self, attempt: int, exc: Exception) -> float:
        hinted = _retry_after(exc)
        if hinted is not None:
            return min(hinted + random.uniform(0, 0.1 * hinted + 0.05), self.backoff_cap * 2)
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # jitter spreads a thundering herd

    def create(self, request: SandboxRequest, log: LogFn) -> DaytonaSandbox:
        client = self.client(log)
        sdk = _sdk()
        attempt_id = uuid.uuid4().hex
        params = self._params(request, attempt_id)
        for attempt in range(1, self.create_attempts + 1):
            try:
                sdk_sandbox = client.create(params, timeout=self.create_timeout)
                break
            except (sdk.DaytonaRateLimitError, sdk.DaytonaServiceUnavailableError) as exc:
                why = ("Rate limited (429)" if isinstance(exc, sdk.DaytonaRateLimitError)
                       else "Service unavailable (503)")
                if attempt == self.create_attempts:
                    raise SandboxError("Sandbox creation", f"{why}; gave up after "
                                       f"{attempt} attempts") from exc
                wait = self._backoff(attempt, exc)
                log(f"[Daytona] {why}; retrying in {wait:.1f}s "
                    f"(attempt {attempt + 1}/{self.create_attempts})")
                self._sleep(wait)
            except sdk.DaytonaTimeoutError as exc:
                sandbox_id = getattr(exc, "sandbox_id", None)
                cleaned = self._discard(sandbox_id, attempt_id, log)
                raise SandboxError(
                    "Sandbox creation",
                    f"not started within {self.create_timeout:g}s ({cleaned})",
                    sandbox_id,
                ) from exc
            except Exception as exc:  # noqa: BLE001
                # Unless the request was refused (4xx), a sandbox may exist (a lost answer,
                # or one stuck in "error" state): sweep by this attempt's label.
                status = getattr(exc, "status_code", None) or 0
                refused = 400 <= status < 500
                cleaned = NOTHING_LEFT if refused else self._discard(None, attempt_id, log)
                suffix = "" if cleaned == NOTHING_LEFT else f" ({cleaned})"
                raise SandboxError("Sandbox creation", self.scrub(str(exc)) + suffix) from exc
        try:
            workdir = sdk_sandbox.get_work_dir() or FALLBACK_WORKDIR
        except Exception:  # noqa: BLE001 - older daemons: the default image's home
            workdir = FALLBACK_WORKDIR
        return DaytonaSandbox(self, sdk_sandbox, workdir.rstrip("/") or "/", request.network)

    def _discard(self, sandbox_id: str | None, attempt_id: str, log: LogFn) -> str:
        """Delete what a failed create may have left; says what happened, for the error."""
        client, sdk = self._client, _sdk()
        try:
            if sandbox_id:
                try:
                    self.delete_sdk_sandbox(client.get(sandbox_id))
                except sdk.DaytonaNotFoundError:
                    return f"sandbox {sandbox_id} already gone"
                return f"sandbox {sandbox_id} deleted"
            found = list(client.list(sdk.ListSandboxesQuery(labels={ATTEMPT_LABEL: attempt_id})))
            for sandbox in found:
                self.delete_sdk_sandbox(sandbox)
            return f"{len(found)} stray sandbox(es) deleted" if found else NOTHING_LEFT
        except Exception as exc:  # noqa: BLE001
            message = self.scrub(str(exc))
            log(f"[Warn] Could not delete the sandbox of a failed create: {message}")
            return f"cleanup failed, reap will retry: {message}"

    # -- delete -----------------------------------------------------------------------

    def delete_sdk_sandbox(self, sdk_sandbox: Any) -> None:
        """Delete, retrying transient failures; a sandbox already gone counts as deleted."""
        sdk = _sdk()
        client = self.client()
        for attempt in range(1, self.delete_attempts + 1):
            try:
                client.delete(sdk_sandbox, timeout=self.delete_timeout)
                return
            except sdk.DaytonaNotFoundError:
                return
            except Exception as exc:  # noqa: BLE001
                if attempt == self.delete_attempts:
                    raise SandboxError(
                        "Cleanup",
                        f"delete failed after {attempt} attempts ({self.scrub(str(exc))}); "
                        "its TTL or `forge reap` will remove it",
                        sdk_sandbox.id,
                    ) from exc
                self._sleep(min(self.backoff_cap, 0.2 * 2 ** (attempt - 1)))

    # -- housekeeping (for `forge reap` and the final summary) ------------------------

    def _ours(self, labels: dict[str, str]) -> list[Any]:
        sdk = _sdk()
        return list(self.client().list(sdk.ListSandboxesQuery(labels=labels)))

    def alive_sandboxes(self, run_id: str) -> int:
        """How many sandboxes of ``run_id`` still exist (0 after a clean run)."""
        return sum(1 for s in self._ours({RUN_LABEL: run_id}) if _state(s) not in GONE_STATES)

    def reap(self, max_age_seconds: float, dry_run: bool = False,
             owner: str | None = None) -> list[dict[str, Any]]:
        """Delete (or, with ``dry_run``, list) our sandboxes older than ``max_age_seconds``."""
        labels = {APP_LABEL: "1"}
        if owner:
            labels[OWNER_LABEL] = owner
        now = time.time()
        report = []
        for sandbox in self._ours(labels):
            age = _age_seconds(getattr(sandbox, "created_at", None), now)
            state = _state(sandbox)
            if state in GONE_STATES or age is None or age < max_age_seconds:
                continue
            tags = sandbox.labels or {}
            entry: dict[str, Any] = {
                "id": sandbox.id,
                "run_id": tags.get(RUN_LABEL),
                "candidate_id": tags.get(CANDIDATE_LABEL),
                "owner": tags.get(OWNER_LABEL),
                "state": state,
                "created_at": sandbox.created_at,
                "age_seconds": round(age, 1),
                "deleted": False,
                "error": None,
            }
            if not dry_run:
                try:
                    self.delete_sdk_sandbox(sandbox)
                    entry["deleted"] = True
                except SandboxError as exc:
                    entry["error"] = str(exc)
            report.append(entry)
        return report


def _backend() -> DaytonaBackend:
    from worker.sandbox import get_backend

    return get_backend("daytona")  # type: ignore[return-value]


def alive_sandboxes(run_id: str) -> int:
    """Sandboxes of ``run_id`` still alive, through the process's shared client."""
    return _backend().alive_sandboxes(run_id)


def reap(max_age_seconds: float, dry_run: bool = False,
         owner: str | None = None) -> list[dict[str, Any]]:
    """Sweep orphaned sandboxes (see ``DaytonaBackend.reap``)."""
    return _backend().reap(max_age_seconds, dry_run, owner)
