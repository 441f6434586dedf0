"""Season standings from a real store: ``forge standings`` over a seeded simulated
season (SQLite and PostgreSQL), the dashboard's standings page, and a competition run
whose report and Discord post carry the season after it."""

from __future__ import annotations

import json
import re

import pytest
from starlette.testclient import TestClient

from tests.discord_server import DiscordServer
from tests.manifests import write_manifest
from tests.procs import ROOT, forge_env, run_forge_cli
from tests.season_sim import STRENGTHS, season
from tests.web_helpers import write_forge_toml

COMP = "weekly-sf-ai-events"
WEEKS = 14


def _seed(url: str, regress: str | None = "gamma", weeks: int = WEEKS) -> list:
    from worker.store import open_store

    store = open_store(url)
    runs = season(weeks, seed=15, competition=COMP, regress=regress, fail=0.0)
    for r in runs:
        store.write_finished(r)
    # A run of another competition and an ad-hoc run: not part of this season.
    other = season(1, seed=1, competition="other")[0]
    store.write_finished(other)
    return runs


def _env(url: str, tmp_path) -> dict[str, str]:
    return forge_env(None, tmp_path / "artifacts", FORGE_DATABASE_URL=url)


@pytest.mark.processes
def test_standings_cli_over_a_seeded_season_in_a_real_store(store_url, tmp_path):
    from worker.store.db import dispose_all

    runs = _seed(store_url)
    dispose_all()
    done = run_forge_cli(["standings", COMP, "--json"], _env(store_url, tmp_path))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["competition"] == COMP and data["runs"] == WEEKS
    assert data["latest_run_id"] == runs[-1].run_id
    table = {s["candidate_id"]: s for s in data["standings"]}
    assert set(table) == set(STRENGTHS)
    # Ratings recover the true order of strengths (beta 85 > gamma 78 > alpha 70 > ...).
    order = [s["candidate_id"] for s in data["standings"]]
    truth = sorted(STRENGTHS, key=lambda c: -STRENGTHS[c][1])
    assert order[0] == "beta", order
    assert order == truth or order[:2] == truth[:2], (order, truth)
    winners = [r.winner_id for r in runs]
    for cid, s in table.items():
        assert s["wins"] == winners.count(cid)
        assert s["runs"] == WEEKS and s["rating_low"] <= s["rating"] <= s["rating_high"]
    streak = 0
    for w in reversed(winners):
        if w != winners[-1]:
            break
        streak += 1
    assert table[winners[-1]]["streak"] == streak
    # gamma's last week dropped 30 points: flagged; nobody else is (positive control:
    # the same check over the same season without the drop flags nobody).
    assert [c for c, s in table.items() if s["regressed"]] == ["gamma"]
    # --since: only the runs from that date on.
    since = runs[10].timestamp[:10]
    later = json.loads(run_forge_cli(["standings", COMP, "--since", since, "--json"],
                                     _env(store_url, tmp_path)).stdout)
    assert later["runs"] == WEEKS - 10 and later["first_timestamp"] == runs[10].timestamp
    # The table a person reads.
    shown = run_forge_cli(["standings", COMP], _env(store_url, tmp_path))
    assert shown.returncode == 0, shown.stderr
    assert "Season standings: weekly-sf-ai-events (14 runs" in shown.stdout
    assert re.search(r"Season leader: Agent Beta, \d{4} ± \d+\.", shown.stdout), shown.stdout
    assert "REGRESSED" in shown.stdout


@pytest.mark.processes
def test_without_the_drop_nobody_is_flagged(tmp_path):
    url = f"sqlite:///{tmp_path / 's' / 'forge.db'}"
    _seed(url, regress=None)
    data = json.loads(run_forge_cli(["standings", COMP, "--json"], _env(url, tmp_path)).stdout)
    assert not [s for s in data["standings"] if s["regressed"]]


@pytest.mark.processes
@pytest.mark.parametrize("args, problem", [
    (["nope"], "no runs of competition 'nope'"),
    ([COMP, "--since", "last week"], "is not a date"),
    ([COMP, "--window", "1"], "at least 2"),
])
def test_bad_standings_input_is_exit_2_naming_the_fix(args, problem, tmp_path):
    url = f"sqlite:///{tmp_path / 's' / 'forge.db'}"
    _seed(url, weeks=3)
    done = run_forge_cli(["standings", *args], _env(url, tmp_path))
    assert done.returncode == 2 and problem in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_dashboard_shows_the_standings_and_flags_the_regression(tmp_path):
    from dispatcher.web.app import create_app
    from dispatcher.web.settings import WebSettings
    from worker.store.db import dispose_all

    url = f"sqlite:///{tmp_path / 'artifacts' / 'forge.db'}"
    _seed(url)
    manifest = write_manifest(tmp_path / "cands", {"c0": "print(1)\n"})
    toml = write_forge_toml(tmp_path, manifest)
    settings = WebSettings(artifacts_dir=str(tmp_path / "artifacts"), database_url=url,
                           competitions=str(toml))
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as client:
        page = client.get(f"/competitions/{COMP}/standings")
        assert page.status_code == 200
        assert re.search(r"Season leader: <b>Agent Beta</b>, \d{4} ± \d+", page.text)
        rows = re.findall(r'<tr id="st-([a-z]+)" class="([a-z]*)">', page.text)
        assert rows[0][0] == "beta" and len(rows) == 5
        assert [cid for cid, cls in rows if cls == "regressed"] == ["gamma"]
        gamma = re.search(r'<tr id="st-gamma".*?</tr>', page.text, re.S).group(0)
        assert "REGRESSED" in gamma
        since = client.get(f"/competitions/{COMP}/standings?since=2026-08-01")
        assert since.status_code == 200 and "since 2026-08-01" in since.text
        assert client.get("/competitions/no-such/standings").status_code == 404
        assert client.get(f"/competitions/{COMP}/standings?since=soon").status_code == 404
        home = client.get("/")
        assert f'href="/competitions/{COMP}/standings"' in home.text
    dispose_all()


@pytest.mark.processes
def test_a_competition_run_carries_the_season_into_report_post_and_dashboard(tmp_path,
                                                                          monkeypatch):
    """Twelve simulated weeks in the store, then a real run of the demo agents as the
    competition: its standings count 13 runs, its report has the section, the winner's
    post its season line, and the dashboard's run page the same table."""
    from dispatcher.runner import run_forge
    from worker.store.db import dispose_all

    artifacts = tmp_path / "artifacts"
    url = f"sqlite:///{artifacts / 'forge.db'}"
    _seed(url, regress=None, weeks=12)
    with DiscordServer() as hook:
        monkeypatch.setenv("DISCORD_WEBHOOK_URL", hook.url)
        result = run_forge(candidates=str(ROOT / "candidates"), artifacts_dir=str(artifacts),
                           run_id="live-13", competition=COMP, post=True, trials=2)
        posted = [r.content for r in hook.requests]
    st = result.standings
    assert st is not None and st["runs"] == 13 and st["latest_run_id"] == "live-13"
    assert st["competition"] == COMP
    line = st["season_line"]
    assert re.fullmatch(r"\d+(st|nd|rd|th) (win in a row|win this season) · season leader"
                        r"( Agent \w+)?, \d{4} ± \d+", line), line
    assert posted, "nothing was posted"
    head = posted[0].split("\n*")[0]  # the announcement, before the objective line
    assert head.split("\n")[-1] == line, posted[0]  # its last line: the season
    report = (artifacts / "live-13" / "report.md").read_text()
    assert "## Season standings" in report and line in report
    assert "## Trials" in report
    dispose_all()
    from dispatcher.web.app import create_app
    from dispatcher.web.settings import WebSettings

    settings = WebSettings(artifacts_dir=str(artifacts), database_url=url)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as client:
        page = client.get("/runs/live-13")
        assert page.status_code == 200
        assert 'id="standings"' in page.text and 'id="trials-table"' in page.text
        assert line.replace("±", "±") in page.text
    dispose_all()
