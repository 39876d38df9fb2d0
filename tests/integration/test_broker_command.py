"""`manage.py stompbroker` and `python -m notifications.broker`: thin runners over Broker."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import stomp
from django.core.management import CommandError, call_command
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_the_command_explains_what_to_do_when_the_port_is_taken(taken_port):
    with pytest.raises(CommandError) as info:
        call_command("stompbroker", "--port", str(taken_port))
    message = str(info.value)
    assert f"Port {taken_port} on 127.0.0.1 is already in use" in message
    assert "--port 61614" in message and "STOMP_BROKER_URL" in message


def test_the_command_refuses_a_user_without_a_passcode():
    with pytest.raises(CommandError, match="'worker' is not login:passcode"):
        call_command("stompbroker", "--port", "0", "--user", "worker")


def test_the_command_serves_until_its_shutdown_trigger_fires(settings):
    from notifications.management.commands import stompbroker

    port = free_port()
    settings.NOTIFICATIONS = {"EMBEDDED_BROKER": {"PORT": port, "USERS": {"app": "pw"}}}
    seen = {}

    async def trigger() -> None:
        # Runs inside the broker's loop: a real stomp.py client in a thread checks it serves.
        import asyncio

        def probe() -> bool:
            conn = stomp.Connection12([("127.0.0.1", port)])
            conn.connect("app", "pw", wait=True)
            ok = conn.is_connected()
            conn.disconnect()
            return ok

        seen["connected"] = await asyncio.to_thread(probe)

    command = stompbroker.Command()
    command.shutdown_trigger = trigger
    call_command(command)
    assert seen == {"connected": True}


def _run(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize("entry", ["manage.py", "module"])
def test_the_runners_serve_clients_and_stop_cleanly_on_sigterm(entry, tmp_path):
    port = free_port()
    options = ["--port", str(port), "--user", "a:b", "--data-file", str(tmp_path / "q.sqlite3"), "--log-level", "INFO"]
    base = [sys.executable, "manage.py", "stompbroker"] if entry == "manage.py" else [sys.executable, "-m", "notifications.broker"]
    proc = _run(base + options)
    try:
        line = proc.stdout.readline()
        while line and "listening on stomp://" not in line:
            line = proc.stdout.readline()
        assert f"STOMP broker listening on stomp://127.0.0.1:{port}" in line
        conn = stomp.Connection12([("127.0.0.1", port)])
        conn.connect("a", "b", wait=True)
        conn.send("/queue/kept", "x", receipt="r")
        conn.disconnect()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert (tmp_path / "q.sqlite3").exists()
