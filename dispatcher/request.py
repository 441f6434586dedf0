"""``RunRequest``: what someone asked a run to be, typed, in one place.

Every entry point builds one: the CLI (``forge run``), ``run_forge``/``prepare``, the
scheduled-competition task, the seed-compatible API, and ``forge resume`` (which reads
the stored one back from the run record). ``plan_run`` turns it into a ``RunPlan``; the
plan keeps it *resolved* (run id chosen, paths absolute, Discord decided) and the run
record stores exactly that, so a resume re-plans from the same request.

A field left ``None`` takes the manifest's value (or the machine's default). A new run
option is a field here, its check in :meth:`RunRequest.validate`, and its one user.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from worker.records import DEFAULT_OBJECTIVE, Limits
from worker.validation import (
    check_artifacts_dir,
    check_objective,
    check_run_id,
    check_timeout,
    check_trials,
)

# Fields stored as lists in JSON, tuples here.
_TUPLES = ("env_allow", "egress_allow", "egress_deny")


@dataclass(frozen=True)
class RunRequest:
    objective: str = DEFAULT_OBJECTIVE
    daytona: bool = False  # asked for Daytona sandboxes (without a key: local, with a note)
    candidates: str | None = None  # a candidates.toml or its directory (None: the demo's)
    artifacts_dir: str | None = None  # None: FORGE_ARTIFACTS_DIR, else artifacts/
    run_id: str | None = None  # None: a new one
    timeout: int | None = None  # per-candidate deadline, seconds
    network: bool | None = None
    env_allow: tuple[str, ...] | None = None
    judge: str | None = None
    post: bool | None = None  # None: post when DISCORD_WEBHOOK_URL is set
    competition: str | None = None  # the forge.toml competition that asked, if any
    limits: Limits | None = None
    egress_allow: tuple[str, ...] | None = None
    egress_deny: tuple[str, ...] | None = None
    cpus: float | None = None
    speed: str | None = None
    exclusive: bool | None = None
    max_sandboxes: int | None = None
    trials: int | None = None  # runs per candidate (docs/trials.md); None: the manifest's

    def validate(self) -> RunRequest:
        """Raise InvalidInput (worker/validation.py) for a value no run may have."""
        check_objective(self.objective)
        if self.run_id is not None:
            check_run_id(self.run_id)
        if self.timeout is not None:
            check_timeout(self.timeout)
        if self.artifacts_dir is not None:
            check_artifacts_dir(self.artifacts_dir)
        if self.trials is not None:
            check_trials(self.trials)
        return self

    def replace(self, **changes: Any) -> RunRequest:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _TUPLES:
            if data[name] is not None:
                data[name] = list(data[name])
        if self.limits is not None:
            data["limits"] = self.limits.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRequest:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in _TUPLES:
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        if values.get("limits") is not None:
            values["limits"] = Limits.from_dict(values["limits"])
        return cls(**values)

    @classmethod
    def from_legacy_source(cls, run: dict[str, Any], source: dict[str, Any]) -> RunRequest:
        """The request of a run record written before requests were stored (its RunSpec
        and the ``source`` overrides of that time), so such a run still resumes."""
        request = cls.from_dict({k: v for k, v in source.items() if k != "manifest"})
        return request.replace(
            objective=run.get("objective", DEFAULT_OBJECTIVE),
            daytona=run.get("execution_mode") == "daytona",
            candidates=source.get("manifest"), artifacts_dir=run.get("artifacts_dir"),
            run_id=run.get("run_id"), post=bool(run.get("post_to_discord")),
            competition=run.get("competition"), trials=run.get("trials") or 1)
