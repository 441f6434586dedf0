"""Manifest loading: the demo loads; every kind of bad manifest is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from dispatcher.manifest import DEFAULT_MANIFEST, ManifestError, load_manifest
from dispatcher.request import RunRequest
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
        if c.project is not None:  # Beta is a project: packed at load, by its hash
            assert c.script == "" and c.script_path.is_dir()
            assert c.content_sha256 == c.project.bundle.sha256
            continue
        assert c.script == c.script_path.read_text()
        assert c.script_sha256 == c.content_sha256 == sha256_text(c.script)
    assert [c.id for c in m.candidates if c.project] == ["beta"]


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
    ('[[candidate]]\nid = "collect"\nscript = "a.py"\n',
     ["candidate #1", "'id'", "'collect' is reserved", "choose another id"]),
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
    tasks = {t.candidate_id: t for t in plan_run(RunRequest("o", artifacts_dir=str(tmp_path)),
                                                 load_manifest(path)).tasks}
    assert (tasks["a"].upload_timeout, tasks["a"].retrieve_timeout,
            tasks["a"].install_timeout) == (5, 2, 9)
    assert (tasks["b"].upload_timeout, tasks["b"].retrieve_timeout,
            tasks["b"].install_timeout) == (5, 4, 120)  # the seed's defaults otherwise


def test_bad_phase_deadline_is_refused(tmp_path):
    path = write(tmp_path, '[[candidate]]\nid = "a"\nscript = "a.py"\nupload_timeout = 0\n')
    with pytest.raises(ManifestError, match="candidate 'a': field 'upload_timeout'"):
        load_manifest(path)


# -- the [daytona] table -------------------------------------------------------------------

ONE = '[[candidate]]\nid = "a"\nscript = "a.py"\nrequirements = ["requests"]\n'


def test_daytona_table_is_read_into_typed_settings(tmp_path):
    from worker.records import DaytonaSpec, ImageSpec, Resources

    m = load_manifest(write(tmp_path, (
        '[daytona]\nmax_sandboxes = 4\nnetwork_allow_list = ["10.0.0.0/8"]\n'
        'domain_allow_list = ["PyPI.org"]\n'
        '[daytona.image]\nbase = "python:3.12-slim"\npip = ["rich"]\ncommands = ["echo x"]\n'
        '[daytona.resources]\ncpu = 2\nmemory = 4\n') + ONE))
    assert m.max_sandboxes == 4
    assert m.daytona == DaytonaSpec(
        image=ImageSpec(base="python:3.12-slim", pip=("rich",), commands=("echo x",)),
        resources=Resources(cpu=2, memory=4), network_allow_list=("10.0.0.0/8",),
        domain_allow_list=("pypi.org",))
    plain = load_manifest(write(tmp_path, ONE))
    assert plain.daytona == DaytonaSpec() and plain.max_sandboxes is None


@pytest.mark.parametrize("toml, words", [
    ('[daytona]\nsnapshots = "x"\n', ["'daytona.snapshots' is unknown", "known fields"]),
    ('[daytona]\nmax_sandboxes = 0\n', ["'max_sandboxes' must be at least 1"]),
    ('[daytona]\nsnapshot = "x"\n[daytona.image]\npython = "3.12"\n', ["both set"]),
    ('[daytona.image]\npip = ["x"]\n', ["needs 'base'", "or 'python'"]),
    ('[daytona.image]\npython = "3.12"\nbase = "x"\n', ["not both"]),
    ('[daytona.image]\npython = "twelve"\n', ["'image.python'", "\"3.12\""]),
    ('[daytona.image]\npython = "3.12"\nfrom = "x"\n', ["'image.from' is unknown"]),
    ('[daytona.resources]\ncpu = 2\n', ["'resources' need [daytona.image]"]),
    ('[daytona]\nsnapshot = "x"\n[daytona.resources]\ncpu = 2\n',
     ["'resources' need [daytona.image]", "instead of 'snapshot'"]),
    ('[daytona.image]\npython = "3.12"\n[daytona.resources]\ngpu = 1\n',
     ["'resources.gpu' is unknown"]),
    ('[daytona]\nnetwork_allow_list = ["10.0.0.0/33"]\n', ["'network_allow_list'", "CIDR"]),
    ('[daytona]\ndomain_allow_list = ["not a domain"]\n', ["'domain_allow_list'"]),
    ('network = false\n[daytona]\nnetwork_allow_list = ["10.0.0.0/8"]\n',
     ["allow-list", "'network = false'"]),
    ('daytona = "yes"\n', ["'daytona' must be a table"]),
])
def test_bad_daytona_tables_are_refused_naming_the_field(tmp_path, toml, words):
    path = write(tmp_path, toml + ONE)
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    for word in (str(path), *words):
        assert word in str(err.value)


def test_daytona_plan_builds_requirements_into_the_image_and_carries_the_budget(
        tmp_path, monkeypatch):
    from dispatcher.plan import plan_run
    from worker.records import ImageSpec

    monkeypatch.setenv("FORGE_DAYTONA_MAX_SANDBOXES", "7")
    monkeypatch.setenv("FORGE_DAYTONA_SLOT_WAIT", "99")
    path = write(tmp_path, '[daytona.image]\npython = "3.12"\npip = ["rich"]\n' + ONE
                 + '[[candidate]]\nid = "b"\nscript = "a.py"\nrequirements = ["rich", "attrs"]\n')
    manifest = load_manifest(path)
    asked = RunRequest("o", artifacts_dir=str(tmp_path))
    daytona = plan_run(asked, manifest, execution_mode="daytona")
    a, b = daytona.tasks
    assert a.daytona.image == ImageSpec(python="3.12", pip=("rich", "attrs", "requests"))
    assert a.requirements == b.requirements == ()  # installed at build time, once
    assert (a.budget.max_sandboxes, a.budget.slot_wait) == (7, 99) and a.budget.run_clock
    local = plan_run(asked, manifest)
    assert local.tasks[0].requirements == ("requests",)  # local sandboxes install as before
    assert local.tasks[0].budget.max_sandboxes == 0
    override = plan_run(asked.replace(max_sandboxes=3), manifest, execution_mode="daytona")
    assert override.tasks[0].budget.max_sandboxes == 3
    # The budget is not part of what the run *is*; the image is.
    assert override.run.definition_sha256 == daytona.run.definition_sha256
    assert override.tasks[0].budget.run_clock != daytona.tasks[0].budget.run_clock
    other = load_manifest(write(tmp_path, '[daytona.image]\npython = "3.11"\n' + ONE))
    again = plan_run(asked, other, execution_mode="daytona")
    assert again.run.definition_sha256 != daytona.run.definition_sha256


def test_daytona_task_backstop_covers_the_wait_for_a_sandbox(tmp_path, monkeypatch):
    from dispatcher.dispatch import BACKSTOP_MARGIN, build_chord
    from dispatcher.plan import plan_run

    monkeypatch.setenv("FORGE_DAYTONA_SLOT_WAIT", "500")
    manifest = load_manifest(write(tmp_path, ONE))
    for mode, wait in (("daytona", 500), ("local", 0)):
        plan = plan_run(RunRequest("o", artifacts_dir=str(tmp_path)), manifest,
                        execution_mode=mode)
        (sig,) = build_chord(plan).tasks
        t = plan.tasks[0]
        assert sig.options["time_limit"] == t.timeout + t.install_timeout + BACKSTOP_MARGIN + wait
