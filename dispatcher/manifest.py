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
script = "agent_alpha.py"    # relative to this file; or a directory candidate:
# path = "agents/alpha"      #   a project directory (relative to this file), started by
# entry = "main.py"          #   python3 <entry> "<objective>" <output>, or by
# module = "alpha"           #   python3 -m <module> ...: exactly one of the two
timeout = 30                 # optional
requirements = ["requests"]  # optional, installed in the sandbox first
upload_timeout = 30          # optional phase deadlines (also allowed at the top level):
retrieve_timeout = 10        #   upload 30 s, retrieve 10 s, install 120 s by default
install_timeout = 120

[daytona]                    # optional, Daytona mode only (docs/daytona.md)
max_sandboxes = 4            # this competition's sandbox budget (FORGE_DAYTONA_MAX_SANDBOXES)
snapshot = "my-snapshot"     # start from a snapshot of the account, or declare an image:
network_allow_list = ["10.0.0.0/8"]   # CIDRs; or domain_allow_list = ["pypi.org"]

[daytona.image]              # built once into a snapshot; candidates' requirements join pip
python = "3.12"              # the SDK's Debian slim image, or base = "python:3.12-slim"
pip = ["requests==2.32.3"]
commands = ["apt-get update && apt-get install -y curl"]

[daytona.resources]          # needs [daytona.image]: a snapshot carries its sandboxes' size
cpu = 2                      # vCPU; memory and disk in GiB
memory = 4
disk = 10
```

Top-level options for local sandboxes (docs/security.md has the detail):

```toml
egress_allow = ["10.1.2.3", "models.internal"]  # inside addresses a network-on candidate
egress_deny = ["203.0.113.0/24"]                #   may reach / public ones it may not
cpus = 1                     # CPU cap per candidate, in cores (default: none, equal share)
speed = "cpu"                # score speed on CPU time instead of wall time ("wall")
exclusive = true             # at most one candidate per core of a worker machine at once
trials = 5                   # run each candidate 5 times, each in a fresh sandbox (default 1;
                             #   docs/trials.md: mean, 95% interval, "statistically tied")
```
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dispatcher.pack import Bundle, PackError, pack_directory
from worker import config
from worker.keys import COLLECT
from worker.records import SPEED_BASES, DaytonaSpec, Egress, ImageSpec, Resources, sha256_text
from worker.sandbox.egress import check_entry
from worker.validation import (
    CANDIDATE_ID_RE,
    CANDIDATE_ID_RULE,
    MODULE_RE,
    RESERVED_ID,
    TIMEOUT_MAX,
    TIMEOUT_MIN,
    TRIALS_MAX,
)

ID_RE = CANDIDATE_ID_RE  # the rule lives in worker/validation.py (the worker checks it too)
DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "candidates" / "candidates.toml"
MAX_SCRIPT_BYTES = 512 * 1024


class ManifestError(ValueError):
    """A manifest problem, naming the file, the entry and the field, and the fix."""


@dataclass(frozen=True)
class Project:
    """A directory candidate: where it is, how it starts, and its packed bundle."""

    rel: str  # the manifest's ``path``, as written
    entry: str
    module: str
    bundle: Bundle
    requirements_file: str = ""  # "requirements.txt" when shipped

    @property
    def shown(self) -> str:
        """How reports name it: ``agents/alpha/main.py`` or ``agents/alpha -m alpha``."""
        base = self.rel.rstrip("/")
        return f"{base}/{self.entry}" if self.entry else f"{base} -m {self.module}"


@dataclass(frozen=True)
class Candidate:
    id: str
    name: str
    description: str
    script_path: Path  # the script, or a project's directory
    script: str  # empty for a project
    script_sha256: str  # empty for a project
    timeout: int | None = None
    requirements: tuple[str, ...] = ()
    phase_timeouts: dict[str, int] = field(default_factory=dict)
    project: Project | None = None

    @property
    def script_name(self) -> str:
        return self.project.shown if self.project else self.script_path.name

    @property
    def content_sha256(self) -> str:
        return self.project.bundle.sha256 if self.project else self.script_sha256


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
    daytona: DaytonaSpec = field(default_factory=DaytonaSpec)
    max_sandboxes: int | None = None
    trials: int = 1


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


def trials_problem(value: object) -> str | None:
    """Why ``value`` is not a valid ``trials`` (runs per candidate), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= TRIALS_MAX:
        return (f"field 'trials' = {value!r}: must be a whole number from 1 to {TRIALS_MAX} "
                "(how many times each candidate runs, each in a fresh sandbox)")
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


DAYTONA_KEYS = ("max_sandboxes", "snapshot", "image", "resources", "network_allow_list",
                "domain_allow_list")
IMAGE_KEYS = ("base", "python", "pip", "commands")
RESOURCE_KEYS = ("cpu", "memory", "disk")
SNAPSHOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,254}$")
DOMAIN_RE = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
PYTHON_RE = re.compile(r"^3\.\d{1,2}$")


def _table(where: str, data: dict, key: str, known: tuple[str, ...]) -> dict | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError(f"{where}: '{key}' must be a table ([{key}] or {key} = {{...}})")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ManifestError(f"{where}: field '{key}.{unknown[0]}' is unknown; known fields: "
                            + ", ".join(known))
    return value


def _image(where: str, table: dict) -> ImageSpec:
    base = _field(where, table, "base", str, default="")
    python = _field(where, table, "python", str, default="")
    if base and python:
        raise ManifestError(f"{where}: give 'image.base' (a registry image) or 'image.python' "
                            "(the SDK's Debian slim image), not both")
    if not base and not python:
        raise ManifestError(f"{where}: 'image' needs 'base' (e.g. \"python:3.12-slim\") or "
                            "'python' (e.g. \"3.12\")")
    if python and not PYTHON_RE.match(python):
        raise ManifestError(f"{where}: field 'image.python' = {python!r}: give a Python series "
                            "such as \"3.12\"")
    return ImageSpec(base=base, python=python, pip=_str_list(where, table, "pip"),
                     commands=_str_list(where, table, "commands"))


def _resources(where: str, table: dict) -> Resources:
    values = {}
    for key in RESOURCE_KEYS:
        value = _field(where, table, key, int, default=0)
        if not 0 <= value <= 1024:
            raise ManifestError(f"{where}: field 'resources.{key}' must be 1-1024")
        values[key] = value
    return Resources(**values)


def _daytona(p: Path, data: dict, network: bool) -> tuple[DaytonaSpec, int | None]:
    """The manifest's [daytona] table: validated here, so a bad one never reaches a worker."""
    where = f"{p}: [daytona]"
    table = _table(f"{p}", data, "daytona", DAYTONA_KEYS)
    if table is None:
        return DaytonaSpec(), None
    max_sandboxes = _field(where, table, "max_sandboxes", int)
    if max_sandboxes is not None and not 1 <= max_sandboxes <= 100_000:
        raise ManifestError(f"{where}: field 'max_sandboxes' must be at least 1")
    snapshot = _field(where, table, "snapshot", str, default="")
    if snapshot and not SNAPSHOT_RE.match(snapshot):
        raise ManifestError(f"{where}: field 'snapshot' = {snapshot!r} is not a snapshot name")
    image_table = _table(where, table, "image", IMAGE_KEYS)
    image = _image(where, image_table) if image_table is not None else None
    if image and snapshot:
        raise ManifestError(f"{where}: 'snapshot' and 'image' are both set; keep one (an image "
                            "is built into a snapshot of its own)")
    res_table = _table(where, table, "resources", RESOURCE_KEYS)
    resources = _resources(where, res_table) if res_table is not None else Resources()
    if resources and image is None:
        raise ManifestError(f"{where}: 'resources' need [daytona.image]: Daytona sizes a sandbox "
                            "by the snapshot it starts from, so declare an image (e.g. python = "
                            "\"3.12\") to build one with these resources"
                            + (", instead of 'snapshot'" if snapshot else ""))
    cidrs = _str_list(where, table, "network_allow_list")
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ManifestError(f"{where}: field 'network_allow_list' has {cidr!r}, which is "
                                "not a CIDR such as \"10.0.0.0/8\"") from None
    domains = tuple(d.lower() for d in _str_list(where, table, "domain_allow_list"))
    for domain in domains:
        if not DOMAIN_RE.match(domain):
            raise ManifestError(f"{where}: field 'domain_allow_list' has {domain!r}, which is "
                                "not a domain name such as \"pypi.org\"")
    if (cidrs or domains) and not network:
        raise ManifestError(f"{where}: an allow-list is set but 'network = false' blocks all "
                            "network; remove one of them")
    return (DaytonaSpec(snapshot=snapshot, image=image, resources=resources,
                        network_allow_list=cidrs, domain_allow_list=domains), max_sandboxes)


def _script(p: Path, where: str, entry: dict) -> tuple[Path, str]:
    script_rel = _field(where, entry, "script", str, required=True)
    script_path = (p.parent / script_rel).resolve()
    if not script_path.is_file():
        hint = (" (a directory: use path = ... with entry or module for a project)"
                if script_path.is_dir() else "")
        raise ManifestError(
            f"{where}: field 'script' = {script_rel!r}: no such file ({script_path}){hint}; "
            "paths are relative to the manifest"
        )
    raw = script_path.read_bytes()
    if len(raw) > MAX_SCRIPT_BYTES:
        raise ManifestError(f"{where}: field 'script' is over {MAX_SCRIPT_BYTES} bytes")
    try:
        return script_path, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{where}: field 'script' is not UTF-8 text") from None


def _project(p: Path, where: str, entry: dict, packed: dict[str, Bundle]
             ) -> tuple[Project, tuple[str, ...]]:
    """A directory candidate, packed (once per directory: ``packed``), and the
    dependencies its pyproject.toml declares (a requirements.txt is installed as a file)."""
    rel = _field(where, entry, "path", str, required=True)
    start = _field(where, entry, "entry", str, default="")
    module = _field(where, entry, "module", str, default="")
    if bool(start) == bool(module):
        raise ManifestError(f"{where}: a project needs exactly one of 'entry' (a file of it, "
                            "e.g. entry = \"main.py\") or 'module' (e.g. module = \"alpha\", "
                            "run as python3 -m alpha)")
    root = (p.parent / rel).resolve()
    if not root.is_dir():
        raise ManifestError(f"{where}: field 'path' = {rel!r}: no such directory ({root}); "
                            "paths are relative to the manifest")
    bundle = packed.get(str(root))
    if bundle is None:
        cap = config.project_max_bytes()
        try:
            bundle = packed[str(root)] = pack_directory(root, cap)
        except PackError as exc:
            raise ManifestError(f"{where}: project {rel!r}: {exc}") from None
    if start:
        start = os.path.normpath(start)
        if os.path.isabs(start) or start.startswith(".."):
            raise ManifestError(f"{where}: field 'entry' = {start!r} must be a path inside "
                                "the project, relative to it")
        if start not in bundle.files:
            raise ManifestError(f"{where}: field 'entry' = {start!r} is not a file the project "
                                f"ships ({root}); check the name and the .forgeignore")
    else:
        if not MODULE_RE.fullmatch(module):
            raise ManifestError(f"{where}: field 'module' = {module!r} is not a Python module "
                                "name such as \"alpha\" or \"alpha.cli\"")
        base = module.replace(".", "/")
        if f"{base}.py" not in bundle.files and f"{base}/__main__.py" not in bundle.files:
            raise ManifestError(f"{where}: field 'module' = {module!r}: the project has neither "
                                f"{base}.py nor {base}/__main__.py at its top level, so "
                                f"python3 -m {module} cannot start it")
    requirements_file, deps = "", ()
    if "requirements.txt" in bundle.files:
        requirements_file = "requirements.txt"
    elif "pyproject.toml" in bundle.files:
        deps = _pyproject_dependencies(root / "pyproject.toml", where)
    return Project(rel=rel, entry=start, module=module, bundle=bundle,
                   requirements_file=requirements_file), deps


def _pyproject_dependencies(path: Path, where: str) -> tuple[str, ...]:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: {path} is not valid TOML ({exc}); fix it") from None
    deps = (data.get("project") or {}).get("dependencies") or []
    if not isinstance(deps, list) or not all(isinstance(d, str) and d for d in deps):
        raise ManifestError(f"{where}: {path}: [project] dependencies must be a list of "
                            "requirement strings")
    return tuple(deps)


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
    packed: dict[str, Bundle] = {}  # one pack per project directory, however many share it
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise ManifestError(f"{p}: candidate #{i} is not a table")
        where = f"{p}: candidate #{i}"
        cid = _field(where, entry, "id", str, required=True)
        if not ID_RE.fullmatch(cid):
            raise ManifestError(f"{where}: field 'id' = {cid!r} is invalid; "
                                f"use {CANDIDATE_ID_RULE}")
        if cid == COLLECT:
            raise ManifestError(f"{where}: field 'id': {RESERVED_ID}")
        where = f"{p}: candidate '{cid}'"
        if cid in seen:
            raise ManifestError(f"{where}: field 'id' is a duplicate; every id must be unique")
        seen.add(cid)
        requirements = _str_list(where, entry, "requirements")
        project = None
        if "path" in entry or "entry" in entry or "module" in entry:
            if "script" in entry:
                raise ManifestError(f"{where}: give 'script' (one file) or 'path' (a project "
                                    "directory with 'entry' or 'module'), not both")
            project, deps = _project(p, where, entry, packed)
            script_path, script, script_sha = p.parent / project.rel, "", ""
            requirements = deps + requirements
        else:
            if "script" not in entry:
                raise ManifestError(f"{where}: field 'script' is missing; add script = "
                                    "\"agent.py\" (one file) or path = \"agents/x\" with "
                                    "entry = \"main.py\" or module = \"x\" (a project)")
            script_path, script = _script(p, where, entry)
            script_sha = sha256_text(script)
        candidates.append(Candidate(
            id=cid,
            name=_field(where, entry, "name", str, default=cid),
            description=_field(where, entry, "description", str, default=""),
            script_path=script_path,
            script=script,
            script_sha256=script_sha,
            timeout=_timeout(where, entry),
            requirements=requirements,
            phase_timeouts=_phase_timeouts(where, entry),
            project=project,
        ))
    network = _field(top, data, "network", bool, default=True)
    judge = _field(top, data, "judge", str, default="events")
    egress = Egress(
        allow=tuple(_checked(top, data, "egress_allow",
                             lambda v: egress_problem("egress_allow", v), [])),
        deny=tuple(_checked(top, data, "egress_deny",
                            lambda v: egress_problem("egress_deny", v), [])))
    daytona, max_sandboxes = _daytona(p, data, network)
    return Manifest(path=p, candidates=tuple(candidates), timeout=_timeout(top, data),
                    network=network, env=env_names, judge=judge,
                    phase_timeouts=_phase_timeouts(top, data), egress=egress,
                    cpus=_checked(top, data, "cpus", cpus_problem, 0),
                    speed=_checked(top, data, "speed", speed_problem, "wall"),
                    exclusive=_field(top, data, "exclusive", bool, default=False),
                    daytona=daytona, max_sandboxes=max_sandboxes,
                    trials=_checked(top, data, "trials", trials_problem, 1))
