"""A sandbox backend's capabilities are properties code reads (what isolates a candidate,
whether "no network" is enforced), and a backend step's failure carries a typed phase."""

from __future__ import annotations

import types

import pytest

from tests.test_local_sandbox import WRITE_ARGS, plain, require_bwrap, run, task  # noqa: F401
from worker.records import DaytonaSpec
from worker.sandbox import netns
from worker.sandbox.base import Boundary, NetworkAccess, Phase, SandboxError, SandboxRequest
from worker.sandbox.daytona import DaytonaBackend, DaytonaSandbox
from worker.sandbox.local import LocalBackend

NO_NET_WARNING = "cannot block it"


def _request(network: bool, **kw) -> SandboxRequest:
    return SandboxRequest(run_id="r-cap", candidate_id="c1", timeout=5, network=network, **kw)


@pytest.mark.processes  # sandboxes (bubblewrap, slirp4netns) and their candidates
def test_bubblewrap_backend_isolates_and_blocks_the_network() -> None:
    require_bwrap()
    assert netns.slirp4netns_path(), "slirp4netns missing: apt-get install slirp4netns"
    backend = LocalBackend()
    assert backend.can_block_network and backend.on_worker_machine
    assert {Boundary.FILESYSTEM, Boundary.PROCESSES, Boundary.USER, Boundary.NETWORK,
            Boundary.LIMITS} <= backend.boundaries
    assert Boundary.MACHINE not in backend.boundaries
    for network, access in ((False, NetworkAccess.NONE), (True, NetworkAccess.OUTBOUND)):
        sb = backend.create(_request(network), print)
        try:
            assert sb.network is access and sb.boundaries == backend.boundaries
            assert "fs ro" in sb.isolation  # the words say what the properties say
        finally:
            sb.delete()
    r, lines = run(task(WRITE_ARGS, network=False))
    assert r.success, r.error_message
    assert not any(NO_NET_WARNING in line for line in lines)  # control for the test below


@pytest.mark.processes
def test_plain_backend_says_it_cannot_block_the_network(plain) -> None:  # noqa: F811
    backend = LocalBackend()
    assert not backend.can_block_network
    assert backend.boundaries == {Boundary.LIMITS}
    sb = backend.create(_request(False), print)
    try:
        assert sb.network is NetworkAccess.HOST and sb.boundaries == {Boundary.LIMITS}
        assert sb.isolation.startswith("NONE:")
    finally:
        sb.delete()
    # The lifecycle reads the property: a competition without network is told plainly.
    r, lines = run(task(WRITE_ARGS, network=False))
    assert r.success, r.error_message
    assert any(NO_NET_WARNING in line and "host" in line for line in lines), lines


@pytest.mark.parametrize(("network", "spec", "access", "words"), [
    (False, DaytonaSpec(), NetworkAccess.NONE, "; all network blocked"),
    (True, DaytonaSpec(network_allow_list=("10.0.0.0/8",)), NetworkAccess.ALLOW_LIST,
     "; network limited to an allow-list"),
    (True, DaytonaSpec(), NetworkAccess.OPEN, ""),
])
def test_daytona_sandbox_capabilities(network, spec, access, words) -> None:
    backend = DaytonaBackend()
    assert backend.can_block_network and not backend.on_worker_machine
    assert Boundary.MACHINE in backend.boundaries
    sb = DaytonaSandbox(backend, types.SimpleNamespace(id="sb-1"), "/home/daytona",
                        _request(network, daytona=spec))
    assert sb.network is access and sb.boundaries == backend.boundaries
    assert sb.isolation == "Daytona sandbox (remote, separate machine)" + words


@pytest.mark.processes
def test_phase_errors_are_typed_and_read_as_before() -> None:
    require_bwrap()
    sb = LocalBackend().create(_request(False), print)
    try:
        with pytest.raises(SandboxError) as caught:
            sb.upload(b"x", "/tmp/forge-outside.txt", 5)
    finally:
        sb.delete()
    assert caught.value.phase is Phase.PATH
    assert SandboxError("Upload", "disk full").phase is Phase.UPLOAD  # a string is checked
    assert f"{Phase.UPLOAD} failed" == "Upload failed"  # the result's words are unchanged
    with pytest.raises(ValueError):
        SandboxError("Uplaod", "a phase that does not exist")
