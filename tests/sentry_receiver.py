"""A Sentry ingest endpoint on 127.0.0.1, for the real ``sentry_sdk``: the DSN's host.

It accepts what the SDK sends (``POST /api/<project>/envelope/``, gzip, deflate or
uncompressed), decodes each envelope (a header line, then items: an item header line
and a payload of ``length`` bytes, or up to the next newline) and keeps both the decoded
bytes of every request (what a "no secret anywhere" check reads) and the parsed items.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PUBLIC_KEY = "0123456789abcdef0123456789abcdef"
PROJECT = "42"


@dataclass
class Envelope:
    headers: dict[str, Any]
    items: list[tuple[dict[str, Any], bytes]]

    def payloads(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(p) for h, p in self.items if h.get("type") == kind]


def decode_body(body: bytes, encoding: str) -> bytes:
    encoding = (encoding or "identity").lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli  # only if the SDK found it installed

        return brotli.decompress(body)
    if encoding != "identity":
        raise ValueError(f"unknown Content-Encoding {encoding!r}")
    return body


def parse_envelope(data: bytes) -> Envelope:
    """Sentry's envelope format: https://develop.sentry.dev/sdk/envelopes/"""
    first, _, rest = data.partition(b"\n")
    headers = json.loads(first) if first.strip() else {}
    items: list[tuple[dict[str, Any], bytes]] = []
    pos = 0
    while pos < len(rest):
        end = rest.find(b"\n", pos)
        line = rest[pos:] if end < 0 else rest[pos:end]
        pos = len(rest) if end < 0 else end + 1
        if not line.strip():
            continue
        item = json.loads(line)
        length = item.get("length")
        if length is not None:
            payload = rest[pos:pos + length]
            pos += length
            if rest[pos:pos + 1] == b"\n":
                pos += 1
        else:
            end = rest.find(b"\n", pos)
            payload = rest[pos:] if end < 0 else rest[pos:end]
            pos = len(rest) if end < 0 else end + 1
        items.append((item, payload))
    return Envelope(headers, items)


@dataclass
class SentryReceiver:
    requests: list[dict[str, Any]] = field(default_factory=list)  # path, headers, raw, body
    envelopes: list[Envelope] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def dsn(self) -> str:
        assert self._server is not None, "receiver not started"
        host, port = self._server.server_address[:2]
        return f"http://{PUBLIC_KEY}@{host}:{port}/{PROJECT}"

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [e for env in self.envelopes for e in env.payloads("event")]

    def decoded(self) -> bytes:
        """Every request's decoded body, concatenated."""
        with self._lock:
            return b"\n".join(r["body"] for r in self.requests)

    def wait_for(self, predicate, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events() if predicate(e)]
            if found:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no such event; got: {[summary(e) for e in self.events()]}")
            time.sleep(0.1)

    def __enter__(self) -> SentryReceiver:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = decode_body(raw, self.headers.get("Content-Encoding", ""))
                entry = {"path": self.path, "headers": dict(self.headers), "raw": raw,
                         "body": body}
                envelope = parse_envelope(body) if self.path.endswith("/envelope/") else None
                with owner._lock:
                    owner.requests.append(entry)
                    if envelope is not None:
                        owner.envelopes.append(envelope)
                answer = json.dumps({"id": (envelope.headers.get("event_id") if envelope
                                            else None)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


def summary(event: dict[str, Any]) -> dict[str, Any]:
    """What an event says, in short (for assertion messages and the report)."""
    values = (event.get("exception") or {}).get("values") or []
    return {"tags": event.get("tags"), "message": (event.get("logentry") or {}).get("message")
            or event.get("message"),
            "exception": [f"{v.get('type')}: {v.get('value')}" for v in values]}
