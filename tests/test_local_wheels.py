"""worker/local_wheels.py: a project's own pure wheels are installed without pip, and
everything else is left to pip (exit NOT_HANDLED) with nothing written."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from tests.test_projects import tiny_wheel
from worker import lifecycle, local_wheels
from worker.local_wheels import NOT_HANDLED
from worker.sandbox.local import wheels


def wheel(name: str = "tinydep", *, extra: dict[str, bytes] | None = None,
          metadata: str = "", wheel_meta: str = "Root-Is-Purelib: true\nTag: py3-none-any\n",
          symlink: str | None = None) -> bytes:
    info = f"{name}-1.0.dist-info"
    files = {f"{name}.py": b"VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{metadata}"
             .encode(),
             f"{info}/WHEEL": f"Wheel-Version: 1.0\n{wheel_meta}".encode(),
             f"{info}/RECORD": f"{name}.py,,\n{info}/RECORD,,\n".encode(), **(extra or {})}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
        if symlink:
            link = zipfile.ZipInfo(symlink)
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(link, "/etc/passwd")
    return buf.getvalue()


@pytest.fixture
def project(tmp_path: Path, monkeypatch):
    """A project directory (the working directory) and an empty site-packages."""
    root, site = tmp_path / "proj", tmp_path / "site"
    (root / "wheels").mkdir(parents=True)
    site.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setattr(local_wheels.sysconfig, "get_paths", lambda: {"purelib": str(site)})
    return root, site


def write(root: Path, requirements: str, **wheels: bytes) -> None:
    (root / "requirements.txt").write_text(requirements)
    for name, data in wheels.items():
        (root / "wheels" / name).write_bytes(data)


def test_a_pure_wheel_is_installed_as_pip_would_leave_it(project, capsys):
    root, site = project
    name, data = tiny_wheel()  # the suite's wheel with a full RECORD, as pip installs it
    write(root, f"# our own\n./wheels/{name}\n\n", **{name: data})
    assert local_wheels.main(["requirements.txt"]) == 0
    assert (site / "tinydep.py").read_text() == "VALUE = 42\n"
    info = site / "tinydep-1.0.dist-info"
    assert (info / "INSTALLER").read_text() == "dream-foundry\n"
    assert (info / "RECORD").read_text().endswith("tinydep-1.0.dist-info/INSTALLER,,\n")
    assert sorted(p.name for p in info.iterdir()) == ["INSTALLER", "METADATA", "RECORD", "WHEEL"]
    assert "Installed tinydep-1.0 from ./wheels/" in capsys.readouterr().out


@pytest.mark.parametrize("line", [
    "tinydep==1.0", "--no-index", "-r other.txt", "./wheels/x.whl --hash=sha256:00",
    "https://example.org/x-1.0-py3-none-any.whl", "file:./wheels/x.whl",
    "../outside/x-1.0-py3-none-any.whl", "/abs/x-1.0-py3-none-any.whl",
    "./wheels/x-1.0-py3-none-any.whl; python_version < '3'", "./wheels/${NAME}.whl",
    "-e .", "./wheels/missing-1.0-py3-none-any.whl",
])
def test_anything_but_plain_local_wheels_is_left_to_pip(project, line):
    root, site = project
    write(root, f"./wheels/ok-1.0-py3-none-any.whl\n{line}\n",
          **{"ok-1.0-py3-none-any.whl": wheel("ok")})
    assert local_wheels.main(["requirements.txt"]) == NOT_HANDLED
    assert list(site.iterdir()) == []  # nothing installed: pip starts from scratch


@pytest.mark.parametrize("data", [
    wheel(metadata="Requires-Dist: requests\n"),  # needs resolving
    wheel(metadata="Requires-Python: >=3.99\n"),
    wheel(wheel_meta="Root-Is-Purelib: false\nTag: cp311-cp311-linux_x86_64\n"),
    wheel(wheel_meta="Root-Is-Purelib: true\nTag: py2-none-any\n"),
    wheel(extra={"tinydep-1.0.data/scripts/run": b"#!python\n"}),
    wheel(extra={"tinydep-1.0.dist-info/entry_points.txt": b"[console_scripts]\nx = a:b\n"}),
    wheel(extra={"../escaped.py": b"boom = 1\n"}),
    wheel(extra={"/abs.py": b"boom = 1\n"}),
    wheel(symlink="tinydep_link.py"),
    b"not a zip at all",
], ids=["requires-dist", "requires-python", "platform", "py2-only", "data-dir",
        "console-scripts", "dotdot-entry", "absolute-entry", "symlink-entry", "not-a-zip"])
def test_a_wheel_pip_must_judge_is_left_to_pip(project, data):
    root, site = project
    write(root, "./wheels/tinydep-1.0-py3-none-any.whl\n",
          **{"tinydep-1.0-py3-none-any.whl": data})
    assert local_wheels.main(["requirements.txt"]) == NOT_HANDLED
    assert list(site.iterdir()) == []
    assert not (root.parent / "escaped.py").exists()


def test_the_positive_control_of_the_refusals_installs(project):
    """The wheel builder above, left plain, qualifies: the refusals are its variations."""
    root, site = project
    write(root, "./wheels/tinydep-1.0-py3-none-any.whl\n",
          **{"tinydep-1.0-py3-none-any.whl": wheel()})
    assert local_wheels.main(["requirements.txt"]) == 0
    assert (site / "tinydep.py").exists()


def test_an_existing_file_or_two_wheels_writing_one_file_are_left_to_pip(project):
    root, site = project
    write(root, "./wheels/a-1.0-py3-none-any.whl\n./wheels/b-1.0-py3-none-any.whl\n",
          **{"a-1.0-py3-none-any.whl": wheel("a", extra={"shared.py": b""}),
             "b-1.0-py3-none-any.whl": wheel("b", extra={"shared.py": b""})})
    assert local_wheels.main(["requirements.txt"]) == NOT_HANDLED
    assert list(site.iterdir()) == []
    (root / "requirements.txt").write_text("./wheels/a-1.0-py3-none-any.whl\n")
    (site / "shared.py").write_text("mine")
    assert local_wheels.main(["requirements.txt"]) == NOT_HANDLED
    assert sorted(os.listdir(site)) == ["shared.py"]


def test_the_lifecycle_tries_it_only_for_a_project_requirements_file(tmp_path):
    from dataclasses import replace

    from dispatcher.manifest import load_manifest
    from dispatcher.plan import plan_run
    from dispatcher.request import RunRequest
    from tests.test_projects import make_project

    make_project(tmp_path / "proj")
    (tmp_path / "c.toml").write_text('[[candidate]]\nid = "p"\npath = "proj"\n'
                                     'entry = "main.py"\n')
    task = plan_run(RunRequest("obj", artifacts_dir=str(tmp_path)),
                    load_manifest(tmp_path / "c.toml")).tasks[0]
    command = lifecycle.local_wheels_command(task)
    assert command[:3] == ["python3", "-I", "-c"] and command[4] == "requirements.txt"
    assert command[3] == Path(local_wheels.__file__).read_text()
    assert lifecycle.local_wheels_command(replace(task, requirements=["rich"])) is None
    assert lifecycle.install_command(replace(task, requirements=["rich"]))[-1] == "rich"


# -- from the host, into a local sandbox (worker/sandbox/local/wheels.py) -------------------


@pytest.fixture
def host(tmp_path: Path):
    """A sandbox's work directory holding a project, and its empty site-packages."""
    work, site = tmp_path / "work", tmp_path / "python" / "site"
    (work / "wheels").mkdir(parents=True)
    site.mkdir(parents=True)
    return work, site


def test_the_host_installs_a_pure_wheel_owned_by_the_sandbox_user(host):
    work, site = host
    name, data = tiny_wheel()
    write(work, f"./wheels/{name}\n", **{name: data})
    uid = 1_800_000_123 if os.geteuid() == 0 else None
    lines = wheels.install_own_wheels(str(work), "requirements.txt", str(site), uid)
    assert lines == [f"Installed tinydep-1.0 from ./wheels/{name}"]
    assert (site / "tinydep.py").read_text() == "VALUE = 42\n"
    assert (site / "tinydep-1.0.dist-info" / "INSTALLER").read_text() == "dream-foundry\n"
    if uid is not None:
        owners = {p.stat().st_uid for p in site.rglob("*")}
        assert owners == {uid}


def test_the_host_follows_no_link_of_the_project(host, tmp_path):
    """A requirements file, a wheel, or a directory on the way that is a link (even one
    staying inside) is left to pip in the sandbox: nothing is read through it."""
    work, site = host
    name, data = tiny_wheel()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / name).write_bytes(data)
    (outside / "requirements.txt").write_text(f"./wheels/{name}\n")
    cases = {
        "requirements link": lambda: (work / "requirements.txt").symlink_to(
            outside / "requirements.txt"),
        "wheel link": lambda: ((work / "requirements.txt").write_text(f"./wheels/{name}\n"),
                               (work / "wheels" / name).symlink_to(outside / name)),
        "directory link": lambda: ((work / "requirements.txt").write_text(f"./w2/{name}\n"),
                                   (work / "w2").symlink_to(outside)),
    }
    def clear() -> None:
        for p in [*work.iterdir(), *(work / "wheels").iterdir()]:
            if p.is_symlink() or p.is_file():
                p.unlink()

    for label, make in cases.items():
        clear()
        make()
        assert wheels.install_own_wheels(str(work), "requirements.txt", str(site), None) \
            is None, label
        assert list(site.iterdir()) == [], label
    # The positive control: the same files, not through links, install.
    clear()
    write(work, f"./wheels/{name}\n", **{name: data})
    assert wheels.install_own_wheels(str(work), "requirements.txt", str(site), None)


def test_the_host_leaves_large_or_unlisted_wheels_to_pip(host, monkeypatch):
    work, site = host
    write(work, "./wheels/tinydep-1.0-py3-none-any.whl\n",
          **{"tinydep-1.0-py3-none-any.whl": wheel(extra={"big.bin": b"x" * 4096})})
    monkeypatch.setattr(wheels, "MAX_BYTES", 4000)
    assert wheels.install_own_wheels(str(work), "requirements.txt", str(site), None) is None
    monkeypatch.setattr(wheels, "MAX_BYTES", 1 << 20)
    monkeypatch.setattr(wheels, "MAX_FILES", 4)  # the wheel has 5 files
    assert wheels.install_own_wheels(str(work), "requirements.txt", str(site), None) is None
    monkeypatch.setattr(wheels, "MAX_FILES", 5)
    (work / "requirements.txt").write_text("tinydep==1.0\n")
    assert wheels.install_own_wheels(str(work), "requirements.txt", str(site), None) is None
    (work / "requirements.txt").unlink()
    assert wheels.install_own_wheels(str(work), "requirements.txt", str(site), None) is None
    assert list(site.iterdir()) == []
    write(work, "./wheels/tinydep-1.0-py3-none-any.whl\n")
    assert wheels.install_own_wheels(str(work), "requirements.txt", str(site), None)


def test_a_wheel_lying_about_a_member_is_a_failed_install_not_a_crash(host, tmp_path):
    """A member whose data does not match its header: the local sandbox reports a failed
    install (exit 1, the reason), as pip would fail; nothing raises into the lifecycle."""
    from worker.records import Limits
    from worker.sandbox.base import SandboxRequest
    from worker.sandbox.local.sandbox import LocalSandbox

    data = bytearray(wheel())
    at = data.index(b"VALUE = 42")
    data[at:at + 5] = b"EVIL!"  # stored uncompressed: the CRC no longer matches
    (tmp_path / "root").mkdir()
    sandbox = LocalSandbox(SandboxRequest(run_id="r", candidate_id="w", timeout=5,
                                          network=False, env={}, limits=Limits()),
                           str(tmp_path / "root"), "/sandbox")
    try:
        (Path(sandbox.host_workdir) / "wheels").mkdir()
        write(Path(sandbox.host_workdir), "./wheels/tinydep-1.0-py3-none-any.whl\n",
              **{"tinydep-1.0-py3-none-any.whl": bytes(data)})
        got = sandbox.install_own_wheels("requirements.txt", 5)
        assert got is not None and got.exit_code == 1 and "CRC" in got.output, got
    finally:
        sandbox.cgroups.remove()
