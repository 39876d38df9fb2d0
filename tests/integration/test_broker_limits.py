"""Limits of the embedded broker as a whole process: memory after refused connections, a global
memory budget, frames that never complete, file descriptors. The broker runs as
``python -m notifications.broker`` so its own RSS and limits are measured."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, port_open

ROOT = Path(__file__).resolve().parents[2]
CONNECT = b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00"


class BrokerProcess:
    """``python -m notifications.broker`` on a free port, its log collected."""

    def __init__(self, tmp_path: Path, *args: str, preexec_fn=None) -> None:
        self.port = free_port()
        self.log_path = tmp_path / f"broker-{self.port}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "notifications.broker", "--port", str(self.port), *args],
            cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=preexec_fn,
        )
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the broker did not start: {self.log()}")
            time.sleep(0.05)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def broker_process(tmp_path):
    started: list[BrokerProcess] = []

    def start(*args: str, preexec_fn=None) -> BrokerProcess:
        process = BrokerProcess(tmp_path, *args, preexec_fn=preexec_fn)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def _oversized_frame_connection(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(CONNECT)
        try:
            sock.sendall(payload)
        except OSError:
            pass  # the broker refused the frame and closed before taking all of it
        return _read_until_closed(sock)


def test_connections_refused_at_the_frame_size_limit_leave_the_brokers_memory_flat(broker_process):
    broker = broker_process("--log-level", "WARNING")
    # Over the default 4 MiB body limit, with no NUL: the broker buffers up to the limit.
    payload = b"SEND\ndestination:/queue/big\n\n" + b"x" * (5 * 1024 * 1024)
    first = _oversized_frame_connection(broker.port, payload)
    assert b"message:Frame body is over the limit of 4194304 bytes" in first
    before = broker.rss_mib()
    for _ in range(200):
        assert b"ERROR\n" in _oversized_frame_connection(broker.port, payload)
    grown = broker.rss_mib() - before
    # Each refused connection buffered 4 MiB: kept alive, 200 of them would be 800 MiB.
    assert grown < 64, f"RSS grew by {grown:.0f} MiB over 200 refused connections"


def _low_fd_limit() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 256))


def _first_frame(port: int) -> tuple[bytes, socket.socket | None]:
    """The first frame's bytes (or the error a reset gave), and the socket while it is connected."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    data = b""
    try:
        sock.sendall(CONNECT)
        while b"\x00" not in data and (chunk := sock.recv(4096)):
            data += chunk
    except OSError as exc:
        data = f"{type(exc).__name__}: {exc}".encode()
    if data.startswith(b"CONNECTED\n"):
        return data, sock
    sock.close()
    return data, None


def test_the_broker_raises_its_file_descriptor_limit_and_refuses_clients_past_it_with_an_error(broker_process):
    broker = broker_process("--log-level", "INFO", preexec_fn=_low_fd_limit)
    assert "File descriptor limit 256 (raised from 64)" in broker.log()
    kept: list[socket.socket] = []
    replies: list[bytes] = []
    try:
        for _ in range(300):
            reply, sock = _first_frame(broker.port)
            if sock is not None:
                kept.append(sock)
            else:
                replies.append(reply)
        # 256 descriptors, 32 kept in reserve for the broker itself: 224 clients.
        assert len(kept) == 224
        assert len(replies) == 76
        assert all(b"message:Too many connections (the broker serves at most 224)\n" in r for r in replies), replies[:3]
    finally:
        for sock in kept:
            sock.close()
    log = broker.log()
    # Rate-limited: the first refusal is logged at once, the rest summed up later.
    assert log.count("Refused a connection from 127.0.0.1") == 1, log[-2000:]
