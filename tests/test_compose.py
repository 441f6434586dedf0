"""docker-compose.yml, the Dockerfile and .env.example, checked without a Docker engine.

What can be proved here is: the services, volumes, health checks and environment are
what the deployment needs, every command line names a real Celery/Flower command with
options that exist (run with ``--help`` in this virtualenv), every variable the code reads
is documented, and the Dockerfile copies files that exist and are not docker-ignored.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from tests.procs import ROOT, forge_env

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
VAR_REF = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?([-?])([^}]*))?\}")


def env_example_values() -> dict[str, str]:
    """Every variable .env.example lists (set or commented out) with its example value."""
    values = {}
    for line in ENV_EXAMPLE.splitlines():
        m = re.match(r"^#?\s*([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2)
    return values


def interpolate(text: str) -> str:
    """Compose's interpolation, with .env.example as the .env."""
    example = env_example_values()

    def sub(m: re.Match) -> str:
        name, kind, arg = m.groups()
        if example.get(name):
            return example[name]
        assert kind == "-", f"${{{name}}} has no default and no value in .env.example"
        return arg

    return VAR_REF.sub(sub, text).replace("$$", "$")


def argv(command) -> list[str]:
    parts = command if isinstance(command, list) else shlex.split(command)
    return [interpolate(str(p)) for p in parts]


def celery_help(args: list[str]) -> str:
    """``celery <subcommand ...> --help`` in this virtualenv, the app loaded from -A worker."""
    assert args[:3] == ["celery", "-A", "worker"], args
    sub = [a for a in args[3:] if not a.startswith("-")]
    extra = ["--", "--help"] if sub == ["flower"] else ["--help"]  # flower: tornado options
    env = forge_env("redis://127.0.0.1:1/0", ROOT / "artifacts")
    done = subprocess.run([sys.executable, "-m", "celery", "-A", "worker", *sub, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def check_options(args: list[str], help_text: str) -> None:
    options = [a.split("=", 1)[0] for a in args[3:] if a.startswith("-")]
    for opt in options:
        assert re.search(rf"(^|[\s,]){re.escape(opt)}\b", help_text), (opt, help_text[:3000])


def test_services_and_volumes():
    assert set(SERVICES) == {"redis", "postgres", "worker", "beat", "flower", "web",
                             "prometheus"}
    declared = set(COMPOSE["volumes"])
    for name, svc in SERVICES.items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("./"):  # a file of the repository, read-only
                assert (ROOT / source).is_file() and mount.endswith(":ro"), (name, mount)
                continue
            assert source in declared, (name, mount)
        assert "container_name" not in svc, name  # would stop --scale
    assert declared == {"redis-data", "postgres-data", "artifacts", "beat-state",
                        "flower-state", "prometheus-data"}
    # Prometheus is optional (a profile) and, like Flower, published on loopback only.
    prom = SERVICES["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    assert all(interpolate(p).startswith("127.0.0.1:") for p in prom["ports"])


def test_redis_is_durable_authenticated_and_health_checked():
    redis = SERVICES["redis"]
    assert redis["image"] == "redis:7"
    cmd = argv(redis["command"])
    assert cmd[0] == "redis-server"
    pairs = dict(zip(cmd[1::2], cmd[2::2], strict=True))
    assert pairs["--appendonly"] == "yes"
    assert pairs["--maxmemory-policy"] == "noeviction"
    assert pairs["--requirepass"] == env_example_values()["REDIS_PASSWORD"]
    assert "${REDIS_PASSWORD" in str(redis["command"])
    assert any(v.endswith(":/data") for v in redis["volumes"])
    test = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in test and "ping" in test and "$$REDIS_PASSWORD" in test
    assert "REDIS_PASSWORD" in redis["environment"]
    assert all(p.startswith("127.0.0.1:") for p in redis.get("ports", []))


def test_celery_services_share_broker_and_artifacts():
    for name in ("worker", "beat", "flower", "web"):
        env = SERVICES[name]["environment"]
        for key in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
            assert env[key].startswith("redis://:${REDIS_PASSWORD") and "@redis:6379/" in env[key]
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert SERVICES[name]["build"] == "."
    worker = SERVICES["worker"]
    artifacts = worker["environment"]["FORGE_ARTIFACTS_DIR"]
    assert f"artifacts:{artifacts}" in worker["volumes"]
    # Secrets for candidates and Discord go to workers only.
    assert {"path": ".env", "required": False} in worker["env_file"]
    assert "env_file" not in SERVICES["beat"] and "env_file" not in SERVICES["flower"]
    assert "env_file" not in SERVICES["web"]


def test_postgres_is_the_run_store_of_workers_and_beat():
    """A durable, health-checked PostgreSQL; workers and beat reach it through one
    FORGE_DATABASE_URL the store accepts, whose credentials are the server's own."""
    from worker.store.db import parse_url

    pg = SERVICES["postgres"]
    assert pg["image"].startswith("postgres:")
    env = pg["environment"]
    assert env["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert all(p.startswith("127.0.0.1:") for p in pg.get("ports", []))
    password = env_example_values()["POSTGRES_PASSWORD"]
    for name in ("worker", "beat", "web"):
        svc = SERVICES[name]
        url = parse_url(interpolate(svc["environment"]["FORGE_DATABASE_URL"]))
        assert (url.get_backend_name(), url.get_driver_name()) == ("postgresql", "psycopg")
        assert (url.host, url.port, url.username, url.password, url.database) == \
            ("postgres", 5432, env["POSTGRES_USER"], password, env["POSTGRES_DB"])
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
    # The database password reaches only the services that use the store.
    assert "FORGE_DATABASE_URL" not in SERVICES["flower"]["environment"]
    local = parse_url(env_example_values()["FORGE_DATABASE_URL"])
    assert (local.host, local.port, local.password) == \
        ("127.0.0.1", int(env_example_values()["POSTGRES_PORT"]), password)


def test_worker_scales_shuts_down_softly_and_can_run_bubblewrap():
    worker = SERVICES["worker"]
    cmd = argv(worker["command"])
    assert cmd[:4] == ["celery", "-A", "worker", "worker"]
    assert "--concurrency=${FORGE_WORKER_CONCURRENCY:-2}" in worker["command"]
    assert "--pool=${FORGE_WORKER_POOL:-prefork}" in worker["command"]
    assert "ports" not in worker  # a fixed host port would stop --scale worker=N
    assert {"seccomp=unconfined", "apparmor=unconfined",
            "systempaths=unconfined"} <= set(worker["security_opt"])
    assert worker["environment"]["REMAP_SIGTERM"] == "SIGQUIT"
    grace = int(worker["stop_grace_period"].rstrip("s"))
    soft = int(interpolate(worker["environment"]["FORGE_SOFT_SHUTDOWN_TIMEOUT"]))
    assert grace > soft
    test = " ".join(worker["healthcheck"]["test"])
    assert "celery -A worker inspect ping -d celery@$$HOSTNAME" in test


def test_exactly_one_beat_with_state_on_a_volume():
    beat = SERVICES["beat"]
    assert beat["deploy"]["replicas"] == 1
    state = beat["environment"]["FORGE_BEAT_SCHEDULE"]
    assert any(state.startswith(v.split(":")[1] + "/") for v in beat["volumes"])
    assert argv(beat["command"]) == ["celery", "-A", "worker", "beat", "--loglevel=INFO"]


def test_flower_has_basic_auth_persistent_state_and_port():
    flower = SERVICES["flower"]
    cmd = argv(flower["command"])
    assert cmd[:4] == ["celery", "-A", "worker", "flower"]
    assert "--persistent=True" in cmd and "--port=5555" in cmd
    db = next(a.split("=", 1)[1] for a in cmd if a.startswith("--db="))
    assert any(db.startswith(v.split(":")[1] + "/") for v in flower["volumes"])
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert interpolate(flower["ports"][0]).endswith(":5555")


def test_flower_is_published_on_loopback_by_default():
    """Basic auth does not cover Flower's /metrics: by default only this host reaches it."""
    (published,) = SERVICES["flower"]["ports"]
    assert published.startswith("${FLOWER_BIND:-127.0.0.1}:")
    assert interpolate(published) == "127.0.0.1:5555:5555"  # with .env.example's values


@pytest.mark.processes
@pytest.mark.parametrize("service", ["worker", "beat", "flower"])
def test_every_command_line_exists_with_its_options(service):
    cmd = argv(SERVICES[service]["command"])
    help_text = celery_help(cmd)
    check_options(cmd, help_text)
    if service == "worker":
        pool = next(a.split("=", 1)[1] for a in cmd if a.startswith("--pool="))
        assert pool in help_text
    if service == "flower":  # set through the environment: the option must exist
        assert "--basic-auth" in help_text


def forge_help(args: list[str]) -> str:
    """``forge <subcommand> --help`` in this virtualenv."""
    assert args[0] == "forge", args
    env = forge_env(None, ROOT / "artifacts")
    done = subprocess.run([sys.executable, "-m", "dispatcher.cli", args[1], "--help"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.processes
def test_web_serves_the_store_on_loopback_by_default_with_a_token():
    """The dashboard binds 0.0.0.0 in its container, which `forge web` allows only with
    FORGE_WEB_TOKEN: compose requires it, .env.example's is a placeholder (so an
    unchanged copy is refused, not served with a known token), and the host sees it on
    127.0.0.1 unless FORGE_WEB_BIND says otherwise."""
    from dispatcher.web.settings import check_bind
    from worker.config import ConfigError, is_placeholder

    web = SERVICES["web"]
    cmd = argv(web["command"])
    assert cmd == ["forge", "web", "--host", "0.0.0.0", "--port", "8000"]
    check_options(["forge", "web", "x", *cmd[2:]], forge_help(cmd))
    env = web["environment"]
    assert env["FORGE_WEB_TOKEN"].startswith("${FORGE_WEB_TOKEN:?")
    assert is_placeholder(env_example_values()["FORGE_WEB_TOKEN"])
    with pytest.raises(ConfigError):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "a-real-token-of-32-characters-xx")  # with one: allowed
    # The store of workers and beat, the broker for live state and starting runs.
    assert env["FORGE_DATABASE_URL"] == SERVICES["worker"]["environment"]["FORGE_DATABASE_URL"]
    assert env["CELERY_BROKER_URL"] == SERVICES["worker"]["environment"]["CELERY_BROKER_URL"]
    assert web["depends_on"]["postgres"]["condition"] == "service_healthy"
    (published,) = web["ports"]
    assert published.startswith("${FORGE_WEB_BIND:-127.0.0.1}:")
    assert interpolate(published) == "127.0.0.1:8000:8000"
    assert interpolate(published).rsplit(":", 1)[1] == cmd[cmd.index("--port") + 1]
    assert "/healthz" in " ".join(web["healthcheck"]["test"])
    assert "8000" in " ".join(web["healthcheck"]["test"])
    assert interpolate(env["FORGE_FLOWER_URL"]).startswith("http://127.0.0.1:")
    # Re-posting writes the run directory's discord.json: the workers' volume.
    artifacts = SERVICES["worker"]["environment"]["FORGE_ARTIFACTS_DIR"]
    assert f"artifacts:{artifacts}" in web["volumes"]
    assert env["FORGE_ARTIFACTS_DIR"] == artifacts


@pytest.mark.processes
def test_the_worker_health_check_command_exists():
    test = SERVICES["worker"]["healthcheck"]["test"]
    cmd = argv(test[1]) if test[0] == "CMD-SHELL" else argv(test[1:])
    assert cmd[:5] == ["celery", "-A", "worker", "inspect", "ping"]
    check_options(cmd, celery_help(cmd))


def test_env_example_lists_every_variable_the_project_reads():
    listed = env_example_values()
    code = "\n".join(p.read_text() for d in ("worker", "dispatcher")
                     for p in (ROOT / d).rglob("*.py"))
    # Any helper's reader (env, env_int, os.environ, _truthy...): every quoted name with
    # one of the project's prefixes.
    read = set(re.findall(r"[\"']((?:FORGE|CELERY|DAYTONA|DISCORD|FLOWER|REDIS)_[A-Z0-9_]+)"
                          r"[\"']", code))
    read |= set(re.findall(r"environ(?:\.get)?[\[(]\s*\"([A-Z_][A-Z0-9_]*)\"", code))
    read |= {m.group(1) for m in VAR_REF.finditer((ROOT / "docker-compose.yml").read_text())}
    assert "CELERY_BROKER_URL" in read and "FORGE_SCHEDULE_GRACE" in read
    assert sorted(read - set(listed)) == []
    lines = ENV_EXAMPLE.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^#?\s*([A-Z_][A-Z0-9_]*)=", line)
        if m:  # each variable has its own comment right above it
            above = lines[i - 1]
            assert above.startswith("# ") and not re.match(r"^#\s*[A-Z_]+=", above), line


def dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p)
               for p in patterns)


def test_dockerfile_copies_real_files_and_installs_the_sandbox_tools():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    copies = re.findall(r"^COPY\s+(.+)$", text, re.MULTILINE)
    assert copies
    copied = []
    for line in copies:
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), src
            assert not dockerignored(src), src
            copied.append(src)
    # What the image runs is in it: the code, the manifest forge.toml points at.
    assert {"pyproject.toml", "worker", "dispatcher", "candidates", "forge.toml"} <= set(copied)
    assert "README.md" in copied  # pyproject's readme: pip install needs it
    run = " ".join(re.findall(r"^RUN\s+((?:.*\\\n)*.*)$", text, re.MULTILINE))
    assert re.search(r"apt-get install .*bubblewrap", run) and "slirp4netns" in run
    assert "pip install -e ." in run
    assert "ENV FORGE_ARTIFACTS_DIR=/data/artifacts" in text.replace("\\\n", "")
    assert "FORGE_COMPETITIONS=/app/forge.toml" in text
    # The compose paths exist in the image, owned by the user that runs.
    assert "mkdir -p /data/artifacts /data/beat /data/flower" in text
    assert re.search(r"^USER forge$", text, re.MULTILINE)


def test_dockerignore_keeps_secrets_and_local_state_out():
    for path in (".env", ".venv", ".git", "artifacts", "celerybeat-schedule.db"):
        assert dockerignored(path), path
    for path in ("worker/app.py", "forge.toml", "candidates/candidates.toml"):
        assert not dockerignored(path), path


def test_the_compose_competitions_file_resolves_in_the_image_layout():
    # /app/forge.toml is the repository's forge.toml, and its manifest path is relative.
    env = SERVICES["worker"]["environment"]
    assert env["FORGE_COMPETITIONS"] == "/app/forge.toml"
    from dispatcher.competitions import load_competitions

    comps = load_competitions(ROOT / "forge.toml")
    for comp in comps.values():
        rel = comp.candidates.relative_to(ROOT)
        assert not dockerignored(str(rel)) and (ROOT / rel).is_file()

