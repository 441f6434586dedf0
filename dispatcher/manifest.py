"""The candidate manifest (``candidates.toml``): loaded once, validated, refused clearly.

```toml
timeout = 60                 # optional defaults for every candidate
network = true
env = ["OPENAI_API_KEY"]     # variables passed into sandboxes (names only)
judge = "events"

[[candidate]]
id = "alpha"                 # [a-z0-9_-], unique
name = "Agent Alpha"
description = "The Speed Demon"
script = "agent_alpha.py"    # relative to this file
timeout = 30                 # optional
requirements = ["requests"]  # optional, installed in the sandbox first
upload_timeout = 30          # optional phase deadlines (also allowed at the top level):
retrieve_timeout = 10        #   upload 30 s, retrieve 10 s, install 120 s by default
install_timeout = 120
```

Top-level options for local sandboxes (docs/security.md has the detail):

```toml
egress_allow = ["10.1.2.3", "models.internal"]  # inside addresses a network-on candidate
egress_deny = ["203.0.113.0/24"]                #   may reach / public ones it may not
cpus = 1                     # CPU cap per candidate, in cores (default: none, equal share)
speed = "cpu"                # score speed on CPU time instead of wall time ("wall")
exclusive = true             # at most one candidate per core of a worker machine at once
```
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from worker.records import SPEED_BASES, Egress, sha256_text
from worker.sandbox.egress import check_entry
from worker.validation import CANDIDATE_ID_RE, CANDIDATE_ID_RULE, TIMEOUT_MAX, TIMEOUT_MIN

ID_RE = CANDIDATE_ID_RE  # the rule lives in worker/validation.py (the worker checks it too)
DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "candidates" / "candidates.toml"
MAX_SCRIPT_BYTES = 512 * 1024


class ManifestError(ValueError):
    """A manifest problem, naming the file, the entry and the field, and the fix."""


@dataclass(frozen=True)
class Candidate:
    id: str
    name: str
    description: str
    script_path: Path
    script: str
    script_sha256: str
    timeout: int | None = None
    requirements: tuple[str, ...] = ()
    phase_timeouts: dict[str, int] = field(default_factory=dict)

    @property
    def script_name(self) -> str:
        return self.script_path.name


@dataclass(frozen=True)
class Manifest:
    path: Path
    candidates: tuple[Candidate, ...]
    timeout: int | None = None
    network: bool = True
    env: tuple[str, ...] = ()
    judge: str = "events"
    extra: dict = field(default_factory=dict)
    phase_timeouts: dict[str, int] = field(default_factory=dict)
    egress: Egress = field(default_factory=Egress)
    cpus: float = 0
    speed: str = "wall"
    exclusive: bool = False


def resolve_manifest_path(path: str | Path | None) -> Path:
    """A manifest file, or a directory holding ``candidates.toml``."""
    if path is None:
        return DEFAULT_MANIFEST
    p = Path(path)
    if p.is_dir():
        p = p / "candidates.toml"
    if not p.is_file():
        raise ManifestError(
            f"{p}: no such manifest. Pass --candidates a candidates.toml file or a "
            "directory that holds one."
        )
    return p


def _field(where: str, entry: dict, key: str, kind: type, required: bool = False, default=None):
    if key not in entry:
        if required:
            raise ManifestError(f"{where}: field '{key}' is missing; add {key} = ...")
        return default
    value = entry[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ManifestError(f"{where}: field '{key}' must be a whole number, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise ManifestError(f"{where}: field '{key}' must be a {kind.__name__}, got {value!r}")
    return value


def _str_list(where: str, entry: dict, key: str) -> tuple[str, ...]:
    value = _field(where, entry, key, list, default=[])
    if not all(isinstance(v, str) and v for v in value):
        raise ManifestError(f"{where}: field '{key}' must be a list of non-empty strings")
    return tuple(value)


# Per-phase deadlines besides the run's own `timeout` (defaults: the seed's 30 s upload
# and 10 s retrieve; 120 s to install requirements).
PHASE_TIMEOUTS = ("upload_timeout", "retrieve_timeout", "install_timeout")


def _phase_timeouts(where: str, entry: dict) -> dict[str, int]:
    out = {}
    for key in PHASE_TIMEOUTS:
        value = _field(where, entry, key, int)
        if value is not None:
            if not TIMEOUT_MIN <= value <= TIMEOUT_MAX:
                raise ManifestError(f"{where}: field '{key}' must be between {TIMEOUT_MIN} and "
                                    f"{TIMEOUT_MAX} seconds")
            out[key] = value
    return out


MAX_CPUS = 1024


def egress_problem(key: str, value: object) -> str | None:
    """Why ``value`` is not a valid ``egress_allow``/``egress_deny`` list, or None."""
    if not isinstance(value, list):
        return f"field '{key}' must be a list of addresses, CIDRs or host names"
    for item in value:
        problem = check_entry(item, allow=key == "egress_allow")
        if problem:
            return f"field '{key}': {problem}"
    return None


def cpus_problem(value: object) -> str | None:
    """Why ``value`` is not a valid ``cpus`` (CPU cap in cores), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"field 'cpus' must be a number of cores (e.g. 1 or 0.5), got {value!r}"
    if not 0 < value <= MAX_CPUS:
        return f"field 'cpus' = {value}: must be more than 0 and at most {MAX_CPUS}"
    return None


def speed_problem(value: object) -> str | None:
    if value not in SPEED_BASES:
        return (f"field 'speed' = {value!r}: must be one of " + ", ".join(map(repr, SPEED_BASES))
                + " (score speed on wall time, or on the candidate's CPU time)")
    return None


def _checked(where: str, data: dict, key: str, problem, default):
    if key not in data:
        return default
    why = problem(data[key])
    if why:
        raise ManifestError(f"{where}: {why}")
    return data[key]


def _timeout(where: str, entry: dict) -> int | None:
    t = _field(where, entry, "timeout", int)
    if t is not None and not TIMEOUT_MIN <= t <= TIMEOUT_MAX:
        raise ManifestError(f"{where}: field 'timeout' must be between {TIMEOUT_MIN} and "
                            f"{TIMEOUT_MAX} seconds")
    return t


def load_manifest(path: str | Path | None = None) -> Manifest:
    p = resolve_manifest_path(path)
    try:
        data = tomllib.loads(p.read_text("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{p}: not valid TOML ({exc}); fix the syntax") from None
    entries = data.get("candidate")
    if not isinstance(entries, list) or not entries:
        raise ManifestError(f"{p}: no [[candidate]] entries; add at least one")
    top = f"{p}"
    env_names = _str_list(top, data, "env")
    for name in env_names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ManifestError(f"{top}: field 'env' has an invalid variable name {name!r}")
    seen: set[str] = set()
    candidates = []
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ManifestError(f"{p}: candidate #{i} is not a table")
        where = f"{p}: candidate #{i}"
        cid = _field(where, entry, "id", str, required=True)
        if not ID_RE.fullmatch(cid):
            raise ManifestError(f"{where}: field 'id' = {cid!r} is invalid; "
                                f"use {CANDIDATE_ID_RULE}")
        where = f"{p}: candidate '{cid}'"
        if cid in seen:
            raise ManifestError(f"{where}: field 'id' is a duplicate; every id must be unique")
        seen.add(cid)
        script_rel = _field(where, entry, "script", str, required=True)
        script_path = (p.parent / script_rel).resolve()
        if not script_path.is_file():
            raise ManifestError(
                f"{where}: field 'script' = {script_rel!r}: no such file ({script_path}); "
                "paths are relative to the manifest"
            )
        raw = script_path.read_bytes()
        if len(raw) > MAX_SCRIPT_BYTES:
            raise ManifestError(f"{where}: field 'script' is over {MAX_SCRIPT_BYTES} bytes")
        try:
            script = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ManifestError(f"{where}: field 'script' is not UTF-8 text") from None
        candidates.append(Candidate(
            id=cid,
            name=_field(where, entry, "name", str, default=cid),
            description=_field(where, entry, "description", str, default=""),
            script_path=script_path,
            script=script,
            script_sha256=sha256_text(script),
            timeout=_timeout(where, entry),
            requirements=_str_list(where, entry, "requirements"),
            phase_timeouts=_phase_timeouts(where, entry),
        ))
    network = _field(top, data, "network", bool, default=True)
    judge = _field(top, data, "judge", str, default="events")
    egress = Egress(
        allow=tuple(_checked(top, data, "egress_allow",
                             lambda v: egress_problem("egress_allow", v), [])),
        deny=tuple(_checked(top, data, "egress_deny",
                            lambda v: egress_problem("egress_deny", v), [])))
    return Manifest(path=p, candidates=tuple(candidates), timeout=_timeout(top, data),
                    network=network, env=env_names, judge=judge,
                    phase_timeouts=_phase_timeouts(top, data), egress=egress,
                    cpus=_checked(top, data, "cpus", cpus_problem, 0),
                    speed=_checked(top, data, "speed", speed_problem, "wall"),
                    exclusive=_field(top, data, "exclusive", bool, default=False))
