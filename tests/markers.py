"""The ``processes`` marker: which tests start child processes, kept honest.

A test carries ``processes`` when it starts any child process: redis-server, PostgreSQL,
celery workers, chromium, a sandbox (bubblewrap, slirp4netns, the candidate), the
``forge`` CLI. ``pytest -m "not processes"`` is then a quick loop that runs in the
pytest process alone; ``make test`` (CI) runs everything.

Where the marks come from:

* a fixture that starts processes is decorated with ``tests.procs.starts_processes`` (under
  ``@pytest.fixture``), and every test whose fixtures include it, directly or through
  another fixture, is marked at collection;
* a parametrised fixture marks the parameters that start processes
  (``pytest.param("postgresql", marks=pytest.mark.processes)``);
* a test or module that starts processes itself says so: ``@pytest.mark.processes`` or
  ``pytestmark = pytest.mark.processes``.

Every process start (``subprocess`` and ``os.fork``) made while a test is set up or runs
is recorded, and an unmarked test that started one fails at teardown naming what it
started, so a missing mark cannot go unnoticed, in the quick loop or in CI.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.procs import PROCESS_FIXTURES

MARK = "processes"


# Not counted: ctypes.util.find_library runs `ldconfig -p` once per process (the run
# directory's syncfs lookup, worker/rundir.py): a library lookup, not a service.
NOT_COUNTED = frozenset({"ldconfig"})

_current: list[str | None] = [None]   # node id of the test being set up / run
_started: dict[str, list[str]] = {}   # node id -> what it started (argv[0], or "fork")


def _record(what: str) -> None:
    nodeid = _current[0]
    if nodeid is not None and what not in NOT_COUNTED:
        _started.setdefault(nodeid, []).append(what)


_real_execute_child = subprocess.Popen._execute_child
_real_fork = os.fork


def _execute_child(self, args, executable, *rest, **kwargs):
    first = args if isinstance(args, (str, bytes)) else next(iter(args), "")
    _record(os.path.basename(os.fsdecode(executable or first).split(" ")[0]))
    return _real_execute_child(self, args, executable, *rest, **kwargs)


def _fork():
    pid = _real_fork()
    if pid:
        _record("fork")
    return pid


def pytest_configure(config: pytest.Config) -> None:
    subprocess.Popen._execute_child = _execute_child
    os.fork = _fork


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.Popen._execute_child = _real_execute_child
    os.fork = _real_fork


def _uses_a_process_fixture(item: pytest.Item) -> bool:
    # The names of every fixture the test needs, through other fixtures too.
    return not PROCESS_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker(MARK) is None and _uses_a_process_fixture(item):
            item.add_marker(MARK)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    _current[0] = item.nodeid
    try:
        return (yield)
    finally:
        _current[0] = None
        _started.pop(item.nodeid, None)


@pytest.fixture(autouse=True)
def _processes_mark_is_honest(request: pytest.FixtureRequest):
    """Fails an unmarked test that started a process (in its set-up or its body)."""
    yield
    if request.node.get_closest_marker(MARK) is not None:
        return
    started = _started.get(request.node.nodeid)
    if started:
        what = ", ".join(sorted(set(started)))
        pytest.fail(f"this test started processes ({what}) but is not marked '{MARK}': "
                    f"mark it, or its fixture (tests/markers.py)", pytrace=False)
