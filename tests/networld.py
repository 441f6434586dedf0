"""A small test-made internet, so egress tests never send a packet to a real address.

Two network namespaces, each held by a tiny process of ours (no name under /run/netns:
nothing another test run can see or delete, and nothing left behind: a namespace goes
away with its holder, and the holder with us, since it exits when its stdin closes):

* ``worker``: where the worker under test runs (``run_worker``). Its uplink ``wan`` is
  203.0.113.2/24 (and fd19::2/64), default route via 203.0.113.1.
* ``world``: the other end of the veth (``lan``, 203.0.113.1/24, fd19::1/64) and, on its
  loopback, every address the tests talk to: the allowed test host 198.51.100.7
  (a documentation range, i.e. "the public internet"), the refused services 10.200.0.1
  (private) and 169.254.169.254 (cloud metadata), and a DNS resolver at 10.200.0.53
  that answers ``*.test`` names. The worker's /etc/resolv.conf points at it (a bind
  mount in the worker's own mount namespace).

Services are sockets created in the world's namespace by this process (a thread that
joins the namespace) and served by ordinary threads that record every connection.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"
REPO = Path(__file__).resolve().parent.parent
ALLOWED_HOST = "198.51.100.7"
PRIVATE_HOST = "10.200.0.1"
METADATA_HOST = "169.254.169.254"
RESOLVER = "10.200.0.53"
WORKER_ADDR, WORLD_ADDR = "203.0.113.2", "203.0.113.1"
WORKER_ADDR6, WORLD_ADDR6 = "fd19::2", "fd19::1"
PORT = 8080
NAMES = {"allowed.test": ALLOWED_HOST, "meta.test": METADATA_HOST, "private.test": PRIVATE_HOST}

_HOLD = ("import ctypes, sys\n"
         "libc = ctypes.CDLL(None, use_errno=True)\n"
         "if libc.unshare(0x40000000) != 0: sys.exit('unshare: errno %d' % ctypes.get_errno())\n"
         "print('ready', flush=True)\n"
         "sys.stdin.read()\n")


def _need(binary: str) -> None:
    from shutil import which

    assert which(binary) or os.path.exists(binary), (
        f"{binary} is needed to build the test network (iproute2 / util-linux); "
        "the README's test command installs it")


class Namespace:
    """A fresh network namespace, alive as long as this object's holder process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", _HOLD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "ready", f"could not make a network namespace: {line!r}"
        self.pid = self.proc.pid
        self.path = f"/proc/{self.pid}/ns/net"

    def ip(self, *commands: str) -> None:
        """Run ``ip`` commands (one per argument) inside the namespace."""
        done = subprocess.run(["nsenter", f"--net={self.path}", "--", IP, "-batch", "-"],
                              input="\n".join(commands) + "\n", capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, f"ip -batch failed: {done.stderr}"

    def inside(self, fn):
        """Run ``fn()`` on a thread that joined this namespace; return its result."""
        out: list = []

        def run() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                finally:
                    os.close(fd)
                out.append(fn())
            except BaseException as exc:  # noqa: BLE001 - handed back
                out.append(exc)

        t = threading.Thread(target=run)
        t.start()
        t.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Listener:
    """A TCP service: records who connected, says hello, hangs up."""

    def __init__(self, sock: socket.socket, label: str):
        self.sock = sock
        self.label = label
        self.hits: list[str] = []
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                continue
            self.hits.append(addr[0])
            try:
                conn.sendall(f"hello from {self.label}\n".encode())
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class Resolver:
    """A UDP DNS server answering A queries for ``NAMES`` (NXDOMAIN otherwise)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.queries: list[str] = []
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                continue
            try:
                self.sock.sendto(self.answer(data), peer)
            except (OSError, ValueError, IndexError):
                pass

    def answer(self, query: bytes) -> bytes:
        qid, _flags = struct.unpack("!HH", query[:4])
        labels, i = [], 12
        while query[i]:
            labels.append(query[i + 1:i + 1 + query[i]].decode("ascii", "replace"))
            i += 1 + query[i]
        question = query[12:i + 5]
        qtype = struct.unpack("!H", query[i + 1:i + 3])[0]
        name = ".".join(labels).lower()
        self.queries.append(name)
        addr = NAMES.get(name)
        if addr is None:
            return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
        if qtype != 1:  # AAAA and others: no data
            return struct.pack("!HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question
        record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(addr)
        return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + record

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _listen(addr: str, port: int = PORT) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(16)
    return s


class NetWorld:
    """The worker and world namespaces, wired, with their services running."""

    def __init__(self) -> None:
        for binary in (IP, "nsenter", "unshare", "mount", "setpriv"):
            _need(binary)
        self.tmp = Path(tempfile.mkdtemp(prefix="forge-networld-"))
        self.worker = Namespace()
        self.world = Namespace()
        self.listeners: dict[str, Listener] = {}
        self.resolver: Resolver | None = None
        try:
            self._wire()
            self._serve()
        except BaseException:
            self.close()
            raise

    def _wire(self) -> None:
        self.worker.ip(
            "link set lo up",
            f"link add wan type veth peer name lan netns {self.world.pid}",
            f"addr add {WORKER_ADDR}/24 dev wan",
            f"addr add {WORKER_ADDR6}/64 dev wan nodad",
            "link set wan up",
            f"route add default via {WORLD_ADDR}",
        )
        self.world.ip(
            "link set lo up",
            *(f"addr add {a}/32 dev lo" for a in (ALLOWED_HOST, PRIVATE_HOST, METADATA_HOST,
                                                 RESOLVER)),
            f"addr add {WORLD_ADDR}/24 dev lan",
            f"addr add {WORLD_ADDR6}/64 dev lan nodad",
            "link set lan up",
        )
        self.resolv_conf = self.tmp / "resolv.conf"
        self.resolv_conf.write_text(f"nameserver {RESOLVER}\noptions timeout:2 attempts:2\n")

    def _serve(self) -> None:
        world = {a: a for a in (ALLOWED_HOST, PRIVATE_HOST, METADATA_HOST, RESOLVER,
                                WORLD_ADDR, WORLD_ADDR6)}
        socks = self.world.inside(lambda: {a: _listen(a) for a in world})
        for addr, sock in socks.items():
            self.listeners[addr] = Listener(sock, addr)
        dns = self.world.inside(lambda: _udp(RESOLVER, 53))
        self.resolver = Resolver(dns)
        own = self.worker.inside(lambda: _listen(WORKER_ADDR))
        self.listeners[WORKER_ADDR] = Listener(own, WORKER_ADDR)

    def hits(self, addr: str) -> list[str]:
        return list(self.listeners[addr].hits)

    def connect_from_worker(self, addr: str, port: int = PORT) -> bytes:
        """A plain connection from the worker's namespace (outside any sandbox)."""
        def go() -> bytes:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect((addr, port))
                return s.recv(100)
        return self.worker.inside(go)

    def run_worker(self, tasks: list[dict], timeout: float = 180,
                   unprivileged: bool = False) -> dict:
        """Run ``tests/world_worker.py`` (the local backend's lifecycle for ``tasks``, all
        at once) inside the worker namespace, with the world's resolver; its JSON.

        ``unprivileged``: as uid 65534 (like the Docker image's worker), with the
        system's python3 and a world-readable copy of the worker package (the suite's
        interpreter and checkout may live where that uid cannot look)."""
        python, script, cwd = sys.executable, REPO / "tests" / "world_worker.py", REPO
        drop: list[str] = []
        if unprivileged:
            python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or ""
            assert python and not python.startswith("/root"), "no system python3 for uid 65534"
            code = self.tmp / "code"
            if not code.exists():
                shutil.copytree(REPO / "worker", code / "worker",
                                ignore=shutil.ignore_patterns("__pycache__"))
                # The one third-party package the lifecycle's import path needs (the
                # settings read .env through it); the image installs it like the rest.
                import dotenv

                shutil.copytree(Path(dotenv.__file__).parent, code / "dotenv",
                                ignore=shutil.ignore_patterns("__pycache__"))
                (code / "tests").mkdir()
                shutil.copy(script, code / "tests" / "world_worker.py")
                for path in [self.tmp, *code.rglob("*"), code]:
                    path.chmod(0o755 if path.is_dir() else 0o644)
            script, cwd = code / "tests" / "world_worker.py", code
            drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]
        argv = ["nsenter", f"--net={self.worker.path}", "--",
                "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
                str(self.resolv_conf), *drop, python, str(script)]
        env = {**os.environ, "HOME": "/tmp"} if unprivileged else None
        done = subprocess.run(argv, input=json.dumps(tasks), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd, env=env)
        assert done.returncode == 0, f"world worker failed: {done.stderr[-3000:]}"
        out = json.loads(done.stdout)
        out["stderr"] = done.stderr
        return out

    def close(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        if self.resolver:
            self.resolver.close()
        self.world.close()
        self.worker.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _udp(addr: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    return s
