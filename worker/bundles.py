"""Project bundles: a directory candidate's files as one tar, addressed by its sha256.

The dispatcher packs a project once per run (``dispatcher/pack.py``) and stores the tar
once in the result backend under its hash; every task message carries the hash alone.
A worker process fetches a bundle the first time one of its tasks needs it, checks the
bytes against the hash, and keeps it in a small in-process cache, so 50 candidates (or
trials) sharing one project cost one copy in Redis and one fetch per worker process.

Inside the sandbox the tar is unpacked by the sandbox's own ``python3`` (``UNPACK``), as
the candidate's user: a hostile archive can only ever touch the sandbox it is in.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from typing import Any

from worker.keys import bundle_key

SHA256_RE = re.compile(r"[0-9a-f]{64}")
# Where the archive lands in the work directory before it is unpacked (and removed).
# The packer refuses a project holding a file of that name at its top level.
ARCHIVE_NAME = ".forge-project.tar"
# Every shipped file and directory gets this mtime (2000-01-01 UTC): a fixed value keeps
# the tar deterministic, and unlike 0 it is one zip files can hold (a candidate may
# zip its own files).
BUNDLE_MTIME = 946_684_800
CACHE_BYTES = 256 * 1024 * 1024  # per worker process; least recently used go first

# Run by the sandbox's python3: unpack argv[1] into argv[2], then remove the archive.
# ``filter="data"`` (3.11.4+, 3.12) refuses links out of the directory and special
# files; an older interpreter unpacks what the packer made (regular files, directories,
# links inside the project), which only the sandbox itself could be harmed by anyway.
UNPACK = (
    "import os, sys, tarfile\n"
    "with tarfile.open(sys.argv[1]) as t:\n"
    "    t.extractall(sys.argv[2], **({'filter': 'data'} if hasattr(tarfile, 'data_filter')"
    " else {}))\n"
    "os.remove(sys.argv[1])\n"
)


class BundleError(Exception):
    """A bundle missing from the store or not matching its hash."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_bundle(backend: Any, sha256: str, data: bytes, expires: int) -> bool:
    """Store a bundle once; True when this call wrote it.

    On Redis a ``SET NX`` (the bytes cross the wire only when the key is absent, else
    its expiry is pushed out so a later run keeps it alive); on any other backend (the
    embedded worker's memory backend) a get, then a set when missing.
    """
    # start-up: the lifecycle imports this module where Celery may not even be installed;
    # embedded, the Redis client is never imported (worker.states.is_redis)
    from worker.states import is_redis

    key = bundle_key(sha256)
    if is_redis(backend):
        client = backend.client
        if client.exists(key):
            client.expire(key, expires)
            return False
        return bool(client.set(key, data, ex=expires, nx=True))
    if backend.get(key) is not None:
        return False
    backend.set(key, data)
    return True


class BundleCache:
    """Bundles by hash, fetched from a result backend and verified, kept LRU in memory."""

    def __init__(self, limit_bytes: int = CACHE_BYTES):
        self.limit = limit_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Lock] = {}  # one fetch per bundle at a time
        self.fetches = 0  # trips to the backend (tests and the benchmark read it)

    def _cached(self, sha256: str) -> bytes | None:
        with self._lock:
            data = self._items.get(sha256)
            if data is not None:
                self._items.move_to_end(sha256)
            return data

    def get(self, backend: Any, sha256: str) -> bytes:
        if not SHA256_RE.fullmatch(sha256 or ""):
            raise BundleError(f"project hash {sha256!r} is not a sha256 hex digest")
        data = self._cached(sha256)
        if data is not None:
            return data
        # A thread pool (Daytona workers run 16 candidates at once) fetches a bundle once:
        # the others wait for it rather than each pulling the same megabytes from Redis.
        with self._lock:
            fetching = self._fetching.setdefault(sha256, threading.Lock())
        with fetching:
            data = self._cached(sha256)
            if data is None:
                data = self._fetch(backend, sha256)
        return data

    def _fetch(self, backend: Any, sha256: str) -> bytes:
        raw = backend.get(bundle_key(sha256))
        self.fetches += 1
        if raw is None:
            raise BundleError(f"project bundle {sha256[:12]} is not in the result backend "
                              "(expired, or the run was published without it); run the "
                              "competition again")
        data = raw.encode("latin-1") if isinstance(raw, str) else bytes(raw)
        if sha256_bytes(data) != sha256:
            raise BundleError(f"project bundle {sha256[:12]} does not match its sha256 "
                              "(corrupted or tampered with in the store): refusing to run it")
        with self._lock:
            self._fetching.pop(sha256, None)
            if sha256 not in self._items and len(data) <= self.limit:
                self._items[sha256] = data
                self._size += len(data)
                while self._size > self.limit:
                    _, old = self._items.popitem(last=False)
                    self._size -= len(old)
        return data


_cache = BundleCache()


def fetch_bundle(backend: Any, sha256: str) -> bytes:
    """A bundle's bytes, verified against ``sha256``, from this process's cache or the
    result backend. Raises BundleError."""
    return _cache.get(backend, sha256)
