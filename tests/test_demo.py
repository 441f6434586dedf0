"""The demo competition through the whole forge: the same verdict in embedded and
distributed mode, the crasher's traceback kept, the winner posted to Discord once."""

from __future__ import annotations

import json

import pytest

from dispatcher import run_forge
from tests.discord_server import DiscordServer
from tests.procs import run_forge_cli

# Every test starts processes (the demo runs candidates in local sandboxes); tests/markers.py.
pytestmark = pytest.mark.processes


def verdict(summary: dict) -> dict:
    """What must not depend on the mode: who passed, quality, success, the winner.
    (Speed scores follow measured runtimes, so they may differ by a point.)"""
    return {
        "winner": summary["winner_id"],
        "scores": {s["candidate_id"]: (s["qualified"], s["success"], s["quality_score"])
                   for s in summary["scores"]},
    }


def test_demo_ranks_and_posts_in_embedded_mode(tmp_path, monkeypatch):
    with DiscordServer() as discord:
        monkeypatch.setenv("DISCORD_WEBHOOK_URL", discord.url)
        result = run_forge(candidates=None, artifacts_dir=str(tmp_path), run_id="demo-emb")
        posted = list(discord.delivered)
    ranked = [s.candidate_id for s in sorted(result.scores, key=lambda s: s.rank)]
    assert ranked[0] in ("gamma", "beta") and result.winner_id == ranked[0]
    delta, epsilon = result.score_for("delta"), result.score_for("epsilon")
    assert not delta.qualified and "exit" in delta.disqualified_reason
    assert epsilon.qualified and epsilon.quality_score < 40
    alpha = result.score_for("alpha")
    assert alpha.qualified and ranked.index("alpha") in (2, 3)
    assert "ZeroDivisionError" in result.result_for("delta").output
    assert "Traceback" in (tmp_path / "demo-emb" / "delta" / "output.log").read_text()
    # Beta ran as a project: unpacked, its requirement installed outside its clock, and
    # the summary names the code by its bundle's hash.
    beta = result.result_for("beta")
    assert beta.success and beta.timings["install"] > 0
    assert any("Project uploaded" in line for line in beta.log)
    info = next(c for c in result.candidates if c.id == "beta")
    assert info.script == "agent_beta -m beta" and len(info.content_sha256) == 64
    # Discord got the announcement naming the winner, in messages under the limit.
    assert posted and all(len(m) <= 2000 for m in posted)
    winner = next(c for c in result.candidates if c.id == result.winner_id)
    assert winner.name in posted[0]
    record = json.loads((tmp_path / "demo-emb" / "discord.json").read_text())
    assert record["posted"] is True and discord.url not in json.dumps(record)


def test_demo_gives_the_same_verdict_distributed_and_no_post_skips_discord(
        distributed_env, workers, artifacts, tmp_path):
    with DiscordServer() as discord:
        env = dict(distributed_env, DISCORD_WEBHOOK_URL=discord.url)
        workers(env, n=2, concurrency=3)
        dist = run_forge_cli(["run", "--run-id", "demo-dist", "--no-post"], env)
        assert dist.returncode == 0, dist.stderr
        assert discord.requests == []  # --no-post: nothing sent
    embedded = run_forge(candidates=None, artifacts_dir=str(tmp_path / "emb"),
                         run_id="demo-emb2", post=False)
    dist_summary = json.loads((artifacts / "demo-dist" / "summary.json").read_text())
    emb_summary = json.loads((tmp_path / "emb" / "demo-emb2" / "summary.json").read_text())
    assert dist_summary["execution_mode"] == emb_summary["execution_mode"] == "local"
    assert verdict(dist_summary) == verdict(emb_summary)
    assert embedded.winner_id == dist_summary["winner_id"]
    assert not (artifacts / "demo-dist" / "discord.json").exists()
