"""Start and stop a broker process for the tests: one copy of the wait-for-the-port loop and the
terminate-then-kill, shared by the ActiveMQ, StompServer and CoilMQ launchers."""
from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["start_listening", "stop", "stop_all"]


def start_listening(name: str, cmd: list[str], port: int, log_path: Path, *, cwd: Path, timeout: float) -> subprocess.Popen:
    """Run ``cmd`` (output to ``log_path``) and return once 127.0.0.1:``port`` accepts connections;
    RuntimeError naming the log if it exits or does not listen within ``timeout`` seconds."""
    from tests.conftest import port_open

    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        if port_open("127.0.0.1", port):
            return proc
        time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see {log_path}")


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; idempotent."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_all(procs: dict[str, subprocess.Popen], timeout: float,
             signal_for: Callable[[str], int] = lambda name: signal.SIGTERM) -> None:
    """Signal every running process at once (``signal_for(name)``, SIGTERM by default), then wait
    for all of them within one ``timeout``; SIGKILL whatever is still running at its end."""
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.send_signal(signal_for(name))
    deadline = time.monotonic() + timeout
    for proc in procs.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
