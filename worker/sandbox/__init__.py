"""Sandbox backends behind one interface (see ``base``); picked by execution mode."""

from __future__ import annotations

from worker.sandbox.base import (
    CreateStatus,
    Download,
    ExecResult,
    Sandbox,
    SandboxBackend,
    SandboxError,
    SandboxRequest,
)

__all__ = [
    "CreateStatus",
    "Download",
    "ExecResult",
    "Sandbox",
    "SandboxBackend",
    "SandboxError",
    "SandboxRequest",
    "get_backend",
]

_backends: dict[str, SandboxBackend] = {}


def get_backend(mode: str) -> SandboxBackend:
    """One backend object per process and mode (the Daytona client is reused)."""
    if mode not in _backends:
        if mode == "local":
            from worker.sandbox.local import LocalBackend  # start-up: loads on first use

            _backends[mode] = LocalBackend()
        elif mode == "daytona":
            # start-up: loads on first use (and the SDK on a sandbox's first use)
            from worker.sandbox.daytona import DaytonaBackend

            _backends[mode] = DaytonaBackend()
        else:
            raise ValueError(f"unknown execution mode {mode!r}: use 'local' or 'daytona'")
    return _backends[mode]
