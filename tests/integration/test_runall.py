"""`manage.py runall` (the README's run command) starts the stack, and says what to do when a port is taken."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def stack_env(tmp_path: Path, broker_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DJANGO_VAR_DIR=str(tmp_path / "var"),
        STOMP_BROKER_URL=f"stomp://127.0.0.1:{broker_port}",
        PYTHONUNBUFFERED="1",
    )
    return env


def test_runall_refuses_a_taken_broker_port_and_says_how_to_move_or_reuse_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "runall", "--port", str(free_port())],
            cwd=ROOT, env=stack_env(tmp_path, port), capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 1
    assert f"broker: 127.0.0.1:{port} is already in use" in result.stderr
    assert "STOMP_BROKER_URL=stomp://127.0.0.1:61614 scripts/run" in result.stderr
    assert "--external-broker" in result.stderr


@pytest.mark.slow
def test_runall_serves_the_site_and_stops_every_part_on_ctrl_c(tmp_path):
    broker_port, web_port = free_port(), free_port()
    env = stack_env(tmp_path, broker_port)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "runall", "--port", str(web_port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(0.3)
        assert status == 200
        with socket.create_connection(("127.0.0.1", broker_port), timeout=2) as s:
            s.sendall(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00")
            assert s.recv(1024).startswith(b"CONNECTED\n")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert f"==> ready: open http://127.0.0.1:{web_port}/" in output
    for name in ("web", "worker", "broker"):
        assert f"==> stopping {name}" in output
    for port in (broker_port, web_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
