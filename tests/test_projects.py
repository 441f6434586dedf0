"""Directory candidates (projects): packed once at planning, stored once in Redis by hash,
fetched by real workers, unpacked in the sandbox, requirements installed before the clock.

The same project (several modules, a data file, a binary file, an executable script, an
inside symlink, a requirement from a wheel it ships) runs through real ``celery worker``
processes and a real redis-server in local mode, through the real ``daytona`` SDK against
the emulator in Daytona mode, and through the embedded worker.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import threading
import time
import zipfile
from pathlib import Path

import pytest

from dispatcher.manifest import ManifestError, load_manifest
from dispatcher.pack import pack_directory
from tests.daytona_emulator import DaytonaEmulator
from tests.procs import CeleryWorker, forge_env, run_forge_cli
from worker.bundles import ARCHIVE_NAME, UNPACK
from worker.keys import bundle_key

MB = 1_000_000
BLOB = bytes(range(256)) * 16 + b"\x00\r\n\xff"  # every byte value, CR/LF, NUL
API_KEY = f"test-key-{secrets.token_hex(12)}"
SDK_ENV = {"DAYTONA_USE_DEPRECATED_POLLING": "true", "NO_PROXY": "127.0.0.1,localhost"}

RUN_PY = '''\
import hashlib, json, os, stat, subprocess, sys

import tinydep  # the project's requirement, installed from its own wheel

from agent import helpers


def main(argv):
    here = os.getcwd()
    report = {
        "greeting": helpers.greet(argv[1]),
        "feed": json.load(open("data/feed.json"))["events"],
        "blob_sha256": hashlib.sha256(open("assets/blob.bin", "rb").read()).hexdigest(),
        "hello_mode": oct(stat.S_IMODE(os.stat("tools/hello.sh").st_mode)),
        "hello_says": subprocess.run(["./tools/hello.sh"], capture_output=True,
                                     text=True).stdout.strip(),
        "link": os.readlink("latest.json"),
        "via_link": json.load(open("latest.json"))["events"],
        "tinydep": tinydep.VALUE,
        "tinydep_from": os.path.commonpath([tinydep.__file__, here]) == here,
        "present": sorted(os.listdir(".")),
        "cwd_is_workdir": os.path.dirname(os.path.abspath(argv[2])) == here,
    }
    with open(argv[2], "w", encoding="utf-8") as fh:
        fh.write("# project\\n\\n" + json.dumps(report))
    print("[Project] wrote", argv[2])
    return 0
'''


def tiny_wheel(name: str = "tinydep", value: int = 42) -> tuple[str, bytes]:
    """A minimal pure-python wheel with a valid RECORD: pip installs it with no index."""
    info = f"{name}-1.0.dist-info"
    files = {f"{name}.py": f"VALUE = {value}\n".encode(),
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: forge-tests\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n"}
    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = [f"{n},sha256={digest(d)},{len(d)}" for n, d in files.items()]
    files[f"{info}/RECORD"] = ("\n".join(record + [f"{info}/RECORD,,"]) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
    return f"{name}-1.0-py3-none-any.whl", buf.getvalue()


def make_project(root: Path) -> Path:
    """Several modules, a data file, a binary, an executable, an inside link, a
    requirement; plus what must never ship (VCS, caches, a virtualenv, an ignored file)."""
    files = {
        "agent/__init__.py": "",
        "agent/__main__.py": "import sys\nfrom agent import run\nsys.exit(run.main(sys.argv))\n",
        "agent/run.py": RUN_PY,
        "agent/helpers.py": "def greet(objective):\n    return 'hello ' + objective\n",
        "main.py": "import sys\nfrom agent import run\nsys.exit(run.main(sys.argv))\n",
        "data/feed.json": json.dumps({"events": ["a", "b", "ünï"]}),
        "tools/hello.sh": "#!/bin/sh\necho hello-from-sh\n",
        "requirements.txt": "./wheels/tinydep-1.0-py3-none-any.whl\n",
        ".forgeignore": "secret.txt\n",
        "secret.txt": "never shipped\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        "agent/__pycache__/run.cpython-311.pyc": "stale",
        "env-x/pyvenv.cfg": "home = /usr/bin\n",  # a virtualenv by content, whatever its name
        "node_modules/x/index.js": "",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "tools/hello.sh").chmod(0o755)
    (root / "assets").mkdir()
    (root / "assets/blob.bin").write_bytes(BLOB)
    name, wheel = tiny_wheel()
    (root / "wheels").mkdir()
    (root / "wheels" / name).write_bytes(wheel)
    (root / "latest.json").symlink_to("data/feed.json")
    return root


def make_broken(root: Path) -> Path:
    """A project whose requirement cannot be installed (no index, no such package)."""
    root.mkdir(parents=True)
    (root / "main.py").write_text("import sys\nopen(sys.argv[2], 'w').write('# never')\n")
    (root / "requirements.txt").write_text("--no-index\nnonexistent-forge-dep==1.0\n")
    return root


def manifest(base: Path, extra: str = "") -> Path:
    make_project(base / "agents" / "proj")
    make_broken(base / "agents" / "broken")
    path = base / "candidates.toml"
    path.write_text(
        'judge = "events"\ntimeout = 60\n'
        '[[candidate]]\nid = "mod"\npath = "agents/proj"\nmodule = "agent"\n'
        '[[candidate]]\nid = "ent"\npath = "agents/proj"\nentry = "main.py"\n'
        '[[candidate]]\nid = "broken"\npath = "agents/broken"\nentry = "main.py"\n' + extra,
        encoding="utf-8")
    return path


def results_of(run_dir: Path, summary: dict) -> dict[str, dict]:
    """Each candidate's full result (result.json: summary.json leaves out outputs)."""
    return {c["id"]: json.loads((run_dir / c["id"] / "result.json").read_text())
            for c in summary["candidates"]}


def check_project_ran(run_dir: Path, project: Path, objective: str) -> dict:
    """Both starts of the shared project succeeded with every file intact; the broken
    requirement is a failed result carrying pip's reason; hashes are recorded."""
    summary = json.loads((run_dir / "summary.json").read_text())
    bundle = pack_directory(project, 20 * MB)
    results = results_of(run_dir, summary)
    for cid in ("mod", "ent"):
        r = results[cid]
        assert r["success"], (cid, r["error_message"], r["output"])
        report = json.loads(r["artifact_content"].split("\n\n", 1)[1])
        assert report["greeting"] == f"hello {objective}"
        assert report["feed"] == report["via_link"] == ["a", "b", "ünï"]
        assert report["blob_sha256"] == hashlib.sha256(BLOB).hexdigest()  # binary intact
        assert report["hello_mode"] == "0o755" and report["hello_says"] == "hello-from-sh"
        assert report["link"] == "data/feed.json"
        assert report["tinydep"] == 42 and not report["tinydep_from"]  # installed, not shipped
        assert report["cwd_is_workdir"]
        present = set(report["present"])
        assert {"agent", "data", "assets", "tools", "wheels", "main.py"} <= present
        assert not present & {".git", "secret.txt", "env-x", "node_modules", ARCHIVE_NAME}
        assert r["timings"]["install"] > 0  # its own phase, outside the candidate's clock
        assert r["runtime_seconds"] < r["timings"]["task"] - r["timings"]["install"] + 0.01
        assert f"sha256 {bundle.sha256[:12]}" in "\n".join(r["log"])
        # Its one requirement is its own pure wheel: installed without pip (local_wheels).
        assert "installed without pip" in "\n".join(r["log"])
    broken = results["broken"]
    assert not broken["success"]
    assert "Installing requirements failed (exit code 1)" in broken["error_message"]
    assert "nonexistent-forge-dep" in broken["error_message"]  # pip's own words, the tail
    assert "No matching distribution" in broken["error_message"]
    assert "install" in broken["timings"] and broken["artifact_content"] is None
    assert "installed without pip" not in "\n".join(broken["log"])  # pip's to judge
    hashes = {c["id"]: c["content_sha256"] for c in summary["candidates"]}
    assert hashes["mod"] == hashes["ent"] == bundle.sha256
    assert hashes["broken"] == pack_directory(project.parent / "broken", MB).sha256
    shown = {c["id"]: c["script"] for c in summary["candidates"]}
    assert shown == {"mod": "agents/proj -m agent", "ent": "agents/proj/main.py",
                     "broken": "agents/broken/main.py"}
    return summary


def wait_summary(artifacts: Path, run_id: str, timeout: float = 240) -> dict:
    path = artifacts / run_id / "summary.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"run {run_id} did not finish"
        time.sleep(0.2)
    return json.loads(path.read_text())


# -- planning ------------------------------------------------------------------------


def test_a_project_packs_deterministically_and_candidates_share_one_bundle(tmp_path):
    m = load_manifest(manifest(tmp_path))
    mod, ent, broken = m.candidates
    assert mod.project.bundle is ent.project.bundle  # packed once for both
    assert mod.project.requirements_file == "requirements.txt"
    files = mod.project.bundle.files
    assert {"agent/run.py", "data/feed.json", "assets/blob.bin", "tools/hello.sh"} <= files
    assert not any(f.startswith((".git/", "env-x/", "node_modules/")) or f.endswith(".pyc")
                   or f == "secret.txt" for f in files)
    again = pack_directory(tmp_path / "agents" / "proj", 20 * MB)
    assert again.data == mod.project.bundle.data  # same tree, same bytes, same hash
    (tmp_path / "agents" / "proj" / "data" / "feed.json").write_text('{"events": []}')
    assert pack_directory(tmp_path / "agents" / "proj", 20 * MB).sha256 != again.sha256
    (tmp_path / "agents" / "proj" / "secret.txt").write_text("changed, still ignored")
    from dispatcher.plan import plan_run
    from dispatcher.request import RunRequest

    plan = plan_run(RunRequest("obj", artifacts_dir=str(tmp_path)),
                    load_manifest(tmp_path / "candidates.toml"))
    assert len(plan.bundles) == 2  # two projects, three candidates
    for task in plan.tasks:  # the message names the bundle, never carries it
        doc = json.dumps(task.to_dict())
        assert len(doc) < 4096 and task.project.sha256 in doc and task.script == ""


@pytest.mark.processes
def test_a_symlink_out_of_the_project_is_refused_at_planning(tmp_path):
    m = manifest(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("host secret")
    (tmp_path / "agents" / "proj" / "data" / "leak.txt").symlink_to(outside)
    with pytest.raises(ManifestError) as err:
        load_manifest(m)
    text = str(err.value)
    assert "candidate 'mod'" in text and "data/leak.txt" in text
    assert "outside the project" in text and str(outside) in text
    done = run_forge_cli(["run", "--candidates", str(m), "--no-post"],
                         forge_env(None, tmp_path / "art"), timeout=60)
    assert done.returncode != 0 and "data/leak.txt" in done.stderr + done.stdout
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").iterdir())
    # Listed in .forgeignore, the link is not shipped, so nothing is refused.
    (tmp_path / "agents" / "proj" / ".forgeignore").write_text("secret.txt\ndata/leak.txt\n")
    assert "data/leak.txt" not in load_manifest(m).candidates[0].project.bundle.files


@pytest.mark.processes
def test_an_oversize_project_is_refused_with_its_size_and_the_cap(tmp_path):
    m = manifest(tmp_path)
    (tmp_path / "agents" / "proj" / "assets" / "big.bin").write_bytes(os.urandom(1_500_000))
    env = forge_env(None, tmp_path / "art", FORGE_PROJECT_MAX_MB="1")
    done = run_forge_cli(["run", "--candidates", str(m), "--no-post"], env, timeout=60)
    assert done.returncode != 0
    out = done.stderr + done.stdout
    assert "candidate 'mod'" in out and "over the size cap of 1.0 MB" in out
    assert "1.5 MB" in out and "assets/big.bin" in out and "FORGE_PROJECT_MAX_MB" in out
    # Positive control: under a larger cap the same project plans.
    done = run_forge_cli(["run", "--candidates", str(m), "--no-post", "--detach"],
                         dict(env, FORGE_PROJECT_MAX_MB="2"), timeout=60)
    assert "over the size cap" not in done.stderr + done.stdout


@pytest.mark.parametrize("entry, fix", [
    ('path = "agents/proj"\n', "exactly one of 'entry'"),
    ('path = "agents/proj"\nentry = "main.py"\nmodule = "agent"\n', "exactly one of 'entry'"),
    ('path = "agents/proj"\nentry = "nope.py"\n', "not a file the project ships"),
    ('path = "agents/proj"\nentry = "secret.txt"\n', "not a file the project ships"),
    ('path = "agents/proj"\nmodule = "data"\n', "python3 -m data cannot start it"),
    ('path = "agents/proj"\nmodule = "a-b"\n', "not a Python module name"),
    ('path = "agents/none"\nmodule = "a"\n', "no such directory"),
    ('path = "agents/proj"\nmodule = "agent"\nscript = "x.py"\n', "not both"),
])
def test_project_manifest_errors_name_the_field_and_the_fix(tmp_path, entry, fix):
    manifest(tmp_path)
    path = tmp_path / "bad.toml"
    path.write_text(f'[[candidate]]\nid = "bad"\n{entry}', encoding="utf-8")
    with pytest.raises(ManifestError, match="candidate 'bad'") as err:
        load_manifest(path)
    assert fix in str(err.value)


def test_pyproject_dependencies_become_the_candidates_requirements(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "main.py").write_text("")
    (root / "pyproject.toml").write_text(
        '[project]\nname = "p"\nversion = "1"\ndependencies = ["tinydep==1.0", "rich"]\n')
    (tmp_path / "c.toml").write_text('[[candidate]]\nid = "p"\npath = "p"\nentry = "main.py"\n'
                                     'requirements = ["attrs"]\n')
    c = load_manifest(tmp_path / "c.toml").candidates[0]
    assert c.requirements == ("tinydep==1.0", "rich", "attrs")
    assert c.project.requirements_file == ""


# -- running: local, Daytona, embedded -------------------------------------------------


def test_a_project_runs_on_real_workers_in_local_mode(redis_server, workers, artifacts,
                                                      tmp_path):
    m = manifest(tmp_path)
    env = forge_env(redis_server.url, artifacts)
    workers(env, n=1, concurrency=3)
    objective = "list events; $(reboot) 'quoted'"
    done = run_forge_cli(["run", objective, "--candidates", str(m), "--run-id", "proj-local",
                          "--no-post"], env)
    assert done.returncode == 0, done.stderr
    wait_summary(artifacts, "proj-local")
    summary = check_project_ran(artifacts / "proj-local", tmp_path / "agents" / "proj",
                                objective)
    client = redis_server.client()
    assert len(list(client.scan_iter(bundle_key("*")))) == 2  # one per project, not per task
    for page in ("report.md", "report.html"):  # the report ties results to their code
        text = (artifacts / "proj-local" / page).read_text()
        for c in summary["candidates"]:
            assert f"sha256 {c['content_sha256']}" in text, (page, c["id"])


@pytest.mark.processes
def test_a_project_runs_in_daytona_mode_uploaded_in_one_call(tmp_path):
    m = manifest(tmp_path)
    artifacts = tmp_path / "artifacts"
    from tests.procs import RedisServer

    with DaytonaEmulator(api_key=API_KEY) as emu:
        redis = RedisServer(tmp_path / "redis").start()
        env = forge_env(redis.url, artifacts, DAYTONA_API_KEY=API_KEY,
                        DAYTONA_API_URL=emu.url, **SDK_ENV)
        worker = CeleryWorker(env, "dt", tmp_path, concurrency=4, pool="threads")
        try:
            worker.start()
            objective = "daytona 'objective' $(x)"
            done = run_forge_cli(["run", objective, "--daytona", "--candidates", str(m),
                                  "--run-id", "proj-dt", "--no-post"], env)
            assert done.returncode == 0, done.stderr
            wait_summary(artifacts, "proj-dt")
        finally:
            worker.stop()
            redis.stop()
        summary = check_project_ran(artifacts / "proj-dt", tmp_path / "agents" / "proj",
                                    objective)
        assert summary["execution_mode"] == "daytona"
        assert emu.alive() == []
        sandboxes = {r["candidate_id"]: r["sandbox_id"] for r in summary["results"]}
        bundle = pack_directory(tmp_path / "agents" / "proj", 20 * MB)
        for cid in ("mod", "ent"):
            sid = sandboxes[cid]
            uploads = [(path, content) for s, path, content in emu.uploads if s == sid]
            assert len(uploads) == 1  # the whole project in one call
            assert uploads[0][0].endswith(ARCHIVE_NAME) and uploads[0][1] == bundle.data
            ran = [c["command"] for c in emu.calls if c["path"] == "execute"
                   and c["sandbox"] == sid]
            assert "tarfile" in ran[0] and UNPACK.splitlines()[1] in ran[0]  # unpacked there
            assert "NOT_HANDLED" in ran[1]  # its own pure wheel: worker/local_wheels.py
            assert not any("-m pip" in c for c in ran) and len(ran) == 3  # pip never started
            assert ("-m agent" if cid == "mod" else "main.py") in ran[2]
            assert all(c.get("cwd") for c in emu.calls if c["path"] == "execute"
                       and c["sandbox"] == sid)  # the entry runs from the uploaded directory


@pytest.mark.processes
def test_a_project_runs_in_embedded_mode(tmp_path):
    from dispatcher import run_forge

    m = manifest(tmp_path)
    result = run_forge("embedded objective", candidates=str(m),
                       artifacts_dir=str(tmp_path / "art"), run_id="proj-emb", post=False)
    assert result.winner_id in (None, "mod", "ent")
    check_project_ran(tmp_path / "art" / "proj-emb", tmp_path / "agents" / "proj",
                      "embedded objective")


# -- shipped once -----------------------------------------------------------------------


def test_fifty_candidates_sharing_a_5mb_project_keep_one_copy_in_redis(
        redis_server, workers, artifacts, tmp_path):
    """The 50 task messages name the bundle; Redis holds it once. Measured with INFO
    memory and MEMORY USAGE, against a bound that 50 copies would break (checked)."""
    root = tmp_path / "big"
    (root / "agent").mkdir(parents=True)
    (root / "agent" / "__main__.py").write_text(
        "import os, sys\nsize = os.path.getsize('weights.bin')\n"
        "open(sys.argv[2], 'w').write(f'# ok {size}')\n")
    (root / "weights.bin").write_bytes(os.urandom(5 * MB))  # incompressible
    n = 50
    m = tmp_path / "candidates.toml"
    m.write_text("".join(f'[[candidate]]\nid = "c{i:02d}"\npath = "big"\nmodule = "agent"\n'
                         for i in range(n)))
    bundle = pack_directory(root, 20 * MB)
    client = redis_server.client()
    env = forge_env(redis_server.url, artifacts)
    used = lambda: client.info("memory")["used_memory"]  # noqa: E731
    baseline = used()
    done = run_forge_cli(["run", "--candidates", str(m), "--run-id", "mem", "--no-post",
                          "--detach"], env)
    assert done.returncode == 0, done.stderr
    published = client.lrange("celery", 0, -1)
    assert len(published) == n and max(map(len, published)) < 16_000  # hashes, not bytes
    keys = list(client.scan_iter("*"))
    stored = sum(client.memory_usage(k) or 0 for k in keys)
    after_publish = used() - baseline
    assert [k for k in keys if k.startswith(bundle_key("").encode())] == [bundle_key(bundle.sha256)
                                                                    .encode()]
    bound = 2 * len(bundle.data)  # "near one copy": under two, whatever else is stored
    assert stored < bound and after_publish < bound, (stored, after_publish)

    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], used() - baseline)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        workers(env, n=1, concurrency=3)
        summary = wait_summary(artifacts, "mem", timeout=400)
    finally:
        stop.set()
        sampler.join()
    results = results_of(artifacts / "mem", summary).values()
    assert all(r["success"] for r in results), [r["error_message"] for r in results
                                                if not r["success"]]
    assert all(r["artifact_content"] == f"# ok {5 * MB}" for r in results)
    # While workers fetch it, Redis briefly holds a reply buffer per fetching process (3
    # here): still a handful of copies, never one per candidate.
    generous = 6 * len(bundle.data)
    assert peak[0] < generous, peak[0]
    print(f"\n50 candidates sharing a {len(bundle.data) / MB:.1f} MB project: stored "
          f"{stored / MB:.2f} MB after publishing, INFO used_memory +{after_publish / MB:.2f} "
          f"MB, peak +{peak[0] / MB:.2f} MB during the run")
    # Positive control: fifty copies (what shipping bytes per task would store) break
    # both bounds.
    control = used()
    for i in range(n):
        client.set(f"copy:{i}", bundle.data)
    grown = used() - control
    print(f"positive control: fifty copies add {grown / MB:.1f} MB")
    assert grown > generous > bound, grown
    client.delete(*[f"copy:{i}" for i in range(n)])


def test_a_tampered_or_missing_bundle_is_a_failed_result_not_a_crash(
        redis_server, workers, artifacts, tmp_path):
    """A worker checks every bundle against the hash its task names: bytes changed in
    Redis are refused, a bundle gone is reported, and the run still finishes."""
    for name in ("one", "two"):
        root = tmp_path / name
        root.mkdir()
        (root / "main.py").write_text("import sys\nopen(sys.argv[2], 'w').write('# ran')\n")
    (tmp_path / "two" / "data.txt").write_text("two")
    m = tmp_path / "candidates.toml"
    m.write_text('[[candidate]]\nid = "one"\npath = "one"\nentry = "main.py"\n'
                 '[[candidate]]\nid = "two"\npath = "two"\nentry = "main.py"\n')
    env = forge_env(redis_server.url, artifacts)
    done = run_forge_cli(["run", "--candidates", str(m), "--run-id", "tamper", "--no-post",
                          "--detach"], env)
    assert done.returncode == 0, done.stderr
    client = redis_server.client()
    one = bundle_key(pack_directory(tmp_path / "one", MB).sha256)
    two = bundle_key(pack_directory(tmp_path / "two", MB).sha256)
    data = client.get(one)
    client.set(one, data.replace(b"# ran", b"# pwn"))  # same size, other bytes
    client.delete(two)
    workers(env, n=1, concurrency=2)
    summary = wait_summary(artifacts, "tamper")
    results = results_of(artifacts / "tamper", summary)
    assert not results["one"]["success"] and not results["two"]["success"]
    assert "does not match its sha256" in results["one"]["error_message"]
    assert "not in the result backend" in results["two"]["error_message"]
    assert results["one"]["sandbox_id"] is None  # refused before any sandbox was made


def test_the_local_unpacker_never_follows_a_link_or_leaves_the_directory(tmp_path):
    """The host-side unpack of a local sandbox treats the archive as hostile."""
    import tarfile

    from worker.sandbox.local.untar import UnsafeArchive, extract

    def tar(*members: tuple[str, bytes, str]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data, link in members:
                info = tarfile.TarInfo(name)
                if link:
                    info.type, info.linkname = tarfile.SYMTYPE, link
                else:
                    info.size = len(data)
                t.addfile(info, io.BytesIO(data) if data else None)
        return buf.getvalue()

    outside = tmp_path / "outside"
    outside.mkdir()
    hostile = [
        tar(("../escape", b"x", "")),
        tar(("/abs", b"x", "")),
        tar(("up", b"", "../outside")),
        tar(("abs", b"", str(outside))),
        tar(("d", b"", "."), ("d/../../escape", b"x", "")),
        tar(("d", b"", str(outside)), ("d/x", b"x", "")),
    ]
    for archive in hostile:
        dest = tmp_path / f"dest{hostile.index(archive)}"
        dest.mkdir()
        with pytest.raises((UnsafeArchive, OSError)):
            extract(archive, str(dest))
    assert list(outside.iterdir()) == [] and not (tmp_path / "escape").exists()
    # Positive control: a packed project unpacks whole, modes and links included.
    project = make_project(tmp_path / "proj")
    dest = tmp_path / "ok"
    dest.mkdir()
    extract(pack_directory(project, 20 * MB).data, str(dest))
    assert (dest / "assets" / "blob.bin").read_bytes() == BLOB
    assert os.access(dest / "tools" / "hello.sh", os.X_OK)
    assert os.readlink(dest / "latest.json") == "data/feed.json"


def test_resume_stores_an_expired_bundle_again(redis_server, workers, artifacts, tmp_path):
    """``forge resume`` re-plans the run from today's files: the same project has the
    same hash (so the run's definition still matches), and its bundle, gone from Redis
    (expired), is stored again before the missing candidates are published."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "main.py").write_text("import sys\nopen(sys.argv[2], 'w').write('# resumed')\n")
    m = tmp_path / "candidates.toml"
    m.write_text('[[candidate]]\nid = "p"\npath = "p"\nentry = "main.py"\n')
    env = forge_env(redis_server.url, artifacts)
    done = run_forge_cli(["run", "--candidates", str(m), "--run-id", "res", "--no-post",
                          "--detach"], env)
    assert done.returncode == 0, done.stderr
    client = redis_server.client()
    key = bundle_key(pack_directory(root, MB).sha256)
    assert client.exists(key)
    client.delete("celery", key)  # the task lost from the queue, the bundle expired
    workers(env, n=1, concurrency=1)
    resumed = run_forge_cli(["resume", "res"], env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = wait_summary(artifacts, "res")
    result = results_of(artifacts / "res", summary)["p"]
    assert result["success"] and result["artifact_content"] == "# resumed", result
    assert client.exists(key)


@pytest.mark.processes
def test_the_competitions_network_policy_applies_to_the_install(tmp_path):
    """With network = false, pip in the sandbox cannot reach an index the host can: the
    install fails with pip's reason and the index never sees a request. (Positive
    control: pip on the host installs from that same index.)"""
    import http.server
    import subprocess
    import sys

    from dispatcher.plan import plan_run
    from dispatcher.request import RunRequest
    from worker.lifecycle import run_lifecycle
    from worker.sandbox.local import LocalBackend

    name, wheel = tiny_wheel()
    index = tmp_path / "index" / "simple" / "tinydep"
    index.mkdir(parents=True)
    (index / name).write_bytes(wheel)
    (index / "index.html").write_text(f'<a href="{name}">{name}</a>')
    seen: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path / "index"), **kw)

        def log_message(self, *_a):
            seen.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    try:
        root = tmp_path / "p"
        root.mkdir()
        (root / "main.py").write_text("import sys, tinydep\nopen(sys.argv[2], 'w').write('#')\n")
        (root / "requirements.txt").write_text(f"--index-url {url}\ntinydep==1.0\n")
        (tmp_path / "c.toml").write_text('network = false\n[[candidate]]\nid = "p"\n'
                                         'path = "p"\nentry = "main.py"\n')
        plan = plan_run(RunRequest("obj", artifacts_dir=str(tmp_path)),
                        load_manifest(tmp_path / "c.toml"))
        assert plan.tasks[0].network is False
        result = run_lifecycle(LocalBackend(), plan.tasks[0], lambda _m: None,
                               bundles=plan.bundles.__getitem__)
        assert not result.success
        assert "Installing requirements failed (exit code 1)" in result.error_message
        assert "No matching distribution found for tinydep==1.0" in result.error_message
        assert seen == []  # not one request left the sandbox
        host = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                               "--disable-pip-version-check", "--target", str(tmp_path / "t"),
                               "--index-url", url, "tinydep==1.0"],
                              capture_output=True, text=True, timeout=120)
        assert host.returncode == 0, host.stderr
        assert (tmp_path / "t" / "tinydep.py").exists() and seen
    finally:
        server.shutdown()


def test_threads_of_a_worker_fetch_a_bundle_once(redis_server, tmp_path):
    """Sixteen candidates of one project start at once on a thread pool: one fetch from
    Redis, every thread gets the verified bytes; a wrong hash is refused."""
    from worker.bundles import BundleCache, BundleError

    bundle = pack_directory(make_project(tmp_path / "p"), 20 * MB)
    client = redis_server.client()
    client.set(bundle_key(bundle.sha256), bundle.data)

    class Backend:  # what BundleCache uses of Celery's RedisBackend: get(key)
        get = staticmethod(client.get)

    cache = BundleCache()
    barrier = threading.Barrier(16)
    got: list[bytes] = []

    def candidate() -> None:
        barrier.wait()
        got.append(cache.get(Backend, bundle.sha256))

    threads = [threading.Thread(target=candidate) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.fetches == 1 and len(got) == 16 and all(g == bundle.data for g in got)
    client.set(bundle_key("0" * 64), bundle.data)
    with pytest.raises(BundleError, match="does not match its sha256"):
        cache.get(Backend, "0" * 64)


def test_trials_of_a_project_share_its_one_stored_bundle(redis_server, workers, artifacts,
                                                         tmp_path):
    """Trials multiply tasks, not bytes: K trials of two candidates sharing a project
    publish 2 x K messages that name one bundle, stored once, and every trial runs it."""
    root = tmp_path / "p"
    (root / "agent").mkdir(parents=True)
    (root / "agent" / "__main__.py").write_text(
        "import sys\nopen(sys.argv[2], 'w').write('# ' + open('data.txt').read())\n")
    (root / "data.txt").write_bytes(b"x" * 200_000)
    m = tmp_path / "candidates.toml"
    m.write_text('[[candidate]]\nid = "a"\npath = "p"\nmodule = "agent"\n'
                 '[[candidate]]\nid = "b"\npath = "p"\nmodule = "agent"\n')
    env = forge_env(redis_server.url, artifacts)
    done = run_forge_cli(["run", "--candidates", str(m), "--run-id", "tri", "--no-post",
                          "--trials", "3", "--detach"], env)
    assert done.returncode == 0, done.stderr
    client = redis_server.client()
    published = client.lrange("celery", 0, -1)
    sha = pack_directory(root, MB).sha256
    bodies = [base64.b64decode(json.loads(msg)["body"]) for msg in published]
    assert len(published) == 6 and all(len(msg) < 16_000 for msg in published)
    assert all(sha.encode() in body for body in bodies)  # the hash, not the bytes
    assert list(client.scan_iter(bundle_key("*"))) == [bundle_key(sha).encode()]
    workers(env, n=1, concurrency=2)
    summary = wait_summary(artifacts, "tri")
    assert {c["id"]: c["content_sha256"] for c in summary["candidates"]} == {"a": sha, "b": sha}
    assert all(s["success"] == 100 for s in summary["scores"]), summary["scores"]
