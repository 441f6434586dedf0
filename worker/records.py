"""Typed records that cross a process boundary (task messages, results, summary.json).

Everything here serialises to plain JSON with ``to_dict``/``from_dict`` because Celery
messages and the result backend are JSON: a record must survive a trip through Redis
unchanged, so redelivered tasks and re-run callbacks see exactly the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, TypeVar

from worker import keys

T = TypeVar("T")

DEFAULT_OBJECTIVE = "Generate weekly 'AI Events in San Francisco' post for Discord"
# What a competition's speed score measures: wall time of the run (the default), or the
# CPU time of the candidate's processes, which a busy neighbour on the worker cannot
# inflate (local execution only: Daytona reports no CPU time).
SPEED_BASES = ("wall", "cpu")


_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a dataclass from a dict, ignoring unknown keys (forward compatible)."""
    names = _names(cls)
    return cls(**{k: v for k, v in data.items() if k in names})


def _to_dict(obj: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` without its deep copy of every leaf value: records hold
    JSON values, records and lists of them, so new containers are copy enough. It was
    most of the dispatcher's CPU when publishing thousands of tasks."""
    return {name: _plain(getattr(obj, name)) for name in _names(type(obj))}


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if dataclasses.is_dataclass(value):
        return _to_dict(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Limits:
    """Resource caps for one candidate's sandbox (enforced by the sandbox layer)."""

    memory_mb: int = 1024
    max_processes: int = 128
    max_file_mb: int = 64
    cpu_seconds: int = 0  # 0: derived from the wall-clock deadline
    open_files: int = 256
    output_bytes: int = 256 * 1024  # captured stdout+stderr, tail kept
    artifact_bytes: int = 1024 * 1024
    cpus: float = 0  # CPU cap in cores (cgroup quota); 0: none, only the equal weight

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Limits:
        return _from_dict(cls, data or {})


@dataclass(frozen=True)
class Egress:
    """A competition's additions to the local sandbox's egress policy (see
    ``worker.sandbox.egress``): IPv4 addresses, CIDRs or host names, validated on load."""

    allow: tuple[str, ...] = ()  # inside ranges opened (e.g. an internal model gateway)
    deny: tuple[str, ...] = ()  # public ranges closed as well

    def to_dict(self) -> dict[str, Any]:
        return {"allow": list(self.allow), "deny": list(self.deny)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Egress:
        data = data or {}
        return cls(tuple(data.get("allow") or ()), tuple(data.get("deny") or ()))


@dataclass(frozen=True)
class Resources:
    """A Daytona sandbox's size: vCPUs, memory and disk in GiB (0: Daytona's default)."""

    cpu: int = 0
    memory: int = 0
    disk: int = 0

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Resources:
        return _from_dict(cls, data or {})

    def __bool__(self) -> bool:
        return bool(self.cpu or self.memory or self.disk)


@dataclass(frozen=True)
class ImageSpec:
    """A declared sandbox image: the SDK's declarative ``Image``, built once into a snapshot.

    ``base`` is a registry image (``Image.base``); without it, ``python`` picks the SDK's
    Debian slim image of that Python series (``Image.debian_slim``).
    """

    base: str = ""
    python: str = ""
    pip: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base, "python": self.python, "pip": list(self.pip),
                "commands": list(self.commands)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ImageSpec | None:
        if not data:
            return None
        data = dict(data)
        data["pip"] = tuple(data.get("pip") or ())
        data["commands"] = tuple(data.get("commands") or ())
        return _from_dict(cls, data)


@dataclass(frozen=True)
class DaytonaSpec:
    """A competition's Daytona settings: where sandboxes start from, their size, network.

    Part of the competition's definition (``definition_sha256``): they change what a
    candidate sees. Empty fields mean Daytona's defaults.
    """

    snapshot: str = ""
    image: ImageSpec | None = None
    resources: Resources = field(default_factory=Resources)
    network_allow_list: tuple[str, ...] = ()  # CIDRs
    domain_allow_list: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"snapshot": self.snapshot,
                "image": self.image.to_dict() if self.image else None,
                "resources": self.resources.to_dict(),
                "network_allow_list": list(self.network_allow_list),
                "domain_allow_list": list(self.domain_allow_list)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DaytonaSpec:
        data = dict(data or {})
        data["image"] = ImageSpec.from_dict(data.get("image"))
        data["resources"] = Resources.from_dict(data.get("resources"))
        data["network_allow_list"] = tuple(data.get("network_allow_list") or ())
        data["domain_allow_list"] = tuple(data.get("domain_allow_list") or ())
        return _from_dict(cls, data)


@dataclass(frozen=True)
class SandboxBudget:
    """How many Daytona sandboxes may be alive at once, and how long a run may wait.

    Read by ``worker.budget``. 0 means "the worker's own configuration" (the
    ``FORGE_DAYTONA_*`` variables). Not part of the competition's definition: resuming a
    run under a different budget is fine. ``run_clock`` names the run's wait clock, one
    per publish, so ``forge resume`` starts a fresh wait.
    """

    max_sandboxes: int = 0
    max_cpu: int = 0
    max_memory: int = 0
    max_disk: int = 0
    slot_wait: int = 0
    run_clock: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SandboxBudget:
        return _from_dict(cls, data or {})


@dataclass(frozen=True)
class ProjectRef:
    """A directory candidate in a task message: its bundle's hash, never its bytes.

    The bundle (``worker.bundles``) is stored once in the result backend under
    ``sha256``; ``entry`` (a file of the project) or ``module`` (``python3 -m``) says
    how it starts, and ``requirements_file`` what pip installs before its clock starts.
    """

    sha256: str
    size: int = 0  # bytes of file content
    files: int = 0
    entry: str = ""  # e.g. "main.py": python3 <entry> "<objective>" <output>
    module: str = ""  # e.g. "alpha": python3 -m alpha "<objective>" <output>
    requirements_file: str = ""  # "requirements.txt" when the project has one
    path: str = ""  # the manifest's ``path``, for people (reports, logs)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ProjectRef | None:
        return _from_dict(cls, data) if data else None


@dataclass(frozen=True)
class CandidateTask:
    """Everything a worker needs to run one candidate, carried in the task message.

    The script content travels with its sha256 so a worker on another machine needs no
    copy of the repository, and a tampered or truncated message is detected. A directory
    candidate travels as ``project`` (its bundle's hash), with ``script`` empty.
    Environment *names* travel, never values: the worker reads allowed values itself.
    """

    run_id: str
    candidate_id: str
    name: str
    script_name: str
    script: str
    script_sha256: str
    objective: str
    execution_mode: str = "local"  # local | daytona
    timeout: int = 60
    network: bool = True
    env_allow: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    install_timeout: int = 120
    upload_timeout: int = 30
    retrieve_timeout: int = 10
    limits: Limits = field(default_factory=Limits)
    egress: Egress = field(default_factory=Egress)
    # At most as many candidates at once per worker machine as it has cores (local).
    exclusive: bool = False
    daytona: DaytonaSpec = field(default_factory=DaytonaSpec)
    budget: SandboxBudget = field(default_factory=SandboxBudget)
    competition: str | None = None  # the scheduled competition, for logs and error events
    project: ProjectRef | None = None  # a directory candidate (then ``script`` is empty)
    # Repeated trials: this task is trial ``trial`` (0-based) of ``trials`` runs of the
    # candidate, each in its own fresh sandbox (one trial: exactly the run of old).
    trial: int = 0
    trials: int = 1

    @property
    def content_sha256(self) -> str:
        """What the candidate's code is: its bundle's hash, or its script's."""
        return self.project.sha256 if self.project else self.script_sha256

    @property
    def task_id(self) -> str:
        return task_id_for(self.run_id, self.candidate_id, self.trial, self.trials)

    @property
    def unit(self) -> str:
        """What the console and progress call this task: the candidate id, with its
        trial number (1-based) when the run has several."""
        return unit_name(self.candidate_id, self.trial, self.trials)

    def to_dict(self) -> dict[str, Any]:
        data = _to_dict(self)
        data["env_allow"] = list(self.env_allow)
        data["requirements"] = list(self.requirements)
        data["egress"] = self.egress.to_dict()
        data["daytona"] = self.daytona.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateTask:
        data = dict(data)
        data["env_allow"] = tuple(data.get("env_allow") or ())
        data["requirements"] = tuple(data.get("requirements") or ())
        data["limits"] = Limits.from_dict(data.get("limits"))
        data["egress"] = Egress.from_dict(data.get("egress"))
        data["daytona"] = DaytonaSpec.from_dict(data.get("daytona"))
        data["budget"] = SandboxBudget.from_dict(data.get("budget"))
        data["project"] = ProjectRef.from_dict(data.get("project"))
        return _from_dict(cls, data)


task_id_for = keys.candidate_task_id  # the name callers know


def unit_name(candidate_id: str, trial: int = 0, trials: int = 1) -> str:
    """``alpha``, or ``alpha#2`` for the second of several trials."""
    return f"{candidate_id}#{trial + 1}" if trials > 1 else candidate_id


@dataclass
class CandidateResult:
    """The outcome of one candidate: the seed's ``DaytonaResult``, extended.

    ``success`` means the script exited 0 within its deadline and left an artifact.
    A failure of any kind is a record with ``success=False`` and an ``error_message``,
    never an exception, so one bad candidate can never stop the chord.
    """

    candidate_id: str
    sandbox_id: str | None = None
    success: bool = False
    output: str = ""
    artifact_content: str | None = None
    # Wall time of the lifecycle, less capacity waits and installing requirements (the
    # candidate's clock: what the speed score reads).
    runtime_seconds: float = 0.0
    error_message: str | None = None
    execution_mode: str = "local"
    exit_code: int | None = None
    timed_out: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    worker: str | None = None
    attempt: int = 1
    output_dropped_bytes: int = 0
    artifact_truncated: bool = False
    warnings: list[str] = field(default_factory=list)
    isolation: str | None = None
    log: list[str] = field(default_factory=list)  # the lifecycle's lines, in order
    # Seconds per phase (fetch, create, upload, install, exec, collect, delete, ...) and
    # the epoch the task started: where a candidate's overhead goes (bench/overhead.py).
    timings: dict[str, float] = field(default_factory=dict)
    # CPU time (user + system) of the candidate's command, every process of it: from its
    # cgroup, else the rusage of the sandbox's reaped processes. None: the backend
    # cannot tell (Daytona), or the command never ran.
    cpu_seconds: float | None = None
    # Sandboxes that never started or never finished deleting within their deadline:
    # deleted as far as the API let us, left for `forge reap` (the run's notes count them).
    stuck_sandboxes: list[str] = field(default_factory=list)
    trial: int = 0  # which trial of the candidate this is (0-based; see CandidateTask)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateResult:
        return _from_dict(cls, data)


# The seed called the per-candidate record DaytonaResult; keep the name importable.
DaytonaResult = CandidateResult


@dataclass
class Score:
    candidate_id: str
    success: float = 0.0
    quality_score: float = 0.0
    speed_score: float = 0.0
    total_score: float = 0.0
    qualified: bool = False
    gates: dict[str, bool] = field(default_factory=dict)
    disqualified_reason: str | None = None
    quality_details: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    trial: int = 0  # in ForgeResult.trial_scores: the trial scored (0-based)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Score:
        return _from_dict(cls, data)


@dataclass
class CandidateInfo:
    """A candidate as listed in summary.json (``artifact``: path of its post, if any).

    ``content_sha256``: the sha256 of its script, or of its project's bundle, so a result
    can be tied to exactly the code that produced it."""

    id: str
    name: str
    description: str = ""
    script: str = ""
    artifact: str | None = None
    content_sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CandidateInfo:
        return _from_dict(cls, data)


@dataclass
class RunSpec:
    """What the chord body needs to know about the run besides the results."""

    run_id: str
    objective: str
    timestamp: str
    execution_mode: str
    artifacts_dir: str
    candidates: list[CandidateInfo] = field(default_factory=list)
    judge: str = "events"
    timeout: int = 60
    post_to_discord: bool = False
    competition: str | None = None
    definition_sha256: str = ""
    notes: list[str] = field(default_factory=list)
    speed: str = "wall"  # what the speed score measures: "wall" or "cpu" time (SPEED_BASES)
    trials: int = 1  # how many times each candidate runs (worker.judge.trials)

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        data = dict(data)
        data["candidates"] = [CandidateInfo.from_dict(c) for c in data.get("candidates", [])]
        return _from_dict(cls, data)


@dataclass
class ForgeResult:
    """The outcome of a whole run; ``summary.json`` is exactly ``to_dict()``."""

    run_id: str
    objective: str
    timestamp: str
    execution_mode: str
    candidates: list[CandidateInfo] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)
    winner_id: str | None = None
    winner_score: float | None = None
    winner_artifact: str | None = None
    artifacts_dir: str = ""
    results: list[CandidateResult] = field(default_factory=list)
    judge: str = "events"
    competition: str | None = None
    definition_sha256: str = ""
    notes: list[str] = field(default_factory=list)
    discord: dict[str, Any] | None = None
    sandboxes_alive: int | None = None
    speed: str = "wall"  # the speed score measured "wall" or "cpu" time
    # Repeated trials (trials > 1). ``scores`` and ``results`` then describe each
    # candidate as a whole: its score is the mean over its trials, its result the best
    # qualified trial's (its post). Every trial's own result and score are kept here, in
    # trial order per candidate; ``trial_summaries`` are worker.judge.trials
    # TrialSummary dicts (mean, interval, pass rate, pass^K, flaky) in rank order, and
    # ``verdict`` the Verdict dict without its ranking (clear, tied, ...).
    trials: int = 1
    trial_results: list[CandidateResult] = field(default_factory=list)
    trial_scores: list[Score] = field(default_factory=list)
    trial_summaries: list[dict[str, Any]] = field(default_factory=list)
    verdict: dict[str, Any] | None = None
    # The competition's season standings after this run (worker.judge.season
    # Standings.to_dict()); None for a run outside a competition or without a store.
    standings: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ForgeResult:
        data = dict(data)
        data["candidates"] = [CandidateInfo.from_dict(c) for c in data.get("candidates", [])]
        data["scores"] = [Score.from_dict(s) for s in data.get("scores", [])]
        data["results"] = [CandidateResult.from_dict(r) for r in data.get("results", [])]
        data["trial_results"] = [CandidateResult.from_dict(r)
                                 for r in data.get("trial_results") or []]
        data["trial_scores"] = [Score.from_dict(s) for s in data.get("trial_scores") or []]
        return _from_dict(cls, data)

    @property
    def tied(self) -> bool:
        """The top of the ranking is statistically tied (no outright winner)."""
        return bool(self.verdict and self.verdict.get("status") == "tied")

    def summary_for(self, candidate_id: str) -> dict[str, Any] | None:
        return next((s for s in self.trial_summaries
                     if s.get("candidate_id") == candidate_id), None)

    def trials_of(self, candidate_id: str) -> list[CandidateResult]:
        return [r for r in self.trial_results if r.candidate_id == candidate_id]

    def result_for(self, candidate_id: str) -> CandidateResult | None:
        return next((r for r in self.results if r.candidate_id == candidate_id), None)

    def score_for(self, candidate_id: str) -> Score | None:
        return next((s for s in self.scores if s.candidate_id == candidate_id), None)
