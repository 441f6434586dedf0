"""The sandbox environment builder: the allow-list, and never the worker's credentials."""

from __future__ import annotations

import pytest

from worker.config import FORBIDDEN_SANDBOX_ENV
from worker.sandbox.visible import build_env, candidate_env

WORKER = {
    "FORGE_TEST_ALLOWED": "allowed", "OPENAI_API_KEY": "sk-visible", "LANG": "C.UTF-8",
    "CELERY_BROKER_URL": "redis://:pw@redis:6379/0", "CELERY_CUSTOM_THING": "x",
    "HOME": "/root", "PATH": "/usr/bin", **{n: f"secret-{n}" for n in FORBIDDEN_SANDBOX_ENV},
}


def test_only_the_allow_list_passes():
    assert build_env(("FORGE_TEST_ALLOWED", "OPENAI_API_KEY", "NOT_SET"), WORKER) == {
        "FORGE_TEST_ALLOWED": "allowed", "OPENAI_API_KEY": "sk-visible"}
    assert build_env((), WORKER) == {}


@pytest.mark.parametrize("name", sorted(FORBIDDEN_SANDBOX_ENV | {"CELERY_CUSTOM_THING"}))
def test_the_worker_credentials_never_pass_even_when_allow_listed(name):
    assert build_env((name, "FORGE_TEST_ALLOWED"), WORKER) == {"FORGE_TEST_ALLOWED": "allowed"}


def test_the_forbidden_list_names_every_credential_of_the_compose_setup():
    assert {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_PASSWORD", "DAYTONA_API_KEY",
            "DISCORD_WEBHOOK_URL", "FLOWER_BASIC_AUTH", "POSTGRES_PASSWORD",
            "FORGE_DATABASE_URL", "FORGE_WEB_TOKEN"} <= FORBIDDEN_SANDBOX_ENV


@pytest.mark.parametrize("installer", [False, True])
def test_a_local_sandbox_environment_is_the_allow_list_plus_its_own(installer):
    allowed = build_env(("FORGE_TEST_ALLOWED", "PATH", "HOME"), WORKER)
    env = candidate_env(allowed, home="/sandbox", tmp="/tmp", python_env="/opt/python",
                        installer=installer)
    expected = {
        "FORGE_TEST_ALLOWED": "allowed",
        "PATH": "/opt/python/bin:/usr/local/bin:/usr/bin:/bin",  # ours, not the worker's
        "HOME": "/sandbox", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1",
    }
    if installer:
        expected["PYTHONPATH"] = "/opt/python/installer"
    assert env == expected
    assert "PYTHONPATH" not in allowed
