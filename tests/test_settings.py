"""worker/settings.py: the one reader of the environment, kept in step with its docs."""

from __future__ import annotations

import ast
import re

import pytest

from tests.procs import ROOT
from worker.settings import ConfigError, Settings, settings

DOC = ROOT / "docs" / "configuration.md"
OTHERS = "## Read by other programs"  # the doc's section of variables our code never reads
ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|\s*$")
VARIABLE = re.compile(r"^(FORGE|CELERY|DAYTONA|DISCORD|SENTRY)_[A-Z0-9_]+$")


def doc_rows(text: str) -> dict[str, tuple[str, str]]:
    """name -> (default, meaning) of every table row before the "other programs" part."""
    rows = {}
    for line in text.split(OTHERS)[0].splitlines():
        m = ROW.match(line.strip())
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is listed twice"
            rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_the_doc_lists_every_setting_with_its_default():
    documented = doc_rows(DOC.read_text("utf-8"))
    variables = {v.name: v for v in Settings.variables()}
    assert sorted(documented) == sorted(variables)
    for name, (default, meaning) in documented.items():
        assert default == variables[name].shown, name
        assert len(meaning) > 10, name
    assert len(variables) >= 40


def test_a_row_out_of_step_is_caught():
    """Positive control: a missing variable and a wrong default both show."""
    text = DOC.read_text("utf-8")
    rows = doc_rows(text.replace("| `FORGE_MAX_ATTEMPTS` | 3 |", "| `FORGE_MAX_ATTEMPTS` | 4 |")
                    .replace("`FORGE_FANOUT_GRACE`", "`FORGE_FANOUT_GRACES`"))
    assert rows["FORGE_MAX_ATTEMPTS"][0] == "4" and "FORGE_FANOUT_GRACE" not in rows


def config_reads(source: str) -> list[str]:
    """Variable names read straight from the environment: ``os.environ.get("X")``,
    ``os.getenv("X")``, ``os.environ["X"]``, ``env("X")`` and the like."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (name in ("get", "getenv", "env", "env_int", "env_count", "raw", "pop")
                    and isinstance(first, ast.Constant) and isinstance(first.value, str)
                    and VARIABLE.match(first.value)):
                found.append(first.value)
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and \
                isinstance(node.slice.value, str) and VARIABLE.match(node.slice.value):
            found.append(node.slice.value)
    return found


def test_nothing_but_settings_reads_the_environment_for_configuration():
    found = {}
    for package in ("worker", "dispatcher"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "worker" / "settings.py":
                continue
            reads = config_reads(path.read_text("utf-8"))
            if reads:
                found[str(path.relative_to(ROOT))] = reads
    assert found == {}
    # Positive control: each way of reading one is caught.
    assert sorted(config_reads('os.environ.get("FORGE_X", "")\nos.getenv("DAYTONA_Y")\n'
                               'os.environ["SENTRY_DSN"]\nconfig.env_int("FORGE_Z", 1)\n'
                               'os.environ.get("HOME")\n')) == \
        ["DAYTONA_Y", "FORGE_X", "FORGE_Z", "SENTRY_DSN"]


def test_values_go_through_placeholders_and_are_read_when_used(monkeypatch):
    monkeypatch.setenv("FORGE_SANDBOX_DIR", "your_sandbox_dir")
    assert settings.sandbox_dir is None  # a placeholder is unset
    monkeypatch.setenv("FORGE_SANDBOX_DIR", " /srv/boxes ")
    assert settings.sandbox_dir == "/srv/boxes"
    monkeypatch.setenv("FORGE_MAX_DEADLINE", "100")
    monkeypatch.setenv("FORGE_DAYTONA_SLOT_WAIT", "50")
    monkeypatch.delenv("FORGE_VISIBILITY_TIMEOUT", raising=False)
    assert settings.visibility_timeout == 450  # derived from the two above
    monkeypatch.setenv("FORGE_NO_CGROUPS", "yes")
    assert settings.no_cgroups is True
    monkeypatch.setenv("FORGE_STORE", "off")
    assert settings.store is False


@pytest.mark.parametrize("name, value, words", [
    ("FORGE_MAX_ATTEMPTS", "lots", "FORGE_MAX_ATTEMPTS='lots' is not a whole number"),
    ("FORGE_DAYTONA_MAX_SANDBOXES", "0", "FORGE_DAYTONA_MAX_SANDBOXES=0 must be at least 1"),
    ("FORGE_LOG_FORMAT", "xml", "FORGE_LOG_FORMAT='xml' is not a log format"),
    ("FORGE_METRICS_PORT", "70000", "FORGE_METRICS_PORT=70000 is not a TCP port"),
    ("SENTRY_DSN", "https://nokey.example/x", "SENTRY_DSN is not a Sentry DSN"),
])
def test_a_bad_value_is_refused_naming_the_variable(monkeypatch, name, value, words):
    monkeypatch.setenv(name, value)
    attr = next(v.attr for v in Settings.variables() if v.name == name)
    with pytest.raises(ConfigError, match=re.escape(words)):
        getattr(settings, attr)
