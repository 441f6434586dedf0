"""The local backend: makes each candidate's sandbox on this machine (see the package)."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable

from worker.records import Egress
from worker.sandbox import egress, netns, slots
from worker.sandbox.base import (
    Boundary,
    CreateStatus,
    LogFn,
    Phase,
    SandboxError,
    SandboxRequest,
)
from worker.sandbox.local import bwrap, etc, owner, thread_creds, warm
from worker.sandbox.local.bwrap import INSTALL_HINT, require_isolation
from worker.sandbox.local.bwrap_sandbox import BOUNDARIES, BwrapSandbox
from worker.sandbox.local.leftovers import sweep_leftovers
from worker.sandbox.local.parent_dir import sandbox_parent
from worker.sandbox.local.plain import PlainSandbox
from worker.sandbox.local.prefix_view import share_prefixes
from worker.settings import settings


def prepare_process() -> None:
    """Per-process set-up that must happen while the process is single-threaded (a pool
    process calls it at start; later calls are cheap no-ops): see prefix_view.share_prefixes."""
    try:
        share_prefixes(sandbox_parent(), owner.own_identity())
    except OSError:
        pass  # sandboxes then mount the prefix themselves, per launch


def warm_process() -> None:
    """Do now, once per process, what its first sandbox would otherwise do in a
    candidate's time (~7 ms of CPU on a slow day, bench/README.md): sweep what killed
    workers left, make the /etc skeleton (``etc.prepare``), check whether one thread can
    switch uid, and build the default egress policy. Never raises: a candidate reports
    any problem itself."""
    try:
        isolated = bwrap.probe().ok
        sweep_leftovers()
        if not isolated:
            return
        etc.prepare(sandbox_parent(), owner.own_identity())
        thread_creds.usable()
        if netns.slirp4netns_path():
            egress.build(Egress())
    except Exception:  # noqa: BLE001 - the first candidate meets it, and says so
        pass


class LocalBackend:
    name = "local"
    label = "Local"
    on_worker_machine = True

    slots_dir: str | None = None  # default: forge-cores in the sandbox parent directory

    @property
    def boundaries(self) -> frozenset[Boundary]:
        """With bubblewrap, everything ``BwrapSandbox`` isolates (the network only where
        slirp4netns gives a sandbox that wants one its own); without it, limits alone."""
        if not bwrap.probe().ok:
            return frozenset({Boundary.LIMITS})
        if netns.slirp4netns_path() is None:
            return BOUNDARIES - {Boundary.NETWORK}
        return BOUNDARIES

    @property
    def can_block_network(self) -> bool:
        """Every bubblewrap sandbox gets a network namespace; a plain process cannot."""
        return bwrap.probe().ok

    def reserve(self, request: SandboxRequest, log: LogFn) -> slots.CoreSlot:
        """A core of this machine for an ``exclusive`` candidate (see ``slots``): shared
        by every worker process on the machine through the sandbox parent directory."""
        return slots.acquire(
            self.slots_dir or os.path.join(sandbox_parent(), "forge-cores"),
            on_wait=lambda: log("[Local] Waiting for a free core (exclusive competition)..."))

    def create(self, request: SandboxRequest, log: LogFn,
               status: CreateStatus | None = None) -> BwrapSandbox | PlainSandbox:
        try:
            sweep_leftovers()
        except Exception:  # noqa: BLE001 - housekeeping must never stop a run
            pass
        probe = bwrap.probe()
        if probe.drop_uid:
            prepare_process()
        if Boundary.FILESYSTEM not in self.boundaries and require_isolation():
            raise SandboxError(
                Phase.CREATE,
                f"filesystem isolation unavailable ({probe.reason}) and "
                f"FORGE_REQUIRE_ISOLATION=1; fix: {INSTALL_HINT}",
            )
        warm_ok = probe.ok and settings.warm_sandboxes > 0 and not request.exclusive
        if warm_ok:
            taken = warm.pool(self._make_warm).take(request, log)
            if taken is not None:
                log("[Local] Warm sandbox: set up while an earlier candidate ran")
                taken.on_release = functools.partial(self._refill, request)
                return taken
        root = None
        try:
            root = self._new_root(request.candidate_id)
            if probe.ok:
                sandbox = BwrapSandbox(request, root, probe, log)
                if warm_ok:
                    sandbox.on_release = functools.partial(self._refill, request)
                return sandbox
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
            raise SandboxError(Phase.CREATE, str(exc)) from exc

    @staticmethod
    def _new_root(name: str) -> str:
        """A sandbox's directory in the parent directory, marked with this process."""
        root = tempfile.mkdtemp(prefix=f"forge-{_safe(name)}-", dir=sandbox_parent())
        os.chmod(root, 0o711)
        owner.mark(root, owner.own_identity())
        return root

    def _refill(self, request: SandboxRequest) -> Callable[[], None]:
        """A candidate was let go: make the next one's sandbox meanwhile, unless it ends
        first (``warm``). Returns what to call when it ended."""
        return warm.pool(self._make_warm).refill(request)

    def _make_warm(self, shape: SandboxRequest, log: LogFn) -> BwrapSandbox:
        """A bubblewrap sandbox for ``shape``, its interpreter started (``warm``)."""
        root = self._new_root("warm")
        try:
            sandbox = BwrapSandbox(shape, root, bwrap.probe(), log)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        try:
            sandbox.make_warm(shape.timeout, shape.limits.output_bytes)
        except BaseException:
            sandbox.delete()
            raise
        return sandbox


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
