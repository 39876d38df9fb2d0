"""More STOMP clients nobody here wrote, against the embedded broker over real sockets: PHP's
stomp extension (Debian php-stomp), Ruby's stomp gem (Debian ruby-stomp), and from PyPI stompest
and stomper. Each runs a scenario script from tests/interop/ in its own process and prints what
it saw as JSON; the expected values live here.

Each client runs a queue with client-individual acks (five SENDs with receipts, five MESSAGEs
acked with receipts, nothing redelivered to the next connection) and a topic (a receipted
SUBSCRIBE, a SEND with a custom header, the MESSAGE), in STOMP 1.0 and 1.2. stomper implements
1.0 and 1.1 only, so it runs those two.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import service_missing

INTEROP = Path(__file__).resolve().parent.parent / "interop"
SCRIPT_TIMEOUT = 60

CLIENT_VERSIONS = [
    ("php", "1.0"), ("php", "1.2"),
    ("ruby", "1.0"), ("ruby", "1.2"),
    ("stompest", "1.0"), ("stompest", "1.2"),
    ("stomper", "1.0"), ("stomper", "1.1"),
]


def _command(client: str) -> list[str]:
    if client == "php":
        php = shutil.which("php")
        if php is None:
            service_missing("the php CLI is not installed (Debian: php-cli)")
        probe = subprocess.run([php, "-r", "exit(class_exists('Stomp') ? 0 : 1);"], capture_output=True, timeout=30)
        if probe.returncode != 0:
            service_missing("PHP's stomp extension is not installed (Debian: php-stomp)")
        return [php, str(INTEROP / "php_stomp_scenario.php")]
    if client == "ruby":
        ruby = shutil.which("ruby")
        if ruby is None:
            service_missing("ruby is not installed (Debian: ruby)")
        probe = subprocess.run([ruby, "-e", "require 'stomp'"], capture_output=True, timeout=30)
        if probe.returncode != 0:
            service_missing("Ruby's stomp gem is not installed (Debian: ruby-stomp)")
        return [ruby, str(INTEROP / "ruby_stomp_scenario.rb")]
    return [sys.executable, str(INTEROP / "python_clients_scenario.py"), client]


def run(client: str, scenario: str, port: int, version: str) -> dict:
    suffix = uuid.uuid4().hex[:12]
    argv = [*_command(client), scenario, "127.0.0.1", str(port), version, suffix]
    proc = subprocess.run(argv, cwd=INTEROP, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{client} {scenario}: no output (exit {proc.returncode}); stderr:\n{proc.stderr[-2000:]}"
    result = json.loads(lines[-1])
    assert "error" not in result, f"{client} {scenario} failed: {result['error']}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    result["suffix"] = suffix
    return result


@pytest.mark.parametrize(("client", "version"), CLIENT_VERSIONS)
def test_a_queue_with_client_acks_delivers_every_message_once_with_receipts(embedded_broker, client, version):
    result = run(client, "queue", embedded_broker.port, version)
    # php's send() and ack() return whether their RECEIPT came; the others show the receipt-id.
    if client == "php":
        assert result["receipts"] == [True] * 5
        assert result["acks"] == [True] * 5
    else:
        assert result["receipts"] == ["send-1", "send-2", "send-3", "send-4", "send-5"]
        assert result["acks"] == ["ack-m1", "ack-m2", "ack-m3", "ack-m4", "ack-m5"]
    assert result["bodies"] == ["m1", "m2", "m3", "m4", "m5"]
    assert result["after_ack"] == ["sentinel"]  # every message acked: nothing comes back


@pytest.mark.parametrize(("client", "version"), CLIENT_VERSIONS)
def test_a_topic_message_arrives_with_its_custom_header_after_a_receipted_subscribe(embedded_broker, client, version):
    result = run(client, "topic", embedded_broker.port, version)
    if client == "php":
        assert result["subscribed"] is True  # subscribe() with a receipt returns once it came
    else:
        assert result["subscribe_receipt"] == "sub-topic"
    message = result["message"]
    assert message["command"] == "MESSAGE"
    assert message["body"] == f"hello from {client}"
    assert message["headers"]["destination"] == f"/topic/interop.{client}.{result['suffix']}"
    assert message["headers"]["x-origin"] == {"php": "php-stomp", "ruby": "ruby-stomp"}.get(client, client)


@pytest.mark.parametrize(("client", "version"), [cv for cv in CLIENT_VERSIONS if cv[0] in ("ruby", "stompest", "stomper")])
def test_the_client_is_served_the_stomp_version_it_asked_for(embedded_broker, client, version):
    connected = run(client, "topic", embedded_broker.port, version)["connected"]
    assert connected.get("version", connected.get("headers", {}).get("version")) == version
