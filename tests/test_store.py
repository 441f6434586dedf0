"""The run store on both backends (a SQLite file and a real PostgreSQL): migrations,
in-flight states, idempotent and concurrent finished writes, the read API, hostile
text, owed writes and their retry, import, and URL handling."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.procs import free_port
from tests.store_helpers import candidate_result, dump, finished, spec

# ----------------------------------------------------------------- migrations


def test_migrations_build_exactly_the_models_and_run_once(store):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from worker.store.db import current_revision, ensure_schema
    from worker.store.migrations import HEAD, alembic_config
    from worker.store.models import Base

    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD
    with store.engine.connect() as conn:
        assert current_revision(conn) == HEAD
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}),
                                Base.metadata)
    assert diff == []
    assert ensure_schema(store.engine) is False  # at HEAD: nothing to do


def test_workers_starting_together_migrate_an_empty_store_once(store_url):
    """Each contender has its own engine (as separate processes would); they start
    behind a barrier and all call ensure_schema on the same empty database."""
    from worker.store.db import (
        _postgres_engine,
        _sqlite_engine,
        current_revision,
        ensure_schema,
        parse_url,
    )
    from worker.store.migrations import HEAD

    url = parse_url(store_url)
    make = _sqlite_engine if url.get_backend_name() == "sqlite" else _postgres_engine
    engines = [make(url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    outcomes: list[object] = [None] * len(engines)

    def contend(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = ensure_schema(engines[i])
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion
            outcomes[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(map(repr, outcomes)) == sorted(["True"] + ["False"] * 3), outcomes
    with engines[0].connect() as conn:
        assert current_revision(conn) == HEAD
    for e in engines:
        e.dispose()


# ----------------------------------------------------------------- in flight


def test_candidates_go_queued_running_done_and_never_back(store):
    run = spec("r1", n=3)
    store.write_queued(run)
    assert store.run_summary("r1").status == "queued"
    assert [s.state for s in store.run_states("r1")] == ["queued"] * 3

    assert store.mark_running("r1", "c0", worker="w1@h") == 1
    assert store.mark_waiting("r1", "c1", worker="w2@h") == 1
    summary = store.run_summary("r1")
    assert summary.status == "running" and summary.started_at is not None
    assert summary.states.running == 1 and summary.states.waiting == 1
    assert summary.states.queued == 1

    done = candidate_result("c0", 0, ok=False)
    assert store.mark_done("r1", done) == 1
    states = {s.candidate_id: s for s in store.run_states("r1")}
    assert [states[c].state for c in ("c0", "c1", "c2")] == ["done", "waiting", "queued"]
    assert states["c0"].success is False and states["c0"].worker == "w1@host"
    assert states["c0"].error_message == "Script exited with code 1"
    assert store.run_summary("r1").states.failed == 1
    # A mark goes through the driver directly: what it stored reads back unchanged.
    assert store.get_run("r1").candidates[0].result.to_dict() == done.to_dict()

    # A late or redelivered "running" never undoes "done"; a re-publish resets nothing.
    assert store.mark_running("r1", "c0", worker="w9@h") == 0
    store.write_queued(run)
    assert [s.state for s in store.run_states("r1")] == ["done", "waiting", "queued"]
    # A mark for a run this store does not know changes nothing (and does not fail).
    assert store.mark_running("other", "c0") == 0


def test_run_detail_while_in_flight_has_results_only_for_done_candidates(store):
    store.write_queued(spec("r1", n=2))
    store.mark_done("r1", candidate_result("c1", 1))
    detail = store.get_run("r1")
    assert [c.state for c in detail.candidates] == ["queued", "done"]
    assert detail.candidates[0].result is None and detail.candidates[1].result.success
    assert all(c.score is None for c in detail.candidates)
    assert detail.forge_result() is None  # not finished: no summary yet


# ----------------------------------------------------------------- finished runs


def test_a_redelivered_finished_write_writes_nothing_twice(store):
    run = spec("r1", n=4)
    store.write_queued(run)
    store.mark_running("r1", "c0", worker="w1@h")
    result = finished(run, winner="c2", failed=("c3",))
    store.write_finished(result)
    first = dump(store)
    assert [len(first[t]) for t in ("runs", "candidates", "results")] == [1, 4, 4]
    store.write_finished(result, at=datetime.now(UTC) + timedelta(hours=1))
    assert dump(store) == first
    loaded = store.load_result("r1")
    assert loaded.to_dict() == result.to_dict()


def test_two_callbacks_writing_the_same_run_at_once_leave_one_run(store, store_url):
    """Contenders on separate connections, released together by a barrier, on a store
    that has never seen the run (pure inserts racing on the unique keys)."""
    from worker.store import open_store

    run = spec("race", n=30)
    result = finished(run, winner="c7")
    stores = [store, open_store(store_url)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def write(s) -> None:
        barrier.wait()
        try:
            s.write_finished(result)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    after = dump(store)
    assert [len(after[t]) for t in ("runs", "candidates", "results")] == [1, 30, 30]
    store.write_finished(result)
    assert dump(store) == after
    assert store.load_result("race").to_dict() == result.to_dict()


def test_hostile_text_is_stored_and_read_back(store):
    html = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    nasty = f"nul:\x00 lone:\ud800 {html} emoji:\U0001f600"
    run = spec("h1", n=2)
    result = finished(run, winner="c0", results={
        "c0": candidate_result("c0", 0, output=nasty, artifact=nasty)})
    result.scores[0].quality_details = {"title": nasty}
    nul = "\ufffd" if store.backend == "postgresql" else "\x00"  # PostgreSQL text has no NUL
    expected = f"nul:{nul} lone:? {html} emoji:\U0001f600"
    store.write_queued(run)
    assert store.mark_done("h1", result.results[0]) == 1  # the marks' own path, too
    marked = store.get_run("h1").candidates[0].result
    assert marked.output == expected and marked.artifact_content == expected
    store.write_finished(result)
    back = store.get_run("h1").candidates[0]
    assert back.result.output == expected and back.result.artifact_content == expected
    assert back.score.quality_details == {"title": f"nul:\x00 lone:? {html} emoji:\U0001f600"}


# ----------------------------------------------------------------- read API


def test_runs_list_pages_filters_and_counts(store):
    for i in range(7):
        comp = "weekly" if i % 2 == 0 else None
        run = spec(f"run-{i}", n=2, competition=comp,
                   timestamp=f"2026-11-{10 + i:02d}T09:00:00+00:00")
        store.write_queued(run)
        if i < 5:
            store.write_finished(finished(run, winner="c1" if i % 3 else None))
    page = store.list_runs(page=1, per_page=3)
    assert page.total == 7 and page.pages == 3
    assert [r.run_id for r in page.items] == ["run-6", "run-5", "run-4"]
    assert [r.status for r in page.items] == ["queued", "queued", "finished"]
    assert page.items[0].states.queued == 2 and page.items[2].states.done == 2
    assert [r.run_id for r in store.list_runs(page=3, per_page=3).items] == ["run-0"]
    weekly = store.list_runs(competition="weekly")
    assert [r.run_id for r in weekly.items] == ["run-6", "run-4", "run-2", "run-0"]
    assert store.list_runs(status="finished", per_page=100).total == 5
    assert isinstance(page.items[0].timestamp, datetime) and page.items[0].timestamp.tzinfo

    comps = {c.name: c for c in store.competitions()}
    assert comps["weekly"].runs == 4 and comps[None].runs == 3
    assert comps["weekly"].last_run.run_id == "run-6"
    assert comps["weekly"].last_finished.run_id == "run-4"
    assert comps["weekly"].last_finished.winner_id == "c1"


def test_a_candidates_history_across_runs(store):
    for i, winner in enumerate(["c1", "c0", None]):
        run = spec(f"h-{i}", n=2, competition="weekly" if i < 2 else "other",
                   timestamp=f"2026-11-{10 + i:02d}T09:00:00+00:00")
        store.write_finished(finished(run, winner=winner))
    history = store.candidate_history("c1")
    assert [h.run_id for h in history] == ["h-2", "h-1", "h-0"]
    assert [h.won for h in history] == [False, False, True]
    assert [h.rank for h in history] == [2, 2, 1]
    assert history[2].total_score == 80.0 and history[2].success is True
    assert [h.run_id for h in store.candidate_history("c1", competition="weekly")] == \
        ["h-1", "h-0"]
    assert store.candidate_history("nobody") == []


def test_a_failed_run_says_why(store):
    from worker.store import hooks

    run = spec("f1", n=1, artifacts_dir="/nowhere")
    store.write_queued(run)
    hooks._RUN_URLS["f1"] = store.url
    hooks._body_failed(sender=type("T", (), {"name": hooks.COLLECT})(),
                       args=([], {"run_id": "f1"}), exception=RuntimeError("spec gone"))
    summary = store.run_summary("f1")
    assert summary.status == "failed" and "RuntimeError: spec gone" in summary.error


# ----------------------------------------------------------------- failures and retry


def test_an_unwritable_store_keeps_the_run_and_a_later_drain_writes_it(
        tmp_path, monkeypatch, caplog, store_url):
    """The chord body's write fails (PostgreSQL not listening): the run directory is
    complete, the write is owed in the outbox, one warning line shows the URL without
    its password; once the store is back, a drain writes the run."""
    from worker.rundir import write_run_dir
    from worker.store import hooks, importer, open_store

    artifacts = tmp_path / "artifacts"
    run = spec("owed-1", n=2, artifacts_dir=str(artifacts))
    result = finished(run, winner="c0")
    write_run_dir(result, artifacts)
    secret = "hunter2-db-password"
    down = f"postgresql+psycopg://forge:{secret}@127.0.0.1:{free_port()}/forge"
    monkeypatch.setenv("FORGE_DATABASE_URL", down)
    with caplog.at_level(logging.WARNING, logger="dream_foundry"):
        hooks.record_finished(result)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    assert "owed-1" in lines[0] and "forge:***@127.0.0.1" in lines[0]
    assert secret not in caplog.text
    assert [p["run_id"] for p in importer.pending(artifacts)] == ["owed-1"]
    assert (artifacts / "owed-1" / "summary.json").is_file()

    monkeypatch.setenv("FORGE_DATABASE_URL", store_url)
    if store_url.startswith("sqlite"):  # the default store lives in the artifacts dir
        monkeypatch.delenv("FORGE_DATABASE_URL")
        store_url = f"sqlite:///{artifacts / 'forge.db'}"
    got = hooks.drain_here(str(artifacts))
    assert got["imported"] == ["owed-1"], got
    assert importer.pending(artifacts) == []
    assert open_store(store_url).load_result("owed-1").to_dict() == result.to_dict()


def test_a_store_write_that_fails_mid_transaction_leaves_nothing_half_written(store):
    """One transaction: a failure on a late row (a NOT NULL column left empty) rolls
    back the run row written before it."""
    from worker.store import StoreError

    run = spec("tx", n=3)
    result = finished(run)
    result.candidates[2].name = None
    with pytest.raises(StoreError):
        store.write_finished(result)
    assert store.run_summary("tx") is None
    assert all(len(rows) == 0 for rows in dump(store).values())


# ----------------------------------------------------------------- import


def test_import_is_idempotent_and_an_empty_store_imports_on_first_start(tmp_path, store_url,
                                                                         monkeypatch):
    from dispatcher.cli import main
    from worker.rundir import write_run_dir
    from worker.store import importer, open_store

    artifacts = tmp_path / "artifacts"
    runs = [finished(spec(f"old-{i}", n=3, artifacts_dir=str(artifacts),
                          timestamp=f"2026-10-0{i + 1}T08:00:00+00:00"), winner="c2")
            for i in range(2)]
    for r in runs:
        write_run_dir(r, artifacts)
    (artifacts / "not-a-run").mkdir()
    for r in runs:  # the importer reads back exactly what was written
        assert importer.load_run_dir(artifacts / r.run_id).to_dict() == r.to_dict()

    if store_url.startswith("postgresql"):
        monkeypatch.setenv("FORGE_DATABASE_URL", store_url)
    else:
        store_url = f"sqlite:///{artifacts / 'forge.db'}"
    store = open_store(store_url)
    assert store.has_runs() is False
    report = store.import_if_empty(artifacts)
    assert sorted(report.imported) == ["old-0", "old-1"]
    first = dump(store)
    assert main(["import", str(artifacts)]) == 0
    assert main(["import", str(artifacts / "old-1")]) == 0
    assert dump(store) == first
    assert [r.run_id for r in store.list_runs().items] == ["old-1", "old-0"]
    assert main(["import", str(tmp_path / "missing")]) == 2


# ----------------------------------------------------------------- URLs


def test_database_url_default_and_validation(tmp_path, monkeypatch, capsys):
    from dispatcher.cli import main
    from worker import config
    from worker.config import ConfigError
    from worker.store.db import parse_url

    assert config.database_url(tmp_path) == f"sqlite:///{tmp_path / 'forge.db'}"
    monkeypatch.setenv("FORGE_DATABASE_URL", "postgres://u:pw@db:5432/forge")
    assert config.database_url(tmp_path) == "postgres://u:pw@db:5432/forge"
    assert parse_url("postgres://u:pw@db/forge").drivername == "postgresql+psycopg"
    assert parse_url("postgresql://u:pw@db/forge").drivername == "postgresql+psycopg"
    for bad, words in (("mysql://u:pw@db/x", "unsupported database 'mysql'"),
                       ("postgresql+psycopg2://u:pw@db/x", "psycopg2"),
                       ("sqlite://", "not an in-memory"),
                       ("not a url", "not a database URL")):
        with pytest.raises(ConfigError) as err:
            parse_url(bad)
        assert words in str(err.value) and "pw" not in str(err.value).replace("pwd", "")
    monkeypatch.setenv("FORGE_DATABASE_URL", "mysql://u:s3cret@db/x")
    assert main(["list", "--artifacts-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "FORGE_DATABASE_URL" in err and "s3cret" not in err and "Traceback" not in err


def test_list_and_status_fall_back_to_run_directories_when_the_store_is_down(
        tmp_path, monkeypatch, capsys):
    from dispatcher.cli import main
    from worker.rundir import write_run_dir

    run = spec("local-1", n=2, artifacts_dir=str(tmp_path))
    write_run_dir(finished(run, winner="c1"), tmp_path)
    monkeypatch.setenv("FORGE_DATABASE_URL",
                       f"postgresql+psycopg://forge:topsecret@127.0.0.1:{free_port()}/x")
    assert main(["list", "--artifacts-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "local-1" in out and "c1" in out
    assert err.count("forge: warning: cannot open the run store at postgresql+psycopg://"
                     "forge:***@127.0.0.1") == 1
    assert main(["status", "local-1", "--artifacts-dir", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["winner_id"] == "c1" and "warning" in err
    assert "topsecret" not in out + err


def test_reading_an_empty_artifacts_dir_creates_no_store(tmp_path):
    from dispatcher.cli import main

    assert main(["list", "--artifacts-dir", str(tmp_path)]) == 0
    assert main(["status", "x", "--artifacts-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "forge.db").exists()
    assert not Path(tmp_path / "x").exists()


def test_beat_schedules_the_retry_of_owed_writes(monkeypatch):
    """Beat's schedule (forge.toml's competitions) also holds the store's drain task, a
    task the workers register, every FORGE_STORE_RETRY_INTERVAL seconds."""
    import worker.store.hooks  # noqa: F401 - registers the task, as the worker's include does
    from dispatcher.schedule import CompetitionScheduler
    from worker.app import app

    monkeypatch.setenv("FORGE_STORE_RETRY_INTERVAL", "120")
    saved = dict(app.conf.beat_schedule or {})
    try:
        CompetitionScheduler(app=app, schedule_filename="/nonexistent/s", lazy=True)
        entry = app.conf.beat_schedule["store:drain-outbox"]
        assert any(k.startswith("competition:") for k in app.conf.beat_schedule)
    finally:
        app.conf.beat_schedule = saved
    assert entry["task"] == "worker.store.drain_outbox" and entry["schedule"] == 120.0
    assert "worker.store.drain_outbox" in app.tasks
    assert "worker.store.hooks" in app.conf.include


def test_forge_post_puts_the_new_discord_record_in_the_store(tmp_path, monkeypatch, store_url):
    from dispatcher.cli import main
    from tests.discord_server import DiscordServer
    from tests.store_helpers import assert_store_agrees_with_run_dir
    from worker.rundir import write_run_dir
    from worker.store import open_store

    if store_url.startswith("postgresql"):
        monkeypatch.setenv("FORGE_DATABASE_URL", store_url)
    run = spec("posted", n=2, artifacts_dir=str(tmp_path))
    write_run_dir(finished(run, winner="c1"), tmp_path)
    store = open_store(artifacts_dir=str(tmp_path))
    assert main(["import", str(tmp_path)]) == 0
    assert store.get_run("posted").discord is None
    with DiscordServer() as server:
        monkeypatch.setenv("DISCORD_WEBHOOK_URL", server.url)
        assert main(["post", "posted", "--artifacts-dir", str(tmp_path)]) == 0
    record = store.get_run("posted").discord
    assert record["posted"] is True and record["forced"] is True
    assert "sEcReT" not in json.dumps(record)
    assert_store_agrees_with_run_dir(store, tmp_path / "posted")  # outputs kept, too


def test_the_task_signals_mark_candidates_through_the_writer_thread(store, monkeypatch):
    from types import SimpleNamespace

    from worker.store import hooks

    monkeypatch.setenv("FORGE_DATABASE_URL", store.url)
    store.write_queued(spec("hk", n=2))
    run_candidate = SimpleNamespace(name=hooks.RUN_CANDIDATE)
    task = SimpleNamespace(request=SimpleNamespace(hostname="w7@host"))
    args = ({"run_id": "hk", "candidate_id": "c0"},)
    hooks._running(sender=run_candidate, task=task, args=args)
    # Another task's signal (the chord body's) is not a candidate's.
    hooks._running(sender=SimpleNamespace(name=hooks.COLLECT), task=task,
                   args=({"run_id": "hk", "candidate_id": "c1"},))
    assert hooks.flush_marks(30)
    states = {s.candidate_id: s for s in store.run_states("hk")}
    assert (states["c0"].state, states["c0"].worker) == ("running", "w7@host")
    assert states["c1"].state == "queued"
    done = candidate_result("c0", 0)
    hooks._done(sender=run_candidate, args=args, retval=done.to_dict())
    assert hooks.flush_marks(30)
    assert store.get_run("hk").candidates[0].result.to_dict() == done.to_dict()


def test_marks_for_a_store_that_is_down_never_hold_up_a_task(monkeypatch, caplog):
    """The task hands its marks over and goes on; the writer drops them after one failure
    (one warning, URL redacted) instead of queueing each behind a connect timeout."""
    import time
    from types import SimpleNamespace

    from worker.store import hooks

    secret = "marks-pw-9f2"
    monkeypatch.setenv("FORGE_DATABASE_URL",
                       f"postgresql+psycopg://forge:{secret}@127.0.0.1:{free_port()}/x")
    sender = SimpleNamespace(name=hooks.RUN_CANDIDATE)
    task = SimpleNamespace(request=SimpleNamespace(hostname="w1@h"))
    with caplog.at_level(logging.WARNING, logger="dream_foundry"):
        t0 = time.monotonic()
        for i in range(50):
            args = ({"run_id": "down", "candidate_id": f"c{i}"},)
            hooks._running(sender=sender, task=task, args=args)
            hooks._done(sender=sender, args=args, retval=candidate_result(f"c{i}").to_dict())
        handed_over = time.monotonic() - t0
        assert hooks.flush_marks(60)
    assert handed_over < 1.0  # 100 marks queued, none written by the task itself
    lines = [r.getMessage() for r in caplog.records if "candidate states" in r.getMessage()]
    assert len(lines) == 1 and "forge:***@127.0.0.1" in lines[0], lines
    assert secret not in caplog.text
