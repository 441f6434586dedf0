"""A fake Discord webhook on 127.0.0.1: records every request, answers as told.

Used by the tests so posting is exercised over real HTTP (urllib, sockets, status codes,
headers) without the network. ``rate_limit_first=K`` answers 429 to the first K requests;
``fail_status`` answers that status to every request (or to the first ``fail_first``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

WEBHOOK_PATH = "/api/webhooks/1234567890/sEcReT-t0ken-abcdefghijklmnop"


@dataclass
class Received:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int  # what the server answered

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body.decode("utf-8"))

    @property
    def content(self) -> str:
        return self.payload.get("content", "")


@dataclass
class DiscordServer:
    rate_limit_first: int = 0
    retry_after: float = 0.05
    retry_after_in: str = "json"  # json | header
    fail_status: int | None = None
    fail_first: int | None = None  # None: every request fails with fail_status
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{WEBHOOK_PATH}"

    @property
    def delivered(self) -> list[str]:
        """Contents of the messages the server accepted, in order."""
        return [r.content for r in self.requests if r.status in (200, 204)]

    def _answer(self, n: int) -> tuple[int, dict[str, str], bytes]:
        if n < self.rate_limit_first:
            body: dict[str, Any] = {"message": "You are being rate limited.", "global": False}
            headers = {"Content-Type": "application/json"}
            if self.retry_after_in == "header":
                headers["Retry-After"] = str(self.retry_after)
            else:
                body["retry_after"] = self.retry_after
            return 429, headers, json.dumps(body).encode()
        if self.fail_status and (self.fail_first is None or n < self.fail_first):
            body = {"message": "Unknown Webhook" if self.fail_status == 404 else "boom",
                    "code": 10015 if self.fail_status == 404 else 0}
            return self.fail_status, {"Content-Type": "application/json"}, \
                json.dumps(body).encode()
        return 200, {"Content-Type": "application/json"}, json.dumps({"id": str(1000 + n)}).encode()

    def __enter__(self) -> DiscordServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                parts = urlsplit(self.path)
                with owner._lock:
                    n = len(owner.requests)
                    status, headers, answer = owner._answer(n)
                    owner.requests.append(Received(parts.path, parse_qs(parts.query),
                                                   dict(self.headers), body, status))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
