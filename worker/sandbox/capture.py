"""Reading a hostile process's output: bounded memory, the tail kept, never blocking forever.

A candidate may print gigabytes, never close its end of the pipe (a daemon it left
behind holds it), or write invalid UTF-8. ``TailBuffer`` keeps only the last ``cap``
bytes and counts the rest; ``pump`` drains a pipe on a daemon thread that can be told to
stop, so the worker never waits on a pipe a leftover process keeps open.
"""

from __future__ import annotations

import os
import select
import threading


class TailBuffer:
    """Keeps the last ``cap`` bytes written and counts what was dropped (thread-safe)."""

    def __init__(self, cap: int):
        self.cap = max(int(cap), 1)
        self._buf = bytearray()
        self._dropped = 0
        self.total = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            self.total += len(data)
            if len(data) >= self.cap:
                self._dropped += len(self._buf) + len(data) - self.cap
                self._buf = bytearray(data[-self.cap:])
                return
            self._buf += data
            excess = len(self._buf) - self.cap
            if excess > 0:
                # Amortised: trim only when well over the cap, to avoid O(n^2) copying.
                if excess >= self.cap // 4 or len(data) > self.cap // 4:
                    del self._buf[:excess]
                    self._dropped += excess

    @property
    def dropped(self) -> int:
        """Bytes written but no longer kept (earliest first)."""
        self.data()
        return self._dropped

    def data(self) -> bytes:
        with self._lock:
            excess = len(self._buf) - self.cap
            if excess > 0:
                del self._buf[:excess]
                self._dropped += excess
            return bytes(self._buf)

    def text(self) -> str:
        body = self.data().decode("utf-8", errors="replace")
        if self._dropped:
            return f"[... {self._dropped} bytes of earlier output dropped ...]\n{body}"
        return body


class Pump:
    """Drains a pipe into a ``TailBuffer`` on a daemon thread until EOF or ``stop()``."""

    def __init__(self, fd: int, buffer: TailBuffer):
        self.fd = fd
        self.buffer = buffer
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sandbox-output", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(self.fd, 1 << 16)
                if not data:
                    break
                self.buffer.write(data)
        except (OSError, ValueError):
            pass
        finally:
            try:
                os.close(self.fd)
            except OSError:
                pass

    def finish(self, grace: float = 2.0) -> bool:
        """Wait up to ``grace`` seconds for EOF, then stop reading. True if EOF was seen."""
        self.thread.join(timeout=grace)
        if self.thread.is_alive():
            self._stop.set()
            self.thread.join(timeout=1.0)
            return False
        return True


def pump(fd: int, buffer: TailBuffer) -> Pump:
    """Start draining ``fd`` (a raw pipe descriptor; the pump closes it) into ``buffer``."""
    return Pump(fd, buffer)
