"""Edges of the core guards that mutation checks found unasserted (docs/testing.md):
the exact refusal messages, the claim file, and the run directory's corner paths."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from tests.test_rundir import forge_result
from worker import discord, rundir
from worker.rundir import render_files, write_run_dir
from worker.validation import InvalidInput, check_run_id, contained


def test_a_refused_run_id_is_shown_cut_at_80_characters_and_the_fix_named():
    with pytest.raises(InvalidInput) as info:
        check_run_id("../" + "x" * 100)
    shown = repr("../" + "x" * 100)
    assert f"run id {shown[:80]}... ({len(shown)} characters) is invalid" in str(info.value)
    assert str(info.value).endswith("; pick a plain name such as 'weekly-2026-11-26'")
    exactly = "/" + "y" * 77  # its repr is 80 characters: shown whole
    with pytest.raises(InvalidInput, match=r"run id '/y{77}' is invalid"):
        check_run_id(exactly)


def test_an_escaping_path_names_the_rule(tmp_path):
    with pytest.raises(InvalidInput) as info:
        contained(tmp_path, "..", "elsewhere")
    assert str(info.value).endswith("a path built from a run id or candidate id must stay "
                                    "inside its directory; use a plain name")


def test_the_claim_file_says_who_claimed(tmp_path):
    assert discord._claim(tmp_path) is True
    path = tmp_path / discord.CLAIM
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 & ~_umask()
    text = path.read_text()
    claim = json.loads(text)
    assert text.endswith("}\n") and claim["pid"] == os.getpid()
    assert isinstance(claim["claimed_at"], float) and set(claim) == {"pid", "claimed_at"}
    assert discord._claim(tmp_path) is False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_run_directory_under_missing_parents_is_made(tmp_path):
    root = tmp_path / "a" / "b" / "artifacts"
    assert write_run_dir(forge_result(), root) == root / "run-1"
    assert (root / "run-1" / "summary.json").is_file()


def test_a_missing_file_is_written_again(tmp_path):
    run = write_run_dir(forge_result(), tmp_path)
    (run / "report.md").unlink()
    write_run_dir(forge_result(), tmp_path)
    assert (run / "report.md").read_bytes() == render_files(forge_result())["report.md"]


def test_a_symlink_to_a_run_directory_is_not_replaced(tmp_path):
    real = write_run_dir(forge_result("real"), tmp_path / "art")  # inside the root
    os.symlink(real, tmp_path / "art" / "run-1")
    with pytest.raises(InvalidInput) as info:
        write_run_dir(forge_result(), tmp_path / "art")
    assert str(info.value).endswith("(no summary.json); refusing to replace it: move it "
                                    "away or pick another run id")
    assert json.loads((real / "summary.json").read_text())["run_id"] == "real"


def test_the_old_copy_failing_to_go_leaves_the_new_run_in_place(tmp_path, monkeypatch):
    """Replacing a run: once the new directory is in place, trouble removing the old
    copy (it is only litter) must not fail the write."""
    write_run_dir(forge_result(winner_score=80.0), tmp_path)
    real_rmtree = shutil.rmtree

    def rmtree(path, ignore_errors=False, **kwargs):
        if ".old-" in str(path):
            if not ignore_errors:
                raise OSError("busy")
            return None
        return real_rmtree(path, ignore_errors=ignore_errors, **kwargs)

    monkeypatch.setattr(rundir.shutil, "rmtree", rmtree)
    run = write_run_dir(forge_result(winner_score=90.0), tmp_path)
    assert json.loads((run / "summary.json").read_text())["winner_score"] == 90.0
