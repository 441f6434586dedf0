"""A loopback emulator of the Daytona API, for running the real ``daytona`` SDK in tests.

It speaks exactly the wire protocol in ``/work/shared/daytona-api.md``: the control
plane under ``/api`` and the toolbox under ``/toolbox/{id}``. Each sandbox is a
temporary directory (that directory *is* the sandbox's work dir, so paths need no
rewriting and argv reaches the process byte for byte); each exec is a real
``bash -c`` process in its own process group, killed whole at its deadline.

Faults are injectable (constructor, ``set_faults`` or ``POST /_admin/faults``) and
every call is recorded, so tests can check that each sandbox was deleted and that the
API key never reached a sandbox. Run standalone::

    python tests/daytona_emulator.py --port 3986 --create-latency 0.3 --quota-cpu 20

At account scale it models what the real service does (daytona-api.md): the
organisation's CPU / memory / disk quotas (a create past one answers 403 with Daytona's
message; stopped sandboxes still hold disk), a create rate limit (429 with Retry-After),
sandboxes stuck in creating or in deleting ("destroying"), snapshots built from a
declared image (``POST /api/snapshots``; every build is counted) and the resources a
sandbox gets from its snapshot. It records the peak number of sandboxes alive at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_KEY = "test-key-emulator"
EXEC_OUTPUT_CAP = 8 * 1024 * 1024  # the emulator keeps the tail, like a bounded daemon


@dataclass
class Faults:
    """What should go wrong. Counters are consumed as the matching calls arrive."""

    create_latency: float = 0.0  # seconds the POST /sandbox takes
    start_delay: float = 0.0  # seconds a new sandbox reports "starting" before "started"
    rate_limit_creates: int = 0  # the next K creates answer 429
    retry_after: float | None = None  # Retry-After header on those 429s
    unavailable_creates: int = 0  # the next K creates answer 503
    fail_creates: int = 0  # the next K creates answer 500
    never_start: int = 0  # the next K sandboxes stay "creating" forever
    error_start: int = 0  # the next K sandboxes go to state "error" instead of starting
    fail_deletes: int = 0  # the next K deletes answer 500 (-1: every delete)
    exec_delay: float = 0.0  # seconds before each exec starts (slow daemon)
    exec_timeout_cap: int | None = None  # kill every exec after at most this many seconds
    exec_misses_deadline: bool = False  # the daemon neither kills nor answers at the deadline
    fail_execs: int = 0  # the next K execs answer 500 (the daemon failed, not the command)
    fail_lists: int = 0  # the next K list calls answer 500 (-1: every list)
    # The organisation's quotas (None: unlimited): a create that would take the live
    # sandboxes past one answers 403 "Total CPU quota exceeded. Maximum allowed: N".
    quota_cpu: int | None = None
    quota_memory: int | None = None
    quota_disk: int | None = None
    quota_message_old: bool = False  # the older servers' "(11 > 10)" shape
    create_rate_limit: int = 0  # at most K creates per create_rate_window s, then 429
    create_rate_window: float = 1.0
    stuck_deletes: int = 0  # the next K deleted sandboxes stay "destroying" (-1: every one)
    delete_delay: float = 0.0  # seconds a deleted sandbox stays "destroying"
    build_delay: float = 0.0  # seconds a snapshot takes to build
    fail_builds: int = 0  # the next K snapshot builds end in "build_failed"

    def update(self, data: dict[str, Any]) -> None:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        for key, value in data.items():
            setattr(self, key, value)


@dataclass
class EmuSandbox:
    id: str
    root: str
    labels: dict[str, str]
    env: dict[str, str]
    body: dict[str, Any]
    created_at: str
    ready_at: float
    state: str = "creating"
    never_starts: bool = False
    fails: bool = False
    procs: set[int] = field(default_factory=set)
    cpu: int = 1
    memory: int = 1
    disk: int = 3
    destroy_at: float | None = None  # "destroying" until then (inf: stuck)
    python_env: str = ""  # the sandbox's own python3 environment (bin/ first on PATH)

    def current_state(self) -> str:
        if self.state == "creating" and not self.never_starts:
            if time.monotonic() < self.ready_at:
                return "starting"
            self.state = "error" if self.fails else "started"
        return self.state


@dataclass
class EmuSnapshot:
    id: str
    name: str
    body: dict[str, Any]
    created_at: str
    ready_at: float
    cpu: int = 1
    memory: int = 1
    disk: int = 3
    fails: bool = False
    state: str = "building"

    def current_state(self) -> str:
        if self.state == "building" and time.monotonic() >= self.ready_at:
            self.state = "build_failed" if self.fails else "active"
        return self.state


# Sandbox states holding vCPU and memory quota; every state but archived holds disk.
RUNNING_STATES = frozenset({"creating", "starting", "started", "destroying", "error"})


def _iso(ts: float | None = None) -> str:
    when = datetime.fromtimestamp(ts if ts is not None else time.time(), UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class DaytonaEmulator:
    """The emulated service. ``url`` is what goes into ``DAYTONA_API_URL``."""

    def __init__(self, api_key: str = DEFAULT_KEY, host: str = "127.0.0.1", port: int = 0,
                 **faults: Any):
        self.api_key = api_key
        self.host = host
        self.port = port
        self.faults = Faults()
        self.faults.update(faults)
        self.lock = threading.RLock()
        self.sandboxes: dict[str, EmuSandbox] = {}
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.exec_envs: list[dict[str, str]] = []  # the full env each process started with
        self.uploads: list[tuple[str, str, bytes]] = []  # (sandbox id, path, content)
        self.auth_failures = 0
        self.snapshots: dict[str, EmuSnapshot] = {}  # by name
        self.builds: list[str] = []  # snapshot names, one entry per build started
        self.peak_alive = 0  # most sandboxes alive (not destroyed) at once
        self.refused: list[int] = []  # statuses of refused creates (403 quota, 429)
        self._create_times: list[float] = []
        self.counted_from = 0  # /_admin/counters counts creates from here
        self._live: dict[str, EmuSandbox] = {}  # not destroyed (what quotas and peak count)
        self._destroying: set[str] = set()
        # Cleared by hold_execs(): every exec waits before it starts (a test's barrier).
        self._execs_open = threading.Event()
        self._execs_open.set()
        self._base = tempfile.mkdtemp(prefix="daytona-emu-")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life of the server -------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def toolbox_url(self) -> str:
        return f"http://{self.host}:{self.port}/toolbox"

    def start(self) -> DaytonaEmulator:
        emulator = self

        class Handler(_Handler):
            emu = emulator

        self._server = _Server((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="daytona-emu",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._execs_open.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self.lock:
            for sandbox in self.sandboxes.values():
                self._kill_all(sandbox)
        shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> DaytonaEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test helpers -----------------------------------------------------------------

    def set_faults(self, **faults: Any) -> None:
        with self.lock:
            self.faults.update(faults)

    def hold_execs(self) -> None:
        """From now on, every exec waits before its process starts, until release_execs():
        sandboxes stay alive (and their budget slots held) for as long as a test needs."""
        self._execs_open.clear()

    def release_execs(self) -> None:
        self._execs_open.set()

    def reset_faults(self) -> None:
        with self.lock:
            self.faults = Faults()

    def alive(self) -> list[str]:
        """Ids of sandboxes created and not deleted."""
        with self.lock:
            return list(self._live)

    def leaked(self) -> list[str]:
        return [i for i in self.created if i not in self.deleted]

    def stop_sandbox(self, sandbox_id: str) -> None:
        """What auto-stop does: the sandbox runs nothing but still holds disk quota."""
        with self.lock:
            sandbox = self.sandboxes[sandbox_id]
            sandbox.state = "stopped"
        self._kill_all(sandbox)

    def finish_deletes(self) -> list[str]:
        """Let every sandbox stuck in "destroying" finish; their ids."""
        with self.lock:
            stuck = [self.sandboxes[i] for i in self._destroying]
            for sandbox in stuck:
                sandbox.destroy_at = 0.0
            self.settle()
        return [s.id for s in stuck]

    def usage(self) -> dict[str, int]:
        """vCPU, memory and disk the live sandboxes hold against the quotas."""
        with self.lock:
            self.settle()
            live = list(self._live.values())
            running = [s for s in live if s.current_state() in RUNNING_STATES]
            return {"cpu": sum(s.cpu for s in running), "memory": sum(s.memory for s in running),
                    "disk": sum(s.disk for s in live if s.state != "archived"),
                    "sandboxes": len(live)}

    def settle(self) -> None:
        """Deletions whose time has come finish (called under the lock on every request)."""
        now = time.monotonic()
        for sid in [i for i in self._destroying if (self.sandboxes[i].destroy_at or 0) <= now]:
            self._finish_destroy(self.sandboxes[sid])

    def age(self, sandbox_id: str, seconds: float) -> None:
        """Pretend a sandbox was created ``seconds`` ago (for reaper tests)."""
        with self.lock:
            self.sandboxes[sandbox_id].created_at = _iso(time.time() - seconds)

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {
                "created": list(self.created),
                "deleted": list(self.deleted),
                "alive": self.alive(),
                "auth_failures": self.auth_failures,
                "calls": list(self.calls),
                "exec_envs": list(self.exec_envs),
                "faults": dataclasses.asdict(self.faults),
                "peak_alive": self.peak_alive,
                "refused": list(self.refused),
                "builds": list(self.builds),
            }

    def record(self, method: str, path: str, status: int, **summary: Any) -> None:
        with self.lock:
            self.calls.append({"t": time.time(), "method": method, "path": path,
                               "status": status, **summary})

    # -- sandboxes --------------------------------------------------------------------

    def sandbox_json(self, s: EmuSandbox) -> dict[str, Any]:
        return {
            "id": s.id, "organizationId": "org-emulator", "name": s.id, "user": "daytona",
            "env": s.env, "labels": s.labels, "public": False,
            "networkBlockAll": bool(s.body.get("networkBlockAll", False)), "kvm": False,
            "networkAllowList": s.body.get("networkAllowList"),
            "target": "emu", "cpu": s.cpu, "gpu": 0, "memory": s.memory, "disk": s.disk,
            "snapshot": s.body.get("snapshot"),
            "state": s.current_state(), "toolboxProxyUrl": self.toolbox_url,
            "autoStopInterval": s.body.get("autoStopInterval"),
            "autoDeleteInterval": s.body.get("autoDeleteInterval"),
            "createdAt": s.created_at, "updatedAt": s.created_at,
            "errorReason": "emulated start failure" if s.state == "error" else None,
        }

    def quota_refusal(self, size: tuple[int, int, int]) -> str | None:
        """Daytona's 403 message when a sandbox of ``size`` would pass a quota (locked)."""
        f = self.faults
        used = self.usage()
        for name, want, have, quota in (("CPU", size[0], used["cpu"], f.quota_cpu),
                                         ("memory", size[1], used["memory"], f.quota_memory),
                                         ("disk", size[2], used["disk"], f.quota_disk)):
            if quota is not None and have + want > quota:
                if f.quota_message_old:
                    return f"Total {name} quota exceeded ({have + want} > {quota})"
                return f"Total {name} quota exceeded. Maximum allowed: {quota}"
        return None

    def rate_limited(self) -> float | None:
        """Seconds until a create is allowed again, when the rate limit is hit (locked)."""
        f = self.faults
        if not f.create_rate_limit:
            return None
        now = time.monotonic()
        self._create_times = [t for t in self._create_times if t > now - f.create_rate_window]
        if len(self._create_times) >= f.create_rate_limit:
            return self._create_times[0] + f.create_rate_window - now
        self._create_times.append(now)
        return None

    def new_snapshot(self, body: dict[str, Any]) -> EmuSnapshot | None:
        """A build of ``body`` (CreateSnapshot); None when the name exists (locked)."""
        name = body.get("name") or ""
        if name in self.snapshots:
            return None
        fails = self.faults.fail_builds > 0
        if fails:
            self.faults.fail_builds -= 1
        snap = EmuSnapshot(id=str(uuid.uuid4()), name=name, body=body, created_at=_iso(),
                           ready_at=time.monotonic() + self.faults.build_delay,
                           cpu=body.get("cpu") or 1, memory=body.get("memory") or 1,
                           disk=body.get("disk") or 3, fails=fails)
        self.snapshots[name] = snap
        self.builds.append(name)
        return snap

    def find_snapshot(self, key: str) -> EmuSnapshot | None:
        with self.lock:
            return self.snapshots.get(key) or next(
                (s for s in self.snapshots.values() if s.id == key), None)

    def snapshot_json(self, s: EmuSnapshot) -> dict[str, Any]:
        return {"id": s.id, "organizationId": "org-emulator", "general": False, "name": s.name,
                "imageName": s.body.get("imageName"), "state": s.current_state(),
                "size": None, "entrypoint": None, "cpu": s.cpu, "gpu": 0, "mem": s.memory,
                "disk": s.disk, "errorReason": "emulated build failure" if s.fails else None,
                "createdAt": s.created_at, "updatedAt": s.created_at, "lastUsedAt": None,
                "sourceSandboxId": None}

    def new_sandbox(self, body: dict[str, Any], size: tuple[int, int, int] = (1, 1, 3)
                    ) -> EmuSandbox:
        sid = str(uuid.uuid4())
        root = os.path.join(self._base, sid)
        os.mkdir(root, 0o700)
        python_env = _python_env(os.path.join(self._base, f"{sid}-python"))
        with self.lock:
            never = self.faults.never_start > 0
            if never:
                self.faults.never_start -= 1
            fails = not never and self.faults.error_start > 0
            if fails:
                self.faults.error_start -= 1
            sandbox = EmuSandbox(
                id=sid, root=root, labels=dict(body.get("labels") or {}),
                env=dict(body.get("env") or {}), body=body, created_at=_iso(),
                ready_at=time.monotonic() + self.faults.start_delay,
                never_starts=never, fails=fails, cpu=size[0], memory=size[1], disk=size[2],
                python_env=python_env,
            )
            self.sandboxes[sid] = sandbox
            self._live[sid] = sandbox
            self.created.append(sid)
            self.peak_alive = max(self.peak_alive, len(self._live))
        return sandbox

    def destroy(self, sandbox: EmuSandbox) -> None:
        """A delete: at once, or "destroying" for delete_delay (forever when stuck)."""
        with self.lock:
            f = self.faults
            stuck = f.stuck_deletes != 0
            if f.stuck_deletes > 0:
                f.stuck_deletes -= 1
            if stuck or f.delete_delay:
                sandbox.state = "destroying"
                sandbox.destroy_at = (float("inf") if stuck
                                      else time.monotonic() + f.delete_delay)
                self._destroying.add(sandbox.id)
                self._kill_all(sandbox)  # its processes stop; its quota is held until done
                return
            self._finish_destroy(sandbox)

    def _finish_destroy(self, sandbox: EmuSandbox) -> None:
        with self.lock:
            sandbox.state = "destroyed"
            self.deleted.append(sandbox.id)
            self._live.pop(sandbox.id, None)
            self._destroying.discard(sandbox.id)
        self._kill_all(sandbox)
        shutil.rmtree(sandbox.root, ignore_errors=True)
        shutil.rmtree(sandbox.python_env, ignore_errors=True)

    @staticmethod
    def _kill_all(sandbox: EmuSandbox) -> None:
        for pgid in list(sandbox.procs):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def resolve(self, sandbox: EmuSandbox, path: str) -> str:
        """A sandbox path on the host; relative paths start at the work dir."""
        real = os.path.normpath(os.path.join(sandbox.root, path))
        if os.path.commonpath([real, sandbox.root]) != sandbox.root:
            raise PermissionError(f"{path!r} is outside the sandbox")
        return real

    def run(self, sandbox: EmuSandbox, command: str, cwd: str | None, envs: dict[str, str],
            timeout: int | None) -> tuple[int | None, str]:
        """Run ``bash -c command``; ``(None, output)`` when killed at the deadline."""
        self._execs_open.wait()
        if self.faults.exec_delay:
            time.sleep(self.faults.exec_delay)
        env = {
            "PATH": f"{sandbox.python_env}/bin:{SYSTEM_PATH}",
            "HOME": sandbox.root,
            "TMPDIR": sandbox.root,
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            **sandbox.env,
            **envs,
        }
        with self.lock:
            self.exec_envs.append(dict(env))
        cap = self.faults.exec_timeout_cap
        deadline = timeout if timeout else None
        if cap is not None:
            deadline = min(deadline or cap, cap)
        if self.faults.exec_misses_deadline:
            deadline = None  # runs on until it ends, or its sandbox is deleted
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=self.resolve(sandbox, cwd or sandbox.root), env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
        sandbox.procs.add(proc.pid)
        chunks: list[bytes] = []

        def drain() -> None:
            size = 0
            assert proc.stdout is not None
            while data := proc.stdout.read1(65536):
                chunks.append(data)
                size += len(data)
                while size > EXEC_OUTPUT_CAP and len(chunks) > 1:
                    size -= len(chunks.pop(0))

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        # A timer kills the group at the deadline while this thread blocks in wait():
        # Popen.wait(timeout=...) polls with sleeps of up to 50 ms, which a real daemon
        # does not add to every command.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

        timer = threading.Timer(deadline, expire) if deadline else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            timed_out = expired.is_set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group, stragglers included
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            sandbox.procs.discard(proc.pid)
        reader.join(timeout=5)
        output = b"".join(chunks).decode("utf-8", errors="replace")
        return (None if timed_out else proc.returncode), output


SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


@functools.lru_cache(maxsize=1)
def _system_python() -> tuple[str, str]:
    """(the python3 a sandbox's PATH finds, its version)."""
    python = os.path.realpath(shutil.which("python3", path=SYSTEM_PATH) or sys.executable)
    version = subprocess.run(
        [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
        capture_output=True, text=True, check=True).stdout.strip()
    return python, version


def _python_env(path: str) -> str:
    """A virtual environment over the system's python3 (a venv's layout, made by hand:
    ``python3 -m venv`` takes a process and ~50 ms per sandbox). Its packages, pip
    included, are visible; ``pip install`` writes into the environment's own
    site-packages, never the system's."""
    python, version = _system_python()
    series = ".".join(version.split(".")[:2])
    os.makedirs(os.path.join(path, "bin"))
    os.makedirs(os.path.join(path, "lib", f"python{series}", "site-packages"))
    with open(os.path.join(path, "pyvenv.cfg"), "w") as fh:
        fh.write(f"home = {os.path.dirname(python)}\ninclude-system-site-packages = true\n"
                 f"version = {version}\n")
    for name in ("python3", "python"):
        os.symlink(python, os.path.join(path, "bin", name))
    return path


class _Server(ThreadingHTTPServer):
    # The stdlib's listen backlog of 5 resets connections when dozens of workers
    # create sandboxes at once; the real service accepts them.
    request_queue_size = 512
    daemon_threads = True


def _error(status: int, message: str, code: str, source: str = "DAYTONA_API") -> dict[str, Any]:
    return {"statusCode": status, "message": message, "code": code, "source": source}


def _read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        out += rfile.read(size)
        rfile.readline()


def _multipart_parts(body: bytes, boundary: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart body byte-exactly into (headers, content) pairs."""
    parts = []
    for chunk in (b"\r\n" + body).split(b"\r\n--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, content = chunk[2:].partition(b"\r\n\r\n")
        headers = {}
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("utf-8", errors="replace").partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, content))
    return parts


def _disposition_name(header: str) -> str:
    for item in header.split(";"):
        key, _, value = item.strip().partition("=")
        if key == "name":
            return value.strip('"')
    return ""


class _Handler(BaseHTTPRequestHandler):
    emu: DaytonaEmulator
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's pools expect
    disable_nagle_algorithm = True  # else headers and body wait on a delayed ACK (~40 ms)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    # -- plumbing ---------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return _read_chunked(self.rfile)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None,
              raw: bytes | None = None, content_type: str = "application/json") -> None:
        if raw is None:
            raw = b"" if payload is None else json.dumps(payload).encode()
        data = raw
        self.send_response(status)
        if data or status != 204:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _authorised(self) -> bool:
        expected = f"Bearer {self.emu.api_key}".encode()
        given = self.headers.get("Authorization", "").encode("utf-8", errors="replace")
        if secrets.compare_digest(given, expected):
            return True
        with self.emu.lock:
            self.emu.auth_failures += 1
        self._send(401, _error(401, "Unauthorized", "UNAUTHORIZED"))
        return False

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        body = self._body()
        if path.startswith("/_admin/"):
            return self._admin(path, body)
        if path.startswith("/api/socket.io"):
            return self._send(404, _error(404, "no websocket here", "NOT_FOUND"))
        if not self._authorised():
            return None
        parts = [p for p in path.split("/") if p]
        with self.emu.lock:
            self.emu.settle()
        try:
            if parts[:2] == ["api", "sandbox"]:
                return self._control(parts[2:], body)
            if parts[:2] == ["api", "snapshots"]:
                return self._snapshots(parts[2:], body)
            if parts and parts[0] == "toolbox" and len(parts) >= 3:
                return self._toolbox(parts[1], "/".join(parts[2:]), body)
        except Exception as exc:  # noqa: BLE001 - the emulator answers, never dies
            return self._send(500, _error(500, f"emulator error: {exc}", "INTERNAL"))
        self._send(404, _error(404, f"no route {self.command} {path}", "NOT_FOUND"))
        return None

    do_GET = do_POST = do_DELETE = do_PUT = _dispatch  # noqa: N815 - stdlib names

    def _snapshots(self, rest: list[str], body: bytes) -> None:
        emu, method = self.emu, self.command
        if not rest and method == "POST":
            data = json.loads(body or b"{}")
            with emu.lock:
                snap = emu.new_snapshot(data)
            if snap is None:
                emu.record("POST", "snapshot-create", 409, name=data.get("name"))
                return self._send(409, _error(409, f"Snapshot with name {data.get('name')} "
                                              "already exists", "CONFLICT"))
            emu.record("POST", "snapshot-create", 200, name=snap.name,
                       dockerfile=(data.get("buildInfo") or {}).get("dockerfileContent"),
                       cpu=data.get("cpu"), memory=data.get("memory"), disk=data.get("disk"))
            return self._send(200, emu.snapshot_json(snap))
        if not rest and method == "GET":
            with emu.lock:
                items = [emu.snapshot_json(s) for s in emu.snapshots.values()]
            return self._send(200, {"items": items, "total": len(items), "page": 1,
                                    "totalPages": 1})
        snap = emu.find_snapshot(rest[0]) if len(rest) == 1 else None
        if snap is None:
            emu.record(method, "snapshot-get", 404, name=rest[0] if rest else None)
            return self._send(404, _error(404, f"Snapshot {rest[0] if rest else ''} not found",
                                          "NOT_FOUND"))
        if method == "GET":
            emu.record(method, "snapshot-get", 200, name=snap.name)
            return self._send(200, emu.snapshot_json(snap))
        if method == "DELETE":
            with emu.lock:
                emu.snapshots.pop(snap.name, None)
            return self._send(200, None)
        return self._send(405, _error(405, "method not allowed", "METHOD_NOT_ALLOWED"))

    def _get(self, sid: str) -> EmuSandbox | None:
        with self.emu.lock:
            sandbox = self.emu.sandboxes.get(sid)
        if sandbox is None or sandbox.state == "destroyed":
            self._send(404, _error(404, f"Sandbox with ID {sid} not found", "NOT_FOUND"))
            return None
        return sandbox

    # -- control plane ----------------------------------------------------------------

    def _control(self, rest: list[str], body: bytes) -> None:
        emu, method = self.emu, self.command
        if not rest and method == "POST":
            return self._create(json.loads(body or b"{}"))
        if not rest and method == "GET":
            return self._list()
        sid = rest[0]
        if len(rest) == 2 and rest[1] == "toolbox-proxy-url" and method == "GET":
            emu.record(method, "toolbox-proxy-url", 200, sandbox=sid)
            return self._send(200, {"url": emu.toolbox_url})
        if len(rest) != 1:
            return self._send(404, _error(404, "no such route", "NOT_FOUND"))
        if method == "GET":
            sandbox = self._get(sid)
            emu.record(method, "get", 200 if sandbox else 404, sandbox=sid)
            if sandbox:
                self._send(200, emu.sandbox_json(sandbox))
            return None
        if method == "DELETE":
            return self._delete(sid)
        return self._send(405, _error(405, "method not allowed", "METHOD_NOT_ALLOWED"))

    def _create(self, body: dict[str, Any]) -> None:
        emu = self.emu
        summary = {"labels": body.get("labels"), "env": body.get("env"),
                   "networkBlockAll": body.get("networkBlockAll"),
                   "networkAllowList": body.get("networkAllowList"),
                   "domainAllowList": body.get("domainAllowList"),
                   "snapshot": body.get("snapshot"),
                   "autoStopInterval": body.get("autoStopInterval"),
                   "autoDeleteInterval": body.get("autoDeleteInterval"),
                   "ttlMinutes": body.get("ttlMinutes")}
        with emu.lock:
            f = emu.faults
            if f.rate_limit_creates > 0:
                f.rate_limit_creates -= 1
                emu.refused.append(429)
                emu.record("POST", "create", 429, **summary)
                headers = {} if f.retry_after is None else {"Retry-After": f"{f.retry_after:g}"}
                return self._send(429, _error(429, "Too many requests", "TOO_MANY_REQUESTS"),
                                  headers)
            if f.unavailable_creates > 0:
                f.unavailable_creates -= 1
                emu.record("POST", "create", 503, **summary)
                return self._send(503, _error(503, "Service unavailable", "UNAVAILABLE"))
            if f.fail_creates > 0:
                f.fail_creates -= 1
                emu.record("POST", "create", 500, **summary)
                return self._send(500, _error(500, "Runner exploded", "INTERNAL_ERROR"))
            size: tuple[int, int, int] = (body.get("cpu") or 1, body.get("memory") or 1,
                                          body.get("disk") or 3)
            if body.get("snapshot"):
                snap = emu.find_snapshot(body["snapshot"])
                if snap is None or snap.current_state() != "active":
                    why = "not found" if snap is None else f"is {snap.current_state()}"
                    emu.record("POST", "create", 400, **summary)
                    return self._send(400, _error(400, f"Snapshot {body['snapshot']} {why}",
                                                  "BAD_REQUEST"))
                size = (snap.cpu, snap.memory, snap.disk)
            refusal = emu.quota_refusal(size)
            if refusal is not None:
                emu.refused.append(403)
                emu.record("POST", "create", 403, **summary)
                return self._send(403, _error(403, refusal, "FORBIDDEN"))
            wait = emu.rate_limited()
            if wait is not None:
                emu.refused.append(429)
                emu.record("POST", "create", 429, **summary)
                return self._send(429, _error(429, "Too many requests", "TOO_MANY_REQUESTS"),
                                  {"Retry-After": f"{max(1, math.ceil(wait))}"})
            latency = f.create_latency
            # Exists before the answer, as on the real service; counted at once for quotas.
            sandbox = emu.new_sandbox(body, size)
        emu.record("POST", "create", 200, sandbox=sandbox.id, **summary)
        if latency:
            time.sleep(latency)
        self._send(200, emu.sandbox_json(sandbox))
        return None

    def _list(self) -> None:
        emu = self.emu
        query = parse_qs(urlsplit(self.path).query)
        wanted = json.loads(query.get("labels", ["{}"])[0] or "{}")
        with emu.lock:
            failing = emu.faults.fail_lists
            if failing:
                emu.faults.fail_lists = failing - 1 if failing > 0 else failing
        if failing:
            emu.record("GET", "list", 500, labels=wanted)
            return self._send(500, _error(500, "list failed", "INTERNAL_ERROR"))
        limit = int(query.get("limit", ["100"])[0])
        start = int(query.get("cursor", ["0"])[0] or 0)
        with emu.lock:
            matching = [s for s in emu.sandboxes.values() if s.state != "destroyed"
                        and all(s.labels.get(k) == v for k, v in wanted.items())]
            page = [emu.sandbox_json(s) for s in matching[start:start + limit]]
        for item in page:
            item.pop("env", None)  # list items carry no env, like the real API
        nxt = str(start + limit) if start + limit < len(matching) else None
        emu.record("GET", "list", 200, labels=wanted, cursor=start, count=len(page))
        self._send(200, {"items": page, "nextCursor": nxt})

    def _delete(self, sid: str) -> None:
        emu = self.emu
        sandbox = self._get(sid)
        if sandbox is None:
            emu.record("DELETE", "delete", 404, sandbox=sid)
            return None
        if sandbox.state == "destroying":  # asked again: still on its way
            emu.record("DELETE", "delete", 200, sandbox=sid, again=True)
            return self._send(200, emu.sandbox_json(sandbox))
        with emu.lock:
            failing = emu.faults.fail_deletes
            if failing:
                emu.faults.fail_deletes = failing - 1 if failing > 0 else failing
        if failing:
            emu.record("DELETE", "delete", 500, sandbox=sid)
            return self._send(500, _error(500, "delete failed", "INTERNAL_ERROR"))
        emu.destroy(sandbox)
        emu.record("DELETE", "delete", 200, sandbox=sid)
        self._send(200, emu.sandbox_json(sandbox))
        return None

    # -- toolbox ----------------------------------------------------------------------

    def _toolbox(self, sid: str, route: str, body: bytes) -> None:
        emu = self.emu
        sandbox = self._get(sid)
        if sandbox is None:
            return None
        if sandbox.current_state() != "started":
            return self._send(409, _error(409, "sandbox is not started", "CONFLICT",
                                          "DAYTONA_PROXY"))
        if route in ("work-dir", "user-home-dir") and self.command == "GET":
            emu.record("GET", route, 200, sandbox=sid)
            return self._send(200, {"dir": sandbox.root})
        if route == "process/execute" and self.command == "POST":
            return self._execute(sandbox, json.loads(body or b"{}"))
        if route == "files/bulk-upload" and self.command == "POST":
            return self._upload(sandbox, body)
        if route == "files/bulk-download" and self.command == "POST":
            return self._download(sandbox, json.loads(body or b"{}"))
        return self._send(404, _error(404, f"no toolbox route {route}", "NOT_FOUND",
                                      "DAYTONA_DAEMON"))

    def _execute(self, sandbox: EmuSandbox, req: dict[str, Any]) -> None:
        timeout = req.get("timeout")
        with self.emu.lock:
            failing = self.emu.faults.fail_execs > 0
            if failing:
                self.emu.faults.fail_execs -= 1
        if failing:
            self.emu.record("POST", "execute", 500, sandbox=sandbox.id, timeout=timeout)
            return self._send(500, _error(500, "Runner exploded mid-command", "INTERNAL",
                                          "DAYTONA_DAEMON"))
        code, output = self.emu.run(sandbox, req.get("command", ""), req.get("cwd"),
                                    dict(req.get("envs") or {}), timeout)
        self.emu.record("POST", "execute", 408 if code is None else 200, sandbox=sandbox.id,
                        command=req.get("command"), cwd=req.get("cwd"), timeout=timeout,
                        envs=req.get("envs"))
        if code is None:
            return self._send(408, _error(408, f"command timed out after {timeout}s",
                                          "PROCESS_EXECUTION_TIMEOUT", "DAYTONA_DAEMON"))
        self._send(200, {"exitCode": code, "result": output})
        return None

    def _upload(self, sandbox: EmuSandbox, body: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        boundary = ctype.split("boundary=", 1)[-1].strip().strip('"').encode()
        fields: dict[str, bytes] = {}
        for headers, content in _multipart_parts(body, boundary):
            fields[_disposition_name(headers.get("content-disposition", ""))] = content
        index = 0
        while f"files[{index}].path" in fields:
            path = fields[f"files[{index}].path"].decode("utf-8")
            content = fields.get(f"files[{index}].file", b"")
            try:
                target = self.emu.resolve(sandbox, path)
            except PermissionError as exc:
                return self._send(403, _error(403, str(exc), "FILE_ACCESS_DENIED",
                                              "DAYTONA_DAEMON"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as fh:
                fh.write(content)
            with self.emu.lock:
                self.emu.uploads.append((sandbox.id, path, content))
            self.emu.record("POST", "upload", 200, sandbox=sandbox.id, file=path,
                            size=len(content))
            index += 1
        self._send(200, None)
        return None

    def _download(self, sandbox: EmuSandbox, req: dict[str, Any]) -> None:
        boundary = uuid.uuid4().hex
        out = bytearray()
        for path in req.get("paths", []):
            quoted = path.replace("\\", "\\\\").replace('"', '\\"')
            try:
                target = self.emu.resolve(sandbox, path)
                with open(target, "rb") as fh:
                    data = fh.read()
                head = (f'Content-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
                        "Content-Type: application/octet-stream\r\n")
                status = 200
            except (OSError, PermissionError):
                data = json.dumps(_error(404, f"file not found: {path}", "FILE_NOT_FOUND",
                                         "DAYTONA_DAEMON")).encode()
                head = (f'Content-Disposition: form-data; name="error"; filename="{quoted}"\r\n'
                        "Content-Type: application/json\r\n")
                status = 404
            out += f"--{boundary}\r\n{head}\r\n".encode() + data + b"\r\n"
            self.emu.record("POST", "download", status, sandbox=sandbox.id, file=path,
                            size=len(data))
        out += f"--{boundary}--\r\n".encode()
        self._send(200, raw=bytes(out), content_type=f"multipart/form-data; boundary={boundary}")

    # -- admin ------------------------------------------------------------------------

    def _admin(self, path: str, body: bytes) -> None:
        emu = self.emu
        if path == "/_admin/faults" and self.command == "POST":
            try:
                emu.set_faults(**json.loads(body or b"{}"))
            except (ValueError, TypeError) as exc:
                return self._send(400, {"error": str(exc)})
            return self._send(200, dataclasses.asdict(emu.faults))
        if path == "/_admin/state" and self.command == "GET":
            return self._send(200, emu.state())
        if path == "/_admin/counters":  # GET: read; POST: start counting afresh
            with emu.lock:
                if self.command == "POST":
                    emu.refused.clear()
                    emu.peak_alive = len(emu._live)
                    emu.counted_from = len(emu.created)
                return self._send(200, {"created": len(emu.created) - emu.counted_from,
                                        "refused": list(emu.refused),
                                        "peak_alive": emu.peak_alive,
                                        "alive": len(emu._live)})
        return self._send(404, {"error": "no such admin route"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3986)
    parser.add_argument("--api-key", default=os.environ.get("DAYTONA_API_KEY", DEFAULT_KEY))
    parser.add_argument("--create-latency", type=float, default=0.0)
    parser.add_argument("--start-delay", type=float, default=0.0)
    parser.add_argument("--quota-cpu", type=int, default=None,
                        help="the organisation's vCPU quota (a default sandbox takes 1)")
    args = parser.parse_args()
    emu = DaytonaEmulator(args.api_key, args.host, args.port, create_latency=args.create_latency,
                          start_delay=args.start_delay, quota_cpu=args.quota_cpu).start()
    print(f"Daytona emulator on {emu.url} (toolbox {emu.toolbox_url})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on `kill` too
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
