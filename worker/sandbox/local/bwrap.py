"""Is bubblewrap here, and does it work? A once-per-process probe.

Without a working bwrap, candidates run as ``PlainSandbox`` (no filesystem or network
isolation) unless ``FORGE_REQUIRE_ISOLATION=1`` (``require_isolation``) makes that an
error.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from worker.sandbox.local.launch import plan_launch, sandbox_host_uid
from worker.sandbox.local.pyenv import candidate_python
from worker.sandbox.visible import SANDBOX_UID, system_binds
from worker.settings import settings

INSTALL_HINT = "apt-get install bubblewrap slirp4netns (or dnf install bubblewrap slirp4netns)"


def require_isolation() -> bool:
    """``FORGE_REQUIRE_ISOLATION``: refuse to run a candidate without full isolation."""
    return settings.require_isolation


@dataclass(frozen=True)
class Probe:
    ok: bool
    bwrap: str | None
    reason: str  # why not (for the warning), or "ok"
    drop_uid: bool = False  # run bwrap as a fresh unprivileged uid (we are root)


@functools.lru_cache(maxsize=1)
def probe() -> Probe:
    """Can bwrap create our namespaces and run the candidate interpreter? Cached."""
    if (settings.sandbox or "").lower() == "plain":
        return Probe(False, None, "FORGE_SANDBOX=plain forces the fallback")
    if not sys.platform.startswith("linux"):
        return Probe(False, None, f"not Linux ({sys.platform})")
    path = shutil.which("bwrap")
    if path is None:
        return Probe(False, None, "bwrap not found on PATH")
    uid = sandbox_host_uid()
    problem = _try(path, uid)
    if problem is None:
        return Probe(True, path, "ok", drop_uid=uid is not None)
    if uid is not None and _try(path, None) is None:
        # e.g. unprivileged user namespaces disabled: bwrap as root still works.
        return Probe(True, path, f"ok (running as root: {problem})", drop_uid=False)
    return Probe(False, path, problem)


def _try(path: str, uid: int | None) -> str | None:
    """Run the candidate interpreter in a minimal sandbox; None if that works."""
    stage = tempfile.mkdtemp(prefix="forge-probe-")
    try:
        os.chmod(stage, 0o711)
        launch = plan_launch(stage, uid)
        argv = [
            path,
            "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--disable-userns",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            *system_binds(),
        ]
        for src, dest in launch.binds:
            argv += ["--ro-bind", src, dest]
        argv += ["--proc", "/proc", "--remount-ro", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                 "--", candidate_python(), "-S", "-c", "print('forge-ok')"]
        done = subprocess.run(argv, capture_output=True, timeout=20,
                              env={"PATH": "/usr/bin:/bin"}, preexec_fn=launch.preexec())
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap failed to start: {exc}"
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if done.returncode != 0 or b"forge-ok" not in done.stdout:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = err[-1] if err else f"exit code {done.returncode}"
        return f"bwrap cannot create namespaces here: {detail}"
    return None
