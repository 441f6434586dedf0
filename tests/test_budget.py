"""The sandbox budget (worker/budget.py): the Lua lease semaphore on a real redis-server,
and the same policy in-process (embedded mode). Contenders start behind a barrier.

Each race test has its positive control: the limit is *reached* (not merely respected),
the blocked contender *was* blocked before the slot came back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from tests.procs import ROOT
from worker import budget as budget_mod
from worker.budget import (
    LocalBudget,
    Quota,
    RedisBudget,
    SlotRequest,
    SlotWaitExpired,
    Units,
    leases_key,
    waiters_key,
)


def quota(n: int, cpu: int = 0) -> Quota:
    return Quota(n, cpu or n, n, 3 * n)


def slot(run: str, n: int = 4, wait: float = 60, clock: str | None = None,
            units: Units = Units(), cpu: int = 0) -> SlotRequest:
    return SlotRequest(run_id=run, clock=clock or run, wait=wait, quota=quota(n, cpu),
                       units=units)


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.processes), "local"])
def make_budget(request) -> Callable[[], object]:
    """Factory of budgets sharing one state: RedisBudgets (one per "process", own client
    and keeper) on one redis-server, or the single in-process LocalBudget."""
    made: list[RedisBudget] = []
    local = LocalBudget()
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else ""

    def make():
        if not url:
            return local
        b = RedisBudget(url, ttl=5)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


class Tally:
    """Holders at once, per run and overall, with the peak and the order of grants."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.peak = 0
        self.grants: list[tuple[float, str]] = []

    def enter(self, run: str) -> None:
        with self.lock:
            self.now[run] = self.now.get(run, 0) + 1
            self.peak = max(self.peak, sum(self.now.values()))
            self.grants.append((time.monotonic(), run))

    def leave(self, run: str) -> None:
        with self.lock:
            self.now[run] -= 1


class Contenders(list):
    errors: list[BaseException]


def contend(budgets: list, reqs: list[SlotRequest], hold: float, tally: Tally) -> Contenders:
    """One thread per request, all released at once by a barrier; budgets round-robin."""
    barrier = threading.Barrier(len(reqs))
    errors: list[BaseException] = []

    def one(i: int, req: SlotRequest) -> None:
        b = budgets[i % len(budgets)]
        barrier.wait()
        try:
            grant = b.acquire(req)
            tally.enter(req.run_id)
            time.sleep(hold)
            tally.leave(req.run_id)
            b.release(grant.lease_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = Contenders(threading.Thread(target=one, args=(i, r)) for i, r in enumerate(reqs))
    threads.errors = errors
    for t in threads:
        t.start()
    return threads


def join(threads: Contenders, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "contenders still blocked"
    assert threads.errors == []


def test_never_more_than_the_limit_and_the_limit_is_reached(make_budget):
    budgets = [make_budget() for _ in range(3)]
    tally = Tally()
    join(contend(budgets, [slot("run-a") for _ in range(24)], 0.05, tally))
    assert len(tally.grants) == 24
    assert tally.peak == 4  # never more, and the slots were all used


def test_cpu_units_count_against_the_cpu_quota(make_budget):
    """Two-vCPU sandboxes under a 4-vCPU quota: two at once, though 10 slots are free."""
    budgets = [make_budget() for _ in range(2)]
    tally = Tally()
    reqs = [slot("run-c", n=10, cpu=4, units=Units(cpu=2, memory=1, disk=3))
            for _ in range(10)]
    join(contend(budgets, reqs, 0.05, tally))
    assert tally.peak == 2


def test_two_runs_share_the_budget_and_neither_starves(make_budget):
    """Run A fills the budget first; run B arrives while A still has 10 waiting. B gets
    slots at once, A keeps getting them too, and the split while both wait is even."""
    budgets = [make_budget() for _ in range(2)]
    tally = Tally()
    a_threads = contend(budgets, [slot("run-a") for _ in range(14)], 0.15, tally)
    deadline = time.monotonic() + 20
    while tally.now.get("run-a", 0) < 4:  # A holds every slot
        assert time.monotonic() < deadline
        time.sleep(0.01)
    b_threads = contend(budgets, [slot("run-b") for _ in range(14)], 0.15, tally)
    join(a_threads)
    join(b_threads)
    order = [run for _, run in tally.grants]
    first_b = order.index("run-b")
    last_a = len(order) - 1 - order[::-1].index("run-a")
    assert first_b < last_a - 4  # B did not wait for A to finish...
    both = order[first_b:last_a + 1]  # ...while both were waiting:
    assert both.count("run-a") >= 3 and both.count("run-b") >= 3  # neither starved
    assert abs(both.count("run-a") - both.count("run-b")) <= len(both) // 3 + 2
    assert tally.peak == 4


def test_a_learned_limit_caps_the_run_and_is_news_once(make_budget):
    b = make_budget()
    assert b.learn("run-l", 2) is True
    assert b.learn("run-l", 3) is False and b.learn("run-l", 2) is False
    assert b.learn("run-l", 1) is False  # lowered, not news
    assert b.learn("run-l", 2) is False
    tally = Tally()
    join(contend([b, make_budget()], [slot("run-l") for _ in range(6)], 0.05, tally))
    assert tally.peak == 1
    other = Tally()  # another run keeps the budget's own limit
    join(contend([b], [slot("run-m") for _ in range(8)], 0.05, other))
    assert other.peak == 4


def test_the_runs_wait_bound_expires_with_the_budget_named(make_budget):
    b = make_budget()
    held = [b.acquire(slot("run-w", n=1)).lease_id]
    told: list[object] = []
    t0 = time.monotonic()
    with pytest.raises(SlotWaitExpired) as info:
        b.acquire(slot("run-w", n=1, wait=1.0), on_wait=told.append)
    assert 0.9 <= time.monotonic() - t0 < 10
    assert len(told) == 1 and told[0].held == 1  # said once that it waits, and why
    assert info.value.usage.held == 1
    # The clock is the run's, not the request's: a later request of it gives up at once.
    t0 = time.monotonic()
    with pytest.raises(SlotWaitExpired):
        b.acquire(slot("run-w", n=1, wait=1.0))
    assert time.monotonic() - t0 < 1.0
    b.release(held[0])
    assert b.held() == 0
    # A new clock (a resumed run) waits afresh, and gets the freed slot.
    assert b.acquire(slot("run-w", n=1, wait=1.0, clock="run-w:2")).waited < 1.0


def test_redis_waiter_registrations_are_removed_when_a_waiter_gives_up(redis_server):
    b = RedisBudget(redis_server.url, ttl=5)
    try:
        lease = b.acquire(slot("run-x", n=1)).lease_id
        with pytest.raises(SlotWaitExpired):
            b.acquire(slot("run-y", n=1, wait=0.5))
        r = redis_server.client()
        assert r.zcard(waiters_key()) == 0
        assert r.zcard(leases_key()) == 1
        b.release(lease)
        assert r.zcard(leases_key()) == 0
    finally:
        b.close()


def test_release_wakes_a_waiter_through_the_channel_not_the_poll(redis_server, monkeypatch):
    monkeypatch.setattr(budget_mod, "POLL", 30.0)  # the fallback poll cannot be the waker
    holder, waiter = RedisBudget(redis_server.url, ttl=5), RedisBudget(redis_server.url, ttl=5)
    try:
        lease = holder.acquire(slot("run-p", n=1)).lease_id
        got: list[float] = []
        t = threading.Thread(target=lambda: got.append(
            waiter.acquire(slot("run-p", n=1)).waited))
        t.start()
        time.sleep(1.0)
        assert not got  # blocked while the slot is held
        released = time.monotonic()
        holder.release(lease)
        t.join(15)
        assert got and time.monotonic() - released < 10
    finally:
        holder.close()
        waiter.close()


HOLDER = """
import sys, time
from worker.budget import Quota, RedisBudget, SlotRequest
b = RedisBudget(sys.argv[1], ttl=float(sys.argv[2]))
for _ in range(3):
    b.acquire(SlotRequest(run_id="doomed", clock="doomed", wait=30, quota=Quota(3, 3, 3, 9)))
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_holders_slots_come_back_within_the_lease_ttl(redis_server):
    ttl = 2.0
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, redis_server.url, str(ttl)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        b = RedisBudget(redis_server.url, ttl=5)
        # Heartbeats keep the leases alive past their TTL while the holder lives.
        time.sleep(ttl * 1.5)
        with pytest.raises(SlotWaitExpired):
            b.acquire(slot("later", n=3, wait=0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        killed = time.monotonic()
        grant = b.acquire(slot("later-2", n=3, wait=30))
        assert time.monotonic() - killed <= ttl + 2.5  # within the lease time (+ a poll)
        assert b.held() == 1
        b.release(grant.lease_id)
        b.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
