"""Scheduled competitions (``forge.toml``): loaded once, validated, refused clearly.

```toml
[[competition]]
name = "weekly-sf-ai-events"            # [a-z0-9_-], unique: part of run ids and locks
objective = "Generate weekly 'AI Events in San Francisco' post for Discord"
candidates = "candidates/candidates.toml"  # relative to forge.toml
execution = "local"                     # local | daytona
timeout = 60                            # per-candidate deadline, seconds (default: manifest's)
network = true                          # default: manifest's
env = ["OPENAI_API_KEY"]                # allow-list of variable names (default: manifest's)
judge = "events"                        # default: manifest's
post = true                             # post the winner to Discord (default false)
max_sandboxes = 4                       # Daytona sandboxes alive at once (default: manifest's)
schedule = "0 9 * * 1"                  # crontab: minute hour day-of-month month day-of-week
timezone = "America/Los_Angeles"        # IANA zone the crontab is read in
# every = 300                           # instead of schedule: every N seconds (UTC-aligned)
enabled = true
# Local sandboxes (each defaults to the manifest's; see docs/security.md):
egress_allow = ["models.internal"]      # inside addresses network-on candidates may reach
egress_deny = []                        # public ones they may not
cpus = 1                                # CPU cap per candidate, in cores
speed = "wall"                          # score speed on "wall" or "cpu" time
exclusive = false                       # at most one candidate per worker core at once
```

A run started by the schedule belongs to a *slot*, the scheduled time it fires for; the
run id is derived from competition and slot, so the same slot never makes two runs.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab, crontab_parser

from dispatcher.manifest import cpus_problem, egress_problem, speed_problem, trials_problem
from dispatcher.request import RunRequest
from worker.validation import TIMEOUT_MAX, TIMEOUT_MIN, InvalidInput, check_objective

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # fullmatch: "$" would let a "\n" through
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCHEDULE = "0 9 * * 1"  # weekly, Monday 09:00
DEFAULT_TIMEZONE = "America/Los_Angeles"
EXECUTION_MODES = ("local", "daytona")
MIN_EVERY = 1
# (name, max, min) in crontab order: minute hour day-of-month month day-of-week.
CRON_FIELDS = (("minute", 60, 0), ("hour", 24, 0), ("day-of-month", 31, 1),
               ("month", 12, 1), ("day-of-week", 7, 0))
KNOWN_FIELDS = ("name", "objective", "candidates", "execution", "timeout", "network", "env",
                "judge", "post", "schedule", "every", "timezone", "enabled", "egress_allow",
                "egress_deny", "cpus", "speed", "exclusive", "max_sandboxes", "trials")
MAX_LOOKBACK_DAYS = 366 * 29  # Feb 29 on a given weekday recurs within 28 years


class CompetitionsError(ValueError):
    """A forge.toml problem, naming the file, the competition and the field."""


class ZonedCrontab(crontab):
    """A crontab read in its own time zone (Celery's reads it in the app's zone).

    Pickles with its zone, because beat's persistent schedule stores the entry.
    """

    def __init__(self, minute="*", hour="*", day_of_week="*", day_of_month="*",
                 month_of_year="*", zone: str = "UTC", **kwargs):
        super().__init__(minute, hour, day_of_week, day_of_month, month_of_year, **kwargs)
        self.zone = zone

    @property
    def tz(self):  # overrides crontab's app-wide zone
        return ZoneInfo(self.zone)

    def __reduce__(self):
        return (self.__class__, (self._orig_minute, self._orig_hour, self._orig_day_of_week,
                                 self._orig_day_of_month, self._orig_month_of_year, self.zone),
                self._orig_kwargs)

    def __eq__(self, other):
        if isinstance(other, ZonedCrontab):
            return self.zone == other.zone and super().__eq__(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<ZonedCrontab: {self.spec} {self.zone}>"

    @property
    def spec(self) -> str:
        return " ".join(str(x) for x in (self._orig_minute, self._orig_hour,
                                         self._orig_day_of_month, self._orig_month_of_year,
                                         self._orig_day_of_week))


@dataclass(frozen=True)
class Competition:
    name: str
    objective: str
    candidates: Path
    execution: str = "local"
    timeout: int | None = None
    network: bool | None = None
    env: tuple[str, ...] | None = None
    judge: str | None = None
    post: bool = False
    schedule: str | None = DEFAULT_SCHEDULE
    every: int | None = None
    timezone: str = DEFAULT_TIMEZONE
    enabled: bool = True
    egress_allow: tuple[str, ...] | None = None  # None: the manifest's
    egress_deny: tuple[str, ...] | None = None
    cpus: float | None = None
    speed: str | None = None
    exclusive: bool | None = None
    max_sandboxes: int | None = None
    trials: int | None = None  # None: the manifest's (default 1)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def crontab(self, nowfun: Callable[[], datetime] | None = None) -> ZonedCrontab | None:
        if self.schedule is None:
            return None
        minute, hour, dom, month, dow = self.schedule.split()
        return ZonedCrontab(minute, hour, dow, dom, month, zone=self.timezone, nowfun=nowfun)

    def describe_schedule(self) -> str:
        if self.every is not None:
            return f"every {self.every}s"
        return f"{self.schedule} ({self.timezone})"

    def period(self) -> float | None:
        """Seconds between slots for ``every``; None for a crontab."""
        return float(self.every) if self.every is not None else None

    def slot_for(self, now: datetime) -> datetime | None:
        """The latest scheduled time at or before ``now`` (UTC), the slot a firing claims."""
        now = _aware(now)
        if self.every is not None:
            start = math.floor(now.timestamp() / self.every) * self.every
            return datetime.fromtimestamp(start, UTC)
        cron = self.crontab()
        assert cron is not None
        local = now.astimezone(self.zone)
        hours = sorted(cron.hour, reverse=True)
        minutes = sorted(cron.minute, reverse=True)
        day = local.date()
        for _ in range(MAX_LOOKBACK_DAYS):
            if _day_matches(cron, day):
                for h in hours:
                    for m in minutes:
                        at = datetime(day.year, day.month, day.day, h, m, tzinfo=self.zone)
                        if at.astimezone(UTC) <= now:
                            return at.astimezone(UTC)
            day -= timedelta(days=1)
        return None

    def next_run(self, now: datetime | None = None) -> datetime:
        """The next scheduled time after ``now`` (UTC), computed by Celery's crontab."""
        now = _aware(now or datetime.now(UTC))
        if self.every is not None:
            slot = self.slot_for(now)
            assert slot is not None
            return slot + timedelta(seconds=self.every)
        cron = self.crontab(nowfun=lambda: now)
        assert cron is not None
        return (now + cron.remaining_estimate(now)).astimezone(UTC)

    def run_id(self, slot: datetime) -> str:
        """Deterministic: the same competition and slot always name the same run."""
        return f"{self.name}-{_aware(slot).astimezone(UTC):%Y%m%d-%H%M%S}"

    def request(self, run_id: str) -> RunRequest:
        """The run a firing of this competition asks for (every field the file left
        out stays None: the manifest's value)."""
        return RunRequest(
            objective=self.objective, daytona=self.execution == "daytona",
            candidates=str(self.candidates), run_id=run_id, timeout=self.timeout,
            network=self.network, env_allow=self.env, judge=self.judge, post=self.post,
            competition=self.name, egress_allow=self.egress_allow,
            egress_deny=self.egress_deny, cpus=self.cpus, speed=self.speed,
            exclusive=self.exclusive, max_sandboxes=self.max_sandboxes, trials=self.trials)

    def lock_key(self, slot: datetime) -> str:
        return f"forge:competition:{self.name}:slot:{_aware(slot).astimezone(UTC):%Y%m%dT%H%M%SZ}"


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _day_matches(cron: crontab, day: date) -> bool:
    # Celery's crontab requires day-of-month AND day-of-week to match (Sunday is 0).
    return (day.month in cron.month_of_year and day.day in cron.day_of_month
            and day.isoweekday() % 7 in cron.day_of_week)


def competitions_path(path: str | os.PathLike | None = None) -> Path:
    """The flag's path, else ``FORGE_COMPETITIONS``, else ./forge.toml, else the repo's."""
    if path:
        return Path(path)
    from_env = os.environ.get("FORGE_COMPETITIONS", "").strip()
    if from_env:
        return Path(from_env)
    here = Path.cwd() / "forge.toml"
    return here if here.is_file() else ROOT / "forge.toml"


def _display(path: Path) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def validate_crontab(spec: str) -> str | None:
    """Why a 5-field crontab expression is invalid, or None when Celery accepts it."""
    parts = spec.split()
    if len(parts) != 5:
        return (f"needs 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(parts)}")
    for value, (label, max_, min_) in zip(parts, CRON_FIELDS, strict=True):
        hi = max_ - 1 if min_ == 0 else max_
        try:
            values = crontab_parser(max_, min_).parse(value)
        except Exception as exc:  # noqa: BLE001 - the parser raises ValueError or its own
            return f"{label} must be {min_}-{hi} ({exc})"
        if not values or not all(min_ <= v <= hi for v in values):
            return f"{label} must be {min_}-{hi}"
    minute, hour, dom, month, dow = parts
    try:
        crontab(minute, hour, dow, dom, month)
    except Exception as exc:  # noqa: BLE001 - e.g. Feb 31 never occurs
        return str(exc)
    return None


def _check(where: str, entry: dict, key: str, kind: type, default=None):
    if key not in entry:
        return default
    value = entry[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise CompetitionsError(f"{where}: field '{key}' must be a whole number, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise CompetitionsError(f"{where}: field '{key}' must be a {kind.__name__}, got {value!r}")
    return value


def _competition(source: Path, index: int, entry: object) -> Competition:
    top = _display(source)
    if not isinstance(entry, dict):
        raise CompetitionsError(f"{top}: competition #{index} is not a table")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise CompetitionsError(
            f"{top}: competition #{index}: field 'name' = {name!r} is missing or invalid; use "
            "1-64 characters from a-z, 0-9, _ and -, starting with a letter or digit")
    where = f"{top}: competition '{name}'"
    unknown = sorted(set(entry) - set(KNOWN_FIELDS))
    if unknown:
        raise CompetitionsError(f"{where}: field '{unknown[0]}' is unknown; known fields: "
                                + ", ".join(KNOWN_FIELDS))
    objective = _check(where, entry, "objective", str)
    if not objective or not objective.strip():
        raise CompetitionsError(f"{where}: field 'objective' is missing or empty")
    try:
        check_objective(objective)
    except InvalidInput as exc:
        raise CompetitionsError(f"{where}: field 'objective': {exc}") from None
    cand_rel = _check(where, entry, "candidates", str)
    if not cand_rel:
        raise CompetitionsError(f"{where}: field 'candidates' is missing; give the path of a "
                                "candidates.toml, relative to this file")
    cand = (source.parent / cand_rel).resolve()
    if cand.is_dir():
        cand = cand / "candidates.toml"
    if not cand.is_file():
        raise CompetitionsError(f"{where}: field 'candidates' = {cand_rel!r}: no such manifest "
                                f"({cand}); paths are relative to {top}")
    execution = _check(where, entry, "execution", str, "local")
    if execution not in EXECUTION_MODES:
        raise CompetitionsError(f"{where}: field 'execution' = {execution!r}: must be one of "
                                + ", ".join(EXECUTION_MODES))
    timeout = _check(where, entry, "timeout", int)
    if timeout is not None and not TIMEOUT_MIN <= timeout <= TIMEOUT_MAX:
        raise CompetitionsError(f"{where}: field 'timeout' = {timeout}: must be "
                                f"{TIMEOUT_MIN}-{TIMEOUT_MAX} seconds")
    env = _check(where, entry, "env", list)
    if env is not None:
        for item in env:
            if not isinstance(item, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", item):
                raise CompetitionsError(f"{where}: field 'env' has an invalid variable name "
                                        f"{item!r}")
        env = tuple(env)
    max_sandboxes = _check(where, entry, "max_sandboxes", int)
    if max_sandboxes is not None and max_sandboxes < 1:
        raise CompetitionsError(f"{where}: field 'max_sandboxes' = {max_sandboxes}: must be at "
                                "least 1")
    tz_name = _check(where, entry, "timezone", str, DEFAULT_TIMEZONE)
    try:
        ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CompetitionsError(f"{where}: field 'timezone' = {tz_name!r}: unknown time zone; "
                                "use an IANA name such as America/Los_Angeles") from None
    every = _check(where, entry, "every", int)
    schedule = _check(where, entry, "schedule", str)
    if every is not None and schedule is not None:
        raise CompetitionsError(f"{where}: field 'every' and field 'schedule' are both set; "
                                "keep one")
    if every is not None:
        if every < MIN_EVERY:
            raise CompetitionsError(f"{where}: field 'every' = {every}: must be at least "
                                    f"{MIN_EVERY} second")
    else:
        schedule = DEFAULT_SCHEDULE if schedule is None else schedule
        problem = validate_crontab(schedule)
        if problem:
            raise CompetitionsError(f"{where}: field 'schedule' = {schedule!r}: {problem}")
        schedule = " ".join(schedule.split())
    checked = {}
    for key, problem in (("egress_allow", lambda v: egress_problem("egress_allow", v)),
                         ("egress_deny", lambda v: egress_problem("egress_deny", v)),
                         ("cpus", cpus_problem), ("speed", speed_problem),
                         ("trials", trials_problem)):
        if key in entry:
            why = problem(entry[key])
            if why:
                raise CompetitionsError(f"{where}: {why}")
            value = entry[key]
            checked[key] = tuple(value) if isinstance(value, list) else value
    if "speed" in checked and checked["speed"] == "cpu" and execution == "daytona":
        raise CompetitionsError(f"{where}: field 'speed' = 'cpu' needs execution = 'local' "
                                "(Daytona sandboxes report no CPU time); use 'wall'")
    return Competition(
        name=name,
        objective=objective,
        candidates=cand,
        execution=execution,
        timeout=timeout,
        network=_check(where, entry, "network", bool),
        env=env,
        judge=_check(where, entry, "judge", str),
        post=_check(where, entry, "post", bool, False),
        schedule=schedule,
        every=every,
        timezone=tz_name,
        enabled=_check(where, entry, "enabled", bool, True),
        exclusive=_check(where, entry, "exclusive", bool),
        **checked,
        max_sandboxes=max_sandboxes,
    )


def load_competitions(path: str | os.PathLike | None = None) -> dict[str, Competition]:
    """Every competition of forge.toml by name, in file order; raises CompetitionsError."""
    source = competitions_path(path)
    top = _display(source)
    if not source.is_file():
        raise CompetitionsError(f"{top}: no such file; create it (see forge.toml in the "
                                "repository) or point FORGE_COMPETITIONS at one")
    try:
        data = tomllib.loads(source.read_text("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CompetitionsError(f"{top}: not valid TOML ({exc}); fix the syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompetitionsError(f"{top}: cannot read it ({exc})") from None
    extra = sorted(set(data) - {"competition"})
    if extra:
        raise CompetitionsError(f"{top}: unknown top-level key '{extra[0]}'; competitions go "
                                "in [[competition]] tables")
    entries = data.get("competition", [])
    if not isinstance(entries, list):
        raise CompetitionsError(f"{top}: 'competition' must be [[competition]] tables")
    found: dict[str, Competition] = {}
    for i, entry in enumerate(entries, start=1):
        comp = _competition(source.resolve(), i, entry)
        if comp.name in found:
            raise CompetitionsError(f"{top}: competition '{comp.name}': field 'name' is a "
                                    "duplicate; every name must be unique")
        found[comp.name] = comp
    return found


def get_competition(name: str, path: str | os.PathLike | None = None) -> Competition:
    comps = load_competitions(path)
    if name not in comps:
        known = ", ".join(comps) or "none"
        raise CompetitionsError(f"{_display(competitions_path(path))}: no competition "
                                f"'{name}' (known: {known})")
    return comps[name]
