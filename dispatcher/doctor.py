"""``forge doctor``: is this set-up ready to run competitions? One line per check.

Each line is ``✓`` or ``✗``, what was checked, and for a ``✗`` the fix. Exit 1 when a
*required* check fails, else 0. Required: whatever is configured, because it was
configured to be used (the broker and result backend when ``CELERY_BROKER_URL`` is set,
the run store unless ``FORGE_STORE=off``, Daytona when a key is set, the webhook when
set, Flower when ``FORGE_FLOWER_URL`` is set, the competitions file, every setting).
Optional: what the local sandbox uses when this machine has it (bubblewrap,
slirp4netns, cgroups; required with ``FORGE_REQUIRE_ISOLATION=1``) and the workers
answering (doctor may well run before they start); an optional ``✗`` says so.

Nothing here changes anything: Daytona is asked for a list (no sandbox is created),
the webhook is checked for its form (no request is sent), a missing SQLite store is
not created. Nothing secret is printed: URLs lose their passwords, keys and the webhook
are never shown, and every line goes through the same scrubber as Sentry's events.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dispatcher.manifest import ManifestError, load_manifest
from worker import config
from worker.observability.scrub import process_scrubber
from worker.sandbox.daytona import APP_LABEL
from worker.settings import settings

TIMEOUT = 5.0  # seconds per network check
WEBHOOK_FORM = re.compile(r"^https://(?:(?:ptb|canary)\.)?discord(?:app)?\.com/api"
                          r"(?:/v\d+)?/webhooks/\d{15,25}/[A-Za-z0-9_-]{20,}/?(?:\?.*)?$")
WEBHOOK_FIX = ("copy the URL from Discord (channel → Integrations → Webhooks → Copy "
               "Webhook URL): https://discord.com/api/webhooks/<id>/<token>")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def line(self) -> str:
        mark = "✓" if self.ok else "✗"
        name = self.name if self.required or self.ok else f"{self.name} (optional)"
        text = f"{mark} {name}: {self.detail}"
        if not self.ok and self.fix:
            text += f" — fix: {self.fix}"
        return text


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check this set-up: broker, store, sandboxes, Daytona, Discord...",
        description="Check the broker and result backend, the run store, bubblewrap, "
                    "slirp4netns and cgroups, Daytona (without creating a sandbox), the "
                    "Discord webhook's form, the competitions file, Flower and the "
                    "observability settings. One line per check, with the fix for each ✗; "
                    "exit 1 when a required check fails.")
    parser.set_defaults(func=cmd_doctor)


def _reason(exc: BaseException) -> str:
    """The root cause in one short line (a client's wrapper says little the cause does
    not, and at length)."""
    seen = {id(exc)}
    while True:
        inner = exc.__cause__
        if inner is None or id(inner) in seen:
            break
        seen.add(id(inner))
        exc = inner
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"^<[\w.]+ object at 0x[0-9a-f]+>: ", "", text)  # urllib3's prefix
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()`` with a deadline (a client without its own timeout must not hang doctor);
    raises TimeoutError past it, or what ``fn`` raised."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="forge-doctor-check")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {seconds:g}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- the checks ---------------------------------------------------------------------


def check_settings() -> Check:
    """Every setting parses (the app's numbers, log format, metrics port, budget)."""
    try:
        # start-up: the Celery app (and importing it is the check: it refuses bad values)
        import worker.app  # noqa: F401

        config.sentry_dsn()
        fmt = config.log_format()
        port = config.metrics_port()
        config.daytona_max_sandboxes()
        config.daytona_quota()
    except config.ConfigError as exc:
        return Check("settings", False, str(exc), "correct it in .env or the environment")
    metrics = f"metrics on :{port}/metrics" if port else "metrics off (FORGE_METRICS_PORT)"
    return Check("settings", True, f"all parse; logs {fmt}, {metrics}")


def check_broker() -> list[Check]:
    """The broker, with a connection of its own: the app's other settings (checked
    apart) need not be right for this to be told."""
    url = config.broker_url()
    if url is None:
        return [Check("broker", True, "none set: embedded mode (forge run starts its own "
                      "worker); set CELERY_BROKER_URL to run a cluster")]
    # start-up: Celery and kombu
    from celery import Celery
    from kombu import Connection

    shown = config.redact_url(url)
    try:
        with Connection(url, connect_timeout=TIMEOUT,
                        transport_options={"socket_connect_timeout": TIMEOUT,
                                           "socket_timeout": TIMEOUT}) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2,
                                   timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - kombu raises many kinds here
        return [Check("broker", False, f"cannot reach {shown} ({_reason(exc)})",
                      "start Redis there, or correct CELERY_BROKER_URL")]
    checks = [Check("broker", True, f"{shown} answers")]
    probe = Celery("forge-doctor", broker=url, set_as_current=False)
    try:
        replies = _within(TIMEOUT, lambda: probe.control.ping(timeout=1.0)) or []
        names = sorted(name for reply in replies for name in reply)
        problem = ""
    except Exception as exc:  # noqa: BLE001
        names, problem = [], _reason(exc)
    finally:
        probe.close()
    if names:
        checks.append(Check("workers", True, f"{len(names)} answer ({', '.join(names)})",
                            required=False))
    else:
        checks.append(Check("workers", False, f"none answered a ping{problem and ': '}"
                            f"{problem}", "start one: celery -A worker worker", required=False))
    return checks


def check_backend() -> Check:
    url = config.result_backend_url()
    if url is None:
        return Check("result backend", True, "in-process (embedded mode)")
    shown = config.redact_url(url)
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return Check("result backend", True, f"{shown} (not pinged: not Redis)")
    import redis  # start-up: redis-py

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT,
                                      socket_timeout=TIMEOUT)
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001
        return Check("result backend", False, f"cannot reach {shown} ({_reason(exc)})",
                     "start it, or correct CELERY_RESULT_BACKEND")
    return Check("result backend", True, f"{shown} answers")


def check_store() -> Check:
    if not config.store_enabled():
        return Check("store", True, "off (FORGE_STORE=off): runs live in run directories only")
    # start-up: SQLAlchemy
    from worker.store.db import current_revision, describe_error, parse_url, sqlite_path
    from worker.store.migrations import HEAD

    url = config.database_url()
    shown = config.redact_url(url)
    try:
        parsed = parse_url(url)
        path = sqlite_path(url)
    except config.ConfigError as exc:
        return Check("store", False, str(exc), "correct FORGE_DATABASE_URL")
    if path is not None and not path.is_file():
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK):
            return Check("store", False, f"{shown} does not exist and {parent} is not "
                         "writable", "set FORGE_ARTIFACTS_DIR to a writable directory")
        return Check("store", True, f"{shown} will be created by the first run")
    from sqlalchemy import create_engine  # start-up: SQLAlchemy

    args = {"timeout": TIMEOUT} if path is not None else {"connect_timeout": int(TIMEOUT)}
    engine = create_engine(parsed, connect_args=args)
    try:
        with engine.connect() as conn:
            revision = current_revision(conn)
    except Exception as exc:  # noqa: BLE001
        return Check("store", False, f"cannot read {shown} ({describe_error(exc, url)})",
                     "start the database, or correct FORGE_DATABASE_URL (unset: SQLite in "
                     "the artifacts directory)")
    finally:
        engine.dispose()
    if revision == HEAD:
        return Check("store", True, f"{shown} at schema {HEAD}")
    if revision is None:
        return Check("store", True, f"{shown} reachable, empty: its schema is made on first use")
    # start-up: Alembic
    from alembic.script import ScriptDirectory

    from worker.store.migrations import alembic_config

    with engine.connect() as conn:
        known = {s.revision for s in
                 ScriptDirectory.from_config(alembic_config(conn)).walk_revisions()}
    engine.dispose()
    if revision in known:
        return Check("store", True, f"{shown} at schema {revision}: upgraded to {HEAD} on "
                     "first use")
    return Check("store", False, f"{shown} is at schema {revision}, newer than this "
                 f"installation ({HEAD})", "upgrade Dream Foundry here")


def _isolation_required() -> bool:
    return settings.require_isolation


def check_sandbox_tools() -> list[Check]:
    # start-up: the local sandbox modules
    from worker.sandbox import netns
    from worker.sandbox.local import bwrap
    from worker.sandbox.local.bwrap import INSTALL_HINT

    required = _isolation_required()
    probe = bwrap.probe()
    checks = [Check("bubblewrap", probe.ok, f"works ({probe.bwrap}): candidates run "
                    "in their own namespaces" if probe.ok else
                    f"unusable ({probe.reason}): local candidates would run without "
                    "filesystem isolation", INSTALL_HINT, required)]
    slirp = netns.slirp4netns_path()
    checks.append(Check("slirp4netns", slirp is not None,
                        f"{slirp}: candidates get outbound-only networking" if slirp else
                        "missing (or no /dev/net/tun): candidates allowed the network "
                        "would share the worker's", INSTALL_HINT, required))
    return checks


def check_cgroups() -> Check:
    if settings.no_cgroups:
        return Check("cgroups", True, "off (FORGE_NO_CGROUPS=1): caps rely on rlimits",
                     required=False)
    from worker.sandbox.local.cgroups import controller_base  # start-up: sandbox modules

    found = [c for c in ("pids", "memory", "cpu") if controller_base(c)]
    if len(found) == 3:
        return Check("cgroups", True, "pids, memory and cpu writable: per-sandbox caps "
                     "and equal CPU shares", required=False)
    missing = sorted({"pids", "memory", "cpu"} - set(found))
    return Check("cgroups", False, f"{', '.join(missing)} not writable here: those caps "
                 "fall back to rlimits (no whole-sandbox memory cap or fair CPU)",
                 "run the worker as root, or delegate a writable cgroup to it",
                 required=False)


def check_daytona() -> Check:
    key, api_url = config.get_daytona_config()
    shown = config.redact_url(api_url)
    if key is None:
        return Check("daytona", True, "not configured: --daytona falls back to local "
                     "(set DAYTONA_API_KEY to use it)")
    try:
        import daytona as sdk  # start-up: the Daytona SDK
    except ImportError:
        return Check("daytona", False, "the daytona SDK is not installed", "pip install daytona")
    def count() -> int:
        client = sdk.Daytona(sdk.DaytonaConfig(api_key=key, api_url=api_url))
        found = client.list(sdk.ListSandboxesQuery(labels={APP_LABEL: "1"}))
        return sum(1 for s in found
                   if str(getattr(getattr(s, "state", None), "value", "")) != "destroyed")

    try:
        alive = _within(3 * TIMEOUT, count)
    except Exception as exc:  # noqa: BLE001 - any SDK/transport failure
        status = getattr(exc, "status_code", None)
        if status in (401, 403):
            return Check("daytona", False, f"{shown} refused the key (HTTP {status})",
                         "set DAYTONA_API_KEY to a valid key (Daytona dashboard → Keys)")
        return Check("daytona", False, f"cannot list sandboxes at {shown} "
                     f"({_reason(exc)})", "check DAYTONA_API_URL and the network")
    return Check("daytona", True, f"{shown} accepted the key; {alive} of our sandboxes "
                 "alive (none created by this check)")


def check_discord() -> Check:
    url = config.discord_webhook_url()
    if url is None:
        return Check("discord", True, "no webhook: winners are not posted (set "
                     "DISCORD_WEBHOOK_URL to post them)")
    if WEBHOOK_FORM.match(url):
        return Check("discord", True, "DISCORD_WEBHOOK_URL has a Discord webhook's form "
                     "(not called)")
    return Check("discord", False, "DISCORD_WEBHOOK_URL is not a Discord webhook URL "
                 "(https://discord.com/api/webhooks/<id>/<token>)", WEBHOOK_FIX)


def check_competitions() -> Check:
    # start-up: Celery (crontab arithmetic)
    from dispatcher.competitions import CompetitionsError, competitions_path, load_competitions

    try:
        source = competitions_path()
        comps = load_competitions()
        for comp in comps.values():
            load_manifest(comp.candidates)
    except (CompetitionsError, ManifestError) as exc:
        return Check("competitions", False, str(exc), "edit the file; 'forge competitions' "
                     "shows what beat would run")
    now = datetime.now(UTC)
    upcoming = [f"{name} at {comp.next_run(now):%Y-%m-%d %H:%M} UTC"
                for name, comp in comps.items() if comp.enabled]
    if not comps:
        return Check("competitions", True, f"{source}: no competitions (beat schedules none)")
    nxt = "; next: " + ", ".join(upcoming) if upcoming else "; all disabled"
    return Check("competitions", True, f"{source}: {len(comps)} competition(s){nxt}")


def check_flower() -> Check | None:
    url = config.flower_url()
    if url is None:
        return None
    shown = config.redact_url(url)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/healthcheck",
                             "", ""))
        with urllib.request.urlopen(health, timeout=TIMEOUT) as resp:
            body = resp.read(64).decode("utf-8", "replace").strip()
    except (OSError, ValueError) as exc:
        return Check("flower", False, f"{shown} does not answer ({_reason(exc)})",
                     "start Flower (celery -A worker flower), or correct FORGE_FLOWER_URL")
    if body != "OK":
        return Check("flower", False, f"{shown}/healthcheck answered {body[:40]!r}, not OK",
                     "point FORGE_FLOWER_URL at Flower's base URL")
    return Check("flower", True, f"{shown} answers its health check")


def check_sentry() -> Check:
    try:
        dsn = config.sentry_dsn()
    except config.ConfigError as exc:
        return Check("sentry", False, str(exc), "correct SENTRY_DSN, or unset it")
    if dsn is None:
        return Check("sentry", True, "off: errors are not reported (set SENTRY_DSN)")
    parts = urlsplit(dsn)
    project = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return Check("sentry", True, f"events go to {parts.hostname}, project {project}")


CHECKS: list[Callable[[], Check | list[Check] | None]] = [
    check_settings, check_broker, check_backend, check_store, check_sandbox_tools,
    check_cgroups, check_daytona, check_discord, check_competitions, check_flower,
    check_sentry,
]


def _name(check: Callable) -> str:
    return {"check_backend": "result backend", "check_sandbox_tools": "sandbox tools"}.get(
        check.__name__, check.__name__.removeprefix("check_"))


def run_checks() -> list[Check]:
    results: list[Check] = []
    for check in CHECKS:
        try:
            found = check()
        except config.ConfigError as exc:  # a setting it needs (reported by settings too)
            found = Check(_name(check), False, str(exc),
                          "correct it in .env or the environment")
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the rest
            found = Check(_name(check), False,
                          f"the check itself failed ({_reason(exc)})",
                          "report this as a bug")
        if found is None:
            continue
        results.extend(found if isinstance(found, list) else [found])
    return results


def cmd_doctor(args: argparse.Namespace) -> int:
    scrub = process_scrubber().scrub
    results = run_checks()
    for check in results:
        print(scrub(check.line()), flush=True)
    failed = [c for c in results if not c.ok and c.required]
    if failed:
        print(scrub(f"{len(failed)} required check(s) failed: "
                    + ", ".join(c.name for c in failed)), file=sys.stderr)
        return 1
    return 0
