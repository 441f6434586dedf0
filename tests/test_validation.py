"""Issue 18: every input checked where it enters and where it is used.

Each case goes through the CLI (the real ``forge`` process), the Python API, and a task
message published to a real broker by hand and run by a real ``celery worker``. Every
path case checks a sentinel next to the artifacts root: ``site/victim`` (files and a
subdirectory), ``site/escape`` (a finished run's directory) and ``site`` itself must be
byte for byte, mtime for mtime, as they were. ``site/artifacts`` holds ``a``, ``.tmp-a``
and ``.old-a``: what made ``--run-id 'a/../../victim'`` replace ``site/victim`` before.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from dispatcher import InvalidInput, run_forge
from tests.discord_server import DiscordServer
from tests.manifests import FIXTURES, write_manifest
from tests.procs import (
    ROOT,
    CeleryWorker,
    RedisServer,
    forge_env,
    publish_task,
    run_forge_cli,
    starts_processes,
)
from tests.test_rundir import forge_result
from worker import validation
from worker.keys import run_record_key
from worker.records import CandidateInfo, CandidateTask, RunSpec, sha256_text
from worker.rundir import read_summary, write_run_dir

BASIC = str(FIXTURES / "basic")
RUN_ID_RULE = "1-128 characters from A-Z a-z 0-9 _ . - starting with a letter or digit"


@dataclass
class Site:
    root: Path  # site/
    art: Path  # site/artifacts: the artifacts root
    victim: Path  # site/victim: must never change
    escape: Path  # site/escape: a finished run outside the artifacts root

    def snapshot(self) -> dict[str, object]:
        """Everything under site/ but the artifacts root: content, mtimes, listings."""
        out: dict[str, object] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            here = Path(dirpath)
            if here == self.art:
                dirnames[:] = []
                continue
            out[str(here)] = ("dir", sorted(dirnames + filenames), here.stat().st_mtime_ns)
            for name in filenames:
                p = here / name
                out[str(p)] = ("file", p.read_bytes(), p.lstat().st_mtime_ns)
        return out

    def art_listing(self) -> list[str]:
        return sorted(os.listdir(self.art))


@pytest.fixture
def site(tmp_path: Path):
    root = tmp_path / "site"
    art = root / "artifacts"
    for name in ("a", ".tmp-a", ".old-a"):
        (art / name).mkdir(parents=True)
    victim = root / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "keep.txt").write_text("keep me\n")
    (victim / "sub" / "keep.txt").write_text("keep me too\n")
    write_run_dir(forge_result(run_id="escape"), root)  # a real run, outside art/
    os.symlink("../escape", art / "link")  # a run directory that leads outside
    s = Site(root, art, victim, root / "escape")
    before = s.snapshot()
    # The attack was real: from inside art/, this run id resolves to the victim.
    assert os.path.realpath(art / "a/../../victim") == str(victim)
    yield s
    assert s.snapshot() == before, "something outside the artifacts root changed"


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("forge: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("good", ["a", "run-1", "20261126-090000-abcdef", "A.b_c-1",
                                  "weekly-sf-ai-events-20261126-090000", "x" * 128])
def test_plain_run_ids_pass(good):
    assert validation.check_run_id(good) == good


@pytest.mark.parametrize("bad", ["a/../../victim", "../escape", "/abs", "..", ".", "a/b",
                                 ".old-a", "", "x" * 129, "a\nb", "a\\b", "a:b", None, 7])
def test_other_run_ids_are_refused_naming_the_rule(bad):
    with pytest.raises(InvalidInput) as err:
        validation.check_run_id(bad)
    assert RUN_ID_RULE in str(err.value) and "pick a plain name" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_contained_refuses_escapes_and_symlinks_out(tmp_path):
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    os.symlink(tmp_path, root / "out")
    os.symlink("inside", root / "alias")
    assert validation.contained(root, "run", "summary.json") == root / "run" / "summary.json"
    assert validation.contained(root, "alias") == root / "alias"  # resolves inside: fine
    for parts in (("..", "x"), ("/etc",), ("out",), ("out", "x"), ("a", "..", ".."), (".",)):
        with pytest.raises(InvalidInput, match="must stay inside its directory"):
            validation.contained(root, *parts)


# --------------------------------------------------------------------------- the CLI

BAD_CLI_RUN_IDS = ["a/../../victim", "../escape", "..", ".", "a/b", ".old-a", "", "a\nb",
                   "x" * 129, "VICTIM_ABS"]


@pytest.mark.processes
@pytest.mark.parametrize("bad", BAD_CLI_RUN_IDS)
def test_cli_run_refuses_a_run_id_that_is_not_a_plain_name(site, bad):
    bad = str(site.victim) if bad == "VICTIM_ABS" else bad
    listing = site.art_listing()
    done = run_forge_cli(["run", "hi", "--candidates", BASIC, "--run-id", bad,
                          "--artifacts-dir", str(site.art), "--no-post"], forge_env(None, site.art))
    assert done.returncode == 2, done.stdout + done.stderr
    line = one_error_line(done.stderr)
    assert "run id" in line and "is invalid" in line and RUN_ID_RULE in line
    assert "[Run]" not in done.stdout  # refused before any candidate ran
    assert site.art_listing() == listing


@pytest.mark.processes
def test_cli_run_with_a_plain_run_id_writes_inside_the_artifacts_root(site):
    """Control: the refused commands above would have run, and written."""
    done = run_forge_cli(["run", "hi", "--candidates", BASIC, "--run-id", "victim",
                          "--artifacts-dir", str(site.art), "--no-post"], forge_env(None, site.art))
    assert done.returncode == 0, done.stderr
    assert json.loads((site.art / "victim" / "summary.json").read_text())["run_id"] == "victim"


@pytest.mark.processes
@pytest.mark.parametrize(("argv", "words"), [
    (["run", "x" * 10_001], "the objective is 10,001 characters long; the maximum is 10,000"),
    (["run", "y" * 100_000], "the objective is 100,000 characters long"),
    (["run", "   "], "the objective is empty"),
    (["status", "../escape"], "run id '../escape' is invalid"),
    (["status", "/etc"], "run id '/etc' is invalid"),
    (["post", "../escape"], "run id '../escape' is invalid"),
    (["resume", "../escape"], "run id '../escape' is invalid"),
    (["resume", "a/../../victim"], "run id 'a/../../victim' is invalid"),
])
def test_cli_refuses_bad_input_in_one_line_with_exit_2(site, argv, words):
    with DiscordServer() as hook:
        env = forge_env(None, site.art, DISCORD_WEBHOOK_URL=hook.url)
        if argv[0] == "run":
            argv = [*argv, "--candidates", BASIC]
        elif argv[0] != "resume":
            argv = [*argv, "--artifacts-dir", str(site.art)]
        listing = site.art_listing()
        done = run_forge_cli(argv, env)
        assert done.returncode == 2, done.stdout + done.stderr
        assert words in one_error_line(done.stderr)
        assert done.stdout == "" or "[Run]" not in done.stdout
        assert hook.requests == [] and site.art_listing() == listing


@pytest.mark.processes
@pytest.mark.parametrize(("value", "words"), [
    ("0", "timeout must be a whole number of seconds from 1 to 86400, got 0"),
    ("-5", "got -5"), ("86401", "got 86401"), ("soon", "'soon' is not a whole number"),
])
def test_cli_timeout_out_of_bounds_is_refused(site, value, words):
    done = run_forge_cli(["run", "hi", "--candidates", BASIC, "--timeout", value],
                         forge_env(None, site.art))
    assert done.returncode == 2 and words in done.stderr and "Traceback" not in done.stderr
    assert "[Run]" not in done.stdout


@pytest.mark.processes
def test_cli_status_and_post_do_not_follow_a_symlinked_run_out(site):
    with DiscordServer() as hook:
        env = forge_env(None, site.art, DISCORD_WEBHOOK_URL=hook.url)
        for command in ("status", "post"):
            done = run_forge_cli([command, "link", "--artifacts-dir", str(site.art)], env)
            assert done.returncode == 2, done.stdout + done.stderr
            line = one_error_line(done.stderr)
            assert f"resolves to {site.escape}" in line and "outside" in line
            assert "good" not in done.stdout  # the outside run's winner was never shown
        assert hook.requests == []
        assert not (site.escape / "discord.claim").exists()


@pytest.mark.processes
def test_cli_status_and_post_of_a_run_inside_still_work(site, tmp_path):
    """Control: the same run, reached through its own artifacts root, is readable and
    postable (so the refusals above are the rule's, not a broken command's)."""
    inside = tmp_path / "inside"
    write_run_dir(forge_result(run_id="escape"), inside)
    with DiscordServer() as hook:
        env = forge_env(None, inside, DISCORD_WEBHOOK_URL=hook.url)
        status = run_forge_cli(["status", "escape"], env)
        assert status.returncode == 0 and "good" in status.stdout, status.stderr
        post = run_forge_cli(["post", "escape"], env)
        assert post.returncode == 0, post.stderr
        assert len(hook.requests) >= 1 and (inside / "escape" / "discord.json").is_file()


def test_cli_resume_refuses_a_hostile_run_record(site, redis_server):
    """``forge resume`` reads its run record from Redis: checked like any input."""
    client = redis_server.client()
    env = forge_env(redis_server.url, site.art)
    spec = RunSpec(run_id="a/../../victim", objective="o", timestamp="t",
                   execution_mode="local", artifacts_dir=str(site.art),
                   candidates=[CandidateInfo(id="echo", name="e")])
    record = {"run": spec.to_dict(), "tasks": [], "request": {"candidates": BASIC},
              "status": "published", "created_at": 1.0}
    client.set(run_record_key("evil"), json.dumps(record))
    done = run_forge_cli(["resume", "evil"], env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "run id 'a/../../victim' is invalid" in one_error_line(done.stderr)

    record["run"]["run_id"] = "escape"  # valid, but not the run the record is filed under
    client.set(run_record_key("evil"), json.dumps(record))
    done = run_forge_cli(["resume", "evil"], env)
    assert done.returncode == 2
    assert "names run 'escape'" in one_error_line(done.stderr)


@pytest.mark.processes
def test_forge_toml_objective_breaking_the_rule_is_refused(tmp_path):
    write_manifest(tmp_path / "cands", {"q1": "print(1)\n"})
    for objective, words in (("z" * 10_001, "the objective is 10,001 characters long"),
                             ("a\\u0000b", "contains a NUL character")):
        toml = tmp_path / "forge.toml"
        toml.write_text(f'[[competition]]\nname = "long"\nobjective = "{objective}"\n'
                        'candidates = "cands/candidates.toml"\n', encoding="utf-8")
        done = run_forge_cli(["competitions", "--file", str(toml)], forge_env(None, tmp_path))
        assert done.returncode == 2, done.stdout + done.stderr
        assert "competition 'long': field 'objective'" in done.stderr and words in done.stderr


# --------------------------------------------------------------------------- the Python API


@pytest.mark.parametrize("timeout", [0, -5, 86_401, True, 5.0, "60"])
def test_api_refuses_timeouts_out_of_bounds(site, timeout):
    with pytest.raises(InvalidInput) as err:
        run_forge("hi", candidates=BASIC, artifacts_dir=str(site.art), timeout=timeout,
                  post=False)
    assert "timeout must be a whole number of seconds from 1 to 86400" in str(err.value)
    assert site.art_listing() == sorted([".old-a", ".tmp-a", "a", "link"])


@pytest.mark.parametrize(("objective", "words"), [
    ("before\x00after", "contains a NUL character (at position 6)"),
    (b"bytes objective", "must be text (str), not bytes (decode it first"),
    ("x" * 10_001, "the objective is 10,001 characters long; the maximum is 10,000"),
    ("  \n ", "the objective is empty"),
    (None, "must be text (str), not NoneType"),
])
def test_api_refuses_bad_objectives(site, objective, words):
    with pytest.raises(InvalidInput) as err:
        run_forge(objective, candidates=BASIC, artifacts_dir=str(site.art), post=False)
    assert words in str(err.value)
    assert site.art_listing() == sorted([".old-a", ".tmp-a", "a", "link"])


@pytest.mark.parametrize("bad", ["a/../../victim", "../escape", "..", "link/..", "a/b"])
def test_api_refuses_hostile_run_ids_and_touches_nothing(site, bad):
    with pytest.raises(InvalidInput, match="is invalid: a run id is 1-128"):
        run_forge("hi", candidates=BASIC, artifacts_dir=str(site.art), run_id=bad, post=False)
    assert site.art_listing() == sorted([".old-a", ".tmp-a", "a", "link"])


@pytest.mark.processes
def test_api_accepts_the_bounds(site):
    """Control: 1 and 86400 are allowed; the refusals above are the bounds'."""
    from dispatcher.runner import prepare

    assert prepare("hi", candidates=BASIC, timeout=86_400, post=False).tasks[0].timeout == 86_400
    result = run_forge("x" * 10_000, candidates=BASIC, artifacts_dir=str(site.art),
                       run_id="bounds", timeout=1, post=False)
    assert result.run_id == "bounds" and (site.art / "bounds" / "summary.json").is_file()


# --------------------------------------------------------------------------- the writer


def test_run_dir_writer_refuses_hostile_ids_before_writing(site):
    listing = site.art_listing()
    for run_id in ("a/../../victim", "../escape", ".old-a"):
        with pytest.raises(InvalidInput, match="run id"):
            write_run_dir(forge_result(run_id=run_id), site.art)
    hostile = forge_result(run_id="ok")
    hostile.results[0].candidate_id = "../../victim"
    with pytest.raises(InvalidInput, match="candidate id '../../victim' is invalid"):
        write_run_dir(hostile, site.art)
    assert site.art_listing() == listing  # not even a temporary directory
    with pytest.raises(InvalidInput, match="outside"):
        write_run_dir(forge_result(run_id="link"), site.art)
    with pytest.raises(InvalidInput, match="run id"):
        read_summary(site.art, "../escape")
    with pytest.raises(InvalidInput, match="outside"):
        read_summary(site.art, "link")


def test_run_dir_writer_replaces_only_run_directories(site):
    """A publisher chooses the artifacts root: with it set to site/, the run id 'victim'
    names a directory that is not a run. It is refused, not renamed away and removed;
    so is a file. (tests/test_rundir.py shows a run directory is replaced.)"""
    with pytest.raises(InvalidInput, match="is not a run directory"):
        write_run_dir(forge_result(run_id="victim"), site.root)
    (site.art / "notes").write_text("mine\n")
    with pytest.raises(InvalidInput, match="is not a run directory"):
        write_run_dir(forge_result(run_id="notes"), site.art)
    assert (site.art / "notes").read_text() == "mine\n"


# ------------------------------------------------------------- by hand, through the broker


def candidate_task(**changes) -> dict:
    script = (FIXTURES / "basic" / "echo.py").read_text()
    task = CandidateTask(run_id="byhand", candidate_id="echo", name="Echo",
                         script_name="echo.py", script=script,
                         script_sha256=sha256_text(script), objective="hand-published",
                         timeout=20).to_dict()
    task.update(changes)
    return task


def run_spec(site: Site, **changes) -> dict:
    spec = RunSpec(run_id="byhand", objective="hand-published", timestamp="2026-11-26T09:00",
                   execution_mode="local", artifacts_dir=str(site.art),
                   candidates=[CandidateInfo(id="echo", name="Echo")]).to_dict()
    spec.update(changes)
    return spec


@dataclass
class Cluster:
    redis: RedisServer
    worker: CeleryWorker


@pytest.fixture(scope="module")
@starts_processes
def shared_cluster(tmp_path_factory):
    """One real redis-server and one real worker for every hand-published message here:
    each message names its own artifacts directory, so tests share them safely."""
    base = tmp_path_factory.mktemp("cluster")
    redis = RedisServer(base / "redis").start()
    worker = CeleryWorker(forge_env(redis.url, base / "artifacts"), "v1", base, 2)
    try:
        worker.start()
        yield Cluster(redis, worker)
    finally:
        worker.stop()
        redis.stop()


@pytest.fixture
def cluster(site, shared_cluster):
    """The shared cluster; after the test, its worker logged no traceback meanwhile."""
    start = len(shared_cluster.worker.logtext())
    yield shared_cluster
    assert "Traceback" not in shared_cluster.worker.logtext()[start:]  # refusals, not crashes


@pytest.mark.parametrize(("changes", "words"), [
    ({"run_id": "a/../../victim"}, "Refused: run id 'a/../../victim' is invalid"),
    ({"candidate_id": "../../victim"}, "Refused: candidate id '../../victim' is invalid"),
    ({"candidate_id": "collect"}, "Refused: candidate id 'collect' is reserved"),
    ({"objective": "x\x00y"}, "Refused: the objective contains a NUL character"),
    ({"timeout": -5}, "Refused: timeout must be a whole number of seconds"),
    ({"install_timeout": 0}, "Refused: install_timeout must be a whole number"),
    ({"script": None, "objective": None}, "Refused: the objective must be text"),
])
def test_hand_published_candidate_task_breaking_a_rule_is_a_refused_result(
        site, cluster, changes, words):
    meta = publish_task(cluster.redis, "worker.tasks.run_candidate", (candidate_task(**changes),))
    assert meta["status"] == "SUCCESS", meta  # never an exception into a chord
    result = meta["result"]
    assert result["success"] is False and result["error_message"].startswith(words), result
    assert "[Run] Executing..." not in result["log"]  # nothing ran
    assert site.art_listing() == sorted([".old-a", ".tmp-a", "a", "link"])


def test_hand_published_malformed_candidate_tasks_are_refused(site, cluster):
    for payload, words in (("oops", "not str"), ({"run_id": "x"}, "malformed candidate task")):
        meta = publish_task(cluster.redis, "worker.tasks.run_candidate", (payload,))
        assert meta["status"] == "SUCCESS", meta
        assert words in meta["result"]["error_message"], meta["result"]


def test_hand_published_valid_candidate_task_runs(site, cluster):
    """Control: the same message with plain ids runs the candidate."""
    meta = publish_task(cluster.redis, "worker.tasks.run_candidate", (candidate_task(),))
    assert meta["result"]["success"] is True, meta["result"]
    assert meta["result"]["artifact_content"] == "hand-published"


@pytest.mark.parametrize(("changes", "words"), [
    ({"run_id": "a/../../victim"}, "run id 'a/../../victim' is invalid"),
    ({"run_id": "../victim"}, "run id '../victim' is invalid"),
    ({"run_id": ".old-a"}, "run id '.old-a' is invalid"),
    ({"candidates": [{"id": "../victim", "name": "x"}]}, "candidate id '../victim' is invalid"),
    ({"candidates": [{"id": "e", "name": "x"}, {"id": "e", "name": "y"}]}, "appears twice"),
    ({"artifacts_dir": "relative/dir"}, "is not an absolute path"),
    ({"run_id": "victim", "artifacts_dir": "SITE"}, "is not a run directory"),
    ({"run_id": "link"}, "outside"),
    ({"objective": "o" * 10_001}, "the maximum is 10,000"),
    ({"spec_key": "celery-task-meta-x"}, "is not this run's"),
])
def test_hand_published_chord_body_breaking_a_rule_writes_nothing(
        site, cluster, changes, words):
    if changes.get("artifacts_dir") == "SITE":
        changes["artifacts_dir"] = str(site.root)
    listing = site.art_listing()
    results = [{"candidate_id": "echo", "success": True, "artifact_content": "# hi\n"}]
    meta = publish_task(cluster.redis, "worker.tasks.collect_results",
                        (results, run_spec(site, **changes)))
    assert meta["status"] == "FAILURE", meta
    assert meta["result"]["exc_type"] == "InvalidInput", meta["result"]
    assert words in meta["result"]["exc_message"][0], meta["result"]
    assert site.art_listing() == listing  # nothing written, renamed or removed


def test_hand_published_valid_chord_body_writes_its_run(site, cluster):
    """Control: a valid body from the same publisher writes inside the artifacts root."""
    results = [{"candidate_id": "echo", "success": True, "artifact_content": "# hi\n"}]
    meta = publish_task(cluster.redis, "worker.tasks.collect_results",
                        (results, run_spec(site)))
    assert meta["status"] == "SUCCESS", meta
    assert json.loads((site.art / "byhand" / "summary.json").read_text())["run_id"] == "byhand"


# --------------------------------------------------------------------------- long text




@pytest.mark.processes
def test_long_objective_is_shown_shortened_and_kept_whole(tmp_path):
    """9,000 characters (within the rule): one short line in the console header, the
    reports and the Discord announcement; whole in summary.json and to the candidates."""
    objective = " ".join(f"word{i:04d}" for i in range(1000)) + "!"
    assert len(objective) == 9000
    gamma = (ROOT / "candidates" / "agent_gamma.py").read_text()  # prints the objective
    manifest = write_manifest(tmp_path / "c", {"gamma": gamma})
    with DiscordServer() as hook:
        env = forge_env(None, tmp_path / "art", DISCORD_WEBHOOK_URL=hook.url)
        done = run_forge_cli(["run", objective, "--candidates", str(manifest),
                              "--run-id", "long"], env)
        assert done.returncode == 0, done.stderr
        run = tmp_path / "art" / "long"
        note = "characters; the full text is in summary.json]"
        out = done.stdout
        header = out[out.index("Objective:"):out.index("Candidates:")]  # rich wraps it
        assert note in " ".join(header.split()) and len(header) < 420
        assert header.count("\n") <= 4
        assert len(done.stdout.splitlines()) < 60  # whole, it was ~80 lines at width 120
        assert json.loads((run / "summary.json").read_text())["objective"] == objective
        seen = (run / "gamma" / "output.log").read_text()
        assert f"[Gamma] Objective: {objective}\n" in seen  # whole, to the candidate
        for name in ("report.md", "report.html"):
            text = (run / name).read_text()
            assert note in text and objective not in text and objective[:250] in text
        posted = hook.delivered
        assert posted and note in posted[0] and objective[:250] in posted[0]
        assert objective not in "".join(posted)
        status = run_forge_cli(["status", "long"], env)
        assert status.returncode == 0 and note in " ".join(status.stdout.split())
        assert len(status.stdout.splitlines()) < 40
