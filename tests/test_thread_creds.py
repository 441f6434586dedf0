"""One thread as a sandbox's uid (worker/sandbox/local/thread_creds.py): that thread
only, a vforked child inheriting it, and everything taken back afterwards."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading

import pytest

from worker.sandbox.local import thread_creds

UID = 1_899_999_001  # an unprivileged host uid no one has
PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_GET_DUMPABLE = 1, 2, 3
libc = ctypes.CDLL(None, use_errno=True)


def _state() -> dict:
    """The calling thread's credentials and the attributes a switch resets."""
    sig = ctypes.c_int(0)
    libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    return {"uid": os.getresuid(), "gid": os.getresgid(), "groups": sorted(os.getgroups()),
            "dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), "deathsig": sig.value}


def _require_root() -> None:
    assert os.getresuid() == (0, 0, 0), "run the suite as root: the uid switch needs it"
    assert thread_creds.usable(), "this root process cannot switch one thread alone"


def test_only_the_calling_thread_switches_and_everything_comes_back():
    """Raced: another thread reads its own ids while the switched one holds them."""
    _require_root()
    out: dict[str, dict] = {}
    inside, read = threading.Barrier(2), threading.Barrier(2)

    def switched() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR2, 0, 0, 0)  # a thread attribute
        out["before"] = _state()
        with thread_creds.become(UID):
            out["inside"] = _state()
            inside.wait(10)
            read.wait(10)  # held until the other thread has looked
        out["after"] = _state()
        libc.prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)

    t = threading.Thread(target=switched)
    t.start()
    inside.wait(10)
    out["other"] = _state()  # this thread, while the other runs as UID
    read.wait(10)
    t.join(10)
    # The positive control: the switched thread did run as UID, no groups, and the
    # kernel did reset what the restore puts back.
    assert out["inside"]["uid"] == (UID, UID, 0) and out["inside"]["gid"] == (UID, UID, 0)
    assert out["inside"]["groups"] == []
    assert out["inside"]["dumpable"] == 0 and out["inside"]["deathsig"] == 0
    assert out["before"]["deathsig"] == signal.SIGUSR2 and out["before"]["dumpable"] == 1
    assert out["other"]["uid"] == (0, 0, 0) and out["other"]["gid"] == (0, 0, 0)
    assert out["after"] == out["before"]


@pytest.mark.processes
def test_threads_switching_at_once_leave_the_process_dumpable():
    """Raced: A switches, then B while A is switched; A takes its ids back first, B last.
    The dumpable flag is the process's, and B came in when A's switch had cleared it: B
    must not leave it cleared."""
    _require_root()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def a() -> None:
        with thread_creds.become(UID):
            a_in.set()
            b_in.wait(10)
            seen["a"] = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
        a_out.set()

    def b() -> None:
        a_in.wait(10)
        seen["before b"] = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
        with thread_creds.become(UID + 1):
            b_in.set()
            a_out.wait(10)
        seen["after"] = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen["before b"] == 0 and seen["a"] == 0  # the positive control: B came in cleared
    assert seen["after"] == 1
    assert libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 and os.getresuid() == (0, 0, 0)


@pytest.mark.processes
def test_a_vforked_child_starts_as_the_uid_without_groups():
    _require_root()
    with thread_creds.become(UID):
        done = subprocess.run(["id", "-u", "-r"], capture_output=True, text=True)
        groups = subprocess.run(["id", "-G"], capture_output=True, text=True)
        status = subprocess.run(["grep", "-E", "^(Uid|Gid|CapEff|CapPrm):", "/proc/self/status"],
                                capture_output=True, text=True)
    assert done.stdout.split() == [str(UID)], done.stderr
    assert groups.stdout.split() == [str(UID)]
    fields = dict(line.split(":", 1) for line in status.stdout.splitlines())
    assert fields["Uid"].split() == [str(UID)] * 4  # real, effective, saved (exec), fs
    assert fields["Gid"].split() == [str(UID)] * 4
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    assert os.getresuid() == (0, 0, 0)  # and this thread is root again


def test_a_refused_switch_leaves_the_thread_as_it_was(monkeypatch):
    """The uid refused after the groups and gid were taken (as root in a full uid map
    the kernel refuses no uid, so the refusal is simulated): an OSError, and the
    thread's groups and gids come back."""
    _require_root()
    real = thread_creds._ids
    calls = []

    def ids(number, values):
        calls.append(values)
        if len(calls) == 2 and values[0] == UID:  # the uid, after the gid
            raise OSError(1, "refused")
        real(number, values)

    monkeypatch.setattr(thread_creds, "_ids", ids)
    before = _state()
    with pytest.raises(OSError, match="refused"):
        with thread_creds.become(UID):
            pytest.fail("ran as the uid")
    assert calls[0] == (UID, UID, 0)  # the gid was switched before the uid failed
    assert _state() == before


def test_an_interruption_while_restoring_still_restores_everything(monkeypatch):
    """A signal handler's exception between two restore steps (simulated: the groups'
    restore interrupted once): every step runs again, then the exception goes on."""
    _require_root()
    real = thread_creds._groups
    calls = []

    def groups(number, values):
        calls.append(list(values))
        if len(calls) == 2:  # the first restore of the groups, after the drop
            raise KeyboardInterrupt
        real(number, values)

    monkeypatch.setattr(thread_creds, "_groups", groups)
    before = _state()
    with pytest.raises(KeyboardInterrupt):
        with thread_creds.become(UID):
            assert os.getresuid() == (UID, UID, 0)
    assert len(calls) == 3  # dropped, interrupted, restored
    assert _state() == before


@pytest.mark.processes
def test_not_usable_without_root():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a nobody asks
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            thread_creds.usable.cache_clear()
            os.write(w, str(thread_creds.usable()).encode())
        finally:
            os._exit(0)
    os.close(w)
    answer = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert answer == "False"
