"""Reading a hostile process's output: bounded memory, the tail kept."""

from __future__ import annotations

import collections
import threading
from typing import IO


class TailBuffer:
    """Keeps the last ``cap`` bytes written and counts what was dropped."""

    def __init__(self, cap: int):
        self.cap = max(cap, 1)
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self.dropped = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if len(data) >= self.cap:
            self.dropped += self._size + len(data) - self.cap
            self._chunks.clear()
            self._chunks.append(data[-self.cap:])
            self._size = self.cap
            return
        self._chunks.append(data)
        self._size += len(data)
        while self._size > self.cap:
            head = self._chunks[0]
            excess = self._size - self.cap
            if len(head) <= excess:
                self._chunks.popleft()
                self._size -= len(head)
                self.dropped += len(head)
            else:
                self._chunks[0] = head[excess:]
                self._size -= excess
                self.dropped += excess

    def text(self) -> str:
        body = b"".join(self._chunks).decode("utf-8", errors="replace")
        if self.dropped:
            return f"[... {self.dropped} bytes of earlier output dropped ...]\n{body}"
        return body


def pump(stream: IO[bytes], buffer: TailBuffer) -> threading.Thread:
    """Drain ``stream`` into ``buffer`` on a daemon thread until EOF."""

    def run() -> None:
        try:
            while True:
                data = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                if not data:
                    break
                buffer.write(data)
        except (OSError, ValueError):
            pass
        finally:
            try:
                stream.close()
            except OSError:
                pass

    thread = threading.Thread(target=run, name="sandbox-output", daemon=True)
    thread.start()
    return thread
