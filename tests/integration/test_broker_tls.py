"""The embedded broker listening with TLS, tested with a certificate authority made by the test
(trustme): clients that trust the CA connect, one that does not is refused by its own check, a
plain-TCP client gets nothing, and a certificate that cannot be used is a clear error at start."""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
import stomp
import trustme
from django.core.management import CommandError, call_command

from notifications.broker import BrokerConfig, BrokerThread
from notifications.codec import HEARTBEAT, FrameParser
from tests.conftest import free_port, port_open

ROOT = Path(__file__).resolve().parents[2]
CONNECT = b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """A CA of this test module's, its PEM file, and a server certificate for 127.0.0.1 and localhost."""
    directory = tmp_path_factory.mktemp("tls")
    authority = trustme.CA()
    server = authority.issue_cert("127.0.0.1", "localhost")
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server-key.pem",
        "bundle": directory / "server-bundle.pem",
    }
    authority.cert_pem.write_to_path(str(files["ca"]))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(files["cert"]), append=True)
    server.private_key_pem.write_to_path(str(files["key"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(files["bundle"]))
    return files


@pytest.fixture
def tls_broker(ca):
    running = BrokerThread(
        BrokerConfig(port=0, certfile=ca["cert"], keyfile=ca["key"], close_timeout=1.0, connect_timeout=2.0)
    ).start()
    yield running
    running.stop()


def _frames(data: bytes) -> list:
    parser = FrameParser()
    parser.receive_data(data)
    return [event for event in parser.events_received() if event is not HEARTBEAT]


def _tls_exchange(port: int, context: ssl.SSLContext, data: bytes, until: bytes = b"\x00") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(data)
            received = b""
            while received.count(b"\x00") < until.count(b"\x00") or not received.endswith(b"\x00\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            return received


def test_a_client_trusting_the_ca_connects_over_tls_and_the_url_says_stomp_ssl(tls_broker, ca):
    assert tls_broker.url == f"stomp+ssl://127.0.0.1:{tls_broker.port}"
    context = ssl.create_default_context(cafile=str(ca["ca"]))
    (connected,) = _frames(_tls_exchange(tls_broker.port, context, CONNECT))
    assert (connected.command, connected.get("version")) == ("CONNECTED", "1.2")


def test_messages_flow_over_tls_through_stomp_py(tls_broker, ca):
    received = []

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame):
            received.append(frame.body)

    conn = stomp.Connection12([("127.0.0.1", tls_broker.port)])
    conn.set_ssl(for_hosts=[("127.0.0.1", tls_broker.port)], ca_certs=str(ca["ca"]))
    conn.set_listener("", Listener())
    conn.connect(wait=True)
    try:
        conn.subscribe("/topic/tls", id="1", receipt="sub")
        time.sleep(0.2)
        conn.send("/topic/tls", "over tls", receipt="sent")
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        conn.disconnect()
    assert received == ["over tls"]


def test_a_client_that_does_not_trust_the_certificate_refuses_it(tls_broker):
    context = ssl.create_default_context()  # the system's CAs only
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _tls_exchange(tls_broker.port, context, CONNECT)
    sync_context = ssl.create_default_context()
    sync_context.check_hostname = False
    sync_context.verify_mode = ssl.CERT_NONE
    # The broker itself is unharmed and serves the next client.
    (connected,) = _frames(_tls_exchange(tls_broker.port, sync_context, CONNECT))
    assert connected.command == "CONNECTED"


def test_a_plain_tcp_client_gets_no_stomp_from_a_tls_listener(tls_broker):
    with socket.create_connection(("127.0.0.1", tls_broker.port), timeout=5) as sock:
        sock.sendall(CONNECT)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert b"CONNECTED" not in data


def test_a_certificate_in_one_file_with_its_key_is_enough(ca):
    with BrokerThread(BrokerConfig(port=0, certfile=ca["bundle"], close_timeout=1.0)) as running:
        context = ssl.create_default_context(cafile=str(ca["ca"]))
        (connected,) = _frames(_tls_exchange(running.port, context, CONNECT))
        assert connected.command == "CONNECTED"


def test_a_missing_certificate_is_a_clear_error_at_start(tmp_path):
    with pytest.raises(ValueError, match="TLS certificate or key file not found: .*nowhere.pem"):
        BrokerThread(BrokerConfig(port=0, certfile=tmp_path / "nowhere.pem")).start()


def test_a_key_that_does_not_match_is_a_clear_error_at_start(ca, tmp_path):
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    with pytest.raises(ValueError, match=r"Cannot use the TLS certificate .*server.pem with the key .*other-key.pem"):
        BrokerThread(BrokerConfig(port=0, certfile=ca["cert"], keyfile=tmp_path / "other-key.pem")).start()


def test_the_command_takes_certfile_and_keyfile_and_refuses_a_key_alone(ca):
    with pytest.raises(CommandError, match=r"A TLS key file was given without its certificate \(certfile\)"):
        call_command("stompbroker", "--port", "0", "--keyfile", str(ca["key"]))


def test_the_embedded_broker_tls_settings_are_checked(settings, tmp_path):
    from notifications.checks import check_embedded_broker

    settings.NOTIFICATIONS = {"EMBEDDED_BROKER": {"KEYFILE": str(tmp_path / "key.pem")}}
    messages = [(e.id, e.msg) for e in check_embedded_broker()]
    assert messages == [
        ("notifications.E031", "NOTIFICATIONS['EMBEDDED_BROKER']['KEYFILE'] is set without CERTFILE."),
        ("notifications.E031", f"NOTIFICATIONS['EMBEDDED_BROKER']['KEYFILE'] is {str(tmp_path / 'key.pem')!r}, which is not a file."),
    ]


@pytest.mark.parametrize("entry", ["manage.py", "module"])
def test_the_runners_listen_with_tls_given_certfile_and_keyfile(entry, ca):
    port = free_port()
    base = [sys.executable, "manage.py", "stompbroker"] if entry == "manage.py" else [sys.executable, "-m", "notifications.broker"]
    proc = subprocess.Popen(
        [*base, "--port", str(port), "--certfile", str(ca["cert"]), "--keyfile", str(ca["key"])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        line = proc.stdout.readline()
        while line and "listening on stomp" not in line:
            line = proc.stdout.readline()
        assert f"listening on stomp+ssl://127.0.0.1:{port}" in line
        assert port_open("127.0.0.1", port)
        context = ssl.create_default_context(cafile=str(ca["ca"]))
        (connected,) = _frames(_tls_exchange(port, context, CONNECT))
        assert connected.command == "CONNECTED"
    finally:
        proc.terminate()
        proc.wait(15)
