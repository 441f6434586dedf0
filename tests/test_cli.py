"""The forge CLI: arguments, help, errors with exit code 2, and the demo end to end."""

from __future__ import annotations

import json

import pytest

from dispatcher.cli import build_parser, main
from tests.manifests import FIXTURES
from tests.procs import forge_env, run_forge_cli


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_command_has_help(capsys):
    names = subcommands()
    assert {"run", "status", "list", "post"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert f"usage: forge {name}" in capsys.readouterr().out


def test_run_options_parse_like_the_seed():
    args = build_parser().parse_args(["run", "-o", "obj", "-d", "--candidates", "c",
                                      "--artifacts-dir", "a", "--run-id", "r", "--timeout",
                                      "5", "--detach", "--json", "--no-post", "--no-network"])
    assert (args.objective, args.daytona, args.candidates, args.artifacts_dir, args.run_id,
            args.timeout, args.detach, args.json, args.no_post, args.no_network) == \
        ("obj", True, "c", "a", "r", 5, True, True, True, True)
    assert build_parser().parse_args(["run", "positional objective"]).objective_arg == \
        "positional objective"


@pytest.mark.parametrize("argv, words", [
    (["run", "a", "-o", "b"], "give the objective once"),
    (["run", "--detach", "--candidates", str(FIXTURES / "basic")], "--detach needs a broker"),
    (["run", "--candidates", "/nonexistent/dir"], "no such manifest"),
    (["run", "   "], "objective is empty"),
    (["status", "no-such-run", "--artifacts-dir", "/nonexistent"], "no finished run"),
])
def test_bad_input_is_one_clear_error_and_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_bad_timeout_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as done:
        main(["run", "--timeout", "soon"])
    assert done.value.code == 2
    assert "not a whole number" in capsys.readouterr().err


def test_list_with_no_runs(tmp_path, capsys):
    assert main(["list", "--artifacts-dir", str(tmp_path)]) == 0
    assert "No runs" in capsys.readouterr().out


@pytest.mark.processes
def test_demo_run_embedded_then_status_and_list(tmp_path):
    env = forge_env(None, tmp_path)
    done = run_forge_cli(["run", "--run-id", "demo-1", "--no-post"], env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in ("DREAM FOUNDRY - Forge Loop",
                 "Objective: Generate weekly 'AI Events in San Francisco' post for Discord",
                 "Candidates: 5", "Execution: LOCAL", "PHASE: Running Candidates",
                 "PHASE: Scoring", "WINNER: "):
        assert line in out, line
    assert "[delta] [Error] Script exited with code 1" in out
    summary = json.loads((tmp_path / "demo-1" / "summary.json").read_text())
    assert summary["winner_id"] in ("gamma", "beta")
    status = run_forge_cli(["status", "demo-1"], env)
    assert status.returncode == 0 and summary["winner_id"] in status.stdout
    listing = run_forge_cli(["list"], env)
    assert listing.returncode == 0 and "demo-1" in listing.stdout


@pytest.mark.processes
def test_json_output_is_the_forge_result(tmp_path):
    env = forge_env(None, tmp_path)
    done = run_forge_cli(["run", "hello", "--candidates", str(FIXTURES / "basic"), "--json",
                          "--run-id", "json-1"], env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["run_id"] == "json-1" and data["objective"] == "hello"
    assert "DREAM FOUNDRY" in done.stderr  # human output moved out of the way


@pytest.mark.processes
def test_status_shows_the_runs_elapsed_time_not_the_sum_of_runtimes(tmp_path, capsys):
    """Three 1.5 s candidates in parallel: the run took ~2 s, not the ~5 s they add up to."""
    from datetime import datetime

    from dispatcher import run_forge
    from tests.manifests import sleepers

    result = run_forge("parallel", candidates=str(sleepers(tmp_path / "c", 3, 1.5)),
                       artifacts_dir=str(tmp_path / "art"), run_id="par", post=False)
    total = sum(r.runtime_seconds for r in result.results)
    starts = [datetime.fromisoformat(r.started_at) for r in result.results]
    ends = [datetime.fromisoformat(r.finished_at) for r in result.results]
    elapsed = (max(ends) - min(starts)).total_seconds()
    assert max(r.runtime_seconds for r in result.results) <= elapsed + 0.01 < 0.75 * total
    capsys.readouterr()
    assert main(["status", "par", "--artifacts-dir", str(tmp_path / "art")]) == 0
    out = capsys.readouterr().out
    assert f"Run time (first candidate start to last finish): {elapsed:.2f}s" in out
    assert "Wall time" not in out and f"{total:.2f}s" not in out
