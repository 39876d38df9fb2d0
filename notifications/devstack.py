"""Run the whole product on one machine: embedded STOMP broker, job worker and web server.

Used by `manage.py runall` (and so by scripts/run). Each part is a child process in its
own process group, so Ctrl-C reaches this supervisor alone and the parts stop in order:
web server first, then the worker (which finishes or releases its jobs), the broker last.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Part", "PortTaken", "Stack", "port_in_use"]

logger = logging.getLogger(__name__)

# How long a part may take to stop after SIGTERM before it is killed; the worker's own
# grace period for running jobs is shorter than this.
STOP_TIMEOUT = 20.0


class PortTaken(Exception):
    """A port the stack needs is already in use."""


def port_in_use(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if port_in_use(host, port):
            return True
        time.sleep(0.1)
    return False


@dataclass
class Part:
    name: str
    argv: list[str]
    port: tuple[str, int] | None = None  # wait until it listens here before starting the next
    proc: subprocess.Popen | None = field(default=None, repr=False)


@dataclass
class Stack:
    parts: list[Part]
    cwd: Path
    out: object = sys.stdout
    ready_message: str = ""
    stop_requested: bool = False

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def check_ports(self) -> None:
        for part in self.parts:
            if part.port and port_in_use(*part.port):
                host, port = part.port
                raise PortTaken(f"{part.name}: {host}:{port} is already in use")

    def start(self) -> None:
        for part in self.parts:
            self._say(f"==> starting {part.name}: {' '.join(part.argv)}")
            part.proc = subprocess.Popen(part.argv, cwd=self.cwd, start_new_session=True)
            if part.port and not wait_for_port(*part.port, timeout=30, proc=part.proc):
                raise RuntimeError(f"{part.name} did not start listening on {part.port[0]}:{part.port[1]}")

    def request_stop(self, signum=None, frame=None) -> None:
        if self.stop_requested:
            # A second Ctrl-C: no more waiting.
            for part in self.parts:
                if part.proc and part.proc.poll() is None:
                    part.proc.kill()
        self.stop_requested = True

    def wait(self) -> int:
        """Block until a stop is requested or a part exits; return the exit status to use."""
        while not self.stop_requested:
            for part in self.parts:
                if part.proc and part.proc.poll() is not None:
                    self._say(f"==> {part.name} exited with status {part.proc.returncode}; stopping the rest")
                    return part.proc.returncode or 1
            time.sleep(0.2)
        return 0

    def stop(self) -> None:
        for part in reversed(self.parts):
            proc = part.proc
            if proc is None or proc.poll() is not None:
                continue
            self._say(f"==> stopping {part.name}")
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._say(f"==> {part.name} did not stop in {STOP_TIMEOUT:.0f} s; killing it")
                proc.kill()
                proc.wait()

    def run(self) -> int:
        self.check_ports()
        previous = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            if self.ready_message:
                self._say(self.ready_message)
            return self.wait()
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)


def manage_py(base_dir: Path, *args: str) -> list[str]:
    return [sys.executable, os.fspath(Path(base_dir) / "manage.py"), *args]
