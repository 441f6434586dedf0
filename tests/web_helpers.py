"""The dashboard in tests: a real ``forge web`` process, a real Chromium, store fixtures.

Chromium is Debian's (/usr/bin/chromium, installed by `make test`), driven by Playwright
through ``executable_path``: Playwright never downloads a browser here. Each launch gets
a fresh profile (Playwright's temporary user-data-dir); as root Chromium needs
``--no-sandbox``; the machine has no internet, so background networking is off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.procs import ROOT, free_port, stop_process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-gpu",
                  "--disable-dev-shm-usage"]
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
TOKEN = "test-token-0123456789abcdef"

FORGE_TOML = """
[[competition]]
name = "weekly"
objective = "Generate weekly 'AI Events in San Francisco' post for Discord"
candidates = "{manifest}"
schedule = "0 9 * * 1"
timezone = "America/Los_Angeles"

[[competition]]
name = "nightly"
objective = "Nightly post"
candidates = "{manifest}"
every = 86400
enabled = false
"""


def launch_browser(playwright):
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} not found: `make test` installs Debian's chromium "
                           "(the browser tests never skip)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


def write_forge_toml(directory: Path, manifest: Path) -> Path:
    path = directory / "forge.toml"
    path.write_text(FORGE_TOML.format(manifest=manifest), encoding="utf-8")
    return path


class WebServer:
    """A real ``forge web`` process on a free loopback port, stopped by its PID."""

    def __init__(self, env: dict[str, str], artifacts: Path, logdir: Path,
                 host: str = "127.0.0.1", port: int | None = None):
        self.env = env
        self.artifacts = artifacts
        self.host = host
        self.port = port or free_port()
        self.logfile = Path(logdir) / f"web-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> WebServer:
        self.log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.cli", "web", "--host", self.host, "--port",
             str(self.port), "--artifacts-dir", str(self.artifacts)],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"forge web did not start: {self.logtext()[-3000:]}")
            time.sleep(0.1)

    def logtext(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.log.close()
            self.proc = None
