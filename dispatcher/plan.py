"""Turning a competition definition into a run: a RunSpec and one task per candidate."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from dispatcher.manifest import Manifest, ManifestError
from dispatcher.request import RunRequest
from worker import config
from worker.records import (
    CandidateInfo,
    CandidateTask,
    DaytonaSpec,
    Egress,
    Limits,
    ProjectRef,
    RunSpec,
    SandboxBudget,
)
from worker.validation import check_trials

DEFAULT_TIMEOUT = 60


@dataclass(frozen=True)
class RunPlan:
    run: RunSpec
    tasks: tuple[CandidateTask, ...]
    # What was asked, resolved (run id, paths, posting): the run record stores it, and
    # `forge resume` re-plans the run from it.
    request: RunRequest = field(default_factory=RunRequest)
    # Directory candidates' bundles by sha256: stored once by ``dispatch.publish`` however
    # many tasks (candidates, trials) share one, and never inside a task message.
    bundles: dict[str, bytes] = field(default_factory=dict)


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


# Task fields added after runs were already being fingerprinted: left out at their
# defaults, so a run planned by an older dispatcher keeps its fingerprint (and resumes).
_LATER_DEFAULTS = {"egress": Egress().to_dict(), "exclusive": False,
                   "daytona": DaytonaSpec().to_dict(), "project": None, "trials": 1}


def _fingerprinted(task: CandidateTask) -> dict:
    """The task fields that define the competition: not the run id or script text (the
    sha256 stands for it), not the sandbox budget (how many run at once changes no
    result) nor the competition's name (a label), and later fields only when they differ
    from their defaults."""
    doc = {k: v for k, v in task.to_dict().items()
           if k not in ("run_id", "script", "budget", "competition", "trial")}
    for key, default in _LATER_DEFAULTS.items():
        if doc.get(key) == default:
            del doc[key]
    if not doc["limits"].get("cpus"):
        doc["limits"].pop("cpus", None)
    return doc


def definition_sha256(objective: str, tasks: list[CandidateTask], judge: str,
                      speed: str = "wall") -> str:
    """Fingerprint of what a run *is*: resume refuses a run whose definition changed."""
    doc = {
        "objective": objective,
        "judge": judge,
        "candidates": [_fingerprinted(t) for t in tasks if t.trial == 0],
    }
    if speed != "wall":
        doc["speed"] = speed
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def plan_run(request: RunRequest, manifest: Manifest, *, execution_mode: str = "local",
             notes: list[str] | None = None) -> RunPlan:
    """Snapshot every candidate's script into its task; nothing is read again later.

    Every option the request leaves None takes the manifest's value (a competition
    overrides it). The plan keeps the request resolved: run id, absolute paths, and
    whether the winner is posted are decided here, once, for the run record.

    With K > 1 trials (``request.trials``, else the manifest's) each candidate gets K
    tasks (trial 0..K-1, task ids ``<run>:<candidate>:<k>``), trial-major: every
    candidate's first trial is published before any second one, so the K x N tasks
    spread over the workers and a candidate's trials run side by side."""
    r = request
    run_id = r.run_id or new_run_id()
    artifacts_dir = os.path.abspath(r.artifacts_dir or config.artifacts_dir())
    post = config.discord_webhook_url() is not None if r.post is None else r.post
    timeout = r.timeout
    k_trials = check_trials(manifest.trials if r.trials is None else r.trials)
    default_timeout = timeout or manifest.timeout or DEFAULT_TIMEOUT
    net = manifest.network if r.network is None else r.network
    env = manifest.env if r.env_allow is None else r.env_allow
    judge_name = r.judge or manifest.judge
    egress = Egress(
        allow=manifest.egress.allow if r.egress_allow is None else tuple(r.egress_allow),
        deny=manifest.egress.deny if r.egress_deny is None else tuple(r.egress_deny))
    limits = r.limits
    cap = r.cpus if r.cpus is not None else manifest.cpus or (limits.cpus if limits else 0)
    task_limits = dataclasses.replace(limits or Limits(), cpus=cap)
    speed_basis = r.speed or manifest.speed
    if speed_basis == "cpu" and execution_mode != "local":
        raise ManifestError(
            f"speed = 'cpu' needs local execution ({execution_mode} sandboxes report no CPU "
            "time); use speed = 'wall', or run the competition locally")
    one_per_core = manifest.exclusive if r.exclusive is None else r.exclusive
    daytona, budget = DaytonaSpec(), SandboxBudget()
    requirements = {c.id: c.requirements for c in manifest.candidates}
    if execution_mode == "daytona":
        daytona, requirements = _daytona_image(manifest, requirements)
        budget = _budget(r.max_sandboxes or manifest.max_sandboxes)
    tasks = [
        CandidateTask(
            run_id=run_id,
            candidate_id=c.id,
            name=c.name,
            script_name=c.script_name,
            script=c.script,
            script_sha256=c.script_sha256,
            objective=r.objective,
            execution_mode=execution_mode,
            timeout=timeout or c.timeout or default_timeout,
            network=net,
            env_allow=tuple(env),
            requirements=requirements[c.id],
            limits=task_limits,
            egress=egress,
            exclusive=one_per_core,
            daytona=daytona,
            budget=budget,
            competition=r.competition,
            project=_project_ref(c),
            trial=k,
            trials=k_trials,
            **{**manifest.phase_timeouts, **c.phase_timeouts},
        )
        for k in range(k_trials)
        for c in manifest.candidates
    ]
    run = RunSpec(
        run_id=run_id,
        objective=r.objective,
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        execution_mode=execution_mode,
        artifacts_dir=artifacts_dir,
        candidates=[CandidateInfo(id=c.id, name=c.name, description=c.description,
                                  script=c.script_name, content_sha256=c.content_sha256)
                    for c in manifest.candidates],
        judge=judge_name,
        timeout=default_timeout,
        post_to_discord=post,
        competition=r.competition,
        definition_sha256=definition_sha256(r.objective, tasks, judge_name, speed_basis),
        notes=list(notes or []),
        speed=speed_basis,
        trials=k_trials,
    )
    resolved = r.replace(run_id=run_id, artifacts_dir=artifacts_dir, post=post,
                         candidates=os.path.abspath(manifest.path), trials=k_trials)
    bundles = {c.project.bundle.sha256: c.project.bundle.data
               for c in manifest.candidates if c.project}
    return RunPlan(run=run, tasks=tuple(tasks), request=resolved, bundles=bundles)


def _project_ref(c) -> ProjectRef | None:
    """What a task message says of a directory candidate: the hash, not the bytes."""
    p = c.project
    if p is None:
        return None
    return ProjectRef(sha256=p.bundle.sha256, size=p.bundle.size, files=len(p.bundle.files),
                      entry=p.entry, module=p.module, requirements_file=p.requirements_file,
                      path=p.rel)


def _daytona_image(manifest: Manifest, requirements: dict[str, tuple[str, ...]]
                   ) -> tuple[DaytonaSpec, dict[str, tuple[str, ...]]]:
    """With a declared image, every candidate's requirements install when the image is
    built (once), not in each sandbox: they join its pip packages, sorted, deduplicated."""
    spec = manifest.daytona
    if spec.image is None or not any(requirements.values()):
        return spec, requirements
    wanted = sorted({r for reqs in requirements.values() for r in reqs} - set(spec.image.pip))
    image = replace(spec.image, pip=spec.image.pip + tuple(wanted))
    return replace(spec, image=image), {cid: () for cid in requirements}


def _budget(max_sandboxes: int | None) -> SandboxBudget:
    """The run's budget from the competition and this machine's FORGE_DAYTONA_* settings;
    a fresh wait clock per plan (so `forge resume` waits afresh)."""
    cpu, memory, disk = config.daytona_quota()
    return SandboxBudget(max_sandboxes=max_sandboxes or config.daytona_max_sandboxes(),
                         max_cpu=cpu, max_memory=memory, max_disk=disk,
                         slot_wait=config.daytona_slot_wait(), run_clock=secrets.token_hex(6))
