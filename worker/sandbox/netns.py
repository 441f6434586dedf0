"""Outbound-only networking for a sandbox's private network namespace (slirp4netns).

The sandbox always gets a fresh network namespace (bwrap ``--unshare-net``): with the
network off it holds only its own loopback. With the network on, slirp4netns is
attached to that namespace: it creates ``tap0`` (10.0.2.100/24, gateway 10.0.2.2, DNS
10.0.2.3) and carries the sandbox's TCP/UDP through ordinary sockets of the worker.
``--disable-host-loopback`` makes it refuse connections to the host's 127.0.0.0/8, so
Redis, Flower or an emulator listening on the worker's loopback stay out of reach; the
sandbox's own 127.0.0.1 is its own namespace's loopback. What else it may reach (the
public internet, nothing inside) is the egress policy's business: see ``egress``.

Mechanics: bwrap reports the sandbox's pid on ``--info-fd`` and holds the command on
``--block-fd``; we attach slirp4netns to ``/proc/<pid>/ns/net`` (``--netns-type=path``,
as root it need not join the sandbox's user namespace; unprivileged it must), wait for
its ``--ready-fd``, install the egress policy (``egress``), and only then let the command
start.
"""

from __future__ import annotations

import fcntl
import functools
import os
import select
import shutil
import subprocess
import threading
import time

# slirp4netns's defaults (``--configure``): the sandbox's side of the link, and the
# addresses libslirp answers on. The egress policy (``egress``) is written against them.
TAP = "tap0"
SLIRP_CIDR = "10.0.2.0/24"
SLIRP_GATEWAY = "10.0.2.2"  # the host; its loopback with --disable-host-loopback: refused
SLIRP_DNS = "10.0.2.3"  # forwards port 53 to the worker's resolver

@functools.lru_cache(maxsize=1)
def slirp4netns_path() -> str | None:
    """slirp4netns, if installed and usable here (it needs /dev/net/tun)."""
    if not os.path.exists("/dev/net/tun"):
        return None
    return shutil.which("slirp4netns")


def _wait_for_loopback(pid: int, timeout: float) -> None:
    """Wait until bwrap has brought up the sandbox's loopback.

    bwrap configures ``lo`` over netlink while we already know its pid; configuring the
    same namespace concurrently makes bwrap's netlink exchange fail now and then
    ("loopback: Failed RTM_NEWADDR"). 127.0.0.1 shows in the namespace's routing trie
    once ``lo`` is up.
    """
    deadline = time.monotonic() + timeout
    path = f"/proc/{pid}/net/fib_trie"
    while True:
        try:
            with open(path, "rb") as fh:
                if b"127.0.0.1" in fh.read():
                    return
        except OSError as exc:
            raise OSError(f"sandbox vanished during network setup: {exc}") from exc
        if time.monotonic() > deadline:
            raise OSError("sandbox loopback did not come up")
        time.sleep(0.001)


NS_GET_USERNS = 0xB701  # ioctl on a namespace fd: an fd of the user namespace owning it


def owner_userns_fd(pid: int) -> int:
    """An fd of the user namespace that owns ``pid``'s network namespace.

    Not ``/proc/<pid>/ns/user``: with ``--disable-userns`` bwrap moves the sandbox into a
    nested user namespace late in its set-up, and capabilities there do not reach the
    network namespace, which belongs to the outer one. Which of the two the path names
    depends on timing; the owner of the network namespace does not."""
    net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fcntl.ioctl(net, NS_GET_USERNS)
    finally:
        os.close(net)


def slirp_argv(path: str, pid: int, ready_fd: int, exit_fd: int,
               userns_fd: int | None) -> list[str]:
    """The slirp4netns command line. Never ``--api-socket``: that control socket could
    add port forwards; with no control path the egress policy has nothing to bypass.
    ``userns_fd`` (unprivileged workers): see ``owner_userns_fd``."""
    argv = [
        path,
        f"--exit-fd={exit_fd}",
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        f"--ready-fd={ready_fd}",
        "--netns-type=path",
    ]
    if userns_fd is None:
        # As root it can confine itself: own mount namespace, caps dropped, seccomp.
        argv[1:1] = ["--enable-sandbox", "--enable-seccomp"]
    else:
        # Unprivileged, it may enter the network namespace only from the user namespace
        # owning it (ours: we made it). Root needs no such detour.
        argv.append(f"--userns-path=/proc/self/fd/{userns_fd}")
    return [*argv, f"/proc/{pid}/ns/net", TAP]


class Slirp:
    """A running slirp4netns attached to one sandbox's network namespace."""

    def __init__(self, pid: int, timeout: float = 5.0):
        path = slirp4netns_path()
        if path is None:
            raise OSError("slirp4netns not found on PATH")
        _wait_for_loopback(pid, timeout)
        ready_r, ready_w = os.pipe()
        # slirp4netns exits when this pipe closes: when we stop it, or when the worker
        # process holding the write end dies (SIGKILL, OOM), so it never outlives us.
        exit_r, self._exit_w = os.pipe()
        userns = None if os.geteuid() == 0 else owner_userns_fd(pid)
        argv = slirp_argv(path, pid, ready_w, exit_r, userns)
        try:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=(ready_w, exit_r) + (() if userns is None else (userns,)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin"},
            )
        finally:
            os.close(ready_w)
            os.close(exit_r)
            if userns is not None:
                os.close(userns)
        try:
            ready, _, _ = select.select([ready_r], [], [], timeout)
            got = os.read(ready_r, 1) if ready else b""
        finally:
            os.close(ready_r)
        if got != b"1":
            if self.proc.poll() is None:
                self.proc.kill()
            err = b""
            if self.proc.stderr is not None:
                try:
                    err = self.proc.stderr.read() or b""
                except (OSError, ValueError):
                    pass
            self.stop()
            detail = err.decode("utf-8", "replace").strip().splitlines()
            raise OSError(f"slirp4netns did not come up: {detail[-1] if detail else 'no reason'}")

    def stop(self) -> None:
        """Kill it; reap it in the background (with --enable-sandbox its exit tears down a
        mount namespace, ~25 ms nobody needs to wait for)."""
        if self.proc.poll() is None:
            self.proc.kill()
        if self._exit_w is not None:
            os.close(self._exit_w)
            self._exit_w = None
        if self.proc.stderr is not None:
            try:
                self.proc.stderr.close()
            except OSError:
                pass
        threading.Thread(target=self.proc.wait, name="slirp4netns-reaper", daemon=True).start()
