"""The sandbox's /etc skeleton (worker/sandbox/local/etc.py): the public directories are
copies, faithful to the host's and remade when the host's change, and what the worker
cannot open is left out, never opened up."""

from __future__ import annotations

import hashlib
import os
import stat
import textwrap
from dataclasses import replace

import pytest

from worker.sandbox.local import etc
from worker.sandbox.visible import ETC_FILES


def tree(root: str) -> dict[str, tuple]:
    """Every entry under ``root``: kind, mode, symlink target or content hash."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir", stat.S_IMODE(st.st_mode))
            else:
                with open(path, "rb") as fh:
                    what = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(fh.read()).hexdigest())
            out[os.path.relpath(path, root)] = what
    return out


@pytest.fixture()
def source(tmp_path):
    """A public directory with a file, a symlink and a closed subdirectory, standing in
    for /etc/ssl/certs; the skeletons it makes are dropped from the cache after."""
    src = tmp_path / "etc" / "ssl" / "certs"
    (src / "private").mkdir(parents=True)
    (src / "bundle.crt").write_text("ROOT-A\n")
    os.symlink("bundle.crt", src / "abcd1234.0")
    (src / "private" / "key.pem").write_text("SECRET\n")
    os.chmod(src / "private", 0o700)
    os.chmod(src / "private" / "key.pem", 0o600)
    yield str(src)
    etc._etc_cache.pop("test-net", None)


def skeleton_of(source: str, parent) -> str:
    """The copy of ``source`` (under its ``.../etc``) in the skeleton made now."""
    root = source[:source.rindex("/etc/") + len("/etc")]
    args = etc.etc_binds("test-net", str(parent), sources=(source,), root=root)
    assert args[0] == "--ro-bind" and args[2] == "/etc" and len(args) == 3, args
    return os.path.join(args[1], os.path.relpath(source, root))


def test_a_public_directory_is_copied_faithfully_and_a_closed_one_stays_closed(
        source, tmp_path):
    copy = skeleton_of(source, tmp_path)
    assert os.path.isdir(copy) and not os.path.islink(copy)
    assert tree(copy) == tree(source)  # names, symlinks as symlinks, modes, contents
    assert stat.S_IMODE(os.lstat(os.path.join(copy, "private")).st_mode) == 0o700


def test_the_skeleton_is_kept_while_nothing_changes_and_remade_when_anything_does(
        source, tmp_path):
    first = skeleton_of(source, tmp_path)
    assert skeleton_of(source, tmp_path) == first  # positive control: cached
    with open(os.path.join(source, "bundle.crt"), "a") as fh:  # edited in place
        fh.write("ROOT-B\n")
    second = skeleton_of(source, tmp_path)
    assert second != first
    assert open(os.path.join(second, "bundle.crt")).read() == "ROOT-A\nROOT-B\n"
    with open(os.path.join(source, "private", "key.pem"), "a") as fh:  # in a subdirectory
        fh.write("x")
    third = skeleton_of(source, tmp_path)
    assert third != second
    os.symlink("bundle.crt", os.path.join(source, "ef567890.0"))  # a new link
    fourth = skeleton_of(source, tmp_path)
    assert fourth != third and os.readlink(os.path.join(fourth, "ef567890.0")) == "bundle.crt"


def test_a_special_file_is_left_out_without_blocking(source, tmp_path):
    os.mkfifo(os.path.join(source, "pipe"))  # copying would open it and wait forever
    copy = skeleton_of(source, tmp_path)
    assert not os.path.lexists(os.path.join(copy, "pipe"))
    assert os.path.exists(os.path.join(copy, "bundle.crt"))


@pytest.mark.processes
def test_the_candidate_sees_the_hosts_public_directories():
    """In a real sandbox: /etc's public directories list and read as on the host, and
    /etc/ssl/private (not public) is absent."""
    from tests.test_local_sandbox import SMALL, require_bwrap, run, task

    require_bwrap()
    dirs = [p for p in ETC_FILES if os.path.isdir(p) and not os.path.islink(p)]
    assert "/etc/ssl/certs" in dirs, "no TLS roots on this host: nothing is tested"
    r, _ = run(task(_probe_source() + textwrap.dedent(f"""
        import sys
        seen = {{d: tree(d) for d in {dirs!r}}}
        seen["private"] = os.path.exists("/etc/ssl/private")
        open(sys.argv[2], "w").write(repr(seen))
    """), limits=replace(SMALL, artifact_bytes=1 << 20)))
    assert r.success, (r.error_message, r.output)
    seen = eval(r.artifact_content)  # noqa: S307 - our own repr, test only
    assert seen.pop("private") is False
    for d in dirs:
        assert seen[d] == tree(d), d


def _probe_source() -> str:
    import inspect

    return "import hashlib, os, stat\n\n" + inspect.getsource(tree) + "\n"


RELEASE_RACE = r"""
import json, os, sys, threading
from worker.sandbox.local import cleanup, etc

src, parent = sys.argv[1], sys.argv[2]
root = src[:src.rindex("/etc/") + len("/etc")]
in_copy, go_on = threading.Event(), threading.Event()
real_tree = etc._Copy.tree

def tree(self, s, d):  # the copy holds here, half made, until the removal is under way
    in_copy.set()
    go_on.wait(30)
    return real_tree(self, s, d)

etc._Copy.tree = tree
maker = threading.Thread(target=etc.etc_binds, args=("net", parent, "owner"),
                         kwargs={"sources": (src,), "root": root}, daemon=True)
maker.start()
assert in_copy.wait(30)
releaser = threading.Thread(target=cleanup.release_process)  # the process ending
releaser.start()
releaser.join(0.5)
during = {"released": not releaser.is_alive(), "dirs": sorted(os.listdir(parent))}
go_on.set()
maker.join(30)
releaser.join(30)
print(json.dumps({"during": during, "after": sorted(os.listdir(parent))}))
"""


@pytest.mark.processes
def test_a_process_ending_during_a_copy_leaves_nothing(tmp_path):
    """The race: the process releases its skeletons (exit, pool-process shutdown) while a
    thread is still copying one. The removal waits for the copy to end, then removes it
    all: a removal during the copy would leave the rest of the copy behind with its
    owner mark gone, which no sweep would ever remove."""
    import json
    import subprocess
    import sys

    src = tmp_path / "etc" / "alternatives"
    src.mkdir(parents=True)
    for i in range(50):
        os.symlink(f"/usr/bin/tool{i}", src / f"tool{i}")
    parent = tmp_path / "parent"
    parent.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_RACE, str(src), str(parent)], capture_output=True,
        text=True, timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    during = got["during"]
    assert not during["released"], got  # it waited for the copy
    assert len(during["dirs"]) == 1 and during["dirs"][0].startswith("forge-etc-"), got
    assert got["after"] == [], got  # then removed all of it
