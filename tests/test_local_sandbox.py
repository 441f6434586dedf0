"""The local sandbox, driven through the shared lifecycle (and its API where needed).

Tests marked as needing bubblewrap FAIL when it is missing: isolation is the point.
"""

from __future__ import annotations

import glob
import os
import socket
import textwrap
import time
from dataclasses import replace

import pytest

from worker.lifecycle import run_lifecycle
from worker.records import CandidateTask, Egress, Limits, sha256_text
from worker.sandbox.base import SandboxError, SandboxRequest
from worker.sandbox.capture import TailBuffer
from worker.sandbox.local import (
    LocalBackend,
    bwrap,
    cgroups,
    launch,
    leftovers,
    owner,
    pyenv,
    thread_creds,
)
from worker.sandbox.local.parent_dir import is_tmpfs, sandbox_parent
from worker.sandbox.local.prefix_view import _traversable_by_anyone

# Every test starts processes (local sandboxes (bubblewrap, slirp4netns)); tests/markers.py.
pytestmark = pytest.mark.processes

SMALL = Limits(memory_mb=256, max_processes=32, max_file_mb=8, output_bytes=8192,
               artifact_bytes=4096)


def require_bwrap() -> None:
    probe = bwrap.probe()
    assert probe.ok, f"bubblewrap unavailable ({probe.reason}); fix: apt-get install bubblewrap"


def require_uid_switch() -> None:
    """The candidate's fresh host uid: the worker must be root (CI and the Docker image's
    entrypoint are) and allowed to switch."""
    assert os.geteuid() == 0, "run the suite as root: the sandbox's uid switch needs it"
    assert bwrap.probe().drop_uid, ("the sandbox keeps the worker's uid "
                                    "(FORGE_SANDBOX_UID=keep?): unset it for the suite")


def require_memory_cgroup() -> None:
    assert not os.environ.get("FORGE_NO_CGROUPS"), "unset FORGE_NO_CGROUPS for the suite"
    assert cgroups.cgroup_base("memory") is not None, (
        "no writable memory cgroup: run the suite as root on a host with a cgroup tree "
        "(v1 memory controller or v2), as CI does")


def task(script: str, *, cid: str = "c1", timeout: int = 5, network: bool = False,
         env_allow: tuple[str, ...] = (), limits: Limits = SMALL) -> CandidateTask:
    script = textwrap.dedent(script)
    return CandidateTask(
        run_id="r-local", candidate_id=cid, name=cid, script_name="s.py", script=script,
        script_sha256=sha256_text(script), objective="do it; rm -rf / $(reboot)",
        timeout=timeout, network=network, env_allow=env_allow, limits=limits,
    )


def run(t: CandidateTask, **kw):
    lines: list[str] = []
    result = run_lifecycle(LocalBackend(), t, lines.append, **kw)
    return result, lines


@pytest.fixture()
def plain(monkeypatch):
    """Force the no-bubblewrap fallback for one test (the probe is cached per process)."""
    monkeypatch.setenv("FORGE_SANDBOX", "plain")
    bwrap.probe.cache_clear()
    yield
    monkeypatch.delenv("FORGE_SANDBOX")
    bwrap.probe.cache_clear()


WRITE_ARGS = """
    import sys
    with open(sys.argv[2], "w") as fh:
        fh.write("# ok\\n" + repr(sys.argv[1:]))
"""


# --------------------------------------------------------------------------- basics


def test_well_behaved_isolated():
    require_bwrap()
    r, lines = run(task(WRITE_ARGS))
    assert r.success, r.error_message
    assert r.artifact_content.startswith("# ok")
    assert "do it; rm -rf / $(reboot)" in r.artifact_content  # argv, never a shell
    assert r.isolation.startswith("bubblewrap"), r.isolation
    assert "net ns (no network)" in r.isolation
    assert not any("isolation is OFF" in x for x in lines)


def test_what_the_candidate_sees():
    require_bwrap()
    r, _ = run(task("""
        import os, sys
        info = {
            "uid": os.getuid(), "cwd": os.getcwd(), "root": sorted(os.listdir("/")),
            "opt": sorted(os.listdir("/opt")),
            "workdir": sorted(os.listdir(os.path.dirname(sys.argv[2]))),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "home": os.environ["HOME"], "tmpdir": os.environ["TMPDIR"],
            "env": sorted(os.environ), "etc": sorted(os.listdir("/etc")),
            "ifaces": open("/proc/net/dev").read(),
        }
        # Opened for writing only (never written): a sysrq write would act on the host.
        for path in ("/proc/sys/kernel/hostname", "/proc/sysrq-trigger",
                     "/proc/sys/kernel/core_pattern", "/proc/self/oom_score_adj"):
            try:
                open(path, "w").close()
                info[path] = "WRITABLE"
            except OSError as exc:
                info[path] = exc.strerror
        for path in ("/newfile", "/usr/newfile", "/etc/newfile"):
            try:
                open(path, "w")
                info[path] = "WRITABLE"
            except OSError as exc:
                info[path] = exc.strerror
        open(sys.argv[2], "w").write(repr(info))
    """, env_allow=("SANDBOX_VISIBLE",)), env_source={"SANDBOX_VISIBLE": "1", "SECRET": "s"})
    assert r.success, (r.error_message, r.output)
    info = eval(r.artifact_content)  # noqa: S307 - our own repr, test only
    assert info["uid"] == 65534
    assert info["cwd"] == "/sandbox"
    assert info["workdir"] == ["script.py"]
    assert info["home"] == "/sandbox" and info["tmpdir"] == "/tmp"
    assert "SECRET" not in info["env"] and "SANDBOX_VISIBLE" in info["env"]
    assert not ({"home", "work", "var", "srv", "mnt"} & set(info["root"])), info["root"]
    assert info["opt"] == ["python"]  # the sandbox's own python environment, no host /opt
    assert "shadow" not in info["etc"] and "gshadow" not in info["etc"]
    assert max(info["pids"]) < 10, info["pids"]  # own PID namespace
    assert "tap0" not in info["ifaces"] and "eth0" not in info["ifaces"]
    for path in ("/newfile", "/usr/newfile", "/etc/newfile", "/proc/sys/kernel/hostname",
                 "/proc/sysrq-trigger", "/proc/sys/kernel/core_pattern"):
        assert info[path] != "WRITABLE", path


def test_rlimits_applied():
    require_bwrap()
    r, _ = run(task("""
        import resource, sys
        names = ["AS", "CPU", "FSIZE", "NOFILE", "NPROC", "CORE"]
        got = {n: resource.getrlimit(getattr(resource, "RLIMIT_" + n))[0] for n in names}
        open(sys.argv[2], "w").write(repr(got))
    """, timeout=7))
    got = eval(r.artifact_content)  # noqa: S307
    assert got == {"AS": 256 << 20, "CPU": 14, "FSIZE": 8 << 20, "NOFILE": 256,
                   "NPROC": 32, "CORE": 0}


LAUNCH_PROBE = r"""
import json, subprocess, sys
from worker.sandbox.local import LocalBackend, prefix_view, prepare_process
from worker.sandbox.base import SandboxRequest
from worker.records import Limits

spawned = []
real_popen = subprocess.Popen

def popen(*args, **kwargs):  # records how bwrap was started, then starts it
    spawned.append({"argv0": args[0][0], "preexec": kwargs.get("preexec_fn") is not None})
    return real_popen(*args, **kwargs)

subprocess.Popen = popen
prepare_process()  # what a pool process does at start, single-threaded
sb = LocalBackend().create(SandboxRequest(
    run_id="r", candidate_id="launch", timeout=7, network=False, env={},
    limits=Limits(memory_mb=256, max_processes=32, max_file_mb=8)), print)
try:
    sb.upload(sys.argv[1].encode(), sb.workdir + "/s.py", 5)
    got = sb.exec(["python3", sb.workdir + "/s.py"], 7, 65536)
    owner = __import__("os").stat(sb.host_workdir + "/owned").st_uid  # as the host sees it
finally:
    sb.delete()
print(json.dumps({"spawned": spawned[-1], "output": got.output, "exit": got.exit_code,
                  "view": prefix_view._process_view, "owner": owner}))
"""

SHOW_LIMITS = """
import os, resource
names = ["AS", "CPU", "FSIZE", "NOFILE", "NPROC", "CORE"]
print(repr({n: resource.getrlimit(getattr(resource, "RLIMIT_" + n)) for n in names}))
open("owned", "w").close()
"""


def test_pool_process_launch_vforks_with_the_same_limits():
    """A worker process starts bwrap itself, without a preexec_fn (the calling thread
    takes the sandbox's uid for the spawn, so subprocess can vfork; the limits go onto
    the held sandbox), and the candidate still gets every rlimit, soft and hard, as a
    fresh unprivileged uid."""
    require_bwrap()
    import json
    import subprocess
    import sys

    require_uid_switch()
    assert thread_creds.usable(), "this root worker cannot switch one thread's credentials"
    done = subprocess.run([sys.executable, "-c", LAUNCH_PROBE, SHOW_LIMITS],
                          capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["exit"] == 0, out["output"]
    assert out["spawned"] == {"argv0": bwrap.probe().bwrap, "preexec": False}
    assert eval(out["output"]) == {  # noqa: S307 - our own repr
        "AS": (256 << 20, 256 << 20), "CPU": (14, 15), "FSIZE": (8 << 20, 8 << 20),
        "NOFILE": (256, 256), "NPROC": (32, 32), "CORE": (0, 0)}
    assert out["owner"] >= launch.UID_BASE  # a fresh unprivileged host uid, not root
    hidden = [p for p in pyenv.python_prefixes() if not _traversable_by_anyone(p)]
    assert sorted(out["view"]) == sorted(hidden)  # an unreachable prefix: shown once


def test_deadline_kills_grandchildren():
    require_bwrap()
    marker = f"forge-grandchild-{os.getpid()}-{time.monotonic_ns()}"
    r, _ = run(task(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{marker}"],
                         start_new_session=True)
        time.sleep(60)
    """, timeout=2))
    assert r.timed_out and not r.success
    assert "timed out after 2s" in r.error_message
    assert r.runtime_seconds < 7  # a 2 s deadline: over 3x its median (2.1 s)
    time.sleep(0.2)
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            assert marker.encode() not in open(path, "rb").read(), "grandchild survived"
        except OSError:
            pass


def _non_loopback_ip() -> str:
    """The worker's own address on its uplink: a target a sandbox with the network on
    (and that address allow-listed) reaches, so "blocked" with the network off means
    the network is off, not that nothing was there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.123", 9))  # no packet is sent: picks the outgoing address
        ip = s.getsockname()[0]
    assert not ip.startswith("127."), (
        "this host has no non-loopback IPv4 address: the network tests need one for "
        "their positive control (any interface with an address and a route will do)")
    return ip


PROBE = """
    import socket, sys, threading
    out = []
    for host, port in {targets!r}:
        try:
            socket.create_connection((host, port), timeout=2).close()
            out.append("CONNECTED " + host)
        except OSError as exc:
            out.append(f"blocked {{host}}: {{exc}}")
    # The sandbox's own loopback works either way.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    threading.Thread(target=srv.accept, daemon=True).start()
    socket.create_connection(srv.getsockname(), timeout=2).close()
    out.append("OWN LOOPBACK OK")
    open(sys.argv[2], "w").write("\\n".join(out))
"""


def test_network_off_has_only_loopback():
    """Network off: the probe that reaches the worker's address with the network on (and
    that address allow-listed: the positive control) is refused; the sandbox's own
    loopback still works."""
    require_bwrap()
    ip = _non_loopback_ip()
    wide = socket.socket()
    wide.bind(("0.0.0.0", 0))
    wide.listen(4)
    script = PROBE.format(targets=[(ip, wide.getsockname()[1])])
    try:
        off, _ = run(replace(task(script, network=False), egress=Egress(allow=(ip,))))
        on, _ = run(replace(task(script, network=True), egress=Egress(allow=(ip,))))
    finally:
        wide.close()
    for res in (off, on):
        assert res.success, (res.error_message, res.output)
        assert "OWN LOOPBACK OK" in res.artifact_content
    assert "net ns (no network)" in off.isolation
    assert f"blocked {ip}: " in off.artifact_content, off.artifact_content
    assert f"CONNECTED {ip}" in on.artifact_content, on.artifact_content


def test_network_on_is_outbound_only():
    """Network on: the host's loopback stays shut. The worker's own non-loopback address
    is refused by the egress policy, and reachable once a competition allow-lists it
    (the positive control: slirp4netns does carry the traffic)."""
    require_bwrap()
    ip = _non_loopback_ip()
    loop = socket.socket()
    loop.bind(("127.0.0.1", 0))
    loop.listen(4)
    wide = socket.socket()
    wide.bind(("0.0.0.0", 0))
    wide.listen(4)
    script = PROBE.format(targets=[("127.0.0.1", loop.getsockname()[1]),
                                   ("10.0.2.2", loop.getsockname()[1]),
                                   (ip, wide.getsockname()[1])])
    try:
        r, _ = run(task(script, network=True))
        opened, _ = run(replace(task(script, network=True), egress=Egress(allow=(ip,))))
    finally:
        loop.close()
        wide.close()
    for res in (r, opened):
        assert res.success, (res.error_message, res.output)
        assert "slirp4netns" in res.isolation
        assert "blocked 127.0.0.1: " in res.artifact_content, res.artifact_content
        assert "blocked 10.0.2.2: " in res.artifact_content, res.artifact_content
    assert f"blocked {ip}: [Errno 13]" in r.artifact_content, r.artifact_content
    assert f"CONNECTED {ip}" in opened.artifact_content, opened.artifact_content


# --------------------------------------------------------------------------- files


def _sandbox(network: bool = False):
    req = SandboxRequest(run_id="r", candidate_id="api", timeout=5, network=network,
                         limits=SMALL)
    return LocalBackend().create(req, lambda _m: None)


def test_download_refuses_symlinks_and_outside_paths(tmp_path):
    require_bwrap()
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    sb = _sandbox()
    try:
        host = sb.host_workdir
        os.symlink(str(secret), os.path.join(host, "link.md"))
        os.symlink(str(tmp_path), os.path.join(host, "dirlink"))
        os.mkdir(os.path.join(host, "fifo-dir"))
        os.mkfifo(os.path.join(host, "fifo-dir", "pipe"))
        got = sb.download(f"{sb.workdir}/link.md", 100, 5)
        assert got.content is None and "symlink" in got.problem
        got = sb.download(f"{sb.workdir}/dirlink/secret", 100, 5)
        assert got.content is None and "symlink" in got.problem
        got = sb.download(f"{sb.workdir}/fifo-dir/pipe", 100, 5)
        assert got.content is None and "not a regular file" in got.problem
        assert sb.download(f"{sb.workdir}/missing.md", 100, 5).content is None
        for bad in ("/etc/passwd", f"{sb.workdir}/../etc/passwd", sb.workdir):
            with pytest.raises(SandboxError):
                sb.download(bad, 100, 5)
        with pytest.raises(SandboxError):
            sb.upload(b"x", "/tmp/forge-outside.txt", 5)
        sb.upload(b"hello", f"{sb.workdir}/ok.txt", 5)
        got = sb.download(f"{sb.workdir}/ok.txt", 3, 5)
        assert got.content == b"hel" and got.truncated
    finally:
        root = sb.root
        sb.delete()
    assert not os.path.exists(root)


def test_delete_removes_everything_even_chmod_000():
    require_bwrap()
    r, _ = run(task("""
        import os, sys
        os.makedirs("deep/er")
        open("deep/er/f", "w").write("x")
        os.chmod("deep/er", 0)
        os.chmod("deep", 0)
        open(sys.argv[2], "w").write("# ok")
    """))
    assert r.success and not r.warnings, r.warnings
    assert not glob.glob("/sys/fs/cgroup/*/**/forge-" + r.sandbox_id, recursive=True)


def test_sandboxes_do_not_see_each_other():
    require_bwrap()
    from concurrent.futures import ThreadPoolExecutor

    script = """
        import glob, os, sys, time
        time.sleep(0.5)
        seen = glob.glob("/tmp/*") + glob.glob("/sandbox/*") + os.listdir("/proc")
        open(sys.argv[2], "w").write(repr(seen))
    """
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: run(task(script, cid=f"peer{i}"))[0], range(4)))
    for r in results:
        assert r.success, r.error_message
        seen = eval(r.artifact_content)  # noqa: S307
        assert [p for p in seen if p.startswith("/sandbox/")] == ["/sandbox/script.py"]
        assert not [p for p in seen if p.startswith("/tmp/")]


# --------------------------------------------------------------------------- fallback


def test_plain_fallback_says_isolation_is_off(plain):
    r, lines = run(task(WRITE_ARGS))
    assert r.success, r.error_message
    assert r.isolation.startswith("NONE:"), r.isolation
    assert any("[Warn] Filesystem isolation is OFF" in x for x in lines), lines


def test_plain_fallback_still_has_deadline_and_limits(plain):
    r, _ = run(task("""
        import resource, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(resource.getrlimit(resource.RLIMIT_AS), flush=True)
        time.sleep(60)
    """, timeout=2))
    assert r.timed_out and r.runtime_seconds < 7  # over 3x its median (2.1 s)
    assert str((256 << 20, 256 << 20)) in r.output


def test_require_isolation_refuses_the_fallback(plain, monkeypatch):
    monkeypatch.setenv("FORGE_REQUIRE_ISOLATION", "1")
    r, _ = run(task(WRITE_ARGS))
    assert not r.success
    assert "Sandbox creation failed" in r.error_message
    assert "apt-get install bubblewrap" in r.error_message


# --------------------------------------------------------------------------- capture


def test_tail_buffer_keeps_the_tail_and_counts():
    buf = TailBuffer(10)
    buf.write(b"0123456789abc")
    assert buf.data() == b"3456789abc" and buf.dropped == 3
    for _ in range(1000):
        buf.write(b"xy")
    buf.write(b"END")
    assert buf.data().endswith(b"END") and len(buf.data()) == 10
    assert buf.dropped == 13 + 2000 + 3 - 10
    assert buf.text().startswith(f"[... {buf.dropped} bytes")
    bad = TailBuffer(100)
    bad.write(b"\xff\xfeok")
    assert bad.text() == "\ufffd\ufffdok"


def test_isolation_words_are_short():
    require_bwrap()
    sb = _sandbox(network=True)
    try:
        assert sb.isolation.startswith("bubblewrap:")
        assert "slirp4netns outbound-only" in sb.isolation
        assert len(sb.isolation) < 200
    finally:
        sb.delete()


def test_candidate_python_is_outside_the_venv():
    assert ".venv" not in pyenv.candidate_python()


SEES_PACKAGES = """
    import sys, importlib.util
    found = [m for m in ("celery", "redis", "rich", "pip") if importlib.util.find_spec(m)]
    with open(sys.argv[2], "w") as fh:
        fh.write(repr((sys.prefix, found, [p for p in sys.path if "site-packages" in p])))
    exit(0)  # site's builtins are there: the interpreter starts with its usual site
"""


@pytest.mark.parametrize("mode", ["bwrap", "plain"])
def test_candidate_python_has_no_host_packages(mode, request):
    """python3 in a sandbox sees the standard library and its own environment only: none
    of the worker's packages (nor pip), and no host site-packages on sys.path."""
    if mode == "plain":
        request.getfixturevalue("plain")
    else:
        require_bwrap()
    r, _ = run(task(SEES_PACKAGES))
    assert r.success, (r.error_message, r.output)
    prefix, found, site_dirs = eval(r.artifact_content)  # noqa: S307 - our own repr
    assert found == []
    assert len(site_dirs) == 1 and site_dirs[0].startswith(prefix), site_dirs
    assert ".venv" not in prefix and ".pyenv" not in site_dirs[0]


def _tiny_wheel() -> bytes:
    """A minimal pure-python wheel, built here: installs need no index."""
    import io
    import zipfile

    files = {
        "tiny_forge_pkg.py": "VALUE = 42\n",
        "tiny_forge_pkg-1.0.dist-info/METADATA":
            "Metadata-Version: 2.1\nName: tiny-forge-pkg\nVersion: 1.0\n",
        "tiny_forge_pkg-1.0.dist-info/WHEEL":
            "Wheel-Version: 1.0\nGenerator: forge-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
    }
    files["tiny_forge_pkg-1.0.dist-info/RECORD"] = "".join(f"{n},,\n" for n in files) + \
        "tiny_forge_pkg-1.0.dist-info/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["bwrap", "plain"])
def test_requirements_install_into_the_sandbox_python(mode, request):
    """``python3 -m pip install`` works in a sandbox and installs into its own
    environment, where the candidate's next ``python3`` imports it."""
    if mode == "plain":
        request.getfixturevalue("plain")
    else:
        require_bwrap()
    if pyenv.base_pip_dir() is None:
        pytest.fail("the worker's base interpreter has no pip: requirements cannot install")
    sb = LocalBackend().create(SandboxRequest(run_id="r", candidate_id="pip", timeout=60,
                                              network=False, env={}, limits=SMALL), print)
    try:
        wheel = f"{sb.workdir}/tiny_forge_pkg-1.0-py3-none-any.whl"
        sb.upload(_tiny_wheel(), wheel, 10)
        got = sb.exec(["python3", "-m", "pip", "install", "--no-index", "--quiet", wheel],
                      60, 65536)
        assert got.exit_code == 0, got.output
        got = sb.exec(["python3", "-c", "import tiny_forge_pkg as t; print(t.VALUE, t.__file__)"],
                      30, 65536)
        assert got.exit_code == 0, got.output
        assert got.output.split()[0] == "42"
        assert not os.path.exists(os.path.join(pyenv.base_pip_dir(), "tiny_forge_pkg.py"))
    finally:
        sb.delete()


def test_candidate_is_not_host_root():
    """As root, the candidate runs as a fresh unprivileged host uid (seen from the host)."""
    require_bwrap()
    require_uid_switch()
    import threading

    marker = f"forge-uid-marker-{os.getpid()}-{time.monotonic_ns()}"
    seen: list[str] = []

    def scan() -> None:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and not seen:
            for path in glob.glob("/proc/[0-9]*/cmdline"):
                try:
                    if marker.encode() in open(path, "rb").read():
                        status = open(path.replace("cmdline", "status")).read()
                        seen.append(next(x for x in status.splitlines() if x.startswith("Uid")))
                        return
                except (OSError, StopIteration):
                    pass
            time.sleep(0.02)

    watcher = threading.Thread(target=scan)
    watcher.start()
    r, _ = run(task(f"""
        import subprocess, sys
        subprocess.run([sys.executable, "-c", "import time; time.sleep(1.5)", "{marker}"])
        open(sys.argv[2], "w").write("# ok")
    """))
    watcher.join()
    assert r.success, r.error_message
    assert seen, "candidate process not found from the host"
    uids = {int(x) for x in seen[0].split()[1:]}
    assert 0 not in uids, seen
    assert f"host uid {uids.pop()}" in r.isolation


def test_leftovers_of_a_dead_worker_are_swept(tmp_path):
    """A sandbox root whose owner process is gone is removed by the next backend."""
    import subprocess
    import sys
    import tempfile

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tempfile.mkdtemp(prefix="forge-stale-", dir=sandbox_parent())
    with open(os.path.join(stale, owner.OWNER_FILE), "w") as fh:
        fh.write(f"{dead}:1")
    alive = tempfile.mkdtemp(prefix="forge-alive-", dir=sandbox_parent())
    with open(os.path.join(alive, owner.OWNER_FILE), "w") as fh:
        fh.write(owner.identity(os.getpid()))
    try:
        leftovers._swept = False
        r, _ = run(task(WRITE_ARGS))
        assert r.success
        assert not os.path.exists(stale)
        assert os.path.exists(alive)
    finally:
        import shutil

        shutil.rmtree(stale, ignore_errors=True)
        shutil.rmtree(alive, ignore_errors=True)


def test_memory_cgroup_caps_the_whole_sandbox():
    """Four processes of 200 MB each under a 256 MB limit: the cgroup OOM-kills some."""
    require_bwrap()
    require_memory_cgroup()
    r, _ = run(task("""
        import os, sys, time
        kids = []
        for i in range(4):
            pid = os.fork()
            if pid == 0:
                blocks = [bytearray(50 * 1024 * 1024) for _ in range(4)]
                for b in blocks:
                    for j in range(0, len(b), 4096):
                        b[j] = 1
                time.sleep(1.5)
                os._exit(0)
            kids.append(pid)
        killed = sum(os.waitpid(pid, 0)[1] & 0x7F == 9 for pid in kids)
        open(sys.argv[2], "w").write(str(killed))
    """, timeout=10))
    assert "memory cgroup" in r.isolation
    assert r.success, (r.error_message, r.output)
    assert int(r.artifact_content) >= 2, "the memory cgroup did not hold"


def test_many_files_add_up_to_the_memory_cap_at_most():
    """Sandbox directories live on tmpfs, charged to the sandbox's memory cgroup: 64
    files of 8 MB (512 MB, each under the file-size cap) do not fit a 256 MB sandbox."""
    require_bwrap()
    require_memory_cgroup()
    assert is_tmpfs(sandbox_parent()), sandbox_parent()
    cid = f"fill{os.getpid()}"  # its own name: other tests' sandboxes come and go meanwhile
    r, _ = run(task("""
        import os, sys
        written = 0
        block = b"x" * (1 << 20)
        try:
            for i in range(64):
                with open(f"/sandbox/fill{i}", "wb") as fh:
                    for _ in range(8):
                        fh.write(block)
                        fh.flush()
                        written += 1
        except OSError as exc:
            print("stopped:", exc)
        open(sys.argv[2], "w").write(str(written))
    """, cid=cid, timeout=20))
    written = int(r.artifact_content) if r.artifact_content else None
    # Either the writes fail (no space) or the cgroup OOM-kills the candidate; never 512 MB.
    assert (written is not None and written < 512) or r.exit_code not in (0, None), \
        (written, r.exit_code, r.output[-300:])
    assert not glob.glob(os.path.join(sandbox_parent(), f"forge-{cid}-*"))


def test_sweeping_a_dead_processs_view_never_recurses(tmp_path):
    """A forge-view-* directory holds a mount of the interpreter in its owner's mount
    namespace: the sweep removes only empty directories there, never what lies below."""
    import subprocess
    import sys
    import tempfile

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    view = tempfile.mkdtemp(prefix="forge-view-", dir=sandbox_parent())
    empty, busy = os.path.join(view, "p0"), os.path.join(view, "p1")
    os.mkdir(empty)
    os.mkdir(busy)
    keep = os.path.join(busy, "python3.11")  # stands for a file of the mounted prefix
    open(keep, "w").close()
    with open(os.path.join(view, owner.OWNER_FILE), "w") as fh:
        fh.write(f"{dead}:1")
    try:
        leftovers._swept = False
        leftovers.sweep_leftovers()
        assert os.path.exists(keep) and not os.path.exists(empty)
    finally:
        import shutil

        shutil.rmtree(view, ignore_errors=True)


WARM_PROBE = r"""
import json
from worker.records import Egress
from worker.sandbox import egress
from worker.sandbox.local import etc, leftovers, warm_process

def state():
    return {"swept": leftovers._swept, "skeletons": sorted(etc._etc_cache),
            "policy": ("policy", Egress()) in egress._lookups._items}

before = state()
warm_process()
print(json.dumps({"before": before, "after": state()}))
"""


def test_a_process_readies_its_first_sandbox_before_any_candidate():
    """``warm_process`` (a pool process at start, an embedded run's warm-up thread) does
    what a process's first sandbox would otherwise do in its candidate's time: the
    sweep, the default network mode's /etc skeleton, the default egress policy."""
    require_bwrap()
    import json
    import subprocess
    import sys

    from worker.sandbox import netns

    assert netns.slirp4netns_path(), "slirp4netns missing: apt-get install slirp4netns"
    done = subprocess.run([sys.executable, "-c", WARM_PROBE], capture_output=True, text=True,
                          timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["before"] == {"swept": False, "skeletons": [], "policy": False}  # control
    assert got["after"] == {"swept": True, "skeletons": ["slirp4netns"], "policy": True}
