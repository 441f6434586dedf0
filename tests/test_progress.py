"""Progress writes: the first line stored at once, later ones coalesced and stored by the
process's progress threads, never by the candidate's own thread."""

from __future__ import annotations

import threading
import time

from worker.progress import ProgressWriter


class Store:
    """Records who stored and when; ``gate`` (when cleared) holds every store."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.stored = threading.Semaphore(0)

    def __call__(self) -> None:
        self.gate.wait(3)
        self.calls.append((threading.current_thread().name, time.monotonic()))
        self.stored.release()

    def wait(self, n: int = 1, timeout: float = 10.0) -> None:
        for _ in range(n):
            assert self.stored.acquire(timeout=timeout), self.calls


def test_first_line_is_stored_in_the_callers_thread_later_ones_elsewhere():
    store = Store()
    writer = ProgressWriter(store, interval=0.05)
    writer.line_added()
    assert [name for name, _ in store.calls] == [threading.current_thread().name]
    store.wait()
    time.sleep(0.06)  # the interval has passed: the next line is due at once...
    writer.line_added()
    store.wait()
    # ...and still stored by a progress thread, not this one
    assert store.calls[1][0] != threading.current_thread().name
    assert store.calls[1][0].startswith("forge-progress-")
    writer.close()


def test_a_slow_store_never_holds_the_line_that_asked_for_it():
    store = Store()
    writer = ProgressWriter(store, interval=0.01)
    store.gate.clear()
    threading.Thread(target=writer.line_added).start()  # the first line: synchronous...
    time.sleep(0.2)
    assert store.calls == []  # ...so it is held by the gate (the positive control)
    store.gate.set()
    store.wait()
    time.sleep(0.02)
    store.gate.clear()
    t0 = time.monotonic()
    writer.line_added()  # due now, but stored by a progress thread
    took = time.monotonic() - t0
    time.sleep(0.2)
    assert len(store.calls) == 1  # the store is still held...
    assert took < 0.1  # ...and the line did not wait for it
    store.gate.set()
    store.wait()
    writer.close()


def test_lines_within_the_interval_are_coalesced_into_one_store():
    store = Store()
    writer = ProgressWriter(store, interval=0.3)
    for _ in range(20):
        writer.line_added()
    store.wait()  # the first, at once
    store.wait()  # one more, for the other 19, one interval after the first
    assert store.calls[1][1] - store.calls[0][1] >= 0.29
    time.sleep(0.4)
    assert len(store.calls) == 2
    writer.close()


def test_nothing_is_stored_after_close():
    store = Store()
    writer = ProgressWriter(store, interval=0.2)
    writer.line_added()
    store.wait()
    writer.line_added()  # scheduled for 0.2 s after the first store
    writer.close()
    time.sleep(0.4)
    assert len(store.calls) == 1
    writer.line_added()  # closed: not even scheduled
    time.sleep(0.3)
    assert len(store.calls) == 1
