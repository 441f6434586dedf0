"""The Daytona sandbox budget: how many sandboxes may be alive at once, for every worker.

A Daytona organisation has quotas (the first tier: 10 vCPU, 10 GiB memory, 30 GiB disk;
a default sandbox takes 1 vCPU, 1 GiB, 3 GiB) and refuses a create past them. So every
candidate takes a *lease* on a slot before it creates its sandbox and gives it back once
the sandbox is gone; a candidate that finds no free slot waits, visibly, instead of
being refused. One mechanism, a lease semaphore in Redis kept by atomic Lua scripts:

* **Leases.** A lease is a member of a sorted set scored by its expiry, on Redis's own
  clock (``TIME``), so no worker's clock matters. ``acquire`` drops expired leases, then
  grants a request when the live ones leave room: fewer than the limit and, counting
  each lease's sandbox size, vCPU / memory / disk sums within the quota.
* **Heartbeat.** A keeper thread in each worker process renews the process's leases
  every TTL/3 (``FORGE_DAYTONA_LEASE_TTL``, 30 s): a SIGKILLed worker's leases expire
  within one TTL and its slots come back; nothing ever holds a slot for good.
* **Waking.** A process releasing a lease hands the slot to its own waiting requests in
  the same script call. A slot it does not hand on is published on a channel; every
  process's keeper is subscribed and retries all of its waiting requests in one script
  call; a poll every second catches slots that came back by expiry.
* **Fairness.** A waiting request is registered under its run (renewed like a lease).
  A free slot goes to a run holding less than its fair share, the limit divided by the
  runs that are waiting; a run at or above its share gets it only when no other waiting
  run is below. Two runs converge to half the slots each; a run alone takes them all.
* **Learned limits.** When the account refuses a create while N of our sandboxes are
  alive, ``learn`` stores N as the run's limit for the rest of the run; every worker's
  ``acquire`` honours it.
* **The wait bound.** A run's wait clock starts at its first request (``SET NX``, one
  clock per publish of the run); once it has run ``wait`` seconds, ``acquire`` gives up
  with ``SlotWaitExpired``, whose message names the quota and the fixes.

Embedded mode (no broker) keeps the very same policy in the process (``LocalBudget``,
one ``threading.Condition``): there, the process is the whole cluster.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from worker import config
from worker.keys import (
    BUDGET,
    freed_channel,
    learned_key,
    lease_info_key,
    leases_key,
    run_key_prefix,
    waiter_run_key,
    waiters_key,
)
from worker.records import SandboxBudget

logger = logging.getLogger("dream_foundry")

NAME = BUDGET  # one budget per Daytona account this cluster uses
POLL = 1.0  # seconds between a waiting process's retries when nothing was published
LEARNED_TTL = 24 * 3600  # a learned limit outlives any run
CLOCK_GRACE = 3600  # a run's wait clock outlives its bound by this much

# Redis keys: every one the budget uses, forge:budget:<name>:<what> (worker/keys.py).


# -- what a request asks for ------------------------------------------------------------


@dataclass(frozen=True)
class Units:
    """One sandbox's size; the default is Daytona's default sandbox."""

    cpu: int = 1
    memory: int = 1
    disk: int = 3


DEFAULT_UNITS = Units()


@dataclass(frozen=True)
class Quota:
    """The budget a request is checked against (sandboxes, vCPU, GiB memory, GiB disk)."""

    sandboxes: int
    cpu: int
    memory: int
    disk: int

    @classmethod
    def of(cls, budget: SandboxBudget) -> Quota:
        """The task's budget; 0 fields from this worker's FORGE_DAYTONA_* configuration,
        CPU/memory/disk defaulting to that many default sandboxes' worth."""
        n = budget.max_sandboxes or config.daytona_max_sandboxes()
        cpu, memory, disk = config.daytona_quota()
        return cls(n, budget.max_cpu or cpu or n * DEFAULT_UNITS.cpu,
                   budget.max_memory or memory or n * DEFAULT_UNITS.memory,
                   budget.max_disk or disk or n * DEFAULT_UNITS.disk)


@dataclass(frozen=True)
class SlotRequest:
    run_id: str
    clock: str  # the run's wait clock (one per publish of the run)
    wait: float  # seconds the run may wait, from its first request
    quota: Quota
    units: Units = DEFAULT_UNITS
    lease_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def wire(self) -> dict:
        return {"id": self.lease_id, "run": self.run_id, "clock": self.clock,
                "c": self.units.cpu, "m": self.units.memory, "d": self.units.disk,
                "n": self.quota.sandboxes, "qc": self.quota.cpu, "qm": self.quota.memory,
                "qd": self.quota.disk}


@dataclass(frozen=True)
class Usage:
    """What the budget looked like at the last look: for log lines and error messages."""

    held: int = 0
    cpu: int = 0
    memory: int = 0
    disk: int = 0
    waiting_runs: int = 0


@dataclass(frozen=True)
class Grant:
    lease_id: str
    waited: float  # seconds this acquire waited
    deadline: float  # time.monotonic() when the run's wait bound runs out


class SlotWaitExpired(Exception):
    """The run waited its whole bound without getting a slot."""

    def __init__(self, waited: float, usage: Usage):
        super().__init__(f"waited {waited:.0f}s")
        self.waited = waited
        self.usage = usage


WaitFn = Callable[[Usage], None]


def _admits(q: dict, count: int, sums: tuple[int, int, int], held: dict[str, int],
            waiting: dict[str, int], learned: int | None) -> bool:
    """The policy, for ``LocalBudget``; ACQUIRE below is the same in Lua, line for line."""
    limit = q["n"] if learned is None else min(q["n"], learned)
    cpu, memory, disk = sums
    if not (count < limit and cpu + q["c"] <= q["qc"] and memory + q["m"] <= q["qm"]
            and disk + q["d"] <= q["qd"]):
        return False
    share = limit / max(len(waiting), 1)
    if held.get(q["run"], 0) < share:
        return True
    return not any(run != q["run"] and held.get(run, 0) < share for run in waiting)


# -- Redis: the scripts -----------------------------------------------------------------

_LUA_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function chunks(ids, fn)  -- unpack() takes a bounded number of values
  for i = 1, #ids, 1000 do
    local part = {}
    for j = i, math.min(i + 999, #ids) do part[#part + 1] = ids[j] end
    fn(part)
  end
end
"""

# KEYS: leases, lease info, waiters, waiter runs. ARGV: ttl ms, freed channel, per-run key
# prefix, clock ttl s, JSON list of requests (SlotRequest.wire()), a lease to release first
# ("" for none: a releasing process hands its slot to its own waiters in the same call).
# Returns {granted ids, clock ages ms (one per request), held, cpu, memory, disk, waiting runs}.
ACQUIRE = _LUA_COMMON + """
local ttl = tonumber(ARGV[1])
local released = 0
if ARGV[6] ~= '' then
  released = redis.call('ZREM', KEYS[1], ARGV[6])
  redis.call('HDEL', KEYS[2], ARGV[6])
end
local function purge(zset, hash)
  local dead = redis.call('ZRANGEBYSCORE', zset, '-inf', now)
  chunks(dead, function(p)
    redis.call('ZREM', zset, unpack(p))
    redis.call('HDEL', hash, unpack(p))
  end)
  return #dead
end
if purge(KEYS[1], KEYS[2]) > 0 then redis.call('PUBLISH', ARGV[2], 'expired') end
purge(KEYS[3], KEYS[4])

local reqs = cjson.decode(ARGV[5])
for _, q in ipairs(reqs) do  -- a request is a waiter until it is granted
  if not redis.call('ZSCORE', KEYS[1], q.id) then
    redis.call('ZADD', KEYS[3], now + ttl, q.id)
    redis.call('HSET', KEYS[4], q.id, q.run)
  end
end

local count, cpu, mem, disk, held = 0, 0, 0, 0, {}
chunks(redis.call('ZRANGE', KEYS[1], 0, -1), function(p)
  for _, raw in ipairs(redis.call('HMGET', KEYS[2], unpack(p))) do
    if raw then
      local l = cjson.decode(raw)
      count = count + 1; cpu = cpu + l.c; mem = mem + l.m; disk = disk + l.d
      held[l.run] = (held[l.run] or 0) + 1
    end
  end
end)
local waiting, nruns = {}, 0
chunks(redis.call('ZRANGE', KEYS[3], 0, -1), function(p)
  for _, run in ipairs(redis.call('HMGET', KEYS[4], unpack(p))) do
    if run then
      if not waiting[run] then waiting[run] = 0; nruns = nruns + 1 end
      waiting[run] = waiting[run] + 1
    end
  end
end)

local granted, ages = {}, {}
for _, q in ipairs(reqs) do
  local clock = ARGV[3] .. 'clock:' .. q.clock
  redis.call('SET', clock, now, 'NX', 'EX', ARGV[4])
  ages[#ages + 1] = now - tonumber(redis.call('GET', clock))
  if redis.call('ZSCORE', KEYS[1], q.id) then  -- granted already (two tries raced)
    redis.call('ZADD', KEYS[1], now + ttl, q.id)
    granted[#granted + 1] = q.id
  else
    local limit = q.n
    local learned = tonumber(redis.call('GET', ARGV[3] .. 'learned:' .. q.run) or '')
    if learned and learned < limit then limit = learned end
    local ok = count < limit and cpu + q.c <= q.qc and mem + q.m <= q.qm and disk + q.d <= q.qd
    local share = limit / math.max(nruns, 1)
    if ok and (held[q.run] or 0) >= share then
      for run, _ in pairs(waiting) do
        if run ~= q.run and (held[run] or 0) < share then ok = false; break end
      end
    end
    if ok then
      redis.call('ZADD', KEYS[1], now + ttl, q.id)
      redis.call('HSET', KEYS[2], q.id, cjson.encode({run = q.run, c = q.c, m = q.m, d = q.d}))
      redis.call('ZREM', KEYS[3], q.id)
      redis.call('HDEL', KEYS[4], q.id)
      count = count + 1; cpu = cpu + q.c; mem = mem + q.m; disk = disk + q.d
      held[q.run] = (held[q.run] or 0) + 1
      waiting[q.run] = waiting[q.run] - 1
      if waiting[q.run] <= 0 then waiting[q.run] = nil; nruns = nruns - 1 end
      granted[#granted + 1] = q.id
    end
  end
end
-- A released slot this call did not hand on (fairness may keep it for another
-- process's run) wakes the other processes.
if released > 0 and #granted == 0 then redis.call('PUBLISH', ARGV[2], 'released') end
return {granted, ages, count, cpu, mem, disk, nruns}
"""

# KEYS: leases, lease info, waiters, waiter runs. ARGV: freed channel, lease id.
RELEASE = """
local had = redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
if had > 0 then redis.call('PUBLISH', ARGV[1], 'released') end
return had
"""

# KEYS: leases, waiters. ARGV: ttl ms, JSON {held: [...], waiting: [...]}.
# Returns the held ids that had already expired (lost: the process was stalled too long).
RENEW = _LUA_COMMON + """
local ttl = tonumber(ARGV[1])
local ids = cjson.decode(ARGV[2])
local lost = {}
for _, id in ipairs(ids.held) do
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) > now then redis.call('ZADD', KEYS[1], now + ttl, id)
  else lost[#lost + 1] = id end
end
for _, id in ipairs(ids.waiting) do
  if redis.call('ZSCORE', KEYS[2], id) then redis.call('ZADD', KEYS[2], now + ttl, id) end
end
return lost
"""

# KEYS: the run's learned key. ARGV: limit, ttl s. 1: first limit for the run, 2: lowered.
LEARN = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
local n = tonumber(ARGV[1])
if not cur then redis.call('SET', KEYS[1], n, 'EX', ARGV[2]); return 1 end
if n < cur then redis.call('SET', KEYS[1], n, 'EX', ARGV[2]); return 2 end
return 0
"""

# KEYS: leases. Live leases now.
COUNT = _LUA_COMMON + "return redis.call('ZCOUNT', KEYS[1], now + 1, '+inf')"


class RedisBudget:
    """The budget shared by every worker through Redis (see the module docstring)."""

    def __init__(self, url: str, name: str = NAME, ttl: float | None = None):
        import redis  # start-up: redis-py, only for the distributed budget

        self.name = name
        self.ttl = float(ttl if ttl is not None else config.daytona_lease_ttl())
        self._r = redis.Redis.from_url(url, socket_timeout=15, socket_connect_timeout=5,
                                       health_check_interval=10, retry_on_timeout=True)
        self._keys = [leases_key(name), lease_info_key(name), waiters_key(name),
                      waiter_run_key(name)]
        self._acquire = self._r.register_script(ACQUIRE)
        self._release = self._r.register_script(RELEASE)
        self._renew = self._r.register_script(RENEW)
        self._learn = self._r.register_script(LEARN)
        self._count = self._r.register_script(COUNT)
        self._lock = threading.Lock()
        self._pending: dict[str, SlotRequest] = {}  # waiting, in arrival order
        self._granted: set[str] = set()  # granted, not yet picked up by the waiter
        self._wake: dict[str, threading.Event] = {}  # a waiter's own event: only it wakes
        self._held: set[str] = set()  # renewed by the keeper
        self._ages: dict[str, tuple[float, float]] = {}  # clock -> (age s, when: monotonic)
        self._usage = Usage()
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()

    # -- the public calls ---------------------------------------------------------------

    def acquire(self, req: SlotRequest, on_wait: WaitFn | None = None) -> Grant:
        """Block until ``req`` holds a lease; raises SlotWaitExpired at the run's bound."""
        self._start_keeper()
        t0 = time.monotonic()
        wake = threading.Event()
        with self._lock:
            self._pending[req.lease_id] = req
            self._wake[req.lease_id] = wake
        try:
            try:
                self._try([req])  # the common case: a slot is free right now
            except Exception as exc:  # noqa: BLE001 - a Redis blip: the keeper retries
                logger.warning("sandbox budget: %s", type(exc).__name__)
            told = False
            while True:
                with self._lock:
                    if req.lease_id in self._granted:
                        self._granted.discard(req.lease_id)
                        self._wake.pop(req.lease_id, None)
                        return Grant(req.lease_id, time.monotonic() - t0,
                                     time.monotonic() + self._left(req))
                    left = self._left(req)
                    if left <= 0:
                        raise SlotWaitExpired(time.monotonic() - t0, self._usage)
                    usage = self._usage
                if not told:
                    told = True
                    if on_wait is not None:
                        on_wait(usage)  # outside the lock: it logs and sends events
                    continue
                wake.wait(min(left, POLL))
                wake.clear()
        except BaseException:
            with self._lock:
                self._pending.pop(req.lease_id, None)
                self._wake.pop(req.lease_id, None)
                granted = req.lease_id in self._granted or req.lease_id in self._held
                self._granted.discard(req.lease_id)
            if not granted:
                self._cancel(req.lease_id)
            else:
                self.release(req.lease_id)
            raise

    def release(self, lease_id: str) -> None:
        with self._lock:
            self._held.discard(lease_id)
            pending = list(self._pending.values())
        if pending:  # hand the slot to this process's waiters: no publish/keeper hop
            try:
                self._try(pending, release=lease_id)
                return
            except Exception:  # noqa: BLE001 - the plain release below still frees it
                pass
        for attempt in range(3):
            try:
                self._release(keys=self._keys, args=[freed_channel(self.name), lease_id])
                return
            except Exception as exc:  # noqa: BLE001 - after that, the lease just expires
                if attempt == 2:
                    logger.warning("sandbox budget: release failed (%s); the lease expires "
                                   "within %.0fs", type(exc).__name__, self.ttl)
                time.sleep(0.2 * (attempt + 1))

    def learn(self, run_id: str, limit: int) -> bool:
        """Cap ``run_id`` at ``limit`` sandboxes; True the first time the run learns one."""
        return self._learn(keys=[learned_key(run_id, self.name)],
                           args=[max(1, int(limit)), LEARNED_TTL]) == 1

    def held(self) -> int:
        """Live leases right now, across every worker."""
        return int(self._count(keys=[leases_key(self.name)]))

    # -- internals ----------------------------------------------------------------------

    def _left(self, req: SlotRequest) -> float:
        """Seconds left of the run's wait bound (under the lock)."""
        age, when = self._ages.get(req.clock, (0.0, time.monotonic()))
        return req.wait - age - (time.monotonic() - when)

    def _cancel(self, lease_id: str) -> None:
        try:
            self._release(keys=self._keys, args=[freed_channel(self.name), lease_id])
        except Exception:  # noqa: BLE001 - the registration expires by itself
            pass

    def _try(self, reqs: list[SlotRequest], release: str = "") -> None:
        """One script call for every request given (after releasing ``release``); hands
        out what was granted."""
        wait = max(r.wait for r in reqs)
        granted, ages, count, cpu, memory, disk, runs = self._acquire(
            keys=self._keys,
            args=[int(self.ttl * 1000), freed_channel(self.name), run_key_prefix(self.name),
                  int(wait + CLOCK_GRACE), json.dumps([r.wire() for r in reqs]), release])
        now = time.monotonic()
        abandoned = []
        with self._lock:
            for r, age in zip(reqs, ages, strict=True):
                self._ages[r.clock] = (int(age) / 1000, now)
            self._usage = Usage(int(count), int(cpu), int(memory), int(disk), int(runs))
            for raw in granted:
                lid = raw.decode() if isinstance(raw, bytes) else str(raw)
                if self._pending.pop(lid, None) is not None:
                    self._held.add(lid)
                    self._granted.add(lid)
                    if lid in self._wake:
                        self._wake[lid].set()
                elif lid not in self._held:
                    abandoned.append(lid)  # its waiter gave up while this call ran
        for lid in abandoned:
            self.release(lid)

    def _start_keeper(self) -> None:
        with self._lock:
            if self._keeper is None or not self._keeper.is_alive():
                self._keeper = threading.Thread(target=self._keep, daemon=True,
                                                name="forge-budget-keeper")
                self._keeper.start()

    def _keep(self) -> None:
        """Renew this process's leases and registrations; retry its waiters on wake-ups."""
        pubsub = None
        next_beat = next_poll = 0.0
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self._r.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(freed_channel(self.name))
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + self.ttl / 3
                woke = pubsub.get_message(timeout=max(0.0, min(next_beat - now, POLL)))
                while woke is not None and pubsub.get_message(timeout=0) is not None:
                    pass  # a burst of releases is one retry
                with self._lock:
                    pending = list(self._pending.values())
                if pending and (woke is not None or time.monotonic() >= next_poll):
                    self._try(pending)
                    next_poll = time.monotonic() + POLL * random.uniform(0.75, 1.25)
            except Exception as exc:  # noqa: BLE001 - Redis away: keep trying, leases expire
                logger.warning("sandbox budget keeper: %s: %s", type(exc).__name__, exc)
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        pass
                pubsub = None
                self._stop.wait(1.0)

    def _heartbeat(self) -> None:
        with self._lock:
            held, waiting = sorted(self._held), sorted(self._pending)
        if not held and not waiting:
            return
        lost = self._renew(keys=[leases_key(self.name), waiters_key(self.name)],
                           args=[int(self.ttl * 1000),
                                 json.dumps({"held": held, "waiting": waiting})])
        if lost:
            with self._lock:
                for raw in lost:
                    self._held.discard(raw.decode() if isinstance(raw, bytes) else raw)
            logger.warning("sandbox budget: %d lease(s) expired before their heartbeat "
                           "(the process stalled over %.0fs)", len(lost), self.ttl)

    def close(self) -> None:
        self._stop.set()


class LocalBudget:
    """The same policy inside one process (embedded mode): no Redis, no expiry needed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._leases: dict[str, dict] = {}
        self._waiting: dict[str, str] = {}  # request id -> run
        self._learned: dict[str, int] = {}
        self._clocks: dict[str, float] = {}

    def _state(self) -> tuple[int, tuple[int, int, int], dict[str, int], dict[str, int]]:
        held: dict[str, int] = {}
        cpu = memory = disk = 0
        for q in self._leases.values():
            held[q["run"]] = held.get(q["run"], 0) + 1
            cpu, memory, disk = cpu + q["c"], memory + q["m"], disk + q["d"]
        waiting: dict[str, int] = {}
        for run in self._waiting.values():
            waiting[run] = waiting.get(run, 0) + 1
        return len(self._leases), (cpu, memory, disk), held, waiting

    def _usage(self) -> Usage:
        count, (cpu, memory, disk), _held, waiting = self._state()
        return Usage(count, cpu, memory, disk, len(waiting))

    def acquire(self, req: SlotRequest, on_wait: WaitFn | None = None) -> Grant:
        t0 = time.monotonic()
        q = req.wire()
        told = False
        with self._cond:
            start = self._clocks.setdefault(req.clock, t0)
            self._waiting[req.lease_id] = req.run_id
            try:
                while True:
                    count, sums, held, waiting = self._state()
                    if _admits(q, count, sums, held, waiting, self._learned.get(req.run_id)):
                        break
                    left = req.wait - (time.monotonic() - start)
                    if left <= 0:
                        raise SlotWaitExpired(time.monotonic() - t0, self._usage())
                    if not told and on_wait is not None:
                        told = True
                        usage = self._usage()
                        self._cond.release()  # on_wait logs and sends events: not under it
                        try:
                            on_wait(usage)
                        finally:
                            self._cond.acquire()
                        continue
                    self._cond.wait(min(left, POLL))
            finally:
                self._waiting.pop(req.lease_id, None)
            self._leases[req.lease_id] = q
            self._cond.notify_all()  # the policy may now admit another run's waiter
            return Grant(req.lease_id, time.monotonic() - t0, start + req.wait)

    def release(self, lease_id: str) -> None:
        with self._cond:
            if self._leases.pop(lease_id, None) is not None:
                self._cond.notify_all()

    def learn(self, run_id: str, limit: int) -> bool:
        with self._cond:
            first = run_id not in self._learned
            self._learned[run_id] = min(self._learned.get(run_id, limit), max(1, int(limit)))
            self._cond.notify_all()
            return first

    def held(self) -> int:
        with self._cond:
            return len(self._leases)


Budget = RedisBudget | LocalBudget

_budgets: dict[tuple[int, str | None], Budget] = {}
_budgets_lock = threading.Lock()


def get_budget() -> Budget:
    """This process's budget: Redis when a Redis broker/backend is configured, else local.
    One per process (a forked pool process makes its own: threads do not survive fork)."""
    key = (os.getpid(), config.budget_redis_url())
    with _budgets_lock:
        budget = _budgets.get(key)
        if budget is None:
            budget = _budgets[key] = RedisBudget(key[1]) if key[1] else LocalBudget()
        return budget
