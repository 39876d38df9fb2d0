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


def test_the_embedded_broker_settings_are_checked(settings):
    from notifications.checks import check_embedded_broker

    settings.NOTIFICATIONS = {}
    assert check_embedded_broker() == []
    settings.NOTIFICATIONS = {"EMBEDDED_BROKER": {"MAX_MEMORY": 0, "FRAME_TIMEOUT": "30"}}
    errors = check_embedded_broker()
    assert [e.id for e in errors] == ["notifications.E030", "notifications.E030"]
    assert errors[0].msg == "NOTIFICATIONS['EMBEDDED_BROKER']['MAX_MEMORY'] is 0; it must be a positive number of bytes."


def test_the_command_refuses_a_memory_size_it_cannot_read():
    with pytest.raises(CommandError, match=r"--max-memory: 'lots' is not a size in bytes \(for example 268435456, 256M or 1G\)"):
        call_command("stompbroker", "--port", "0", "--max-memory", "lots")


@pytest.mark.parametrize(("text", "size"), [("1048576", 1048576), ("256M", 256 * 1024 * 1024), ("1g", 1024**3), ("64KiB", 65536)])
def test_memory_sizes_are_read_in_binary_units(text, size):
    from notifications.broker import parse_size

    assert parse_size(text) == size


def test_the_command_runs_the_broker_with_the_memory_budget_of_the_settings(settings):
    from notifications.management.commands import stompbroker

    port = free_port()
    settings.NOTIFICATIONS = {"EMBEDDED_BROKER": {"PORT": port, "MAX_MEMORY": 1024 * 1024}}
    seen = {}

    async def trigger() -> None:
        import asyncio

        def probe() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00")
                try:
                    sock.sendall(b"SEND\ndestination:/queue/a\n\n" + b"x" * (2 * 1024 * 1024))
                except OSError:
                    pass
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return data

        seen["reply"] = await asyncio.to_thread(probe)

    command = stompbroker.Command()
    command.shutdown_trigger = trigger
    call_command(command)
    from notifications.codec import HEARTBEAT, FrameParser

    parser = FrameParser()
    parser.receive_data(seen["reply"])
    connected, error = [event for event in parser.events_received() if event is not HEARTBEAT]
    assert (error.command, error.get("message")) == ("ERROR", "Memory limit reached: frame refused")
