"""Interoperability with STOMP clients nobody here wrote, through real sockets.

@stomp/stompjs (npm, over TCP with @stomp/tcp-wrapper, run by node) and Perl's Net::Stomp
(Debian's libnet-stomp-perl) each run one scenario script from tests/interop/ and print what
they saw as JSON; the expected values live here. Every test runs against the embedded broker
and against RabbitMQ's STOMP plugin, which proves the scripts themselves are right.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from notifications.conf import parse_broker_url
from tests.conftest import service_missing

INTEROP = Path(__file__).resolve().parent.parent / "interop"
STOMPJS_SCRIPT = INTEROP / "stompjs_scenario.mjs"
NET_STOMP_SCRIPT = INTEROP / "net_stomp_scenario.pl"
SCRIPT_TIMEOUT = 30  # seconds; the scripts bound their own waits well below this


@dataclass(frozen=True)
class Target:
    """A broker under test: which one, and how a foreign client reaches it."""

    kind: str
    host: str
    port: int
    login: str
    passcode: str


@pytest.fixture(params=["embedded", "rabbitmq"])
def target(request) -> Target:
    if request.param == "embedded":
        url = request.getfixturevalue("embedded_broker").url
    else:
        url = request.getfixturevalue("rabbitmq_stomp_url")
    parsed = parse_broker_url(url)
    return Target(request.param, parsed.host, parsed.port, parsed.login or "", parsed.passcode or "")


def embedded_thread(**config):
    """An embedded broker of our own configuration on a free port (the fixture's is the default)."""
    from notifications.broker import BrokerConfig, BrokerThread

    return BrokerThread(BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0, **config)).start()


@pytest.fixture(params=["embedded", "rabbitmq"])
def heartbeat_target(request) -> Target:
    """A broker willing to heart-beat every 500 ms: the embedded one configured so (its default is
    10 s, too long for a test to watch), RabbitMQ as it is (it offers what the client asks).
    Three silent periods before a disconnect, as the client allows: timers slip under load."""
    if request.param == "rabbitmq":
        parsed = parse_broker_url(request.getfixturevalue("rabbitmq_stomp_url"))
        return Target("rabbitmq", parsed.host, parsed.port, parsed.login or "", parsed.passcode or "")
    running = embedded_thread(heartbeat_send_ms=500, heartbeat_receive_ms=500, heartbeat_tolerance=3.0)
    request.addfinalizer(running.stop)
    return Target("embedded", running.host, running.port, "", "")


@pytest.fixture(params=["embedded", "rabbitmq"])
def wrong_passcode_target(request) -> Target:
    """A broker with a known user, and that user's login with a wrong passcode."""
    if request.param == "rabbitmq":
        parsed = parse_broker_url(request.getfixturevalue("rabbitmq_stomp_url"))
        return Target("rabbitmq", parsed.host, parsed.port, parsed.login or "guest", "not-the-passcode")
    running = embedded_thread(users={"alice": "s3cret"})
    request.addfinalizer(running.stop)
    return Target("embedded", running.host, running.port, "alice", "not-the-passcode")


@pytest.fixture
def suffix() -> str:
    """A fresh destination suffix per test, so durable queues on RabbitMQ never mix runs."""
    return uuid.uuid4().hex[:12]


def run_scenario(command: list[str], target: Target, scenario: str, suffix: str) -> dict:
    argv = [*command, scenario, target.host, str(target.port), target.login, target.passcode, suffix]
    proc = subprocess.run(argv, cwd=INTEROP, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{scenario}: no output (exit {proc.returncode}); stderr:\n{proc.stderr[-2000:]}"
    result = json.loads(lines[-1])
    assert "error" not in result, f"{scenario} failed: {result['error']}\n{json.dumps(result, indent=1)[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    return result


def stompjs(target: Target, scenario: str, suffix: str) -> dict:
    node = shutil.which("node")
    if node is None:
        service_missing("node is not installed (Debian: nodejs)")
    if not (INTEROP / "node_modules" / "@stomp" / "stompjs").is_dir():
        service_missing("tests/interop/node_modules missing: run npm ci --prefix tests/interop (scripts/test does)")
    return run_scenario([node, str(STOMPJS_SCRIPT)], target, scenario, suffix)


def net_stomp(target: Target, scenario: str, suffix: str) -> dict:
    perl = shutil.which("perl")
    if perl is None:
        service_missing("perl is not installed")
    probe = subprocess.run([perl, "-MNet::Stomp", "-e", "1"], capture_output=True, timeout=SCRIPT_TIMEOUT)
    if probe.returncode != 0:
        service_missing("Perl's Net::Stomp is not installed (Debian: libnet-stomp-perl)")
    return run_scenario([perl, str(NET_STOMP_SCRIPT)], target, scenario, suffix)


# --- @stomp/stompjs over TCP -------------------------------------------------------------


def test_stompjs_connects_with_stomp_1_2(target, suffix):
    result = stompjs(target, "topic", suffix)
    assert result["connected"]["version"] == "1.2"


def test_stompjs_topic_message_arrives_with_its_headers_and_utf8_body(target, suffix):
    message = stompjs(target, "topic", suffix)["message"]
    assert message["body"] == "héllo\nwörld ✓"
    headers = message["headers"]
    assert headers["destination"] == f"/topic/interop.topic.{suffix}"
    assert headers["subscription"] == "sub-0"
    assert headers["content-type"] == "text/plain;charset=utf-8"
    assert headers["x-trace"] == "a:b"
    assert headers["x-empty"] == ""
    assert headers["message-id"] != ""


def test_stompjs_binary_body_with_nul_bytes_arrives_byte_for_byte(target, suffix):
    result = stompjs(target, "binary", suffix)
    assert result["body_hex"] == bytes(range(256)).hex()
    assert result["content_length"] == "256"


def test_stompjs_queue_holds_messages_until_a_consumer_comes_then_delivers_in_order(target, suffix):
    result = stompjs(target, "queue", suffix)
    assert result["bodies"] == ["one", "two", "three"]
    assert result["message_headers"]["destination"] == f"/queue/interop.queue.{suffix}"


def test_stompjs_client_ack_is_cumulative_and_the_unacked_rest_is_redelivered(target, suffix):
    result = stompjs(target, "ack-client", suffix)
    assert result["first_bodies"] == ["one", "two", "three"]
    assert result["redelivered"] == ["three"]


def test_stompjs_client_individual_ack_redelivers_only_the_unacked_message(target, suffix):
    result = stompjs(target, "ack-client-individual", suffix)
    assert result["first_bodies"] == ["one", "two", "three"]
    assert result["redelivered"] == ["two"]


def test_stompjs_redelivered_message_is_marked_redelivered(target, suffix):
    result = stompjs(target, "ack-client-individual", suffix)
    assert [h.get("redelivered") for h in result["redelivered_headers"]] == ["true"]


def test_stompjs_gets_a_receipt_for_subscribe_send_and_unsubscribe(target, suffix):
    result = stompjs(target, "receipts", suffix)
    assert result["receipts"] == ["r-subscribe", "r-send", "r-unsubscribe"]


def test_stompjs_transaction_delivers_on_commit_and_nothing_on_abort(target, suffix):
    result = stompjs(target, "transaction", suffix)
    assert result["before_commit"] == ["outside-1"]
    assert result["bodies"] == ["outside-1", "in-committed-tx", "outside-2"]


def test_stompjs_heart_beats_flow_both_ways_and_keep_an_idle_connection_alive(heartbeat_target, suffix):
    result = stompjs(heartbeat_target, "heartbeat", suffix)
    server_out, server_in = (int(v) for v in result["connected_heart_beat"].split(","))
    assert server_out > 0 and server_in > 0
    assert result["pongs_received"] >= 1
    assert result["pings_sent"] >= 1
    assert result["heartbeat_lost"] is False
    assert result["after_idle"] == ["still-alive"]


def test_stompjs_disconnect_receipt_comes_after_every_message_sent_before_it(target, suffix):
    result = stompjs(target, "disconnect", suffix)
    assert result["disconnect_receipt_seen"] is True
    assert result["count"] == 200
    assert result["in_order"] is True


def test_stompjs_wrong_passcode_gets_the_error_frame_instead_of_connected(wrong_passcode_target, suffix):
    result = stompjs(wrong_passcode_target, "bad-login", suffix)
    assert result["connected"] is False
    assert result["stomp_error"]["headers"]["message"] != ""


# --- Perl's Net::Stomp ---------------------------------------------------------------------


def test_net_stomp_without_accept_version_is_served_as_stomp_1_0(target, suffix):
    result = net_stomp(target, "topic", suffix)
    assert result["connected"]["command"] == "CONNECTED"
    assert result["connected"]["headers"].get("version", "1.0") == "1.0"


def test_net_stomp_topic_message_arrives_with_its_header_and_body(target, suffix):
    result = net_stomp(target, "topic", suffix)
    assert result["subscribe_receipt"] is True
    message = result["message"]
    assert message["command"] == "MESSAGE"
    assert message["body"] == "hello from perl"
    assert message["headers"]["x-origin"] == "net-stomp"
    assert message["headers"]["destination"] == f"/topic/interop.perl.{suffix}"


def test_net_stomp_negotiates_1_2_on_request_and_receives_from_a_queue(target, suffix):
    result = net_stomp(target, "version12", suffix)
    assert result["connected"]["headers"]["version"] == "1.2"
    assert result["send_receipt"] is True
    assert result["message"]["body"] == "queued for 1.2"
    assert result["message"]["headers"]["subscription"] == "perl-sub"


def test_net_stomp_acked_message_is_not_redelivered(target, suffix):
    result = net_stomp(target, "ack", suffix)
    assert result["first"]["body"] == "ack me"
    assert result["ack_receipt"] is True
    assert result["after_reconnect"] == ["sentinel"]


def test_net_stomp_wrong_passcode_gets_an_error_frame_instead_of_connected(wrong_passcode_target, suffix):
    reply = net_stomp(wrong_passcode_target, "login", suffix)["reply"]
    assert reply["command"] == "ERROR"
    assert reply["headers"]["message"] != ""


def test_net_stomp_send_without_destination_gets_an_error_frame(target, suffix):
    frame = net_stomp(target, "error", suffix)["error_frame"]
    assert frame["command"] == "ERROR"
    assert frame["headers"]["message"] != ""


def test_embedded_broker_error_for_send_without_destination_names_it_and_closes(embedded_broker, suffix):
    parsed = parse_broker_url(embedded_broker.url)
    target = Target("embedded", parsed.host, parsed.port, "", "")
    result = net_stomp(target, "error", suffix)
    frame = result["error_frame"]
    assert "destination" in frame["headers"]["message"].lower()
    assert frame["headers"]["receipt-id"] == "bad-1"
    assert result["closed_after_error"] is True
