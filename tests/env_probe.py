"""A test-only task a worker loads with ``-I tests.env_probe``: what its pool process's
environment holds, as digests (the values themselves never go to the result backend).

The hostile suite's positive control: the worker's credentials really are in the
environment candidates are started from. (/proc/<pid>/environ cannot tell: Celery's
setproctitle reuses that memory for the process title.)
"""

from __future__ import annotations

import hashlib
import os

from celery import shared_task


def digest(value: str | None) -> str | None:
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


@shared_task(name="tests.env_probe.environ")
def environ(names: list[str]) -> dict[str, str | None]:
    return {name: digest(os.environ.get(name)) for name in names}
