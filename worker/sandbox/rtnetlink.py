"""Just enough rtnetlink to put routes into a sandbox's network namespace, and to list
the worker's own addresses. No ``ip`` binary, no subprocess: a few hundred bytes of
messages on a NETLINK_ROUTE socket, microseconds where ``nsenter ... ip -batch`` costs
milliseconds per candidate.

Reaching another process's namespace: a NETLINK_ROUTE socket talks to the namespace it
was created in, for its whole life. Network namespaces are per *thread*
(``setns(CLONE_NEWNET)`` moves only the calling thread), so the calling thread steps
into the sandbox's namespace, creates the socket, looks up the interface indexes there,
and steps back (``_visit``); the messages are then sent from home. ``setns`` into a
namespace needs CAP_SYS_ADMIN over it and in our own user namespace: a root worker has
both. An unprivileged worker owns the sandbox's user namespace instead, but a
multi-threaded process may not join a user namespace; a forked child (single-threaded)
joins the user and then the network namespace and hands the socket back over a
socketpair.

Changing routes needs CAP_NET_ADMIN over the namespace, checked against the credentials
of whoever opened the socket: ours. The candidate, uid 65534 with every capability
dropped in its own user namespace, can read the table but not change it.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
NS_GET_USERNS = 0xB701

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWADDR, RTM_GETADDR, RTM_NEWROUTE = 20, 22, 24
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
RT_TABLE_MAIN = 254
RTPROT_STATIC = 4  # `ip route` shows "proto static": put there on purpose, not by the kernel
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST, RTN_PROHIBIT = 1, 8
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
IFA_ADDRESS, IFA_LOCAL = 1, 2

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_RTMSG = struct.Struct("=BBBBBBBBI")  # family dst_len src_len tos table proto scope type flags
_IFADDRMSG = struct.Struct("=BBBBI")  # family prefixlen flags scope index
_RTA = struct.Struct("=HH")  # rtattr: len, type


@dataclass(frozen=True)
class Route:
    """One route of the main table: ``prohibit`` (refused at once with EACCES), ``via``
    (through ``gateway`` on ``dev``), or ``link`` (directly on ``dev``)."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    kind: str  # "prohibit" | "via" | "link"
    dev: str = ""
    gateway: str = ""

    def text(self) -> str:
        """As ``ip route`` would write it."""
        dst = "default" if self.dst.prefixlen == 0 else _short(self.dst)
        if self.kind == "prohibit":
            return f"prohibit {dst}"
        if self.kind == "via":
            return f"{dst} via {self.gateway} dev {self.dev}"
        return f"{dst} dev {self.dev} scope link"


def _short(net) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


# --------------------------------------------------------------------------- messages


def _attr(kind: int, payload: bytes) -> bytes:
    size = _RTA.size + len(payload)
    return _RTA.pack(size, kind) + payload + b"\0" * (-size % 4)


def _message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return _HDR.pack(_HDR.size + len(body), kind, flags, seq, 0) + body


def route_message(route: Route, seq: int, ifindex: dict[str, int], ack: bool = True) -> bytes:
    """RTM_NEWROUTE (create or replace) for ``route`` in the main table."""
    family = socket.AF_INET if route.dst.version == 4 else socket.AF_INET6
    rtype = RTN_PROHIBIT if route.kind == "prohibit" else RTN_UNICAST
    scope = RT_SCOPE_LINK if route.kind == "link" else RT_SCOPE_UNIVERSE
    body = _RTMSG.pack(family, route.dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_STATIC,
                       scope, rtype, 0)
    if route.dst.prefixlen:
        body += _attr(RTA_DST, route.dst.network_address.packed)
    if route.kind != "prohibit":
        body += _attr(RTA_OIF, struct.pack("=i", ifindex[route.dev]))
    if route.kind == "via":
        body += _attr(RTA_GATEWAY, ipaddress.ip_address(route.gateway).packed)
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE | (NLM_F_ACK if ack else 0)
    return _message(RTM_NEWROUTE, flags, seq, body)


_batches: dict[tuple, bytes] = {}


def route_batch(routes: tuple[Route, ...], ifindex: dict[str, int]) -> bytes:
    """All of ``routes`` as one datagram, numbered 1..N, an acknowledgement asked for the
    last only: the kernel answers every refused message with an error anyway, in order,
    so once the last is acknowledged every earlier error has arrived. Encoded once per
    process, policy and interface numbering."""
    key = (routes, tuple(sorted(ifindex.items())))
    data = _batches.get(key)
    if data is None:
        n = len(routes)
        data = b"".join(route_message(r, seq, ifindex, ack=seq == n)
                        for seq, r in enumerate(routes, start=1))
        if len(_batches) > 64:  # a handful of policies per process; never grows unbounded
            _batches.clear()
        _batches[key] = data
    return data


def _messages(data: bytes):
    """(type, seq, payload) of every netlink message in one datagram."""
    offset = 0
    while offset + _HDR.size <= len(data):
        length, kind, _flags, seq, _pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size:
            break
        yield kind, seq, data[offset + _HDR.size:offset + length]
        offset += (length + 3) & ~3


def _attrs(data: bytes, offset: int):
    while offset + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < _RTA.size:
            break
        yield kind, data[offset + _RTA.size:offset + length]
        offset += (length + 3) & ~3


def send_batch(sock: socket.socket, batch: bytes, routes: tuple[Route, ...]) -> None:
    """Send a ``route_batch`` (the kernel applies its messages in order) and wait for
    the last one's acknowledgement; raise OSError naming the first refused route."""
    sock.send(batch)
    last = len(routes)
    failed: list[tuple[int, int]] = []
    done = False
    while not done:
        for kind, seq, payload in _messages(sock.recv(65536)):
            if kind != NLMSG_ERROR or not 1 <= seq <= last:
                continue
            code = -struct.unpack_from("=i", payload)[0]
            if code:
                failed.append((seq, code))
            done = done or seq == last
    if failed:
        seq, code = min(failed)
        raise OSError(code, f"route '{routes[seq - 1].text()}' refused: {os.strerror(code)}")


# --------------------------------------------------------------------------- namespaces


_libc = ctypes.CDLL(None, use_errno=True)


_SIG_BLOCK, _SIG_SETMASK = 0, 2
_ALL_SIGNALS = ctypes.create_string_buffer(b"\xff" * 128, 128)  # a full sigset_t


def _block_signals():
    """Block every signal for the calling thread; returns the old mask. (Through libc:
    signal.pthread_sigmask builds sets of enums, ~0.25 ms a call.)"""
    old = ctypes.create_string_buffer(128)
    if _libc.pthread_sigmask(_SIG_BLOCK, _ALL_SIGNALS, old) != 0:
        raise OSError(errno.EINVAL, "pthread_sigmask failed")
    return old


def _setns(fd: int, kind: int) -> None:
    if _libc.setns(fd, kind) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def _open_here(sysctls: list[str]) -> list[int]:
    """In the joined namespace: [route socket fd, *sysctl fds] (/dev/null for a sysctl
    this kernel does not have); the interface names travel separately."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         socket.NETLINK_ROUTE)
    fds = [sock.detach()]
    try:
        for path in sysctls:
            try:
                fds.append(os.open(f"/proc/sys/net/{path}", os.O_WRONLY | os.O_CLOEXEC))
            except FileNotFoundError:  # e.g. no IPv6 in this kernel: nothing to switch off
                fds.append(os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


@dataclass
class _Joined:
    """What a trip into the sandbox's namespace brings back."""

    sock: socket.socket
    ifindex: dict[str, int]
    sysctl_fds: list[int]

    def close(self) -> None:
        self.sock.close()
        for fd in self.sysctl_fds:
            os.close(fd)


def _join(pid: int, sysctls: list[str], devices: set[str]) -> _Joined:
    """Open, inside ``pid``'s network namespace, a route socket and the ``sysctls``
    (/proc/sys/net belongs to the namespace of the task opening the file), and look up
    the indexes of ``devices`` there."""
    try:
        fds, names = _visit(pid, sysctls, devices)
    except PermissionError:
        if os.geteuid() == 0:
            raise
        fds, names = _join_by_fork(pid, sysctls, devices)
    return _Joined(socket.socket(fileno=fds[0]), names, fds[1:])


def _visit(pid: int, sysctls: list[str], devices: set[str]
           ) -> tuple[list[int], dict[str, int]]:
    """The calling thread steps into ``pid``'s network namespace and back.

    In place rather than on a fresh thread: starting and joining a thread waits for the
    scheduler to run it, 1-2 ms on a busy 2-core worker, where the visit itself is
    ~0.1 ms. Signals are blocked meanwhile, so no handler runs in the wrong namespace;
    the way back is checked, and a thread that cannot return ends the process (a
    worker must never talk to its broker from a sandbox's namespace)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.close(home)
        raise
    mask = _block_signals()
    try:
        _setns(target, CLONE_NEWNET)
        try:
            fds = _open_here(sysctls)
            try:
                names = {name: socket.if_nametoindex(name) for name in devices}
            except BaseException:
                for fd in fds:
                    os.close(fd)
                raise
        finally:
            _go_home(home)
        return fds, names
    finally:
        _libc.pthread_sigmask(_SIG_SETMASK, mask, None)
        os.close(target)
        os.close(home)


def _go_home(home: int) -> None:
    try:
        _setns(home, CLONE_NEWNET)
        back = os.stat("/proc/thread-self/ns/net").st_ino == os.fstat(home).st_ino
    except OSError:
        back = False
    if not back:
        os.write(2, b"FATAL: a worker thread could not leave a sandbox's network namespace\n")
        os._exit(70)


def _join_by_fork(pid: int, sysctls: list[str], devices: set[str]):
    """Unprivileged worker: a forked child (single-threaded, as joining a user namespace
    requires) joins the user namespace owning the sandbox's network namespace (we made
    it), then the network namespace, and passes the descriptors back over a
    socketpair."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with parent, child:
        net_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:  # the user namespace owning the network namespace (see netns.owner_userns_fd)
            user_fd = fcntl.ioctl(net_fd, NS_GET_USERNS)
        except BaseException:
            os.close(net_fd)
            raise
        try:
            forked = os.fork()
            if forked == 0:  # the child: no locks, no logging, leaves by _exit
                code = 1
                try:
                    _setns(user_fd, CLONE_NEWUSER)
                    _setns(net_fd, CLONE_NEWNET)
                    fds = _open_here(sysctls)
                    names = ",".join(f"{n}={socket.if_nametoindex(n)}" for n in devices).encode()
                    child.sendmsg([names], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                             array.array("i", fds))])
                    code = 0
                finally:
                    os._exit(code)
        finally:
            os.close(user_fd)
            os.close(net_fd)
        _, status = os.waitpid(forked, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError(errno.EPERM, "could not join the sandbox's network namespace")
        want = 1 + len(sysctls)
        msg, ancdata, _flags, _addr = parent.recvmsg(4096, socket.CMSG_SPACE(4 * want))
        fds = array.array("i")
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        if len(fds) != want:
            for fd in fds:
                os.close(fd)
            raise OSError(errno.EPROTO, "the namespace's descriptors did not come back")
        names = dict(item.split("=") for item in msg.decode().split(",") if item)
        return list(fds), {name: int(index) for name, index in names.items()}


def install(pid: int, routes: tuple[Route, ...], sysctls: dict[str, str] | None = None) -> None:
    """In ``pid``'s network namespace: write ``sysctls`` (paths under /proc/sys/net),
    then put ``routes`` into the main table (replacing routes of the same prefix), in
    order, in one batch. Raises OSError naming what was refused."""
    sysctls = sysctls or {}
    joined = _join(pid, list(sysctls), {r.dev for r in routes if r.dev})
    try:
        for fd, (path, value) in zip(joined.sysctl_fds, sysctls.items(), strict=True):
            try:
                os.write(fd, value.encode())
            except OSError as exc:
                raise OSError(exc.errno, f"sysctl {path}: {exc.strerror}") from None
        joined.sock.settimeout(5.0)
        joined.sock.bind((0, 0))
        send_batch(joined.sock, route_batch(routes, joined.ifindex), routes)
    finally:
        joined.close()


# --------------------------------------------------------------------------- our addresses


def own_addresses() -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Every address of this process's network namespace, with its prefix length."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as sock:
        sock.settimeout(5.0)
        sock.bind((0, 0))
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(_message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, body))
        found: list = []
        while True:
            for kind, _seq, payload in _messages(sock.recv(65536)):
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0]
                    raise OSError(code, f"RTM_GETADDR: {os.strerror(code)}")
                if kind != RTM_NEWADDR:
                    continue
                family, prefixlen, _f, _s, _i = _IFADDRMSG.unpack_from(payload)
                attrs = dict(_attrs(payload, _IFADDRMSG.size))
                raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
                if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                found.append(ipaddress.ip_interface((ipaddress.ip_address(raw), prefixlen)))
