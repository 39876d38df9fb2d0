"""The embedded broker through stomp.py, the client the product itself uses, in STOMP 1.0, 1.1
and 1.2."""
from __future__ import annotations

import queue
import time

import pytest
import stomp
import stomp.exception

from notifications.broker import BrokerConfig, BrokerThread

CLASSES = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}


class Collector(stomp.ConnectionListener):
    """Puts every message, receipt and error stomp.py hands over into thread-safe queues."""

    def __init__(self) -> None:
        self.messages: queue.Queue = queue.Queue()
        self.receipts: queue.Queue = queue.Queue()
        self.errors: queue.Queue = queue.Queue()
        self.heartbeats = 0

    def on_message(self, frame) -> None:
        self.messages.put(frame)

    def on_receipt(self, frame) -> None:
        self.receipts.put(frame.headers["receipt-id"])

    def on_error(self, frame) -> None:
        self.errors.put(frame)

    def on_heartbeat(self) -> None:
        self.heartbeats += 1

    def message(self, timeout: float = 5.0):
        return self.messages.get(timeout=timeout)

    def receipt(self, timeout: float = 5.0) -> str:
        return self.receipts.get(timeout=timeout)


@pytest.fixture
def connect(embedded_broker):
    """Connected stomp.py clients of a given version; all disconnected at the end."""
    opened = []

    def open_client(version: str = "1.2", broker: BrokerThread = embedded_broker, **kwargs):
        conn = CLASSES[version]([(broker.host, broker.port)], **kwargs)
        listener = Collector()
        conn.set_listener("collector", listener)
        opened.append(conn)
        conn.connect(wait=True, **({"headers": {"host": "localhost"}} if version != "1.0" else {}))
        return conn, listener

    yield open_client
    for conn in opened:
        if conn.is_connected():
            conn.disconnect()


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_a_stomp_py_client_receives_what_another_sends_on_a_topic(connect, version):
    receiver, inbox = connect(version)
    receiver.subscribe("/topic/greetings", id="1", receipt="subscribed")
    assert inbox.receipt() == "subscribed"
    sender, _ = connect(version)
    sender.send("/topic/greetings", "héllo", headers={"x-kind": "greeting"})
    frame = inbox.message()
    assert (frame.body, frame.headers["x-kind"], frame.headers["destination"]) == (
        "héllo", "greeting", "/topic/greetings"
    )


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_header_values_with_colons_and_line_breaks_survive_the_trip(connect, version):
    receiver, inbox = connect(version)
    receiver.subscribe("/queue/odd", id="1")
    sender, _ = connect(version)
    sender.send("/queue/odd", "x", headers={"note": "a:b\nc\\d"})
    assert inbox.message().headers["note"] == "a:b\nc\\d"


def test_a_binary_body_with_nul_bytes_arrives_whole(embedded_broker):
    conn = stomp.Connection12([(embedded_broker.host, embedded_broker.port)], auto_decode=False)
    inbox = Collector()
    conn.set_listener("c", inbox)
    conn.connect(wait=True)
    try:
        conn.subscribe("/queue/bin", id="1")
        conn.send("/queue/bin", b"\x00\x01\x02\x00")
        assert inbox.message().body == b"\x00\x01\x02\x00"
    finally:
        conn.disconnect()


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_stomp_py_acks_a_client_individual_message(connect, embedded_broker, version):
    consumer, inbox = connect(version)
    consumer.subscribe("/queue/jobs", id="s", ack="client-individual")
    producer, _ = connect(version)
    producer.send("/queue/jobs", "work")
    frame = inbox.message()
    if version == "1.2":
        consumer.ack(frame.headers["ack"], receipt="acked")
    else:
        consumer.ack(frame.headers["message-id"], "s", receipt="acked")
    assert inbox.receipt() == "acked"
    assert embedded_broker.stats().messages_acked == 1


def test_stomp_py_nack_sends_the_message_to_another_consumer_marked_redelivered(connect):
    first, first_inbox = connect()
    first.subscribe("/queue/retry", id="s", ack="client-individual")
    second, second_inbox = connect()
    producer, _ = connect()
    producer.send("/queue/retry", "job")
    frame = first_inbox.message()
    second.subscribe("/queue/retry", id="s", ack="client-individual", receipt="ready")
    assert second_inbox.receipt() == "ready"
    first.nack(frame.headers["ack"])
    again = second_inbox.message()
    assert (again.body, again.headers["redelivered"]) == ("job", "true")


def test_stomp_py_transactions_deliver_at_commit(connect):
    receiver, inbox = connect()
    receiver.subscribe("/queue/tx", id="1")
    sender, sent = connect()
    tx = sender.begin()
    sender.send("/queue/tx", "held", transaction=tx, receipt="r")
    assert sent.receipt() == "r"
    with pytest.raises(queue.Empty):
        inbox.message(timeout=0.3)
    sender.commit(tx)
    assert inbox.message().body == "held"


def test_stomp_py_disconnect_waits_for_the_receipt_after_its_sends(connect):
    receiver, inbox = connect()
    receiver.subscribe("/queue/bye", id="1", receipt="sub")
    assert inbox.receipt() == "sub"
    sender, _ = connect()
    for i in range(100):
        sender.send("/queue/bye", str(i))
    sender.disconnect(receipt="bye")
    assert [inbox.message().body for _ in range(100)] == [str(i) for i in range(100)]


def test_stomp_py_heartbeats_keep_a_quiet_connection_alive(connect):
    broker = BrokerThread(BrokerConfig(heartbeat_send_ms=100, heartbeat_receive_ms=100, close_timeout=2.0)).start()
    try:
        conn, inbox = connect(broker=broker, heartbeats=(100, 100))
        time.sleep(1.2)
        assert conn.is_connected() and inbox.heartbeats >= 3
        conn.send("/queue/alive", "x", receipt="still")
        assert inbox.receipt() == "still"
    finally:
        broker.stop()


def test_stomp_py_sees_a_wrong_passcode_as_a_failed_connect():
    broker = BrokerThread(BrokerConfig(users={"worker": "s3cret"}, close_timeout=2.0)).start()
    try:
        conn = stomp.Connection12([(broker.host, broker.port)])
        inbox = Collector()
        conn.set_listener("c", inbox)
        with pytest.raises(stomp.exception.ConnectFailedException):
            conn.connect("worker", "wrong", wait=True)
        assert inbox.errors.get(timeout=5).headers["message"] == "Access refused: wrong login or passcode"
    finally:
        broker.stop()


def test_stomp_py_logs_in_with_a_configured_user():
    broker = BrokerThread(BrokerConfig(users={"worker": "s3cret"}, close_timeout=2.0)).start()
    try:
        conn = stomp.Connection12([(broker.host, broker.port)])
        conn.connect("worker", "s3cret", wait=True)
        assert conn.is_connected()
        conn.disconnect()
    finally:
        broker.stop()
