"""Every reliance on Celery's or kombu's internals, in one place.

Each piece below leans on something Celery or kombu does not promise to keep (a private
attribute, a method's call path, the Redis layout of kombu's transport, a log format).
tests/test_celery_compat.py has one test per piece that fails if an upgrade breaks it,
so an upgrade is checked here, not discovered in production. Checked with Celery and
kombu 5.7.

1. :func:`for_this_thread`: a method of a shared object replaced for one thread only,
   re-entrant (two threads may hold overrides of the same method at the same moment).
2. :func:`never_joined`: publishing without registering each result with the result
   backend's consumer (``backend.add_pending_result``, called by a group's results).
3. :func:`batched_producer`: chord publishing through one pipelined producer
   (``app.producer_or_acquire``, kombu's ``Producer.batch``).
4. :func:`widen_memory_backend`: the embedded mode's in-memory result backend is
   ``celery.backends.cache._DUMMY_CLIENT_CACHE``, an LRU of 5,000 keys.
5. :func:`add_body_kwargs`: keyword arguments added to a built chord's body.
6. The Redis layout of kombu's transport (:func:`broker_task_ids`): the queue is a list
   named after it, delivered-but-unacknowledged messages a hash ``unacked``.
7. The result backend's keys (:func:`task_meta_key`, :func:`task_metas`,
   :func:`read_meta_once`, :func:`redis_client`): ``celery-task-meta-<task id>``, read
   in bulk or once, without the backend's retry loop.
8. :func:`install_success_summary`: Celery's per-task success line (``LOG_SUCCESS`` of
   ``celery.app.trace``) with the return value swapped for a summary.
9. ``OneTripRedisBackend`` (:data:`BACKEND_OVERRIDES`): Celery's Redis result backend
   storing a state in one round trip; Celery reads the stored state back before every
   write (``BaseKeyValueStoreBackend._store_result``) to never overwrite a SUCCESS.
10. ``WindowedEventsConsumer`` (:data:`CONSUMER`): the worker's consumer sending the task
   events it buffers (``Consumer.on_send_event_buffered``) once per window, not once per
   event-loop turn.
11. :func:`one_sync_client`: kombu's Redis channel builds a new ``redis.Redis`` for every
   group of synchronous commands (``Channel._create_client`` via ``conn_or_acquire``).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

# Celery itself is imported inside the functions that need it: `forge --help` imports
# this module (task_metas, redis_client) and stays without Celery.
# -- 1. a method replaced for one thread, re-entrant ---------------------------------------


class _PerThread:
    """Installed once in place of ``obj.name``: calls from a thread holding an override
    go to its newest replacement, every other call to the original."""

    def __init__(self, original: Callable):
        self.original = original
        self.local = threading.local()

    def stack(self) -> list[Callable]:
        stack = getattr(self.local, "stack", None)
        if stack is None:
            stack = self.local.stack = []
        return stack

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        stack = getattr(self.local, "stack", None)
        if stack:
            return stack[-1](self.original, *args, **kwargs)
        return self.original(*args, **kwargs)


_install_lock = threading.Lock()


@contextmanager
def for_this_thread(obj: Any, name: str, replacement: Callable) -> Iterator[None]:
    """Calls of ``obj.name`` from this thread go to ``replacement(original, *args,
    **kwargs)`` inside the block; other threads (an embedded worker, another publish on
    a threads worker) keep theirs. Re-entrant: overrides of one method by several
    threads at once, or nested in one thread, never undo each other."""
    with _install_lock:
        hook = obj.__dict__.get(name)
        if not isinstance(hook, _PerThread):
            hook = _PerThread(getattr(obj, name))
            setattr(obj, name, hook)
    stack = hook.stack()
    stack.append(replacement)
    try:
        yield
    finally:
        stack.remove(replacement)


# -- 2. publishing results nobody joins ------------------------------------------------------

_joins_lock = threading.Lock()
_joins_denied = 0  # publishes in progress in this process
_joins_before = False


@contextmanager
def _denied_joins() -> Iterator[None]:
    """``celery.result.denied_join_result`` is one process-wide flag set and restored by
    each user: two publishes overlapping in time would restore each other's value. Here
    the first publish in sets it, the last one out restores it."""
    global _joins_denied, _joins_before
    from celery import _state as celery_state  # start-up: Celery, only to publish

    with _joins_lock:
        if _joins_denied == 0:
            _joins_before = celery_state.task_join_will_block()
            celery_state._set_task_join_will_block(True)
        _joins_denied += 1
    try:
        yield
    finally:
        with _joins_lock:
            _joins_denied -= 1
            if _joins_denied == 0:
                celery_state._set_task_join_will_block(_joins_before)


@contextmanager
def never_joined(app) -> Iterator[None]:
    """Publish results nobody joins: the dispatcher polls the backend, never blocks on one.

    Besides refusing a join (``AsyncResult.get`` raises), this stops Celery's group from
    registering every header result with the backend's result consumer
    (``backend.add_pending_result``, called from ``AsyncResult.then``) for this thread:
    on Redis that was a SUBSCRIBE per task while publishing (and an UNSUBSCRIBE when each
    result object died), a fifth of the dispatcher's time at 5,000 tasks, for messages
    never read.
    """
    def unregistered(_original, result, weak=False, start_drainer=True):
        return result

    with _denied_joins(), for_this_thread(app.backend, "add_pending_result", unregistered):
        yield


@contextmanager
def joins_restored() -> Iterator[None]:
    """Put back Celery's process-wide "a join would block" flag when an in-process worker
    is done: its pool sets the flag when it starts (``celery.worker.components.Pool``) and
    nothing unsets it when it stops, so after an embedded run every ``AsyncResult.get()``
    in the process would raise "Never call result.get() within a task"."""
    from celery import _state as celery_state  # start-up: Celery, only with a worker

    before = celery_state.task_join_will_block()
    try:
        yield
    finally:
        celery_state._set_task_join_will_block(before)


# -- 3. one pipelined producer for a whole chord ------------------------------------------


@contextmanager
def batched_producer(app, max_size: int = 500) -> Iterator[Any]:
    """Publish through one producer whose Redis commands are pipelined (kombu >= 5.7
    ``Producer.batch``).

    Celery's chord publishes its header one task at a time through a producer it takes
    from the pool (a round trip per task message and per task-sent event); chord does not
    pass a producer through, so for this thread only, ``app.producer_or_acquire()`` hands
    out ours. Unlike single publishes a batch is not retried: a large run's publish that
    fails part-way is the cut-short run ``forge resume`` finishes.
    """
    with app.producer_or_acquire() as producer, producer.batch(max_size):
        def ours(original, given=None):
            return nullcontext(producer) if given is None else original(given)

        with for_this_thread(app, "producer_or_acquire", ours):
            yield producer


# -- 4. the embedded mode's in-memory result backend ----------------------------------------


def widen_memory_backend(limit: int) -> None:
    """Room for ``limit`` keys in the ``cache+memory://`` result backend, an LRU of 5,000
    by default: a large embedded run keeps a meta key per candidate plus the chord's."""
    from celery.backends import cache  # start-up: Celery, only for an embedded run

    client = cache._DUMMY_CLIENT_CACHE
    client.limit = max(client.limit or 0, limit)


# -- 5. a built chord's body ------------------------------------------------------------------


def add_body_kwargs(canvas, **kwargs: Any):
    """The chord with ``kwargs`` added to its body's call (the body signature is a dict
    whose ``kwargs`` Celery sends as they are)."""
    canvas.body.kwargs.update(kwargs)
    return canvas


# -- 6. kombu's Redis transport: where a task message is -------------------------------------

UNACKED = "unacked"  # kombu.transport.redis: HASH delivery tag -> [message, exchange, key]


def _message_task_id(raw: bytes | str) -> str | None:
    try:
        data = json.loads(raw)
        if isinstance(data, list):  # the unacked hash holds [message, exchange, key]
            data = data[0]
        return (data.get("headers") or {}).get("id")
    except (ValueError, TypeError, AttributeError, IndexError):
        return None


def broker_task_ids(client, queue: str, wanted: set[str]) -> tuple[set[str], set[str]]:
    """Which of ``wanted`` (task ids) sit in the broker's Redis: (in the ``queue`` list,
    delivered to a worker but not acknowledged: the ``unacked`` hash)."""
    queued: set[str] = set()
    delivered: set[str] = set()
    if not wanted:
        return queued, delivered
    for start in range(0, int(client.llen(queue)), 500):
        for raw in client.lrange(queue, start, start + 499):
            if (tid := _message_task_id(raw)) in wanted:
                queued.add(tid)
    for raw in client.hvals(UNACKED):
        if (tid := _message_task_id(raw)) in wanted:
            delivered.add(tid)
    return queued, delivered


# -- 7. the result backend's keys -----------------------------------------------------------


def redis_client(backend) -> Any | None:
    """The Redis client of a Redis result backend, else None (embedded: in memory).

    Without importing ``celery.backends.redis`` (and redis-py): a Redis backend that
    exists has loaded that module already."""
    module = sys.modules.get("celery.backends.redis")
    if module is None or not isinstance(backend, module.RedisBackend):
        return None
    return backend.client


def task_meta_key(backend, task_id: str) -> str:
    """Where the backend keeps a task's state (``celery-task-meta-<task id>``)."""
    key = backend.get_key_for_task(task_id)
    return key.decode() if isinstance(key, bytes) else key


def task_meta_pattern(backend, prefix: str) -> str:
    """A glob of the keys (and pub/sub channels) of every task id starting ``prefix``."""
    key = task_meta_key(backend, f"{prefix}x")
    return key[:-1] + "*"


CHUNK = 1000


def task_metas(backend, task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """task id -> its meta (status, result, ...); a task with no state is absent.

    One ``mget`` per chunk, whatever the backend: Redis answers a list, the embedded
    memory cache a dict."""
    out: dict[str, dict[str, Any]] = {}
    for i in range(0, len(task_ids), CHUNK):
        ids = task_ids[i:i + CHUNK]
        keys = [backend.get_key_for_task(t) for t in ids]
        raw = backend.mget(keys)
        values = [dict(raw).get(k) for k in keys] if hasattr(raw, "items") else list(raw)
        for tid, value in zip(ids, values, strict=True):
            if value is not None:
                out[tid] = backend.decode_result(value)
    return out


def read_meta_once(backend, task_id: str) -> dict[str, Any] | None:
    """A task's meta read once, without the backend's retry loop (``get_task_meta``
    retries a lost connection for as long as ``result_backend_always_retry`` allows), so
    a caller with its own deadline sees the outage; None: no state yet."""
    raw = backend.get(backend.get_key_for_task(task_id))
    return backend.decode_result(raw) if raw else None


# -- 8. Celery's per-task success line -----------------------------------------------------

TRACE_LOGGER = "celery.app.trace"
_last = threading.local()  # the summary of the task this thread just finished


class _SuccessSummary(logging.Filter):
    """Rewrites Celery's success line: the return value becomes its summary."""

    def __init__(self, line: str, missing: str):
        super().__init__()
        self.line, self.missing = line, missing

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.line and isinstance(record.args, dict):
            summary = getattr(_last, "summary", None) or self.missing
            _last.summary = None
            context = {**record.args, "return_value": summary}
            record.args = context
            record.data = context  # what Celery passes custom handlers as extra
        return True


def install_success_summary(summarize: Callable[[Any], str], missing: str) -> None:
    """Celery's tracer logs every task that succeeds as ``Task NAME[ID] succeeded in Ts:
    <repr of the return value>`` (``trace.LOG_SUCCESS``) and has no setting to leave the
    value out; a filter on that logger swaps it for ``summarize(value)``. The value is
    what Celery hands the ``task_success`` signal just before it logs, in the same
    thread. Once per process."""
    # start-up: Celery's tracer, only in a worker
    from celery.app import trace
    from celery.signals import task_success

    def remember(sender=None, result: Any = None, **_kwargs) -> None:
        _last.summary = summarize(result)

    task_success.connect(remember, weak=False)
    logging.getLogger(TRACE_LOGGER).addFilter(_SuccessSummary(trace.LOG_SUCCESS, missing))


# -- 9. one round trip per stored state -----------------------------------------------------

# Celery stores a state as GET (is it SUCCESS already?), then SET + PUBLISH: two round
# trips and a decode of the old state, on every PROGRESS and SUCCESS of every candidate.
# The same rule, checked inside Redis: a SUCCESS already stored is never overwritten, and
# the check and the write cannot interleave with another delivery's (atomic, where
# Celery's read-then-write is not).
_STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then return 0 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""

# Celery picks a result backend class by the URL's scheme; the loader's
# ``override_backends`` maps a scheme to another class (worker/app.py sets it).
BACKEND_OVERRIDES = {scheme: f"{__name__}:OneTripRedisBackend" for scheme in ("redis", "rediss")}


def _one_trip_backend() -> type:
    # start-up: the Redis backend (and redis-py), only when a Redis result backend is made
    from celery import states
    from celery.backends.base import BackendStoreError
    from celery.backends.redis import RedisBackend
    from kombu.utils.encoding import bytes_to_str

    class OneTripRedisBackend(RedisBackend):
        """Celery's Redis result backend; a state is stored by one script call."""

        _script = None

        def _store_result(self, task_id, result, state, traceback=None, request=None,
                          **kwargs):
            if self.serializer != "json" or self.compression:  # the script reads JSON
                return super()._store_result(task_id, result, state, traceback, request,
                                             **kwargs)
            meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                         request=request)
            meta["task_id"] = bytes_to_str(task_id)
            value = self.encode(meta)
            if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
                raise BackendStoreError("value too large for Redis backend", state=state,
                                        task_id=task_id)
            expires = self.failure_expires if state == states.FAILURE else self.expires
            self.ensure(self._store_unless_succeeded,
                        (self.get_key_for_task(task_id), value, expires))
            return result

        def _store_unless_succeeded(self, key, value, expires) -> int:
            if self._script is None:  # redis-py loads it again after a Redis restart
                self._script = self.client.register_script(_STORE_UNLESS_SUCCEEDED)
            return self._script(keys=[key], args=[value, int(expires or 0)])

    OneTripRedisBackend.__qualname__ = "OneTripRedisBackend"  # as Celery names it
    return OneTripRedisBackend


# -- 10. task events sent once per window ----------------------------------------------------

# Celery's worker buffers task events and sends what it holds on the next turn of its
# event loop: received, started and succeeded of one task arrive on different turns, so
# each becomes its own Redis PUBLISH (a message built, a round trip) from the worker's main
# process. Sent once per window instead, a busy worker sends one message for many events;
# Flower sees them up to the window later. The window is armed on the loop thread (a
# threads pool sends events from its own threads: ``call_soon`` is the hub's thread-safe
# door) and flushed when the consumer shuts down, so a stopping worker loses none.
CONSUMER = f"{__name__}:WindowedEventsConsumer"


def _windowed_consumer() -> type:
    # start-up: the worker's consumer, only in a worker
    import time

    from celery.worker.consumer import Consumer
    from vine import promise

    from worker.settings import settings

    class WindowedEventsConsumer(Consumer):
        """Celery's consumer; buffered task events leave once per window."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.event_window = settings.event_window_ms / 1000
            self._armed_at: float | None = None
            self._arm_promise = promise(self._arm_window)

        def on_send_event_buffered(self) -> None:
            if not self.hub or not self.event_window:
                return super().on_send_event_buffered()
            if not self._armed():  # read without the loop: at worst armed twice
                self.hub.call_soon(self._arm_promise)

        def _armed(self) -> bool:
            """A window is open. One armed long ago (a reconnect dropped its timer) is
            not: it is armed again rather than holding events until shutdown."""
            armed_at = self._armed_at
            return armed_at is not None and \
                time.monotonic() - armed_at < 10 * self.event_window

        def _arm_window(self) -> None:
            if self._armed():
                return
            self._armed_at = time.monotonic()
            self.hub.call_later(self.event_window, self._close_window)

        def _close_window(self) -> None:
            self._armed_at = None
            self._flush_events()

        def shutdown(self) -> None:
            self._flush_events()  # what the window still holds
            super().shutdown()

        def connect(self) -> Any:
            conn = super().connect()
            one_sync_client(conn.default_channel)  # the channel tasks are consumed on
            return conn

    WindowedEventsConsumer.__qualname__ = "WindowedEventsConsumer"
    return WindowedEventsConsumer


# -- 11. one synchronous Redis client per broker channel -------------------------------


def one_sync_client(channel: Any) -> None:
    """Make a kombu Redis channel keep one synchronous client instead of building one per
    ``conn_or_acquire``: twice per delivered task in a worker's consumer (the unacked
    index when a task arrives, again at its ack), each a ``redis.Redis`` with its few
    hundred response callbacks, ~15% of a worker main process's CPU. The kept client
    shares the channel's connection pool (thread-safe, as the one it replaces) and is
    built again when the pool is. Any other channel (the embedded memory broker's) is
    left as it is, without loading the Redis client (an embedded run never needs it)."""
    kombu_redis = sys.modules.get("kombu.transport.redis")  # a Redis channel loaded it
    if kombu_redis is None or not isinstance(channel, kombu_redis.Channel):
        return
    build = channel._create_client
    kept: list[Any] = []

    def create(asynchronous: bool = False) -> Any:
        if asynchronous:  # the event loop's BRPOP client: kombu already keeps it
            return build(asynchronous=True)
        pool = channel.pool
        if not kept or kept[0].connection_pool is not pool:
            kept[:] = [build()]
        return kept[0]

    channel._create_client = create


_LAZY = {"OneTripRedisBackend": _one_trip_backend, "WindowedEventsConsumer": _windowed_consumer}


def __getattr__(name: str) -> Any:
    """The classes above are built on first use, by name (Celery imports them by string):
    importing this module loads no Celery."""
    build = _LAZY.get(name)
    if build is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()[name] = build()
    return cls
