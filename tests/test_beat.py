"""Scheduled competitions: forge.toml validation, next-run/slot arithmetic, and real beats.

The end-to-end tests start a real redis-server, real ``celery -A worker worker`` and real
``celery -A worker beat`` processes; a test competition fires every few seconds
(``every = N``), since crontab's granularity is a minute.
"""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery

from dispatcher.competitions import (
    Competition,
    CompetitionsError,
    ZonedCrontab,
    load_competitions,
    validate_crontab,
)
from dispatcher.schedule import build_beat_schedule
from tests.manifests import write_manifest
from tests.procs import ROOT, call_task, forge_env, run_forge_cli, starts_processes, stop_process

QUICK = """import sys
with open(sys.argv[2], "w", encoding="utf-8") as fh:
    fh.write("# Quick\\n\\n" + sys.argv[1] + "\\n")
"""
LA = "America/Los_Angeles"


def write_forge_toml(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_manifest(directory / "cands", {"q1": QUICK, "q2": QUICK}, header='judge = "events"')
    path = directory / "forge.toml"
    path.write_text(body, encoding="utf-8")
    return path


def competition_toml(name: str = "tick", extra: str = 'every = 6') -> str:
    return (f'[[competition]]\nname = "{name}"\nobjective = "Quick {name}"\n'
            f'candidates = "cands/candidates.toml"\ntimeout = 20\npost = false\n{extra}\n')


# --- validation -------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    ('schedule = "61 * * * *"',
     "forge.toml: competition 'tick': field 'schedule' = '61 * * * *': minute must be 0-59"),
    ('schedule = "0 24 * * *"', "field 'schedule' = '0 24 * * *': hour must be 0-23"),
    ('schedule = "0 9 * * 8"', "field 'schedule' = '0 9 * * 8': day-of-week must be 0-6"),
    ('schedule = "0 9 * *"', "field 'schedule' = '0 9 * *': needs 5 fields"),
    ('schedule = "0 9 31 2 *"', "field 'schedule' = '0 9 31 2 *': Invalid crontab"),
    ('schedule = "0 9 * * 1"\nevery = 5', "field 'every' and field 'schedule' are both set"),
    ('every = 0', "field 'every' = 0: must be at least 1 second"),
    ('timezone = "Mars/Olympus"', "field 'timezone' = 'Mars/Olympus': unknown time zone"),
    ('execution = "cloud"', "field 'execution' = 'cloud': must be one of local, daytona"),
    ('schedul = "0 9 * * 1"', "field 'schedul' is unknown"),
    ('network = "yes"', "field 'network' must be a bool"),
    ('env = ["BAD-NAME"]', "field 'env' has an invalid variable name 'BAD-NAME'"),
    ('max_sandboxes = 0', "field 'max_sandboxes' = 0: must be at least 1"),
])
def test_a_malformed_entry_is_refused_naming_entry_and_field(tmp_path, monkeypatch, extra,
                                                             message):
    path = write_forge_toml(tmp_path, competition_toml(extra=extra))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CompetitionsError) as err:
        load_competitions(path)
    assert message in str(err.value)
    assert "competition 'tick'" in str(err.value)


def test_missing_manifest_duplicate_names_and_missing_file_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = write_forge_toml(tmp_path, competition_toml().replace("cands/", "nowhere/"))
    with pytest.raises(CompetitionsError, match="field 'candidates' = 'nowhere/candidates.toml'"):
        load_competitions(missing)
    dup = write_forge_toml(tmp_path, competition_toml() + competition_toml())
    with pytest.raises(CompetitionsError, match="competition 'tick': field 'name' is a dup"):
        load_competitions(dup)
    with pytest.raises(CompetitionsError, match="no such file"):
        load_competitions(tmp_path / "absent.toml")


def test_a_competition_sets_its_own_sandbox_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_forge_toml(tmp_path, competition_toml(extra="max_sandboxes = 3")
                            + competition_toml("tock"))
    comps = load_competitions(path)
    assert comps["tick"].max_sandboxes == 3 and comps["tock"].max_sandboxes is None


def test_defaults_are_weekly_monday_9am_los_angeles(tmp_path):
    path = write_forge_toml(tmp_path, competition_toml(extra=""))
    comp = load_competitions(path)["tick"]
    assert (comp.schedule, comp.timezone, comp.every) == ("0 9 * * 1", LA, None)
    assert comp.candidates == (tmp_path / "cands" / "candidates.toml").resolve()
    assert comp.post is False and comp.network is None and comp.env is None


def test_the_shipped_forge_toml_holds_the_demo_competition():
    comps = load_competitions(ROOT / "forge.toml")
    demo = comps["weekly-sf-ai-events"]
    assert demo.objective == "Generate weekly 'AI Events in San Francisco' post for Discord"
    assert demo.candidates == (ROOT / "candidates" / "candidates.toml").resolve()
    assert (demo.schedule, demo.timezone) == ("0 9 * * 1", LA)


def test_validate_crontab_accepts_what_celery_accepts():
    for spec in ("*/15 * * * *", "0 9 * * mon-fri", "30 8 1,15 * *", "0 0 29 2 *"):
        assert validate_crontab(spec) is None, spec


# --- next run and slots -------------------------------------------------------------


def weekly(tz: str = LA) -> Competition:
    return Competition(name="w", objective="o", candidates=Path("c.toml"),
                       schedule="0 9 * * 1", timezone=tz)


def test_next_run_is_monday_9am_in_los_angeles_across_dst():
    comp = weekly()
    # Thursday 26 Nov 2026 (PST, UTC-8): next Monday 30 Nov 09:00 PST = 17:00 UTC.
    assert comp.next_run(datetime(2026, 11, 26, 9, 40, tzinfo=UTC)) == \
        datetime(2026, 11, 30, 17, 0, tzinfo=UTC)
    # In summer (PDT, UTC-7) the same wall-clock time is 16:00 UTC.
    assert comp.next_run(datetime(2026, 7, 1, tzinfo=UTC)) == datetime(2026, 7, 6, 16, 0,
                                                                        tzinfo=UTC)
    # The week DST starts (Sunday 8 March 2026): Monday 9 March is already PDT.
    assert comp.next_run(datetime(2026, 3, 7, tzinfo=UTC)) == datetime(2026, 3, 9, 16, 0,
                                                                        tzinfo=UTC)
    # Exactly at a firing, the next one is a week later.
    assert comp.next_run(datetime(2026, 11, 30, 17, 0, tzinfo=UTC)) == \
        datetime(2026, 12, 7, 17, 0, tzinfo=UTC)


def test_slot_is_the_latest_scheduled_time_at_or_before_now():
    comp = weekly()
    assert comp.slot_for(datetime(2026, 11, 26, 9, 40, tzinfo=UTC)) == \
        datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
    assert comp.slot_for(datetime(2026, 11, 30, 17, 0, tzinfo=UTC)) == \
        datetime(2026, 11, 30, 17, 0, tzinfo=UTC)
    assert comp.slot_for(datetime(2026, 11, 30, 16, 59, 59, tzinfo=UTC)) == \
        datetime(2026, 11, 23, 17, 0, tzinfo=UTC)
    assert comp.run_id(datetime(2026, 11, 30, 17, 0, tzinfo=UTC)) == "w-20261130-170000"


@pytest.mark.parametrize(("spec", "tz"), [
    ("0 9 * * 1", LA), ("*/15 8-17 * * mon-fri", "Europe/Berlin"), ("30 2 * * *", LA),
    ("0 0 1 * *", "Asia/Kolkata"), ("5 4 * 3,11 0", LA),
])
def test_slot_and_celerys_next_run_agree(spec, tz):
    """prev(t) ≤ t < next(t), and next(t) is itself a slot: our walk matches Celery's."""
    comp = Competition(name="c", objective="o", candidates=Path("c.toml"), schedule=spec,
                       timezone=tz)
    rng = random.Random(spec)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(60):
        now = start + timedelta(seconds=rng.randrange(365 * 24 * 3600))
        prev, nxt = comp.slot_for(now), comp.next_run(now)
        assert prev <= now < nxt, (now, prev, nxt)
        assert comp.slot_for(nxt) == nxt
        assert comp.slot_for(nxt - timedelta(seconds=1)) == prev


def test_every_slots_are_aligned_to_the_period():
    comp = Competition(name="e", objective="o", candidates=Path("c.toml"), schedule=None,
                       every=5)
    now = datetime(2026, 1, 1, 0, 0, 12, 300000, tzinfo=UTC)
    assert comp.slot_for(now) == datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert comp.next_run(now) == datetime(2026, 1, 1, 0, 0, 15, tzinfo=UTC)


def test_zoned_crontab_is_due_in_its_zone_and_survives_beats_pickle():
    app = Celery("t", set_as_current=False)
    app.conf.timezone = "UTC"
    monday_9_la = datetime(2026, 11, 30, 17, 0, 30, tzinfo=UTC)
    cron = ZonedCrontab("0", "9", "1", "*", "*", zone=LA, nowfun=lambda: monday_9_la, app=app)
    due, _ = cron.is_due(monday_9_la - timedelta(days=7))
    assert due
    not_yet = ZonedCrontab("0", "9", "1", "*", "*", zone=LA, app=app,
                           nowfun=lambda: datetime(2026, 11, 30, 9, 0, 30, tzinfo=UTC))
    assert not not_yet.is_due(monday_9_la - timedelta(days=7))[0]  # 01:00 in LA
    # With the grace as beat_cron_starting_deadline, a slot missed by hours is not caught
    # up when beat comes back, and the next slot still fires.
    app.conf.beat_cron_starting_deadline = 3600
    late = ZonedCrontab("0", "9", "1", "*", "*", zone=LA, app=app,
                        nowfun=lambda: monday_9_la + timedelta(hours=2))
    assert not late.is_due(monday_9_la - timedelta(days=14))[0]
    assert cron.is_due(monday_9_la - timedelta(days=14))[0]
    clone = pickle.loads(pickle.dumps(ZonedCrontab("0", "9", "1", "*", "*", zone=LA)))
    assert clone.zone == LA and clone.hour == {9} and clone.day_of_week == {1}


def test_beat_schedule_has_one_entry_per_enabled_competition(tmp_path):
    body = competition_toml("a", 'schedule = "0 9 * * 1"') + competition_toml("b") + \
        competition_toml("c", "every = 60\nenabled = false")
    comps = load_competitions(write_forge_toml(tmp_path, body))
    entries = build_beat_schedule(comps, grace=900)
    assert sorted(entries) == ["competition:a", "competition:b"]
    a = entries["competition:a"]
    assert a["task"] == "dispatcher.scheduling.start_competition" and a["args"] == ("a",)
    assert isinstance(a["schedule"], ZonedCrontab) and a["schedule"].zone == LA
    assert a["options"] == {"expires": 900}
    assert entries["competition:b"]["schedule"].run_every == timedelta(seconds=6)


@pytest.mark.processes
def test_forge_competitions_lists_next_runs_and_refuses_a_bad_file(tmp_path):
    path = write_forge_toml(tmp_path, competition_toml("weekly", 'schedule = "0 9 * * 1"'))
    env = forge_env(None, tmp_path / "artifacts", FORGE_COMPETITIONS=str(path))
    done = run_forge_cli(["competitions"], env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "weekly" in done.stdout and "0 9 * * 1" in done.stdout and "Mon " in done.stdout
    bad = write_forge_toml(tmp_path / "bad", competition_toml(extra='schedule = "61 * * * *"'))
    done = run_forge_cli(["competitions", "--file", str(bad)], env, timeout=60)
    assert done.returncode == 2
    assert "competition 'tick': field 'schedule' = '61 * * * *': minute must be 0-59" in \
        done.stderr
    assert "Traceback" not in done.stderr


# --- real beat, real worker, real redis --------------------------------------------


class CeleryBeat:
    """A real ``celery -A worker beat`` with its own schedule file."""

    def __init__(self, env: dict[str, str], name: str, workdir: Path):
        self.env = dict(env, FORGE_BEAT_SCHEDULE=str(workdir / f"{name}-schedule"))
        self.logfile = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> CeleryBeat:
        self.log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "beat", "--loglevel", "INFO"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        return self

    def logtext(self) -> str:
        return self.logfile.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.log.close()


@pytest.fixture
@starts_processes
def beats(tmp_path):
    started: list[CeleryBeat] = []

    def make(env, n=1):
        batch = [CeleryBeat(env, f"beat{i + 1}", tmp_path).start() for i in range(n)]
        started.extend(batch)
        return batch

    yield make
    for b in started:
        b.stop()


def finished_runs(artifacts: Path, prefix: str) -> list[str]:
    return sorted(p.parent.name for p in artifacts.glob(f"{prefix}-*/summary.json"))


def wait_for_runs(artifacts: Path, prefix: str, n: int, timeout: float = 75) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(finished_runs(artifacts, prefix)) < n:
        assert time.monotonic() < deadline, f"< {n} runs: {finished_runs(artifacts, prefix)}"
        time.sleep(0.25)
    return finished_runs(artifacts, prefix)


def align_to_period(period: int, offset: float = 0.3) -> None:
    """Start just after a slot boundary, so beats started together fire in one slot."""
    time.sleep((offset - time.time()) % period)


def test_beat_fires_the_competition_and_runs_land_in_run_directories(
        redis_server, workers, beats, artifacts, tmp_path):
    forge_toml = write_forge_toml(tmp_path / "conf", competition_toml("tick", "every = 4"))
    env = forge_env(redis_server.url, artifacts, FORGE_COMPETITIONS=str(forge_toml))
    workers(env, n=1, concurrency=3)
    beats(env, n=1)
    runs = wait_for_runs(artifacts, "tick", 2)
    for run_id in runs[:2]:
        summary = json.loads((artifacts / run_id / "summary.json").read_text())
        assert summary["competition"] == "tick" and summary["objective"] == "Quick tick"
        assert sorted(c["id"] for c in summary["candidates"]) == ["q1", "q2"]
        assert all(r["success"] for r in summary["results"]), summary["results"]
        slot = datetime.strptime(run_id.removeprefix("tick-"), "%Y%m%d-%H%M%S")
        assert slot.second % 4 == 0  # the run id is the slot, aligned to the period


def test_two_beats_make_one_run_per_slot(redis_server, workers, beats, artifacts, tmp_path):
    period = 10
    forge_toml = write_forge_toml(tmp_path / "conf", competition_toml("dup", f"every = {period}"))
    env = forge_env(redis_server.url, artifacts, FORGE_COMPETITIONS=str(forge_toml))
    (worker,) = workers(env, n=1, concurrency=3)
    align_to_period(period)
    b1, b2 = beats(env, n=2)
    deadline = time.monotonic() + 60
    while min(b.logtext().count("Sending due task") for b in (b1, b2)) < 2:
        assert time.monotonic() < deadline, (b1.logtext()[-2000:], b2.logtext()[-2000:])
        time.sleep(0.25)
    for b in (b1, b2):
        b.stop()
    fired = sum(b.logtext().count("Sending due task") for b in (b1, b2))

    def started() -> int:
        return sum(1 for line in worker.logtext().splitlines()
                   if "start_competition[" in line and "] succeeded in" in line)

    deadline = time.monotonic() + 30
    while started() < fired:  # every firing has made its claim
        assert time.monotonic() < deadline, worker.logtext()[-3000:]
        time.sleep(0.25)
    log = worker.logtext()
    runs = sorted({line.split("dispatched as run ")[1].split()[0]
                   for line in log.splitlines() if "dispatched as run dup-" in line})
    wait_for_runs(artifacts, "dup", len(runs))  # every task of every run was received
    log = worker.logtext()
    dispatched = log.count("dispatched as run dup-")
    skipped = log.count("already claimed; skipped")
    # Both beats fired (at least) twice; every slot was dispatched exactly once.
    assert dispatched == len(runs) >= 2, log[-4000:]
    assert skipped >= 1 and dispatched + skipped == fired, log[-4000:]
    for run_id in runs:
        for cid in ("q1", "q2"):
            received = log.count(f"worker.tasks.run_candidate[{run_id}:{cid}] received")
            assert received == 1, (run_id, cid, received)
    assert finished_runs(artifacts, "dup") == runs


def test_a_slot_is_claimed_once_and_an_overdue_slot_is_skipped(
        redis_server, workers, artifacts, tmp_path):
    forge_toml = write_forge_toml(tmp_path / "conf", competition_toml("manual", "every = 3600"))
    env = forge_env(redis_server.url, artifacts, FORGE_COMPETITIONS=str(forge_toml),
                    FORGE_SCHEDULE_GRACE="600")
    workers(env, n=1, concurrency=2)
    slot = (datetime.now(UTC) - timedelta(seconds=30)).replace(microsecond=0)

    def call(*args):
        return call_task(redis_server, "dispatcher.scheduling.start_competition", *args)

    first = call("manual", slot.isoformat())
    again = call("manual", slot.isoformat())
    stale = call("manual", (slot - timedelta(seconds=700)).isoformat())
    assert first["status"] == "dispatched" and first["run_id"] == f"manual-{slot:%Y%m%d-%H%M%S}"
    assert again["run_id"] == first["run_id"]
    assert again["status"] == "skipped" and again["reason"] == "slot already claimed"
    assert stale["status"] == "skipped" and stale["reason"].startswith("overdue by")
    assert wait_for_runs(artifacts, "manual", 1) == [first["run_id"]]
    time.sleep(1)
    assert finished_runs(artifacts, "manual") == [first["run_id"]]


def test_a_bad_schedule_is_refused_by_beat_and_only_logged_by_a_worker(
        redis_server, workers, tmp_path, artifacts):
    bad = write_forge_toml(tmp_path / "conf", competition_toml(extra='schedule = "61 * * * *"'))
    env = forge_env(redis_server.url, artifacts, FORGE_COMPETITIONS=str(bad),
                    FORGE_BEAT_SCHEDULE=str(tmp_path / "beat-schedule"))
    beat = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "beat"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert beat.returncode == 2, beat.stdout + beat.stderr
    assert "refusing to start" in beat.stderr
    assert "competition 'tick': field 'schedule' = '61 * * * *': minute must be 0-59" in \
        beat.stderr
    missing = dict(env, FORGE_COMPETITIONS=str(tmp_path / "absent.toml"))
    beat = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "beat"], cwd=ROOT,
                          env=missing, capture_output=True, text=True, timeout=60)
    assert beat.returncode == 2 and "absent.toml: no such file" in beat.stderr
    (worker,) = workers(env, n=1, concurrency=1)  # starts despite the broken file
    deadline = time.monotonic() + 20
    while "scheduled competitions unavailable" not in worker.logtext():
        assert time.monotonic() < deadline, worker.logtext()[-3000:]
        time.sleep(0.2)
    assert "field 'schedule'" in worker.logtext()
