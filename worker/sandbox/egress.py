"""The egress policy of a network-on local sandbox: the public internet, nothing inside.

A network-on sandbox reaches the world through slirp4netns (see ``netns``), which opens
ordinary sockets of the worker: without a policy a candidate reaches whatever the worker
reaches, the LAN, a compose network's Redis and Postgres, and on a cloud VM the instance
metadata endpoint that hands out the machine's credentials.

Mechanism: routes in the sandbox's own network namespace, installed by the worker
(``rtnetlink``) after slirp4netns is up and before the candidate's command is released.
Every refused range gets a ``prohibit`` route, so a connection to it fails at once with
EACCES ("Permission denied") inside the sandbox and no packet reaches slirp4netns. The
routing table decides by longest prefix: an allow-list entry is a more specific route
through slirp4netns's gateway, a deny-list entry one more ``prohibit`` route. The
candidate cannot change the table: it has no capabilities in its user namespace, which
owns the network namespace (and slirp4netns runs without ``--api-socket``, so there is
no control path to reach either).

Refused (``builtin``): 0.0.0.0/8, the private ranges 10/8, 172.16/12, 192.168/16,
CGNAT 100.64/10, link-local 169.254/16 (cloud metadata), multicast 224/4, reserved
240/4; the worker's own addresses and the networks they sit on (its LAN, whatever the
numbering); slirp4netns's own 10.0.2.0/24 except its DNS forwarder 10.0.2.3 (libslirp
maps every other address there to the host's loopback, refused by
``--disable-host-loopback``, or silently drops it: a hang, now a refusal). DNS keeps
working: 10.0.2.3 is a more specific route, and libslirp forwards only port 53 there,
to the worker's resolver, wherever that lives. IPv6: slirp4netns carries IPv4 only, and
IPv6 is switched off on ``tap0``, so every IPv6 destination but the sandbox's own ``::1``
fails at once (ENETUNREACH); IPv4-mapped addresses take the IPv4 routes above. (Refusal
routes for fe80::/10 and friends would not do: the kernel's fe80::/64 on tap0 is more
specific, and link-local connections to slirp4netns, which ignores IPv6, hang.)

Precedence: the most specific prefix wins; for the same prefix a competition's
``egress_deny`` beats its ``egress_allow``, which beats the built-in refusal. Host names
in either list are resolved by the worker when the sandbox is made (cached a minute) to
their IPv4 addresses.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass

from worker.records import Egress
from worker.sandbox import netns
from worker.sandbox.rtnetlink import Route, own_addresses

logger = logging.getLogger("dream_foundry")

IPv4Net = ipaddress.IPv4Network

BUILTIN: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "CGNAT"),
    ("169.254.0.0/16", "link-local, cloud metadata"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, broadcast"),
)
SLIRP_NET = ipaddress.ip_network(netns.SLIRP_CIDR)
SLIRP_DNS = ipaddress.ip_address(netns.SLIRP_DNS)
IPV6_OFF = {f"ipv6/conf/{netns.TAP}/disable_ipv6": "1"}
CACHE_SECONDS = 60.0
_HOST_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


class EgressError(Exception):
    """The policy cannot be built (a deny-list name that does not resolve)."""


# --------------------------------------------------------------------------- entries


def check_entry(entry: object, allow: bool) -> str | None:
    """Why ``entry`` cannot be an allow-list (``allow``) or deny-list entry, or None.

    An entry is an IPv4 address, an IPv4 CIDR, or a host name (resolved by the worker).
    """
    if not isinstance(entry, str) or not entry.strip():
        return f"{entry!r} is not a non-empty string"
    text = entry.strip()
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            fixed = ipaddress.ip_network(text, strict=False)
            return f"{text!r} has host bits set; write {fixed}"
        if any(c in text for c in ":/") or text.replace(".", "").isdigit():
            return f"{text!r} is not a valid IPv4 address or CIDR"
        if not _HOST_RE.match(text):
            return f"{text!r} is neither an IPv4 address, a CIDR nor a host name"
        return None
    if net.version == 6:
        if allow:
            return (f"{text!r} is IPv6: local sandboxes have no IPv6 route out (slirp4netns "
                    "carries IPv4 only), so it cannot be allowed; drop it")
        return None  # already refused: IPv6 is off in the sandbox
    if net.subnet_of(SLIRP_NET):
        return (f"{text!r} lies in {SLIRP_NET}, the sandbox's own slirp4netns network "
                "(its gateway is the worker's loopback, always refused); drop it")
    if allow:
        if net.prefixlen == 0:
            return (f"{text!r} would allow everything; the public internet is allowed "
                    "already: list the inside ranges you need instead")
        for bad, why in (("127.0.0.0/8", "loopback: the sandbox's own; the worker's "
                          "loopback stays shut"),
                         ("224.0.0.0/4", "multicast: not carried by slirp4netns"),
                         ("240.0.0.0/4", "reserved"), ("0.0.0.0/8", "'this network'")):
            if net.subnet_of(ipaddress.ip_network(bad)):
                return f"{text!r} is {why}; it cannot be allowed"
    return None


# --------------------------------------------------------------------------- lookups


class _Cache:
    """Values that age out after CACHE_SECONDS (shared by the threads of a process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[object, tuple[float, object]] = {}

    def get(self, key, make):
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit and hit[0] > now:
                return hit[1]
        value = make()
        with self._lock:
            self._items[key] = (now + CACHE_SECONDS, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_lookups = _Cache()


def _worker_networks() -> tuple[tuple[IPv4Net, str], ...]:
    """The worker's own IPv4 addresses (/32) and the networks they sit on (its LAN)."""
    found: dict[IPv4Net, str] = {}
    for iface in own_addresses():
        if iface.version != 4 or iface.ip.is_loopback:
            continue
        found.setdefault(ipaddress.ip_network(f"{iface.ip}/32"), "worker address")
        if iface.network.prefixlen:
            found.setdefault(iface.network, "worker network")
    return tuple(found.items())


def _resolve(name: str) -> tuple[ipaddress.IPv4Address, ...]:
    infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    return tuple(sorted({ipaddress.ip_address(info[4][0]) for info in infos}))


def _networks(entry: str) -> tuple[IPv4Net, ...]:
    """An entry's IPv4 networks; a host name resolves (cached). IPv6 entries: none."""
    try:
        net = ipaddress.ip_network(entry.strip())
        return (net,) if net.version == 4 else ()
    except ValueError:
        pass
    addrs = _lookups.get(("host", entry.strip().lower()), lambda: _resolve(entry.strip()))
    return tuple(ipaddress.ip_network(f"{a}/32") for a in addrs)


# --------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class Policy:
    """What one sandbox gets: its routes, in the order they must be installed."""

    routes: tuple[Route, ...]
    reasons: tuple[str, ...]  # why each route is there, for the log
    allowed: int  # allow-list entries in force
    denied: int  # deny-list entries in force
    notes: tuple[str, ...] = ()  # allow-list names that did not resolve, ...

    def words(self) -> str:
        """For the isolation line."""
        extra = []
        if self.allowed:
            extra.append(f"allow {self.allowed}")
        if self.denied:
            extra.append(f"deny {self.denied}")
        return "public internet only" + (f"; {', '.join(extra)}" if extra else "")


def build(egress: Egress) -> Policy:
    """The policy for one sandbox: built-in refusals, the worker's own networks, the
    competition's lists (built once a minute per process and list). Raises EgressError
    when a deny-list name does not resolve (the candidate must not run with a hole the
    competition asked to close)."""
    return _lookups.get(("policy", egress), lambda: _build(egress))


def _build(egress: Egress) -> Policy:
    decided: dict[IPv4Net, tuple[str, str]] = {}  # net -> ("refuse" | "allow", why)
    for cidr, why in BUILTIN:
        decided[ipaddress.ip_network(cidr)] = ("refuse", why)
    for net, why in _lookups.get("worker", _worker_networks):
        decided.setdefault(net, ("refuse", why))
    notes = []
    allowed = denied = 0
    for entry in egress.allow:
        try:
            nets = _networks(entry)
        except OSError as exc:
            notes.append(f"egress_allow entry {entry!r} did not resolve ({exc}); not allowed")
            continue
        allowed += bool(nets)
        for net in nets:
            decided[net] = ("allow", f"allow-list {entry}")
    for entry in egress.deny:
        try:
            nets = _networks(entry)
        except OSError as exc:
            raise EgressError(f"egress_deny entry {entry!r} did not resolve ({exc}): refusing "
                              "to run without it; fix the name or use an address") from None
        denied += 1
        for net in nets:
            decided[net] = ("refuse", f"deny-list {entry}")
    routes = [(Route(ipaddress.ip_network(f"{SLIRP_DNS}/32"), "link", netns.TAP),
               "DNS, port 53 only (libslirp)")]
    refuse = []
    for net in sorted(decided, key=lambda n: (n.network_address, n.prefixlen)):
        action, why = decided[net]
        if net.subnet_of(SLIRP_NET):
            continue  # slirp4netns's own network: decided below, as a whole
        if action == "allow":
            routes.append((Route(net, "via", netns.TAP, netns.SLIRP_GATEWAY), why))
        else:
            refuse.append((Route(net, "prohibit"), why))
    # Last: the connected 10.0.2.0/24 becomes a refusal (the allow routes above needed it
    # to check their gateway); 10.0.2.3/32 stays more specific.
    routes += refuse + [(Route(SLIRP_NET, "prohibit"), "slirp4netns: the host's loopback")]
    return Policy(tuple(r for r, _ in routes), tuple(w for _, w in routes), allowed, denied,
                  tuple(notes))


def rules_text(policy: Policy) -> str:
    """The policy as one log line (the worker logs it once per process and policy)."""
    parts = [f"{r.text()} ({why})" for r, why in zip(policy.routes, policy.reasons,
                                                       strict=True)]
    return ("egress policy of network-on local sandboxes (longest prefix wins; same prefix: "
            "deny > allow > built-in; IPv6 off on tap0; the rest via slirp4netns): "
            + "; ".join(parts))


_logged: set[tuple[Route, ...]] = set()
_logged_lock = threading.Lock()


def log_once(policy: Policy) -> None:
    """Log ``policy``'s rules the first time this process uses them."""
    with _logged_lock:
        if policy.routes in _logged:
            return
        _logged.add(policy.routes)
    logger.info("%s", rules_text(policy))
