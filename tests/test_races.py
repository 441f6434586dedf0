"""Duplicate deliveries raced for real: contenders behind a barrier, many rounds.

What a redelivered message can do twice at the same moment: two chord bodies writing
one run directory, several callbacks claiming one Discord post, two deliveries of one
candidate storing their results. Each round starts its contenders together
(tests/races.py) and asserts the single outcome; the round counts are set so that the
deliberate check-then-act bugs of docs/testing.md lose on every run of these tests, not
now and then (figures there).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.discord_server import DiscordServer
from tests.races import Rendezvous, errors, race
from tests.test_rundir import forge_result
from worker import discord
from worker.rundir import render_files, write_run_dir

# Threads share one interpreter (the GIL is let go in every system call); processes
# race on both cores at once.
KINDS = ["thread", pytest.param("process", marks=pytest.mark.processes)]


# --------------------------------------------------------------------------- run directory


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", KINDS)
def test_chord_bodies_racing_to_write_one_run_directory(tmp_path, monkeypatch, kind):
    """Two chord bodies (a redelivered callback) write the same run at the same moment:
    both return the run directory, it holds exactly the rendered files, and no
    temporary directory is left. The loser of the final rename must see the winner's
    identical directory and return it, not raise.

    They start together, and meet again at the publish step (the rendezvous before
    renaming their temporary directory to the run's name): both found no run directory,
    both rename, one of the renames finds the other's directory in place."""
    result = forge_result()
    expected = render_files(result)
    rounds = 40
    meet = Rendezvous(kind, 2)
    monkeypatch.setattr(os, "rename", meet.before(
        os.rename, when=lambda src, dst: ".tmp-" in str(src) and Path(dst).name == "run-1"))

    def write(rnd: int, _who: int) -> tuple[str, bool]:
        return str(write_run_dir(result, tmp_path / f"r{rnd}")), meet.met()

    by_round = race(write, contenders=2, rounds=rounds, kind=kind,
                    before_round=lambda _rnd: meet.reset())
    assert errors(by_round) == []
    collided = sum(all(o.value[1] for o in outcomes) for outcomes in by_round)
    assert collided >= rounds // 2, f"only {collided} of {rounds} rounds raced"
    for rnd, outcomes in enumerate(by_round):
        root = tmp_path / f"r{rnd}"
        assert {o.value[0] for o in outcomes} == {str(root / "run-1")}
        assert sorted(os.listdir(root)) == ["run-1"], f"round {rnd}: leftovers"
        assert _tree(root / "run-1") == expected


# --------------------------------------------------------------------------- Discord claim


@pytest.fixture()
def hook(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with DiscordServer() as server:
        yield server


def _small_result():
    from tests.test_discord import make_result

    return make_result("# Post\n\n**One event**\nTuesday\n")


@pytest.mark.parametrize("kind", KINDS)
def test_callbacks_racing_to_post_one_run_post_once(tmp_path, hook, monkeypatch, kind):
    """Eight callbacks of one run claim its Discord post at the same moment, round after
    round: exactly one posts, the others say "already posted", and the webhook receives
    each round's messages once.

    They start together and meet again as the claim's path is made (the rendezvous
    after ``contained(run_dir, CLAIM)``), so all eight claim within microseconds."""
    result = _small_result()
    n = len(discord.announcement(result))
    contenders, rounds = 8, 100
    meet = Rendezvous(kind, contenders)
    monkeypatch.setattr(discord, "contained", meet.after(
        discord.contained, when=lambda *parts: parts[-1] == discord.CLAIM))

    def post(rnd: int, _who: int) -> tuple[dict, bool]:
        return discord.post_winner(result, tmp_path / f"r{rnd}", hook.url), meet.met()

    def fresh(rnd: int) -> None:
        (tmp_path / f"r{rnd}").mkdir()
        meet.reset()

    by_round = race(post, contenders=contenders, rounds=rounds, kind=kind,
                    before_round=fresh)
    assert errors(by_round) == []
    collided = sum(all(o.value[1] for o in outcomes) for outcomes in by_round)
    assert collided >= rounds // 2, f"only {collided} of {rounds} rounds raced"
    posters = [[o.contender for o in outcomes if "skipped" not in o.value[0]]
               for outcomes in by_round]
    doubled = [(rnd, who) for rnd, who in enumerate(posters) if len(who) != 1]
    assert doubled == [], f"rounds where other than one callback posted: {doubled}"
    for outcomes in by_round:
        assert all(o.value[0]["skipped"] == "already posted" for o in outcomes
                   if "skipped" in o.value[0])
    assert len(hook.requests) == rounds * n
    for rnd in range(rounds):
        record = json.loads((tmp_path / f"r{rnd}" / "discord.json").read_text())
        assert record["posted"] is True and record["sent"] == n


# --------------------------------------------------------------------------- candidate


@pytest.fixture()
def redis_backend(redis_server):
    """A real Redis result backend (the distributed mode's) on the test's own server."""
    from celery import Celery

    app = Celery("races", broker="memory://", backend=redis_server.url)
    app.conf.result_serializer = "json"
    yield app.backend
    app.close()


class _Delivery:
    """What the delivery guard reads off its bound task: the request id and the backend."""

    def __init__(self, task_id: str, backend):
        from types import SimpleNamespace

        self.request = SimpleNamespace(id=task_id)
        self.backend = backend


@pytest.mark.parametrize("kind", KINDS)
def test_two_deliveries_of_one_candidate_finish_at_once(redis_backend, kind):
    """Two deliveries of one candidate (a redelivered message; both ran) finish at the same
    moment with different results: both return, and so store, the same one record,
    whichever finished first."""
    from worker.delivery import DeliveryGuard

    rounds = 30

    def finish(rnd: int, who: int) -> dict:
        task = _Delivery(f"race-run:c{rnd}", redis_backend)
        return DeliveryGuard(task).finish({"candidate_id": "c", "delivery": who,
                                           "output": f"delivery {who}"})

    by_round = race(finish, contenders=2, rounds=rounds, kind=kind)
    assert errors(by_round) == []
    split = [(rnd, [o.value["delivery"] for o in outcomes])
             for rnd, outcomes in enumerate(by_round)
             if len({o.value["delivery"] for o in outcomes}) != 1]
    assert split == [], f"rounds where the two deliveries kept different results: {split}"
