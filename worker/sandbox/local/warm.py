"""Warm sandboxes: the next candidate's sandbox, set up while the current one runs.

Most of a short candidate's cost in its sandbox is set-up: bubblewrap's namespaces and
mounts, cgroups, rlimits, slirp4netns and the egress routes, and its own ``python3``
starting. When N slots finish and start together on fewer cores (every wave of a
competition), each of those set-ups competes at the same instant. So once a worker
process's candidate has run ``WARM_AFTER`` seconds, one thread of that process makes a
sandbox for the next candidate of the same shape (the same request, but for the run,
candidate and owner, under the same settings): set up exactly as that candidate's own
would be, with ``python3`` started on ``zygote`` and waiting for its command line. The
next ``create`` of that shape takes it.

Nothing is shared: a warm sandbox serves one candidate and is deleted after it, as a
cold one is. What its making logged (an egress note, say) is replayed into its
candidate's log. Unused, it is removed after ``FORGE_WARM_IDLE`` seconds (its egress
policy and ``/etc`` were read when it was made), when a request of another shape needs
its place, and when the process ends. ``FORGE_WARM_SANDBOXES=0`` turns it off.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.sandbox.base import LogFn, SandboxRequest
from worker.sandbox.local import cleanup
from worker.sandbox.local.bwrap_sandbox import BwrapSandbox
from worker.settings import settings

log = logging.getLogger(__name__)

MAKING_WAIT = 10.0  # seconds a create waits for a warm sandbox already being made
# Seconds a candidate runs before the next one's sandbox is made. A shorter candidate
# ends first, and its successor starts cold: with every slot busy, making a sandbox
# beside a candidate that ends within milliseconds saves no wall time and costs ~3 ms of
# CPU more than making it on the successor's own turn (bench/README.md, issue 17).
WARM_AFTER = 0.1

MakeFn = Callable[[SandboxRequest, LogFn], BwrapSandbox]
Shape = tuple[SandboxRequest, tuple]


def shape_of(request: SandboxRequest) -> Shape:
    """What a warm sandbox must match: the request without whose candidate it is, and
    the settings it was made under (``FORGE_NO_CGROUPS`` changed since, say)."""
    return dataclasses.replace(request, run_id="", candidate_id="", owner=""), \
        settings.fingerprint()


@dataclass(eq=False)  # entries are told apart by identity: two may be alike
class _Entry:
    shape: Shape
    not_before: float = 0.0  # a job: when its making may start
    sandbox: BwrapSandbox | None = None  # None while it is a job or being made
    lines: list[str] = field(default_factory=list)  # what its making logged
    made_at: float = 0.0


def _nothing() -> None:
    return None


class WarmPool:
    """This process's warm sandboxes and the one thread that makes and expires them.

    An entry is a job (in ``_jobs``, not started), being made (in ``_entries``, no
    sandbox yet) or ready (in ``_entries``, with its sandbox)."""

    def __init__(self, make: MakeFn):
        self.pid = os.getpid()
        self._make = make
        self._cond = threading.Condition()
        self._entries: list[_Entry] = []
        self._jobs: list[_Entry] = []
        self._closed = False
        # Long-lived on purpose: bwrap's --die-with-parent follows the thread that started
        # it, so a sandbox made by a thread that ends would die with it.
        self._thread = threading.Thread(target=self._run, name="forge-warm", daemon=True)
        self._thread.start()

    def take(self, request: SandboxRequest, log_fn: LogFn) -> BwrapSandbox | None:
        """A warm sandbox for ``request``, waiting for one being made; None if none (a
        job not started yet is dropped: the caller's own making is as quick)."""
        shape = shape_of(request)
        deadline = time.monotonic() + MAKING_WAIT
        with self._cond:
            while True:
                entry = next((e for e in self._entries
                              if e.sandbox is not None and e.shape == shape), None)
                if entry is not None:
                    self._entries.remove(entry)
                    break
                job = next((j for j in self._jobs if j.shape == shape), None)
                if job is not None:
                    self._jobs.remove(job)
                    return None
                making = any(e.shape == shape for e in self._entries)
                left = deadline - time.monotonic()
                if not making or left <= 0 or self._closed:
                    return None
                self._cond.wait(left)
        for line in entry.lines:
            log_fn(line)
        entry.sandbox.request = request
        return entry.sandbox

    def refill(self, request: SandboxRequest) -> Callable[[], None]:
        """A candidate of ``request``'s shape was let go: have the next one's sandbox
        made once it has run ``WARM_AFTER`` seconds, if this process keeps fewer than
        ``FORGE_WARM_SANDBOXES`` (an unused one of another shape gives way). Returns what
        to call when the candidate ended (a job not started yet is dropped then)."""
        shape = shape_of(request)
        job = _Entry(shape, not_before=time.monotonic() + WARM_AFTER)
        with self._cond:
            if self._closed or (
                    len(self._entries) + len(self._jobs) >= settings.warm_sandboxes
                    and not any(e.sandbox is not None and e.shape != shape
                                for e in self._entries)):
                return _nothing
            self._jobs.append(job)
            self._cond.notify_all()
        return functools.partial(self._drop, job)

    def drain(self) -> None:
        """Remove every warm sandbox and make no more (the process is ending). One being
        made is removed by its maker (``_fill``): wait for that, or the process ends with
        its bubblewrap half started, and a bwrap whose parent dies at that moment can be
        left waiting forever."""
        if os.getpid() != self.pid:
            return
        with self._cond:
            self._closed = True
            gone = [e for e in self._entries if e.sandbox is not None]
            self._entries = [e for e in self._entries if e.sandbox is None]
            self._jobs.clear()
            self._cond.notify_all()
        for entry in gone:
            _delete(entry.sandbox)
        with self._cond:
            self._cond.wait_for(lambda: not self._entries, MAKING_WAIT)

    def _drop(self, job: _Entry) -> None:
        with self._cond:
            if job in self._jobs:
                self._jobs.remove(job)
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                gone, job = self._next()
                while not gone and job is None:
                    self._cond.wait(self._until_next())
                    gone, job = self._next()
            for entry in gone:
                _delete(entry.sandbox)
            if job is not None:
                self._fill(job)

    def _next(self) -> tuple[list[_Entry], _Entry | None]:
        """(ready entries past their idle time or evicted, removed; the job due now,
        being made from here), under the lock."""
        idle = settings.warm_idle
        now = time.monotonic()
        gone = [e for e in self._entries if e.sandbox is not None
                and (self._closed or now - e.made_at >= idle)]
        for entry in gone:
            self._entries.remove(entry)
        job = next((j for j in self._jobs if j.not_before <= now), None)
        if job is None or self._closed:
            return gone, None
        self._jobs.remove(job)
        while len(self._entries) >= settings.warm_sandboxes:
            other = next((e for e in self._entries
                          if e.sandbox is not None and e.shape != job.shape), None)
            if other is None:
                return gone, None  # no room: the job is dropped
            self._entries.remove(other)
            gone.append(other)
        self._entries.append(job)
        return gone, job

    def _until_next(self) -> float | None:
        """Seconds until a ready entry expires or a job is due; None: nothing to wait for."""
        times = [e.made_at + settings.warm_idle for e in self._entries if e.sandbox is not None]
        times += [j.not_before for j in self._jobs]
        if not times:
            return None
        return max(min(times) - time.monotonic(), 0.005)

    def _fill(self, entry: _Entry) -> None:
        try:
            sandbox = self._make(entry.shape[0], entry.lines.append)
        except Exception as exc:  # noqa: BLE001 - the next create is cold and says why
            log.debug("warm sandbox not made: %s", exc)
            sandbox = None
        with self._cond:
            keep = sandbox is not None and not self._closed
            if keep:
                entry.sandbox = sandbox
                entry.made_at = time.monotonic()
                self._cond.notify_all()
                return
        if sandbox is not None:
            _delete(sandbox)
        with self._cond:  # only now: ``drain`` waits for this entry to go
            self._entries.remove(entry)
            self._cond.notify_all()


def _delete(sandbox: BwrapSandbox) -> None:
    try:
        sandbox.delete()
    except Exception as exc:  # noqa: BLE001 - its leftovers are swept like a dead worker's
        log.debug("warm sandbox not removed: %s", exc)


_pool: WarmPool | None = None
_lock = threading.Lock()


def pool(make: MakeFn) -> WarmPool:
    """This process's pool (a forked child makes its own; the parent's thread did not
    come along)."""
    global _pool
    with _lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = WarmPool(make)
            cleanup.register(_pool.drain)
        return _pool
