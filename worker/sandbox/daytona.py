"""The Daytona backend: each candidate in a fresh remote sandbox, through the real SDK.

Only the primitive steps live here (see ``worker.sandbox.base``); deadlines, caps,
logging and results are the shared lifecycle's. The SDK is imported lazily (it costs
about a second) and one ``Daytona`` client serves the whole process: the sync client
has no ``close()``, so a client per sandbox would leak connection pools.

Every sandbox is labelled (app, run, candidate, owner, attempt), ephemeral, auto-stopped
and given a TTL, so a worker that dies between create and delete leaves nothing that
``reap`` or Daytona itself will not remove.

At account scale: a create first takes a lease from the sandbox budget
(``worker.budget``) and the lease is given back only once the sandbox is destroyed. The
account's refusals (403 "quota exceeded", 429) are waited out with jittered backoff
within the run's wait bound; a quota refusal while N of our sandboxes are alive teaches
the run that the account allows N. Sandboxes start from the competition's snapshot or
declared image (``daytona_image``) with its resources and network allow-lists.
"""

from __future__ import annotations

import logging
import math
import random
import re
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
    WAITING_LINE,
    Boundary,
    CapacityState,
    CreateStatus,
    Download,
    ExecResult,
    LogFn,
    NetworkAccess,
    NoReservation,
    Phase,
    SandboxError,
    SandboxRequest,
)
from worker.sandbox.capture import TailBuffer
from worker.sandbox.daytona_image import Snapshots, Source

logger = logging.getLogger("dream_foundry")

APP_LABEL = "dream-foundry"
RUN_LABEL = "dream-foundry-run"
CANDIDATE_LABEL = "dream-foundry-candidate"
OWNER_LABEL = "dream-foundry-owner"
ATTEMPT_LABEL = "dream-foundry-attempt"
FALLBACK_WORKDIR = "/home/daytona"
NOTHING_LEFT = "no sandbox left"
GONE_STATES = frozenset({"destroyed", "destroying"})
# Ours in these states run nothing and never will, yet stopped ones still hold disk quota:
# `forge reap` deletes them whatever their age.
DEAD_STATES = frozenset({"stopped", "stopping", "error", "build_failed", "archived"})
# Daytona's quota refusal: 403 "Total CPU quota exceeded. Maximum allowed: 10" (older
# servers: "Total CPU quota exceeded (11 > 10)"); memory and disk alike.
QUOTA_REFUSAL = re.compile(r"quota exceeded", re.IGNORECASE)
FIXES = ("delete sandboxes you no longer need (`forge reap`, or the Daytona dashboard), "
         "lower the budget (FORGE_DAYTONA_MAX_SANDBOXES, or max_sandboxes in the manifest's "
         "[daytona] table or forge.toml), or raise the Daytona account's tier")

NO_SDK = "Daytona SDK not installed (pip install daytona)"
NO_KEY_MESSAGE = "Daytona API key not configured"  # the seed's exact error_message
NO_KEY_HINT = "set DAYTONA_API_KEY"
NO_KEY = f"{NO_KEY_MESSAGE} ({NO_KEY_HINT})"


def _sdk() -> Any:
    """The ``daytona`` module, imported on first use so ``import worker`` stays fast."""
    try:
        import daytona
    except ImportError as exc:
        raise SandboxError(Phase.CREATE, NO_SDK) from exc
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


def _is_quota_refusal(exc: Exception) -> bool:
    return getattr(exc, "status_code", None) == 403 and bool(QUOTA_REFUSAL.search(str(exc)))


def _allow_list(values: tuple[str, ...]) -> str | None:
    return ",".join(values) if values else None


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


# A Daytona sandbox is a machine of its own: nothing of the worker is there to reach.
BOUNDARIES = frozenset({Boundary.MACHINE, Boundary.FILESYSTEM, Boundary.PROCESSES,
                        Boundary.NETWORK, Boundary.LIMITS})
_NET_WORDS = {NetworkAccess.NONE: "; all network blocked",
              NetworkAccess.ALLOW_LIST: "; network limited to an allow-list",
              NetworkAccess.OPEN: ""}


class DaytonaSandbox:
    """One live Daytona sandbox; ``workdir`` is the sandbox's own working directory."""

    def __init__(self, backend: DaytonaBackend, sdk_sandbox: Any, workdir: str,
                 request: SandboxRequest, lease: str | None = None):
        self._backend = backend
        self._sb = sdk_sandbox
        self._lease = lease
        self.id: str = sdk_sandbox.id
        self.workdir = workdir
        spec = request.daytona
        if not request.network:
            self.network = NetworkAccess.NONE
        elif spec.network_allow_list or spec.domain_allow_list:
            self.network = NetworkAccess.ALLOW_LIST
        else:
            self.network = NetworkAccess.OPEN
        self.boundaries = BOUNDARIES
        self.isolation = "Daytona sandbox (remote, separate machine)" + _NET_WORDS[self.network]

    def upload(self, content: bytes, path: str, timeout: int) -> None:
        # Bytes go as a multipart file part: nothing passes through a shell.
        try:
            self._sb.fs.upload_file(content, path, max(1, int(timeout)))
        except Exception as exc:  # noqa: BLE001 - any SDK/transport failure is the phase's
            raise SandboxError(Phase.UPLOAD, self._backend.scrub(str(exc)), self.id) from exc

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
            raise SandboxError(Phase.EXECUTION, self._backend.scrub(str(exc)), self.id) from exc
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
                        raise SandboxError(Phase.RETRIEVAL, f"timed out after {timeout}s",
                                           self.id)
            finally:
                stream.close()
        except sdk.DaytonaNotFoundError:
            return Download(None)
        except SandboxError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise SandboxError(Phase.RETRIEVAL, self._backend.scrub(str(exc)),
                               self.id) from exc
        return Download(bytes(data[:max_bytes]), truncated=truncated)

    def delete(self) -> None:
        """Delete and wait until it is destroyed; the budget slot goes back either way
        (a sandbox stuck deleting is left for the reaper, and the account's refusals
        will teach the run if it still takes quota)."""
        try:
            self._backend.delete_sdk_sandbox(self._sb, wait=True)
        finally:
            if self._lease is not None:
                self._backend.budget().release(self._lease)
                self._lease = None


class DaytonaBackend:
    """Creates Daytona sandboxes; holds the one SDK client of this process."""

    name = "daytona"
    label = "Daytona"
    boundaries = BOUNDARIES
    can_block_network = True  # network_block_all
    on_worker_machine = False

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
        self.snapshots = Snapshots(self.scrub)

    def budget(self) -> Any:
        """The process's sandbox budget (Redis when distributed, in-process when embedded)."""
        from worker.budget import get_budget

        return get_budget()

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
                    raise SandboxError(Phase.CREATE, NO_KEY)
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
                    raise SandboxError(Phase.CREATE,
                                       f"Daytona client: {self.scrub(str(exc))}") from exc
        return self._client

    # -- create -----------------------------------------------------------------------

    def _params(self, request: SandboxRequest, attempt_id: str, source: Source) -> Any:
        sdk = _sdk()
        ttl_seconds = request.ttl_seconds or request.timeout + 15 * 60
        spec = request.daytona
        network: dict[str, Any] = {"network_block_all": not request.network}
        if request.network and spec.network_allow_list:
            network["network_allow_list"] = _allow_list(spec.network_allow_list)
        if request.network and spec.domain_allow_list:
            if "domain_allow_list" not in sdk.CreateSandboxFromSnapshotParams.model_fields:
                raise SandboxError(Phase.CREATE, "domain_allow_list needs the daytona "
                                   "SDK 0.190.0 or newer (pip install -U daytona)")
            network["domain_allow_list"] = _allow_list(spec.domain_allow_list)
        if source.snapshot:
            network["snapshot"] = source.snapshot
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
            **network,
        )

    def _backoff(self, attempt: int, exc: Exception) -> float:
        hinted = _retry_after(exc)
        if hinted is not None:
            return min(hinted + random.uniform(0, 0.1 * hinted + 0.05), self.backoff_cap * 2)
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)  # jitter spreads a thundering herd

    def create(self, request: SandboxRequest, log: LogFn,
               status: CreateStatus | None = None) -> DaytonaSandbox:
        """A started sandbox holding a budget lease; waits (visibly) for capacity."""
        from worker import config
        from worker.budget import Quota, SlotRequest

        status = status if status is not None else CreateStatus()
        client = self.client(log)
        sdk = _sdk()
        wait = request.budget.slot_wait or config.daytona_slot_wait()
        t0 = time.monotonic()
        source = self.snapshots.source(client, sdk, request.daytona, wait, log)
        status.waited += time.monotonic() - t0  # an image build is not the candidate's time
        attempt_id = uuid.uuid4().hex
        params = self._params(request, attempt_id, source)
        slot = SlotRequest(run_id=request.run_id, clock=request.budget.run_clock or
                           request.run_id, wait=wait, quota=Quota.of(request.budget),
                           units=source.units)
        budget = self.budget()
        lease: str | None = None
        deadline = float("inf")
        refusals: list[str] = []
        transient = 0

        def drop() -> None:
            nonlocal lease
            if lease is not None:
                budget.release(lease)
                lease = None

        try:
            while True:
                if lease is None:
                    lease, deadline = self._take_slot(budget, slot, log, status, refusals)
                try:
                    sdk_sandbox = client.create(params, timeout=self.create_timeout)
                    break
                except sdk.DaytonaTimeoutError as exc:
                    drop()
                    sandbox_id = getattr(exc, "sandbox_id", None)
                    if sandbox_id:
                        status.stuck.append(sandbox_id)
                    cleaned = self._discard(sandbox_id, attempt_id, log, status)
                    raise SandboxError(
                        Phase.CREATE,
                        f"not started within {self.create_timeout:g}s ({cleaned})",
                        sandbox_id,
                    ) from exc
                except Exception as exc:  # noqa: BLE001
                    status_code = getattr(exc, "status_code", None) or 0
                    quota = _is_quota_refusal(exc)
                    if quota or status_code == 429:
                        status.refused += 1
                        refusals.append(self.scrub(str(exc)))
                        why = "Quota refused the create (403)" if quota else "Rate limited (429)"
                        if quota:  # capacity we do not have: give the slot back while we wait
                            self._learn(budget, request, slot.quota.sandboxes, log)
                            drop()
                        pause = self._backoff(len(refusals), exc)
                        if time.monotonic() + pause >= deadline:
                            drop()
                            raise SandboxError(Phase.CREATE, self._gave_up(
                                wait, slot, refusals)) from exc
                        log(f"[Daytona] {why}; retrying in {pause:.1f}s "
                            f"(attempt {len(refusals) + 1}, within the run's wait bound)")
                        status.on_state(CapacityState.WAITING)
                        self._sleep(pause)
                        status.waited += pause
                        continue
                    if status_code == 503 and transient + 1 < self.create_attempts:
                        transient += 1
                        pause = self._backoff(transient, exc)
                        log(f"[Daytona] Service unavailable (503); retrying in {pause:.1f}s "
                            f"(attempt {transient + 1}/{self.create_attempts})")
                        self._sleep(pause)
                        continue
                    drop()
                    if status_code == 503:
                        raise SandboxError(Phase.CREATE, "Service unavailable (503); gave "
                                           f"up after {transient + 1} attempts") from exc
                    # Unless the request was refused (4xx), a sandbox may exist (a lost answer,
                    # or one stuck in "error" state): sweep by this attempt's label.
                    refused = 400 <= status_code < 500
                    cleaned = NOTHING_LEFT if refused else self._discard(None, attempt_id, log,
                                                                          status)
                    suffix = "" if cleaned == NOTHING_LEFT else f" ({cleaned})"
                    raise SandboxError(Phase.CREATE, self.scrub(str(exc)) + suffix) from exc
        except BaseException:
            drop()  # whatever ended the create (a worker's shutdown too): never keep a slot
            raise
        try:
            workdir = sdk_sandbox.get_work_dir() or FALLBACK_WORKDIR
        except Exception:  # noqa: BLE001 - older daemons: the default image's home
            workdir = FALLBACK_WORKDIR
        return DaytonaSandbox(self, sdk_sandbox, workdir.rstrip("/") or "/", request, lease)

    def _take_slot(self, budget: Any, slot: Any, log: LogFn, status: CreateStatus,
                   refusals: list[str]) -> tuple[str, float]:
        """(lease id, monotonic deadline of the run's wait): blocks while the budget is full."""
        from worker.budget import SlotWaitExpired

        def waiting(usage: Any) -> None:
            log(f"{WAITING_LINE} ({usage.held} of "
                f"{slot.quota.sandboxes} in use, {usage.waiting_runs} run(s) waiting)")
            status.on_state(CapacityState.WAITING)

        try:
            grant = budget.acquire(slot, waiting)
        except SlotWaitExpired as exc:
            raise SandboxError(Phase.CREATE, self._gave_up(slot.wait, slot, refusals,
                                                                 exc.usage.held)) from exc
        if grant.waited >= 0.05:
            log(f"[Daytona] Got a sandbox slot after {grant.waited:.1f}s")
        status.waited += grant.waited
        return grant.lease_id, grant.deadline

    def _learn(self, budget: Any, request: SandboxRequest, limit: int, log: LogFn) -> None:
        """Refused while N of ours are alive: the account allows N (at most)."""
        alive = max(1, budget.held() - 1)  # our live leases besides this one
        if alive < limit and budget.learn(request.run_id, alive):
            message = (f"[Daytona] The account refused a sandbox while {alive} of ours were "
                       f"alive or starting: using at most {alive} at once for the rest of this "
                       f"run (the budget allows {limit}; the account allows fewer)")
            log(message)
            logger.warning("[%s] %s", request.run_id, message)

    def _gave_up(self, wait: float, slot: Any, refusals: list[str],
                 held: int | None = None) -> str:
        if refusals:
            why = (f"the Daytona account's quota or rate limit refused {len(refusals)} "
                   f"create(s) (last: {refusals[-1]})")
        else:
            in_use = "" if held is None else f" ({held} in use)"
            why = (f"the sandbox budget of {slot.quota.sandboxes} stayed full{in_use}; "
                   "the Daytona account's quota allows no more")
        return (f"no Daytona sandbox within the run's wait bound of {wait:g}s "
                f"(FORGE_DAYTONA_SLOT_WAIT): {why}. Fix: {FIXES}")

    def _discard(self, sandbox_id: str | None, attempt_id: str, log: LogFn,
                 status: CreateStatus | None = None) -> str:
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
            if status is not None and sandbox_id and sandbox_id not in status.stuck:
                status.stuck.append(sandbox_id)
            message = self.scrub(str(exc))
            log(f"[Warn] Could not delete the sandbox of a failed create: {message}")
            return f"cleanup failed, reap will retry: {message}"

    # -- delete -----------------------------------------------------------------------

    def delete_sdk_sandbox(self, sdk_sandbox: Any, wait: bool = False) -> None:
        """Delete, retrying transient failures; a sandbox already gone counts as deleted.

        With ``wait``, until it is destroyed: a sandbox stuck deleting past
        ``delete_timeout`` gets its delete sent again, then is left for the reaper.
        """
        sdk = _sdk()
        self.client()
        for attempt in range(1, self.delete_attempts + 1):
            try:
                # Sandbox.delete with a keyword timeout: the SDK's own Daytona.delete
                # (0.226) passes it positionally, where its timeout decorator never sees
                # it, and a sandbox stuck deleting would hold this thread for good.
                sdk_sandbox.delete(timeout=self.delete_timeout, wait=wait)
                return
            except sdk.DaytonaNotFoundError:
                return
            except sdk.DaytonaTimeoutError as exc:
                if attempt == self.delete_attempts or not wait:
                    raise SandboxError(
                        Phase.CLEANUP,
                        f"still deleting after {attempt} attempts of {self.delete_timeout:g}s "
                        f"(state {_state(sdk_sandbox)}); its TTL or `forge reap` will remove it",
                        sdk_sandbox.id,
                    ) from exc
            except Exception as exc:  # noqa: BLE001
                if attempt == self.delete_attempts:
                    raise SandboxError(
                        Phase.CLEANUP,
                        f"delete failed after {attempt} attempts ({self.scrub(str(exc))}); "
                        "its TTL or `forge reap` will remove it",
                        sdk_sandbox.id,
                    ) from exc
                self._sleep(min(self.backoff_cap, 0.2 * 2 ** (attempt - 1)))

    # -- housekeeping (for `forge reap` and the final summary) ------------------------

    def _ours(self, labels: dict[str, str]) -> list[Any]:
        sdk = _sdk()
        return list(self.client().list(sdk.ListSandboxesQuery(labels=labels)))

    def left_behind(self, run_id: str) -> list[tuple[str, str]]:
        """(id, state) of every sandbox of ``run_id`` not yet destroyed ([] after a clean
        run); one stuck deleting ("destroying") counts too: it may still hold quota."""
        return [(s.id, _state(s)) for s in self._ours({RUN_LABEL: run_id})
                if _state(s) != "destroyed"]

    def alive_sandboxes(self, run_id: str) -> int:
        """How many sandboxes of ``run_id`` still exist (0 after a clean run)."""
        return len(self.left_behind(run_id))

    def reap(self, max_age_seconds: float, dry_run: bool = False,
             owner: str | None = None) -> list[dict[str, Any]]:
        """Delete (or, with ``dry_run``, list) our sandboxes older than ``max_age_seconds``,
        and our stopped (or failed) ones whatever their age: no task uses a stopped
        sandbox, and it still holds disk quota."""
        labels = {APP_LABEL: "1"}
        if owner:
            labels[OWNER_LABEL] = owner
        now = time.time()
        report = []
        for sandbox in self._ours(labels):
            age = _age_seconds(getattr(sandbox, "created_at", None), now)
            state = _state(sandbox)
            dead = state in DEAD_STATES
            if state in GONE_STATES or (not dead and (age is None or age < max_age_seconds)):
                continue
            tags = sandbox.labels or {}
            entry: dict[str, Any] = {
                "id": sandbox.id,
                "run_id": tags.get(RUN_LABEL),
                "candidate_id": tags.get(CANDIDATE_LABEL),
                "owner": tags.get(OWNER_LABEL),
                "state": state,
                "created_at": sandbox.created_at,
                "age_seconds": round(age or 0.0, 1),
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

