"""Where a competition's Daytona sandboxes start from: a named snapshot or a declared image.

A declared image (``ImageSpec``: a base, pip packages, commands; the candidates'
requirements are folded into its pip packages at plan time) becomes the SDK's
declarative ``Image`` and is built once into a snapshot whose name carries a hash of its
content (the Dockerfile the SDK renders plus the resources): the same declaration finds
the same snapshot every run and every week, and any change builds a new one.
Requirements therefore install when the image is built, not once per candidate.

Built once: in a process, one thread per snapshot name looks it up or builds it while
the others wait for its answer; across processes and machines, Daytona's own answer
stops duplicates: the name is unique, so a second create is refused with a conflict and
that worker waits for the build already running. A named snapshot (``snapshot = ...``)
is looked up once per process; its size sizes the budget's lease.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.budget import DEFAULT_UNITS, Units
from worker.records import DaytonaSpec, ImageSpec, Resources
from worker.sandbox.base import Phase, SandboxError

SNAPSHOT_PREFIX = "dream-foundry-"
READY = "active"
FAILED = frozenset({"error", "build_failed"})
POLL = 1.0  # seconds between looks at a snapshot being built elsewhere


@dataclass(frozen=True)
class Source:
    """What to create a competition's sandboxes from: a snapshot name or the default."""

    snapshot: str | None
    units: Units


DEFAULT_SOURCE = Source(None, DEFAULT_UNITS)


def _state(snapshot: Any) -> str:
    state = getattr(snapshot, "state", None)
    return str(getattr(state, "value", state) or "unknown").lower()


def build_image(sdk: Any, spec: ImageSpec) -> Any:
    """The SDK's declarative Image for ``spec`` (base or Debian slim, pip, commands)."""
    image = sdk.Image.base(spec.base) if spec.base else sdk.Image.debian_slim(spec.python or None)
    if spec.pip:
        image = image.pip_install(list(spec.pip))
    if spec.commands:
        image = image.run_commands(*spec.commands)
    return image


def snapshot_name(dockerfile: str, resources: Resources) -> str:
    """``dream-foundry-<16 hex>``: the hash of the image's content and its size."""
    content = f"{dockerfile}\n#resources cpu={resources.cpu} memory={resources.memory} " \
              f"disk={resources.disk}\n"
    return SNAPSHOT_PREFIX + hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]


def _units(snapshot: Any, resources: Resources) -> Units:
    def pick(attr: str, wanted: int, default: int) -> int:
        value = wanted or getattr(snapshot, attr, None) or default
        return max(1, int(round(float(value))))

    return Units(pick("cpu", resources.cpu, DEFAULT_UNITS.cpu),
                 pick("mem", resources.memory, DEFAULT_UNITS.memory),
                 pick("disk", resources.disk, DEFAULT_UNITS.disk))


class Snapshots:
    """Resolves a competition's ``DaytonaSpec`` to a ready snapshot, once per process."""

    def __init__(self, scrub: Callable[[str], str] = str):
        self._scrub = scrub
        self._ready: dict[str, Source] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.builds = 0  # snapshot creates this process asked for (tests, logs)

    def source(self, client: Any, sdk: Any, spec: DaytonaSpec, timeout: float,
               log: Callable[[str], None]) -> Source:
        if spec.image is not None:
            image = build_image(sdk, spec.image)
            name = snapshot_name(image.dockerfile(), spec.resources)
            return self._ensure(client, sdk, name, image, spec.resources, timeout, log)
        if spec.snapshot:
            return self._ensure(client, sdk, spec.snapshot, None, spec.resources, timeout, log)
        return DEFAULT_SOURCE

    def _ensure(self, client: Any, sdk: Any, name: str, image: Any, resources: Resources,
                timeout: float, log: Callable[[str], None]) -> Source:
        known = self._ready.get(name)
        if known is not None:
            return known
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:  # one thread per process looks it up or builds it
            known = self._ready.get(name)
            if known is None:
                snapshot = self._find_or_build(client, sdk, name, image, resources,
                                               time.monotonic() + timeout, log)
                known = self._ready[name] = Source(name, _units(snapshot, resources))
        return known

    def _find_or_build(self, client: Any, sdk: Any, name: str, image: Any,
                       resources: Resources, deadline: float, log: Callable[[str], None]) -> Any:
        snapshot = self._get(client, sdk, name)
        if snapshot is None:
            if image is None:
                raise SandboxError(Phase.CREATE, f"snapshot {name!r} does not exist on "
                                   "the Daytona account: create it, or fix 'snapshot' in the "
                                   "manifest's [daytona] table")
            snapshot = self._build(client, sdk, name, image, resources, deadline, log)
        while _state(snapshot) != READY:  # being built (by us or another worker)
            if _state(snapshot) in FAILED:
                raise SandboxError(Phase.CREATE, f"snapshot {name} failed to build: "
                                   f"{self._scrub(str(getattr(snapshot, 'error_reason', '')))}")
            if time.monotonic() > deadline:
                raise SandboxError(Phase.CREATE, f"snapshot {name} not ready within the "
                                   f"run's wait bound (state {_state(snapshot)})")
            time.sleep(POLL)
            snapshot = self._get(client, sdk, name) or snapshot
        return snapshot

    def _get(self, client: Any, sdk: Any, name: str) -> Any:
        try:
            return client.snapshot.get(name)
        except sdk.DaytonaNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise SandboxError(Phase.CREATE, f"looking up snapshot {name}: "
                               f"{self._scrub(str(exc))}") from exc

    def _build(self, client: Any, sdk: Any, name: str, image: Any, resources: Resources,
               deadline: float, log: Callable[[str], None]) -> Any:
        size = sdk.Resources(cpu=resources.cpu or None, memory=resources.memory or None,
                             disk=resources.disk or None) if resources else None
        log(f"[Daytona] Building image snapshot {name} (once; reused by every candidate "
            "and every later run)")
        self.builds += 1
        try:
            return client.snapshot.create(
                sdk.CreateSnapshotParams(name=name, image=image, resources=size),
                timeout=max(1.0, deadline - time.monotonic()))
        except Exception as exc:  # noqa: BLE001
            status = getattr(exc, "status_code", None)
            if status == 409 or "already exists" in str(exc).lower():
                log(f"[Daytona] Snapshot {name} is being built by another worker; waiting")
                found = self._get(client, sdk, name)
                if found is not None:
                    return found
            raise SandboxError(Phase.CREATE, f"building snapshot {name}: "
                               f"{self._scrub(str(exc))}") from exc
