"""Configuration: .env loading, placeholders ignored, secrets redacted and kept out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.procs import ROOT
from worker import config
from worker.sandbox.visible import build_env


@pytest.mark.parametrize("value", [None, "", "  ", "your_api_key", "your-webhook-url",
                                   "<token>", "changeme", "xxxx"])
def test_placeholders_count_as_unset(value):
    assert config.is_placeholder(value)


def test_real_values_are_kept():
    assert not config.is_placeholder("dtn_1234567890abcdef")


def test_redact_url_hides_the_password_only():
    assert config.redact_url("redis://:hunter2@host:6379/0") == "redis://:***@host:6379/0"
    assert config.redact_url("redis://user:hunter2@host/1") == "redis://user:***@host/1"
    assert config.redact_url("redis://host:6379/0") == "redis://host:6379/0"


@pytest.mark.processes
def test_dotenv_is_loaded_and_placeholders_ignored(tmp_path):
    (tmp_path / ".env").write_text(
        "DAYTONA_API_KEY=your_daytona_api_key\nDISCORD_WEBHOOK_URL=http://127.0.0.1:9/hook\n"
        "DAYTONA_BASE_URL=http://127.0.0.1:1/api\n")
    code = ("from worker import config, is_daytona_configured;"
            "print(is_daytona_configured(), config.discord_webhook_url(),"
            " config.get_daytona_config()[1])")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "http://127.0.0.1:9/hook", "http://127.0.0.1:1/api"]


@pytest.mark.processes
def test_real_environment_wins_over_dotenv(tmp_path):
    (tmp_path / ".env").write_text("FORGE_ARTIFACTS_DIR=/from/dotenv\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "FORGE_ARTIFACTS_DIR": "/real"}
    out = subprocess.run([sys.executable, "-c", "from worker import config;"
                          "print(config.artifacts_dir())"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "/real"


def test_sandbox_environment_is_only_the_allow_list_and_never_our_secrets():
    source = {"OPENAI_API_KEY": "sk-1", "HOME": "/root", "DAYTONA_API_KEY": "dtn",
              "DISCORD_WEBHOOK_URL": "https://discord/x", "CELERY_BROKER_URL": "redis://:p@h"}
    allowed = ("OPENAI_API_KEY", "DAYTONA_API_KEY", "DISCORD_WEBHOOK_URL", "CELERY_BROKER_URL",
               "MISSING")
    assert build_env(allowed, source) == {"OPENAI_API_KEY": "sk-1"}


def test_bad_number_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("FORGE_DAYTONA_SLOT_WAIT", "lots")
    with pytest.raises(config.ConfigError,
                       match="FORGE_DAYTONA_SLOT_WAIT='lots' is not a whole"):
        config.daytona_slot_wait()
