"""Manifest loading: the demo loads; every kind of bad manifest is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.manifest import DEFAULT_MANIFEST, ManifestError, load_manifest
from worker.records import sha256_text


def write(tmp_path: Path, toml: str, scripts: tuple[str, ...] = ("a.py",)) -> Path:
    for name in scripts:
        (tmp_path / name).write_text("print('hi')\n")
    path = tmp_path / "candidates.toml"
    path.write_text(toml)
    return path


def test_demo_manifest_loads_with_scripts_snapshotted():
    m = load_manifest()
    assert m.path == DEFAULT_MANIFEST
    ids = [c.id for c in m.candidates]
    assert ids == ["alpha", "beta", "gamma", "delta", "epsilon"]
    for c in m.candidates:
        assert c.script == c.script_path.read_text()
        assert c.script_sha256 == sha256_text(c.script)


def test_directory_holding_candidates_toml_is_accepted(tmp_path):
    write(tmp_path, '[[candidate]]\nid = "a"\nscript = "a.py"\n')
    m = load_manifest(tmp_path)
    assert [c.id for c in m.candidates] == ["a"]
    assert m.candidates[0].name == "a"  # name defaults to the id


def test_defaults_and_overrides(tmp_path):
    m = load_manifest(write(tmp_path, 'timeout = 7\nnetwork = false\nenv = ["OPENAI_API_KEY"]\n'
                            '[[candidate]]\nid = "a"\nscript = "a.py"\ntimeout = 3\n'
                            'requirements = ["requests"]\n'))
    assert (m.timeout, m.network, m.env) == (7, False, ("OPENAI_API_KEY",))
    assert m.candidates[0].timeout == 3
    assert m.candidates[0].requirements == ("requests",)


@pytest.mark.parametrize("toml, words", [
    ('[[candidate]]\nid = "A!"\nscript = "a.py"\n', ["candidate #1", "'id'", "a-z"]),
    ('[[candidate]]\nscript = "a.py"\n', ["candidate #1", "'id' is missing"]),
    ('[[candidate]]\nid = "a"\n', ["candidate 'a'", "'script' is missing"]),
    ('[[candidate]]\nid = "a"\nscript = "nope.py"\n',
     ["candidate 'a'", "'script'", "no such file"]),
    ('[[candidate]]\nid = "a"\nscript = "a.py"\n[[candidate]]\nid = "a"\nscript = "a.py"\n',
     ["candidate 'a'", "duplicate"]),
    ('[[candidate]]\nid = "a"\nscript = "a.py"\ntimeout = "soon"\n',
     ["candidate 'a'", "'timeout'", "whole number"]),
    ('[[candidate]]\nid = "a"\nscript = "a.py"\ntimeout = 0\n', ["'timeout'", "between"]),
    ('[[candidate]]\nid = "a"\nscript = "a.py"\nrequirements = "x"\n', ["'requirements'"]),
    ('env = ["BAD-NAME"]\n[[candidate]]\nid = "a"\nscript = "a.py"\n', ["'env'", "BAD-NAME"]),
    ('title = "no candidates"\n', ["no [[candidate]] entries"]),
    ('[[candidate]\nid = "a"\n', ["not valid TOML"]),
])
def test_bad_manifests_are_refused_naming_entry_and_field(tmp_path, toml, words):
    path = write(tmp_path, toml)
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_manifest_names_the_fix(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(tmp_path / "missing.toml")


def test_phase_deadlines_per_competition_and_per_candidate(tmp_path):
    from dispatcher.plan import plan_run

    path = write(tmp_path, 'upload_timeout = 5\nretrieve_timeout = 4\n'
                 '[[candidate]]\nid = "a"\nscript = "a.py"\nretrieve_timeout = 2\n'
                 'install_timeout = 9\n'
                 '[[candidate]]\nid = "b"\nscript = "a.py"\n')
    tasks = {t.candidate_id: t for t in plan_run("o", load_manifest(path),
                                                 artifacts_dir=str(tmp_path)).tasks}
    assert (tasks["a"].upload_timeout, tasks["a"].retrieve_timeout,
            tasks["a"].install_timeout) == (5, 2, 9)
    assert (tasks["b"].upload_timeout, tasks["b"].retrieve_timeout,
            tasks["b"].install_timeout) == (5, 4, 120)  # the seed's defaults otherwise


def test_bad_phase_deadline_is_refused(tmp_path):
    path = write(tmp_path, '[[candidate]]\nid = "a"\nscript = "a.py"\nupload_timeout = 0\n')
    with pytest.raises(ManifestError, match="candidate 'a': field 'upload_timeout'"):
        load_manifest(path)
