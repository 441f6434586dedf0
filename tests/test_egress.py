"""The egress policy of network-on local sandboxes, in a test-made network.

Nothing here sends a packet to a real address: ``tests/networld.py`` builds a worker
namespace and a "world" namespace (the allowed host 198.51.100.7, refused services at
10.200.0.1 and 169.254.169.254, a DNS resolver at 10.200.0.53) and the worker, the real
lifecycle and local backend, runs inside the worker namespace. Every refusal has its
positive control: the same probe, with the addresses allow-listed by the competition,
reaches the same services, so the world is wired and the policy alone refuses.

These tests need bubblewrap, slirp4netns and iproute2, and FAIL (never skip) without.
"""

from __future__ import annotations

import errno
import json
import textwrap
from dataclasses import replace

import pytest

from tests import networld as nw
from worker.lifecycle import run_lifecycle
from worker.records import CandidateTask, Egress, sha256_text
from worker.sandbox import egress, netns, rtnetlink
from worker.sandbox.local import LocalBackend, bwrap

# Every test starts processes (network namespaces, sandboxes, slirp4netns); tests/markers.py.
pytestmark = pytest.mark.processes

PROBE = r'''
import json, socket, struct, subprocess, sys, time

CONFIG = json.loads(__CONFIG__)

def tcp(host, port):
    t = time.monotonic()
    try:
        if ":" in host:
            addr, _, dev = host.partition("%")
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect((addr, port, 0, socket.if_nametoindex(dev) if dev else 0))
        else:
            s = socket.create_connection((host, port), timeout=5)
        with s:
            data = s.recv(100).decode()
        return {"ok": True, "data": data, "secs": time.monotonic() - t}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "error": str(exc),
                "secs": time.monotonic() - t}

def sh(cmd):
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}

out = {"tcp": {}, "names": {}}
for host, port in CONFIG["probes"]:
    out["tcp"][f"{host}:{port}"] = tcp(host, port)
for name in CONFIG.get("names", []):
    try:
        addrs = sorted({i[4][0] for i in socket.getaddrinfo(name, 8080, socket.AF_INET,
                                                             socket.SOCK_STREAM)})
        out["names"][name] = {"addrs": addrs, "tcp": tcp(addrs[0], 8080)}
    except OSError as exc:
        out["names"][name] = {"error": str(exc)}
if CONFIG.get("tamper"):
    out["routes"] = sh("ip route")
    out["routes6"] = sh("ip -6 route")
    out["tamper"] = {
        "del": sh("ip route del prohibit 10.0.0.0/8"),
        "add": sh("ip route add 10.200.0.1/32 via 10.0.2.2 dev tap0"),
        "default": sh("ip route replace prohibit 10.0.2.0/24 dev tap0"),
    }
    # The same without ip(8): RTM_DELROUTE for "prohibit 10.0.0.0/8" on a raw socket.
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    s.bind((0, 0))
    body = struct.pack("=BBBBBBBBI", 2, 8, 0, 0, 254, 0, 0, 8, 0)
    body += struct.pack("=HH", 8, 1) + socket.inet_aton("10.0.0.0")
    s.send(struct.pack("=IHHII", 16 + len(body), 25, 1 | 4, 1, 0) + body)
    reply = s.recv(4096)
    out["tamper"]["netlink_errno"] = -struct.unpack_from("=i", reply, 16)[0]
    try:
        with open("/proc/sys/net/ipv6/conf/tap0/disable_ipv6", "w") as fh:
            fh.write("0")
        out["tamper"]["ipv6_on"] = "WRITTEN"
    except OSError as exc:
        out["tamper"]["ipv6_on"] = exc.strerror
    out["after"] = tcp(CONFIG["after"], 8080)
    out["routes_after"] = sh("ip route")
with open(sys.argv[2], "w") as fh:
    json.dump(out, fh)
'''

REFUSED = [
    (nw.PRIVATE_HOST, nw.PORT),  # private range
    (nw.METADATA_HOST, nw.PORT),  # cloud metadata
    (nw.WORKER_ADDR, nw.PORT),  # the worker's own address
    (nw.WORLD_ADDR, nw.PORT),  # the worker's LAN (on-link network)
    ("10.0.2.2", nw.PORT),  # slirp4netns's gateway: the host's loopback
    ("10.0.2.5", nw.PORT),  # elsewhere in slirp's network (libslirp drops it: a hang)
    ("::ffff:" + nw.PRIVATE_HOST, nw.PORT),  # IPv4-mapped: the IPv4 routes apply
]
# IPv6: off in the sandbox. With it on, tap0's link-local route would take fe80:: to
# slirp4netns, which ignores IPv6: a hang (or EADDRNOTAVAIL while tap0's address is new).
REFUSED6 = [(nw.WORLD_ADDR6, nw.PORT), ("fe80::1%tap0", nw.PORT)]


def require_tools() -> None:
    probe = bwrap.probe()
    assert probe.ok, f"bubblewrap unavailable ({probe.reason}); fix: apt-get install bubblewrap"
    assert netns.slirp4netns_path(), "slirp4netns unavailable; fix: apt-get install slirp4netns"


def probe_task(cid: str, config: dict, egress_lists: Egress = Egress()) -> dict:
    script = PROBE.replace("__CONFIG__", repr(json.dumps(config)))
    return CandidateTask(
        run_id="r-egress", candidate_id=cid, name=cid, script_name="probe.py", script=script,
        script_sha256=sha256_text(script), objective="probe", timeout=60, network=True,
        egress=egress_lists,
    ).to_dict()


def report(result: dict) -> dict:
    assert result["success"], (result["error_message"], result["output"][-2000:])
    return json.loads(result["artifact_content"])


@pytest.fixture(scope="module")
def world():
    require_tools()
    w = nw.NetWorld()
    yield w
    w.close()


def test_world_is_wired(world):
    """Outside any sandbox, the worker namespace reaches every service of the world."""
    for addr in (nw.ALLOWED_HOST, nw.PRIVATE_HOST, nw.METADATA_HOST, nw.WORLD_ADDR,
                 nw.WORLD_ADDR6):
        assert world.connect_from_worker(addr).startswith(b"hello from")


def test_inside_is_refused_fast_public_and_dns_work(world):
    probes = [(nw.ALLOWED_HOST, nw.PORT), ("10.0.2.3", nw.PORT), *REFUSED, *REFUSED6]
    config = {"probes": probes, "names": ["allowed.test", "meta.test"], "tamper": True,
              "after": nw.PRIVATE_HOST}
    opened = Egress(allow=(nw.PRIVATE_HOST, nw.METADATA_HOST, "203.0.113.0/24",
                           nw.WORKER_ADDR))
    before = {a: len(world.hits(a)) for a in world.listeners}
    out = world.run_worker([probe_task("closed", config),
                            probe_task("closed-2", {"probes": []}),
                            probe_task("opened", {**config, "tamper": False}, opened)])
    closed, second, control = out["results"]
    got, ctl = report(closed), report(control)
    report(second)

    # The public internet (a documentation range of the world) is reachable.
    assert got["tcp"][f"{nw.ALLOWED_HOST}:{nw.PORT}"]["ok"], got["tcp"]
    # Everything inside is refused at once with EACCES (IPv6: no route at all).
    for host, port in REFUSED:
        r = got["tcp"][f"{host}:{port}"]
        assert not r["ok"] and r["errno"] == errno.EACCES, (host, r)
        assert r["secs"] < 2.5, (host, r)  # a refusal, not the 5 s connect timeout
    for host, port in REFUSED6:
        r = got["tcp"][f"{host}:{port}"]
        assert not r["ok"] and r["errno"] == errno.ENETUNREACH, (host, r)
        assert r["secs"] < 2.5, (host, r)
    # DNS works through slirp4netns's 10.0.2.3, although the resolver itself lives at a
    # refused private address; a name pointing inside is resolved, and refused.
    assert got["names"]["allowed.test"]["addrs"] == [nw.ALLOWED_HOST]
    assert got["names"]["allowed.test"]["tcp"]["ok"]
    assert got["names"]["meta.test"]["addrs"] == [nw.METADATA_HOST]
    assert got["names"]["meta.test"]["tcp"]["errno"] == errno.EACCES
    assert "allowed.test" in world.resolver.queries
    # 10.0.2.3 carries DNS only: the resolver host's other ports stay out of reach.
    assert not got["tcp"][f"10.0.2.3:{nw.PORT}"]["ok"]
    assert len(world.hits(nw.RESOLVER)) == before[nw.RESOLVER]

    # Positive control: allow-listed, the same services answer the same probe.
    for host, port in REFUSED[:4]:
        r = ctl["tcp"][f"{host}:{port}"]
        assert r["ok"] and r["data"].startswith("hello from"), (host, r)
    assert ctl["names"]["meta.test"]["tcp"]["ok"]
    # slirp's own network and IPv6 stay refused even then.
    for host, port in [("10.0.2.2", nw.PORT), ("10.0.2.5", nw.PORT), *REFUSED6]:
        assert not ctl["tcp"][f"{host}:{port}"]["ok"], host
    # The refused services saw the control's connections and nothing else (the private
    # host: by address and IPv4-mapped; the metadata host: by address and by name).
    expected = {nw.PRIVATE_HOST: 2, nw.METADATA_HOST: 2, nw.WORLD_ADDR: 1, nw.WORKER_ADDR: 1}
    for addr, count in expected.items():
        assert len(world.hits(addr)) - before[addr] == count, (addr, world.hits(addr))

    # The candidate cannot change its routes: no capability over its namespace.
    tamper = got["tamper"]
    for step in ("del", "add", "default"):
        assert tamper[step]["rc"] != 0, tamper
        assert "Operation not permitted" in tamper[step]["err"], tamper
    assert tamper["netlink_errno"] == errno.EPERM, tamper
    assert tamper["ipv6_on"] != "WRITTEN", tamper
    assert got["after"]["errno"] == errno.EACCES
    assert got["routes_after"]["out"] == got["routes"]["out"]
    assert "prohibit 169.254.0.0/16" in got["routes"]["out"]
    assert got["routes6"]["out"].strip() == ""

    # The isolation line states the policy; the worker logged the rules once per policy.
    assert "outbound-only (public internet only)" in closed["isolation"], closed["isolation"]
    assert "allow 4" in control["isolation"], control["isolation"]
    rules = [line for line in out["stderr"].splitlines() if "egress policy of" in line]
    assert len(rules) == 2, rules  # the closed policy (two candidates) and the control's
    assert any(f"{nw.WORKER_ADDR} (worker address)" in line for line in rules), rules


def test_unprivileged_worker_installs_the_same_policy(world):
    """A worker that is not root (the Docker image's) cannot setns from a thread; it
    joins the sandbox's namespaces from a forked child, and slirp4netns enters through
    the user namespace owning the network namespace. Same refusals, same control."""
    probes = [(nw.ALLOWED_HOST, nw.PORT), *REFUSED[:4], ("10.0.2.2", nw.PORT)]
    config = {"probes": probes, "names": ["allowed.test"], "tamper": True,
              "after": nw.METADATA_HOST}
    out = world.run_worker([probe_task("nobody", config),
                            probe_task("nobody-open", {"probes": REFUSED[:2]},
                                       Egress(allow=(nw.PRIVATE_HOST, nw.METADATA_HOST)))],
                           unprivileged=True)
    closed, control = out["results"]
    assert "user ns (host uid 65534)" in closed["isolation"], closed["isolation"]
    got, ctl = report(closed), report(control)
    assert got["tcp"][f"{nw.ALLOWED_HOST}:{nw.PORT}"]["ok"]
    assert got["names"]["allowed.test"]["tcp"]["ok"]
    for host, port in [*REFUSED[:4], ("10.0.2.2", nw.PORT)]:
        assert got["tcp"][f"{host}:{port}"]["errno"] == errno.EACCES, host
    for host, port in REFUSED[:2]:
        assert ctl["tcp"][f"{host}:{port}"]["ok"], host
    assert got["tamper"]["netlink_errno"] == errno.EPERM
    assert all(got["tamper"][k]["rc"] != 0 for k in ("del", "add", "default"))
    assert got["after"]["errno"] == errno.EACCES


def test_deny_list_names_and_precedence(world):
    """A deny-list host name is resolved by the worker and refused; the most specific
    entry wins (allow 10.200.0.0/24, deny 10.200.0.1); a deny-list name that does not
    resolve stops the candidate, an allow-list one is a warning."""
    probes = [(nw.ALLOWED_HOST, nw.PORT), (nw.PRIVATE_HOST, nw.PORT), (nw.RESOLVER, nw.PORT)]
    cfg = {"probes": probes}
    out = world.run_worker([
        probe_task("deny-name", cfg, Egress(deny=("allowed.test",))),
        probe_task("nested", cfg, Egress(allow=("10.200.0.0/24",), deny=(nw.PRIVATE_HOST,))),
        probe_task("deny-all", cfg, Egress(allow=(nw.RESOLVER,), deny=("0.0.0.0/0",))),
        probe_task("bad-deny", cfg, Egress(deny=("nowhere.test",))),
        probe_task("bad-allow", cfg, Egress(allow=("nowhere.test",))),
    ])
    deny_name, nested, deny_all, bad_deny, bad_allow = out["results"]
    t = report(deny_name)["tcp"]
    assert t[f"{nw.ALLOWED_HOST}:{nw.PORT}"]["errno"] == errno.EACCES
    t = report(nested)["tcp"]
    assert t[f"{nw.PRIVATE_HOST}:{nw.PORT}"]["errno"] == errno.EACCES
    assert t[f"{nw.RESOLVER}:{nw.PORT}"]["ok"]
    assert t[f"{nw.ALLOWED_HOST}:{nw.PORT}"]["ok"]
    t = report(deny_all)["tcp"]  # only the allow-list remains
    assert t[f"{nw.ALLOWED_HOST}:{nw.PORT}"]["errno"] == errno.EACCES
    assert t[f"{nw.RESOLVER}:{nw.PORT}"]["ok"]
    assert not bad_deny["success"] and bad_deny["exit_code"] is None
    assert "egress_deny entry 'nowhere.test' did not resolve" in bad_deny["error_message"]
    t = report(bad_allow)["tcp"]
    assert t[f"{nw.ALLOWED_HOST}:{nw.PORT}"]["ok"]
    assert any("egress_allow entry 'nowhere.test' did not resolve" in x
               for x in bad_allow["log"]), bad_allow["log"]


# --------------------------------------------------------------------------- units


def test_policy_routes_and_precedence():
    pol = egress._build(Egress(allow=("10.1.0.0/16", "10.0.0.0/8", "198.51.100.0/24"),
                               deny=("10.1.2.0/24", "198.51.100.0/24", "192.0.2.77")))
    kinds = {r.dst.compressed: r.kind for r in pol.routes}
    assert kinds["10.0.2.3/32"] == "link"  # DNS, more specific than slirp's /24
    assert kinds["10.0.2.0/24"] == "prohibit"
    assert kinds["10.1.0.0/16"] == "via"  # allow inside a refused range
    assert kinds["10.0.0.0/8"] == "via"  # same prefix: allow beats the built-in
    assert kinds["10.1.2.0/24"] == "prohibit"  # deny inside an allow
    assert kinds["198.51.100.0/24"] == "prohibit"  # same prefix: deny beats allow
    assert kinds["169.254.0.0/16"] == "prohibit"
    # Order: the DNS route first, allow routes before slirp's /24 becomes a refusal.
    texts = [r.text() for r in pol.routes]
    assert texts[0] == "10.0.2.3 dev tap0 scope link"
    assert texts[-1] == "prohibit 10.0.2.0/24"
    assert texts.index("10.1.0.0/16 via 10.0.2.2 dev tap0") < texts.index("prohibit 10.1.2.0/24")
    assert pol.words() == "public internet only; allow 3, deny 3"


@pytest.mark.parametrize("entry,allow,fragment", [
    ("10.0.0.1/8", True, "host bits set; write 10.0.0.0/8"),
    ("fd00::/8", True, "IPv6"),
    ("127.0.0.1", True, "loopback"),
    ("10.0.2.3", False, "slirp4netns network"),
    ("0.0.0.0/0", True, "allow everything"),
    ("1.2.3", False, "not a valid IPv4"),
    ("bad name", True, "neither an IPv4 address"),
])
def test_bad_entries_are_refused_with_the_fix(entry, allow, fragment):
    assert fragment in (egress.check_entry(entry, allow) or "")


@pytest.mark.parametrize("entry,allow", [("10.0.0.0/8", True), ("models.internal", True),
                                         ("0.0.0.0/0", False), ("fd00::/8", False)])
def test_good_entries_pass(entry, allow):
    assert egress.check_entry(entry, allow) is None


def test_slirp_has_no_control_socket():
    for userns in (None, 7):
        argv = netns.slirp_argv("/usr/bin/slirp4netns", 123, 5, 6, userns)
        assert not any("api-socket" in a for a in argv)
        assert "--disable-host-loopback" in argv


def test_candidate_does_not_run_without_its_policy(monkeypatch):
    """If the routes cannot be installed, the command is never released."""
    require_tools()
    real = egress.build

    def broken(lists):
        pol = real(lists)
        bad = rtnetlink.Route(pol.routes[1].dst, "via", "nosuch0", netns.SLIRP_GATEWAY)
        return replace(pol, routes=(pol.routes[0], bad, *pol.routes[2:]))

    monkeypatch.setattr(egress, "build", broken)
    script = textwrap.dedent("""
        import sys
        print("the command ran")
        open(sys.argv[2], "w").write("ran")
    """)
    t = CandidateTask(run_id="r", candidate_id="c", name="c", script_name="s.py",
                      script=script, script_sha256=sha256_text(script), objective="o",
                      timeout=20, network=True)
    r = run_lifecycle(LocalBackend(), t, lambda _m: None)
    assert not r.success and r.exit_code is None and r.artifact_content is None
    assert "egress policy could not be installed" in r.error_message
    assert "the candidate did not run" in r.error_message
    assert "the command ran" not in r.output
