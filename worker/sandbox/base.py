"""The sandbox interface: five primitive steps, many backends.

A backend only knows how to make a sandbox and how to move bytes and run a command in
it. Deadlines, size caps, logging and result building live once, in
``worker.lifecycle``, so every backend behaves the same way to the rest of the system.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from worker.records import DaytonaSpec, Egress, Limits, SandboxBudget

LogFn = Callable[[str], None]


class Phase(StrEnum):
    """The backend step a ``SandboxError`` comes from; its value starts the result's error
    message ("Upload failed: ...")."""

    CREATE = "Sandbox creation"
    UPLOAD = "Upload"
    EXECUTION = "Execution"
    RETRIEVAL = "Artifact retrieval"
    CLEANUP = "Cleanup"
    PATH = "path"  # a path outside the sandbox's working directory (a caller's bug)


class CapacityState(StrEnum):
    """Where a sandbox being created stands (``CreateStatus.on_state``)."""

    WAITING = "waiting"  # for capacity: a budget slot, the account's quota, an image build
    RUNNING = "running"  # it has it


class Boundary(StrEnum):
    """One thing that stands between a candidate and the worker's host: a fact code can
    test (``Boundary.NETWORK in backend.boundaries``), where the result's ``isolation``
    words say the same to a person."""

    MACHINE = "separate machine"  # it runs elsewhere: nothing of the worker is reachable
    FILESYSTEM = "filesystem"  # it sees only what worker.sandbox.visible lists
    PROCESSES = "processes"  # its own PID namespace: it cannot see or signal ours
    USER = "user"  # a user namespace, as an unprivileged uid
    NETWORK = "network"  # never the worker's network: its own, blocked or policed
    LIMITS = "limits"  # rlimits and cgroups cap its memory, processes, files and CPU


class NetworkAccess(StrEnum):
    """What network one sandbox has."""

    NONE = "none"  # none at all (its own loopback at most)
    OUTBOUND = "outbound-only"  # out through a policy (local: slirp4netns + egress rules)
    ALLOW_LIST = "allow-list"  # only listed destinations (Daytona's allow-lists)
    OPEN = "open"  # its own unrestricted network, on a machine that is not the worker
    HOST = "host"  # the worker's own network, loopback services included: NOT isolated

# The line a candidate logs while it waits for a budget slot (the dispatcher's tracker
# shows such a candidate as WAITING; here, so it need not import a backend).
WAITING_LINE = "[Daytona] waiting for a sandbox slot"


class SandboxError(Exception):
    """A backend step failed; ``phase`` names the step for the result's error message."""

    def __init__(self, phase: Phase, message: str, sandbox_id: str | None = None):
        super().__init__(message)
        self.phase = Phase(phase)
        self.sandbox_id = sandbox_id


@dataclass(frozen=True)
class SandboxRequest:
    """What the lifecycle asks a backend for."""

    run_id: str
    candidate_id: str
    timeout: int
    network: bool = True
    env: dict[str, str] = field(default_factory=dict)  # already filtered by allow-list
    limits: Limits = field(default_factory=Limits)
    owner: str = ""
    ttl_seconds: int = 0
    egress: Egress = field(default_factory=Egress)  # additions to the local egress policy
    exclusive: bool = False  # hold a core of the worker machine (see ``reserve``)
    daytona: DaytonaSpec = field(default_factory=DaytonaSpec)
    budget: SandboxBudget = field(default_factory=SandboxBudget)


def _no_state(_state: CapacityState) -> None:
    pass


@dataclass
class CreateStatus:
    """The lifecycle's window into ``create()``, filled in place so that it survives a
    failed create.

    ``on_state(WAITING)`` when the sandbox must wait for capacity (a budget slot, the
    account's quota, an image build) and ``on_state(RUNNING)`` when it has it: the task
    shows both (Flower). ``waited`` seconds are not the candidate's time.
    """

    on_state: Callable[[CapacityState], None] = _no_state
    waited: float = 0.0
    refused: int = 0  # creates the service refused (quota, rate limit) and we retried
    warnings: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)  # sandbox ids left for `forge reap`


@dataclass
class ExecResult:
    exit_code: int | None
    output: str  # stdout and stderr interleaved, tail kept under the cap
    timed_out: bool = False
    output_dropped_bytes: int = 0
    duration: float = 0.0
    cpu_seconds: float | None = None  # user + system time of every process of the command


@dataclass
class Download:
    content: bytes | None  # None: the file does not exist
    truncated: bool = False
    problem: str | None = None  # e.g. "artifact is a symlink"


class Sandbox(Protocol):
    """One live sandbox. ``workdir`` is the candidate's working directory inside it."""

    id: str
    workdir: str
    boundaries: frozenset[Boundary]  # what isolates this sandbox from the host
    network: NetworkAccess  # the network it has
    isolation: str  # the same, in words for a person (shown in results)

    def upload(self, content: bytes, path: str, timeout: int) -> None: ...

    def exec(self, argv: list[str], timeout: int, output_cap: int) -> ExecResult: ...

    def download(self, path: str, max_bytes: int, timeout: int) -> Download: ...

    def delete(self) -> None: ...

    # Optional: ``unpack(archive, workdir, timeout)`` writes a project bundle (a tar) into
    # the work directory directly, raising SandboxError. Without it the lifecycle uploads
    # the tar and has the sandbox's python3 unpack it (worker.lifecycle._unpack).
    # Optional: ``install_own_wheels(requirements_file, timeout)`` installs a project's
    # own pure wheels from the host, returning an ExecResult, or None when pip must
    # (worker.lifecycle._own_wheels); without it worker/local_wheels.py runs in the sandbox.


class Reservation(Protocol):
    def release(self) -> None: ...


class NoReservation:
    """Nothing held (a backend whose sandboxes do not run on the worker's cores)."""

    def release(self) -> None:
        pass


class SandboxBackend(Protocol):
    """Makes sandboxes. Its capabilities are properties, for code to read: what its
    sandboxes are isolated by here (``boundaries``), whether a request for no network is
    enforced (``can_block_network``), whether they run on the worker's own machine."""

    name: str  # "local" | "daytona": the result's execution_mode
    label: str  # prefix of the lifecycle's log lines, e.g. "Daytona"

    @property
    def boundaries(self) -> frozenset[Boundary]: ...

    @property
    def can_block_network(self) -> bool: ...

    @property
    def on_worker_machine(self) -> bool: ...

    def reserve(self, request: SandboxRequest, log: LogFn) -> Reservation:
        """Wait for what an ``exclusive`` request needs of the machine (a core of the
        worker, for local sandboxes), before the candidate's clock starts."""
        ...

    def create(self, request: SandboxRequest, log: LogFn,
               status: CreateStatus | None = None) -> Sandbox: ...
