"""CoilMQ 1.1.0 (PyPI `coilmq`, in requirements-dev.txt), a STOMP 1.0-1.2 broker in Python,
started on a free loopback port in its own process.

Used by the `coilmq_stomp_url` test fixture and by the browser tests (E2E_BROKER=coilmq).
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from tests.processes import start_listening, stop

__all__ = ["missing", "command", "start", "stop"]


def missing() -> str | None:
    """Why CoilMQ cannot be started here, or None if it can."""
    if importlib.util.find_spec("coilmq") is None:
        return "CoilMQ is not installed (pip install -r requirements-dev.txt)"
    return None


def command(port: int) -> list[str]:
    return [sys.executable, "-m", "coilmq.start", "-b", "127.0.0.1", "-p", str(port)]


def start(base: Path, port: int, timeout: float = 30.0) -> subprocess.Popen:
    """Start CoilMQ and return once its port accepts connections (its log: base/coilmq.log)."""
    base.mkdir(parents=True, exist_ok=True)
    return start_listening("CoilMQ", command(port), port, base / "coilmq.log", cwd=base, timeout=timeout)
