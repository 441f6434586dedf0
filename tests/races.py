"""Run contenders as a race: started together behind a barrier, many rounds over.

A check-then-act bug loses only when two contenders land in its window together, so
one round proves little. ``race`` releases every contender of a round at once (a
``threading.Barrier``, or a ``multiprocessing.Barrier`` for processes: separate
interpreters, no GIL between them, real parallelism on 2 cores) and repeats for
``rounds`` rounds; the caller asserts the single outcome of every round.

Processes are forked once and loop over the rounds (a fork per round would spread their
start times far wider than the window under test). Each outcome comes back as
``Outcome(round, contender, value, error)``; ``value`` must pickle for processes.
"""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

BARRIER_TIMEOUT = 60.0  # a contender that never arrives fails the round, never hangs it


@dataclass(frozen=True)
class Outcome:
    round: int
    contender: int
    value: Any = None
    error: str | None = None  # "Type: message" and the traceback's last lines


def _one(fn: Callable[[int, int], Any], rnd: int, who: int) -> Outcome:
    try:
        return Outcome(rnd, who, fn(rnd, who))
    except BaseException as exc:  # noqa: BLE001 - every failure is an outcome to assert on
        tail = "".join(traceback.format_exception(exc)[-3:])
        return Outcome(rnd, who, error=f"{type(exc).__name__}: {exc}\n{tail}")


def race(fn: Callable[[int, int], Any], *, contenders: int, rounds: int,
         kind: str = "thread", before_round: Callable[[int], None] | None = None
         ) -> list[list[Outcome]]:
    """``fn(round, contender)`` run by ``contenders`` threads or processes at once, for
    ``rounds`` rounds; returns the outcomes grouped by round (each sorted by contender).

    ``before_round(round)`` runs in this process while every contender waits (fresh
    directories and the like), so no contender's set-up eats into the race itself.
    """
    assert kind in ("thread", "process"), kind
    if kind == "thread":
        start = threading.Barrier(contenders + 1, timeout=BARRIER_TIMEOUT)
        found: list[Outcome] = []
        lock = threading.Lock()

        def thread_main(who: int) -> None:
            for rnd in range(rounds):
                start.wait()
                got = _one(fn, rnd, who)
                with lock:
                    found.append(got)

        threads = [threading.Thread(target=thread_main, args=(i,), daemon=True)
                   for i in range(contenders)]
        for t in threads:
            t.start()
        for rnd in range(rounds):
            if before_round:
                before_round(rnd)
            start.wait()  # releases this round's contenders together
            _wait_round(lambda: sum(o.round == rnd for o in found), contenders)  # noqa: B023
        for t in threads:
            t.join(BARRIER_TIMEOUT)
        return _grouped(found, rounds, contenders)

    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(contenders + 1, timeout=BARRIER_TIMEOUT)
    queue = ctx.SimpleQueue()

    def process_main(who: int) -> None:
        for rnd in range(rounds):
            start.wait()
            queue.put(_one(fn, rnd, who))

    procs = [ctx.Process(target=process_main, args=(i,), daemon=True)
             for i in range(contenders)]
    for p in procs:
        p.start()
    found = []
    try:
        for rnd in range(rounds):
            if before_round:
                before_round(rnd)
            start.wait()
            for _ in range(contenders):
                found.append(queue.get())
    finally:
        for p in procs:
            p.join(BARRIER_TIMEOUT)
            if p.is_alive():
                p.kill()
                p.join(5)
    return _grouped(found, rounds, contenders)


class Rendezvous:
    """A second barrier, inside the code under test, where its check-then-act window
    opens (wrapped around the call just before it): contenders that started together
    may still drift apart by milliseconds on a loaded machine, wider than a window of
    microseconds. Here they meet again, so every round that meets is a collision.

    Between processes it spins on a shared counter: a ``multiprocessing.Barrier`` lets
    its waiters out one at a time through its lock, a context switch apart, and the
    first out can be through a microsecond window before the second moves. A contender
    that never comes (it took another path, say an early return) lets the others go
    after ``timeout``: that round did not collide, and ``met()`` says so; the test
    asserts most rounds did (the race really was run). ``reset()`` re-arms it between
    rounds (``before_round``).
    """

    def __init__(self, kind: str, parties: int, timeout: float = 5.0):
        self.parties = parties
        self.timeout = timeout
        self.kind = kind
        if kind == "thread":
            self.barrier = threading.Barrier(parties)
        else:
            self.arrived = multiprocessing.get_context("fork").Value("i", 0)
        self._local = threading.local()

    def reset(self) -> None:
        if self.kind == "thread":
            self.barrier.reset()
        else:
            self.arrived.value = 0

    def wait(self) -> None:
        import time

        met = True
        if self.kind == "thread":
            try:
                self.barrier.wait(self.timeout)
            except threading.BrokenBarrierError:
                met = False
        else:
            with self.arrived.get_lock():
                self.arrived.value += 1
            deadline = time.monotonic() + self.timeout
            while self.arrived.value < self.parties:
                if time.monotonic() > deadline:
                    met = False
                    break
                pass
        self._local.met = met

    def met(self) -> bool:
        """Did this contender's last call meet the others (and reset for the next)?"""
        met = getattr(self._local, "met", False)
        self._local.met = False
        return met

    def after(self, fn: Callable[..., Any],
              when: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
        """``fn``, then (when ``when(*args)``) wait for the other contenders."""
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            value = fn(*args, **kwargs)
            if when(*args, **kwargs):
                self.wait()
            return value
        return wrapped

    def before(self, fn: Callable[..., Any],
               when: Callable[..., bool] = lambda *a, **k: True) -> Callable[..., Any]:
        """(When ``when(*args)``) wait for the other contenders, then ``fn``."""
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if when(*args, **kwargs):
                self.wait()
            return fn(*args, **kwargs)
        return wrapped


def _wait_round(done: Callable[[], int], contenders: int) -> None:
    import time

    deadline = time.monotonic() + BARRIER_TIMEOUT
    while done() < contenders:
        assert time.monotonic() < deadline, "a contender never finished its round"
        time.sleep(0.0005)


def _grouped(found: list[Outcome], rounds: int, contenders: int) -> list[list[Outcome]]:
    by_round: list[list[Outcome]] = [[] for _ in range(rounds)]
    for o in found:
        by_round[o.round].append(o)
    for rnd, outcomes in enumerate(by_round):
        assert len(outcomes) == contenders, f"round {rnd}: {len(outcomes)} outcomes"
        outcomes.sort(key=lambda o: o.contender)
    return by_round


def errors(by_round: list[list[Outcome]]) -> list[str]:
    """Every contender's exception, with its round: the list a test asserts is empty."""
    return [f"round {o.round} contender {o.contender}: {o.error}"
            for outcomes in by_round for o in outcomes if o.error]
