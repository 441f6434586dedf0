"""What a candidate sees: its environment variables and, in a local sandbox, its files.

The one file a security reviewer reads for "what reaches the candidate". Everything not
listed here is absent from the sandbox, not merely read-only.

Environment (every backend): only the competition's allow-listed variables, never one
of ours (``build_env``); a local sandbox adds PATH/HOME/TMPDIR/locale (``candidate_env``).

Files (local sandbox, bubblewrap; ``build_argv``):

* ``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or directories, read-only;
* ``/etc``: the short list of harmless files in ``ETC_FILES`` (loader cache, TLS roots,
  nsswitch, time zone...), read-only; ``passwd``, ``group``, ``hosts`` and
  ``resolv.conf`` are generated (``generated_etc``), so no host account or resolver
  detail leaks in (one read-only skeleton per process and network mode: ``local.etc``);
* the candidate interpreter's installation prefix (``sys.base_prefix``), read-only;
* ``/sandbox``: the private working directory (script + output), and ``/opt/python``:
  the sandbox's own python environment (``python3`` without the host's site-packages,
  where requirements install), the only writable host directories; ``/tmp`` and
  ``/dev/shm``: size-capped tmpfs; a fresh, read-only ``/proc`` for the sandbox's own
  PID namespace; minimal ``/dev``.

Namespaces: user (uid 65534, all capabilities dropped, no nested user namespaces),
PID, IPC, UTS, cgroup (when possible) and network (always new; see ``netns``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

from worker.config import FORBIDDEN_SANDBOX_ENV

INSIDE_WORKDIR = "/sandbox"
INSIDE_PYTHON_ENV = "/opt/python"  # the candidate's python3 environment (local.pyenv)
SANDBOX_UID = 65534
SANDBOX_HOSTNAME = "forge-sandbox"
PIP_SHIM = "installer"  # in the python env: a directory holding only a link to the host's pip

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Read-only and public. Deliberately NOT /etc/ssl as a whole (ssl/private holds keys).
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/protocols",
    "/etc/services",
    "/etc/mime.types",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust",
)


# --------------------------------------------------------------------------- environment


def build_env(names: tuple[str, ...], source: Mapping[str, str]) -> dict[str, str]:
    """Only the allow-listed variables, and never our own credentials (every backend)."""
    return {
        n: source[n]
        for n in names
        if n in source and n not in FORBIDDEN_SANDBOX_ENV and not n.startswith("CELERY_")
    }


def candidate_env(allowed: dict[str, str], *, home: str, tmp: str, python_env: str,
                  installer: bool) -> dict[str, str]:
    """A local sandbox's whole environment: ``allowed`` (from ``build_env``) plus ours.

    ``installer``: the command is ``python3 -m pip``; pip alone (not the host's other
    packages) is put on its path, installing into the sandbox's python environment.
    """
    env = dict(allowed)
    if installer:
        env["PYTHONPATH"] = f"{python_env}/{PIP_SHIM}"
    env.update({
        "PATH": f"{python_env}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": tmp,
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    })
    return env


# --------------------------------------------------------------------------- files


@functools.lru_cache(maxsize=1)
def system_binds() -> tuple[str, ...]:
    """Read-only system directories, as bwrap arguments (computed once)."""
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


def generated_etc(network: str) -> dict[str, str]:
    """The /etc files written for the sandbox rather than copied from the host."""
    return {
        "passwd": f"sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:{INSIDE_WORKDIR}:/bin/sh\n",
        "group": f"sandbox:x:{SANDBOX_UID}:\n",
        "hosts": f"127.0.0.1 localhost {SANDBOX_HOSTNAME}\n::1 localhost\n",
        # slirp4netns answers DNS on 10.0.2.3 (forwarding to the host's resolver).
        "resolv.conf": "nameserver 10.0.2.3\n" if network == "slirp4netns" else "",
    }


def build_argv(
    bwrap: str,
    *,
    host_workdir: str,
    etc: list[str],
    share_host_net: bool,
    tmpfs_bytes: int,
    info_fd: int,
    block_fd: int,
    command: list[str],
    python_binds: list[tuple[str, str]],
    python_env: str,
) -> list[str]:
    """The full bwrap command line for one candidate."""
    argv = [
        bwrap,
        "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--disable-userns",
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
        "--hostname", SANDBOX_HOSTNAME,
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        *system_binds(),
    ]
    for src, dest in python_binds:
        argv += ["--ro-bind", src, dest]
    argv += ["--unshare-net"] if not share_host_net else ["--share-net"]
    argv += etc
    argv += [
        # All of /proc read-only: when the worker is root the sandbox's uid maps to host
        # uid 0 (without capabilities), and some /proc files (sysctls, sysrq-trigger, irq
        # affinity) check only the uid. A read-only mount refuses every write.
        "--proc", "/proc", "--remount-ro", "/proc",
        "--dev", "/dev",
        "--size", str(tmpfs_bytes), "--tmpfs", "/dev/shm",
        "--size", str(tmpfs_bytes), "--tmpfs", "/tmp",
        "--bind", host_workdir, INSIDE_WORKDIR,
        "--bind", python_env, INSIDE_PYTHON_ENV,
        "--chdir", INSIDE_WORKDIR,
        "--remount-ro", "/",
        "--info-fd", str(info_fd),
        "--block-fd", str(block_fd),
        "--",
        *command,
    ]
    return argv
