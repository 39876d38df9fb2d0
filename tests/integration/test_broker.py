"""Conformance of the embedded broker, section by section of STOMP 1.2, through real sockets
with literal bytes (stomp.py is exercised in test_broker_stomppy.py)."""
from __future__ import annotations

import asyncio
import errno
import re
import socket
import time

import pytest

from notifications.broker import Broker, BrokerConfig, BrokerThread, QueueOverflow
from notifications.codec import Frame, FrameParser, Limits

CONNECT = b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00"


class RawClient:
    """A STOMP peer on a plain socket: writes literal bytes, reads frames with a deadline."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.buf = b""
        self.eof = False
        self.pending: list[Frame] = []  # frames read ahead while waiting for a receipt

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.eof:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def raw_frame(self, timeout: float = 5.0, keep_heartbeats: bool = False) -> bytes:
        """The bytes of the next frame up to its NUL (heart-beat EOLs before it dropped, and the
        newline the broker writes after each NUL taken with its frame)."""
        deadline = time.monotonic() + timeout
        while True:
            if not keep_heartbeats:
                self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\x00")
            if end >= 0 and self.buf:
                frame, self.buf = self.buf[: end + 1], self.buf[end + 1 :]
                if self.buf.startswith(b"\n"):
                    self.buf = self.buf[1:]
                return frame
            if not self._read(deadline):
                raise AssertionError(f"no frame within {timeout} s (eof={self.eof}, pending={self.buf[:80]!r})")

    def frame(self, timeout: float = 5.0) -> Frame:
        if self.pending:
            return self.pending.pop(0)
        parser = FrameParser()
        parser.receive_data(self.raw_frame(timeout))
        (frame,) = parser.events_received()
        return frame

    def connect(self, data: bytes = CONNECT) -> Frame:
        self.send(data)
        frame = self.frame()
        assert frame.command == "CONNECTED", frame
        return frame

    def heartbeat(self, timeout: float) -> bool:
        """True when a bare EOL arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.buf.startswith((b"\n", b"\r\n")):
            if not self._read(deadline):
                return False
        self.buf = self.buf[1:] if self.buf.startswith(b"\n") else self.buf[2:]
        return True

    def nothing(self, timeout: float = 0.3) -> bool:
        """True when no frame arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        if self.pending:
            return False
        while b"\x00" not in self.buf:
            if not self._read(deadline):
                return b"\x00" not in self.buf
        return False

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the broker closes the connection within ``timeout`` (data is discarded)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if not self._read(deadline) and not self.eof:
                return False
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def start_broker():
    """Start brokers with a given configuration; all stopped at the end."""
    running: list[BrokerThread] = []

    def start(use_uvloop: bool = True, **config) -> BrokerThread:
        config.setdefault("close_timeout", 2.0)
        broker = BrokerThread(BrokerConfig(**config), use_uvloop=use_uvloop).start()
        running.append(broker)
        return broker

    yield start
    for broker in running:
        broker.stop()


@pytest.fixture
def clients():
    """Open RawClients against a port; all closed at the end."""
    opened: list[RawClient] = []

    def open_client(port: int, connect: bytes | None = CONNECT) -> RawClient:
        client = RawClient(port)
        opened.append(client)
        if connect is not None:
            client.connect(connect)
        return client

    yield open_client
    for client in opened:
        client.close()


def subscribe(client: RawClient, destination: str, sub_id: str = "0", ack: str = "auto", extra: bytes = b"") -> None:
    client.send(
        b"SUBSCRIBE\ndestination:%s\nid:%s\nack:%s\nreceipt:sub-%s\n%s\n\x00"
        % (destination.encode(), sub_id.encode(), ack.encode(), sub_id.encode(), extra)
    )
    # Messages a queue held may come before the receipt: keep them for the test to read.
    ahead = []
    while (frame := client.frame()).command == "MESSAGE":
        ahead.append(frame)
    assert frame == Frame("RECEIPT", (("receipt-id", f"sub-{sub_id}"),))
    client.pending[:0] = ahead


def send(client: RawClient, destination: str, body: bytes, extra: bytes = b"") -> None:
    client.send(b"SEND\ndestination:%s\n%s\n%s\x00" % (destination.encode(), extra, body))


def sync(client: RawClient, receipt: str = "sync") -> None:
    """Wait until the broker handled everything this client sent before."""
    client.send(b"BEGIN\ntransaction:%s\nreceipt:%s\n\n\x00ABORT\ntransaction:%s\n\n\x00" % ((receipt.encode(),) * 3))
    assert client.frame() == Frame("RECEIPT", (("receipt-id", receipt),))


# --- Connecting -----------------------------------------------------------------------------


def test_connect_is_answered_with_the_literal_connected_frame(embedded_broker, clients):
    client = clients(embedded_broker.port, connect=None)
    client.send(CONNECT)
    raw = client.raw_frame()
    assert re.fullmatch(
        rb"CONNECTED\nversion:1\.2\nsession:[0-9a-f]{6}-\d+\nserver:notifications-broker/1\.0\n"
        rb"heart-beat:10000,10000\n\n\x00",
        raw,
    ), raw


def test_the_stomp_command_connects_like_connect(embedded_broker, clients):
    client = clients(embedded_broker.port, connect=None)
    assert client.connect(b"STOMP\naccept-version:1.2\nhost:x\n\n\x00").get("version") == "1.2"


def test_a_client_without_accept_version_is_a_stomp_1_0_client(embedded_broker, clients):
    client = clients(embedded_broker.port, connect=None)
    assert client.connect(b"CONNECT\n\n\x00").get("version") == "1.0"


def test_the_highest_common_version_is_chosen(embedded_broker, clients):
    client = clients(embedded_broker.port, connect=None)
    assert client.connect(b"CONNECT\naccept-version:1.0,1.1\nhost:x\n\n\x00").get("version") == "1.1"


def test_no_common_version_gets_an_error_listing_the_supported_ones(embedded_broker, clients):
    client = clients(embedded_broker.port, connect=None)
    client.send(b"CONNECT\naccept-version:2.0\nhost:x\n\n\x00")
    error = client.frame()
    assert (error.command, error.get("version"), error.get("message")) == (
        "ERROR", "1.0,1.1,1.2", "Supported protocol versions are 1.0, 1.1 and 1.2"
    )
    assert client.closed()


def test_any_host_is_accepted_without_virtual_hosts(embedded_broker, clients):
    client = clients(embedded_broker.port, connect=None)
    assert client.connect(b"CONNECT\naccept-version:1.2\nhost:anything.example\n\n\x00").command == "CONNECTED"


def test_an_unknown_virtual_host_is_refused(start_broker, clients):
    broker = start_broker(virtual_hosts=frozenset({"/"}))
    client = clients(broker.port, connect=None)
    client.send(b"CONNECT\naccept-version:1.2\nhost:other\n\n\x00")
    assert client.frame().get("message") == "Unknown virtual host 'other'"
    assert client.closed()


def test_any_login_is_accepted_when_no_users_are_configured(embedded_broker, clients):
    client = clients(embedded_broker.port, connect=None)
    frame = client.connect(b"CONNECT\naccept-version:1.2\nhost:x\nlogin:who\npasscode:ever\n\n\x00")
    assert frame.command == "CONNECTED"


def test_a_configured_user_gets_in_with_its_passcode(start_broker, clients):
    broker = start_broker(users={"worker": "s3cret"})
    client = clients(broker.port, connect=None)
    frame = client.connect(b"CONNECT\naccept-version:1.2\nhost:x\nlogin:worker\npasscode:s3cret\n\n\x00")
    assert frame.command == "CONNECTED"


def test_a_wrong_passcode_gets_an_error_and_the_connection_closes(start_broker, clients):
    broker = start_broker(users={"worker": "s3cret"})
    client = clients(broker.port, connect=None)
    client.send(b"CONNECT\naccept-version:1.2\nhost:x\nlogin:worker\npasscode:nope\n\n\x00")
    assert client.frame().get("message") == "Access refused: wrong login or passcode"
    assert client.closed()


def test_no_login_is_refused_when_users_are_configured(start_broker, clients):
    broker = start_broker(users={"worker": "s3cret"})
    client = clients(broker.port, connect=None)
    client.send(CONNECT)
    assert client.frame().get("message") == "Access refused: wrong login or passcode"


def test_frames_before_connect_get_an_error(embedded_broker, clients):
    client = clients(embedded_broker.port, connect=None)
    client.send(b"SEND\ndestination:/queue/a\n\nx\x00")
    assert client.frame().get("message") == "Not connected: the first frame must be CONNECT or STOMP, not SEND"
    assert client.closed()


def test_a_second_connect_gets_an_error(embedded_broker, clients):
    client = clients(embedded_broker.port)
    client.send(CONNECT)
    assert client.frame().get("message") == "Already connected: a second CONNECT on the same connection"
    assert client.closed()


def test_a_connection_that_never_connects_is_closed(start_broker, clients):
    broker = start_broker(connect_timeout=0.3)
    client = clients(broker.port, connect=None)
    assert client.frame().get("message") == "Timeout: no CONNECT frame received"
    assert client.closed(2)


# --- Heart-beating --------------------------------------------------------------------------


def test_the_broker_sends_heartbeats_at_the_negotiated_period(start_broker, clients):
    broker = start_broker(heartbeat_send_ms=50, heartbeat_receive_ms=0)
    client = clients(broker.port, connect=b"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,100\n\n\x00")
    started = time.monotonic()
    assert client.heartbeat(2) and client.heartbeat(2)
    assert 0.15 <= time.monotonic() - started < 1.5


def test_a_silent_peer_is_disconnected_after_its_heartbeat_period(start_broker, clients):
    broker = start_broker(heartbeat_send_ms=0, heartbeat_receive_ms=50)
    client = clients(broker.port, connect=b"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:100,0\n\n\x00")
    started = time.monotonic()
    assert client.frame(3).get("message") == "Heart-beat timeout: nothing received from the client in time"
    assert client.closed(2)
    assert 0.15 <= time.monotonic() - started < 1.5


def test_a_peer_sending_heartbeats_stays_connected(start_broker, clients):
    broker = start_broker(heartbeat_send_ms=0, heartbeat_receive_ms=50)
    client = clients(broker.port, connect=b"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:100,0\n\n\x00")
    for _ in range(12):
        client.send(b"\n")
        time.sleep(0.05)
    sync(client)


def test_no_heartbeats_are_expected_from_a_client_offering_none(start_broker, clients):
    broker = start_broker(heartbeat_send_ms=0, heartbeat_receive_ms=50)
    client = clients(broker.port)  # no heart-beat header means 0,0
    assert client.nothing(0.5)
    sync(client)


def test_an_invalid_heartbeat_header_gets_an_error(embedded_broker, clients):
    client = clients(embedded_broker.port, connect=None)
    client.send(b"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:soon\n\n\x00")
    assert client.frame().get("message") == "Invalid heart-beat header 'soon': expected two numbers like 10000,10000"


# --- SEND, SUBSCRIBE, MESSAGE ---------------------------------------------------------------


def test_a_message_frame_carries_the_literal_headers_of_the_specification(embedded_broker, clients):
    receiver = clients(embedded_broker.port)
    subscribe(receiver, "/topic/a", "sub-0")
    sender = clients(embedded_broker.port)
    send(sender, "/topic/a", b"hello", b"content-type:text/plain\nx-custom:1\nreceipt:r\n")
    raw = receiver.raw_frame()
    match = re.fullmatch(
        rb"MESSAGE\ndestination:/topic/a\nmessage-id:([0-9a-f]{6}-\d+)\ncontent-type:text/plain\nx-custom:1\n"
        rb"content-length:5\nsubscription:sub-0\n\nhello\x00",
        raw,
    )
    assert match, raw


def test_a_topic_fans_out_to_every_subscriber(embedded_broker, clients):
    receivers = [clients(embedded_broker.port) for _ in range(3)]
    for i, receiver in enumerate(receivers):
        subscribe(receiver, "/topic/news", f"s{i}")
    send(clients(embedded_broker.port), "/topic/news", b"extra")
    assert [r.frame().body for r in receivers] == [b"extra", b"extra", b"extra"]


def test_a_topic_message_without_subscribers_is_dropped(embedded_broker, clients):
    sender = clients(embedded_broker.port)
    send(sender, "/topic/nobody", b"x")
    sync(sender)
    receiver = clients(embedded_broker.port)
    subscribe(receiver, "/topic/nobody")
    assert receiver.nothing(0.3)


def test_one_connection_may_subscribe_twice_to_a_topic(embedded_broker, clients):
    client = clients(embedded_broker.port)
    subscribe(client, "/topic/t", "a")
    subscribe(client, "/topic/t", "b")
    send(client, "/topic/t", b"x")
    assert sorted(client.frame().get("subscription") for _ in range(2)) == ["a", "b"]


def test_a_queue_hands_each_message_to_one_consumer_round_robin(embedded_broker, clients):
    first, second = clients(embedded_broker.port), clients(embedded_broker.port)
    subscribe(first, "/queue/work", "a")
    subscribe(second, "/queue/work", "b")
    sender = clients(embedded_broker.port)
    for body in (b"1", b"2", b"3", b"4"):
        send(sender, "/queue/work", body)
    got_first = [first.frame().body, first.frame().body]
    got_second = [second.frame().body, second.frame().body]
    assert (got_first, got_second) == ([b"1", b"3"], [b"2", b"4"])
    assert first.nothing(0.2) and second.nothing(0.1)


def test_a_queue_holds_messages_until_a_consumer_comes(embedded_broker, clients):
    sender = clients(embedded_broker.port)
    for body in (b"a", b"b", b"c"):
        send(sender, "/queue/later", body)
    sync(sender)
    consumer = clients(embedded_broker.port)
    subscribe(consumer, "/queue/later")
    assert [consumer.frame().body for _ in range(3)] == [b"a", b"b", b"c"]


def test_a_full_queue_refuses_a_send_with_an_error(start_broker, clients):
    broker = start_broker(max_queue_messages=2)
    sender = clients(broker.port)
    for body in (b"1", b"2", b"3"):
        send(sender, "/queue/small", body, b"receipt:r%s\n" % body)
    assert sender.frame().get("receipt-id") == "r1"
    assert sender.frame().get("receipt-id") == "r2"
    error = sender.frame()
    assert (error.get("message"), error.get("receipt-id")) == (
        "Queue /queue/small is full (2 messages waiting): message refused", "r3"
    )
    consumer = clients(broker.port)
    subscribe(consumer, "/queue/small")
    assert [consumer.frame().body, consumer.frame().body] == [b"1", b"2"]
    assert broker.stats().queue_overflows == 1


def test_a_full_queue_may_drop_its_oldest_message_instead(start_broker, clients):
    broker = start_broker(max_queue_messages=2, queue_overflow=QueueOverflow.DROP_OLDEST)
    sender = clients(broker.port)
    for body in (b"1", b"2", b"3"):
        send(sender, "/queue/small", body)
    sync(sender)
    consumer = clients(broker.port)
    subscribe(consumer, "/queue/small")
    assert [consumer.frame().body, consumer.frame().body] == [b"2", b"3"]


def test_header_values_are_escaped_on_the_way_out(embedded_broker, clients):
    receiver = clients(embedded_broker.port)
    subscribe(receiver, "/topic/esc")
    send(clients(embedded_broker.port), "/topic/esc", b"", b"k\\cy:a\\nb\\\\c\n")
    assert b"\nk\\cy:a\\nb\\\\c\n" in receiver.raw_frame()


def test_a_stomp_1_0_subscriber_gets_unescaped_headers(embedded_broker, clients):
    receiver = clients(embedded_broker.port, connect=b"CONNECT\n\n\x00")
    receiver.send(b"SUBSCRIBE\ndestination:/topic/old\nreceipt:s\n\n\x00")
    assert receiver.frame().command == "RECEIPT"
    send(clients(embedded_broker.port), "/topic/old", b"x", b"url:http\\c//a\n")
    raw = receiver.raw_frame()
    assert b"\nurl:http://a\n" in raw and b"\nsubscription:/topic/old\n" in raw


def test_repeated_sender_headers_are_forwarded_in_order(embedded_broker, clients):
    receiver = clients(embedded_broker.port)
    subscribe(receiver, "/topic/rep")
    send(clients(embedded_broker.port), "/topic/rep", b"", b"foo:World\nfoo:Hello\n")
    assert receiver.frame().get("foo") == "World"


def test_a_body_with_nul_bytes_is_delivered_whole(embedded_broker, clients):
    receiver = clients(embedded_broker.port)
    subscribe(receiver, "/queue/bin")
    send(clients(embedded_broker.port), "/queue/bin", b"a\x00b", b"content-length:3\n")
    parser = FrameParser()
    deadline = time.monotonic() + 5
    frames: list = []
    while not frames and receiver._read(deadline):
        parser.receive_data(receiver.buf)
        receiver.buf = b""
        frames = [e for e in parser.events_received() if isinstance(e, Frame)]
    assert frames[0].body == b"a\x00b" and frames[0].get("content-length") == "3"


def test_a_frame_written_one_byte_at_a_time_is_handled(embedded_broker, clients):
    receiver = clients(embedded_broker.port)
    subscribe(receiver, "/queue/slow")
    sender = clients(embedded_broker.port)
    sender.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in b"SEND\r\ndestination:/queue/slow\r\ncontent-length:3\r\n\r\na\nb\x00":
        sender.send(bytes([byte]))
    assert receiver.frame().body == b"a\nb"


def test_unsubscribe_stops_delivery(embedded_broker, clients):
    client = clients(embedded_broker.port)
    subscribe(client, "/topic/u", "x")
    client.send(b"UNSUBSCRIBE\nid:x\nreceipt:u\n\n\x00")
    assert client.frame().get("receipt-id") == "u"
    send(client, "/topic/u", b"gone")
    sync(client)


# --- ACK, NACK, prefetch --------------------------------------------------------------------


def test_client_individual_messages_carry_an_ack_header(embedded_broker, clients):
    consumer = clients(embedded_broker.port)
    subscribe(consumer, "/queue/ack", ack="client-individual")
    send(clients(embedded_broker.port), "/queue/ack", b"x")
    message = consumer.frame()
    assert message.get("ack") == f"1/{message.get('message-id')}"


def test_unacknowledged_messages_go_back_marked_redelivered_when_the_subscriber_leaves(embedded_broker, clients):
    first = clients(embedded_broker.port)
    subscribe(first, "/queue/r", ack="client-individual")
    sender = clients(embedded_broker.port)
    send(sender, "/queue/r", b"one")
    send(sender, "/queue/r", b"two")
    one, two = first.frame(), first.frame()
    first.send(b"ACK\nid:%s\n\n\x00" % one.get("ack").encode())
    sync(first)
    first.close()
    second = clients(embedded_broker.port)
    subscribe(second, "/queue/r", ack="client-individual")
    again = second.frame()
    assert (again.body, again.get("redelivered"), again.get("message-id")) == (b"two", "true", two.get("message-id"))
    assert second.nothing(0.2)


def test_a_cumulative_ack_in_client_mode_acknowledges_every_earlier_message(embedded_broker, clients):
    first = clients(embedded_broker.port)
    subscribe(first, "/queue/c", ack="client")
    sender = clients(embedded_broker.port)
    for body in (b"1", b"2", b"3", b"4"):
        send(sender, "/queue/c", body)
    messages = [first.frame() for _ in range(4)]
    first.send(b"ACK\nid:%s\n\n\x00" % messages[2].get("ack").encode())
    sync(first)
    first.close()
    second = clients(embedded_broker.port)
    subscribe(second, "/queue/c")
    assert second.frame().body == b"4"
    assert second.nothing(0.2)


def test_a_nacked_message_is_redelivered_to_another_consumer(embedded_broker, clients):
    first = clients(embedded_broker.port)
    subscribe(first, "/queue/n", ack="client-individual")
    send(clients(embedded_broker.port), "/queue/n", b"job")
    message = first.frame()
    second = clients(embedded_broker.port)
    subscribe(second, "/queue/n", ack="client-individual")
    first.send(b"NACK\nid:%s\n\n\x00" % message.get("ack").encode())
    again = second.frame()
    assert (again.body, again.get("redelivered")) == (b"job", "true")


def test_the_prefetch_count_limits_unacknowledged_messages(embedded_broker, clients):
    consumer = clients(embedded_broker.port)
    subscribe(consumer, "/queue/p", ack="client-individual", extra=b"prefetch-count:2\n")
    sender = clients(embedded_broker.port)
    for body in (b"1", b"2", b"3"):
        send(sender, "/queue/p", body)
    first, second = consumer.frame(), consumer.frame()
    assert consumer.nothing(0.3)
    consumer.send(b"ACK\nid:%s\n\n\x00" % first.get("ack").encode())
    assert consumer.frame().body == b"3"
    assert second.body == b"2"


def test_a_topic_subscriber_that_never_acks_is_disconnected_at_the_unacked_limit(start_broker, clients):
    broker = start_broker(max_unacked=3)
    consumer = clients(broker.port)
    subscribe(consumer, "/topic/acks", ack="client")
    sender = clients(broker.port)
    for _ in range(4):
        send(sender, "/topic/acks", b"x")
    assert [consumer.frame().command for _ in range(4)] == ["MESSAGE", "MESSAGE", "MESSAGE", "ERROR"]
    assert consumer.closed()


def test_a_stomp_1_0_client_acks_by_message_id(embedded_broker, clients):
    consumer = clients(embedded_broker.port, connect=b"CONNECT\n\n\x00")
    consumer.send(b"SUBSCRIBE\ndestination:/queue/v10\nack:client\nreceipt:s\n\n\x00")
    assert consumer.frame().command == "RECEIPT"
    send(clients(embedded_broker.port), "/queue/v10", b"x")
    message_id = consumer.frame().get("message-id").encode()
    consumer.send(b"ACK\nmessage-id:%s\nreceipt:k\n\n\x00" % message_id)
    assert consumer.frame().get("receipt-id") == "k"
    assert embedded_broker.stats().messages_acked == 1


def test_an_ack_for_an_unknown_message_gets_an_error(embedded_broker, clients):
    client = clients(embedded_broker.port)
    client.send(b"ACK\nid:9/nope\nreceipt:a\n\n\x00")
    error = client.frame()
    assert (error.get("message"), error.get("receipt-id")) == ("ACK for an unknown message: id '9/nope'", "a")
    assert client.closed()


def test_stomp_1_1_acks_name_message_id_and_subscription(embedded_broker, clients):
    consumer = clients(embedded_broker.port, connect=b"CONNECT\naccept-version:1.1\nhost:x\n\n\x00")
    subscribe(consumer, "/queue/v11", "s", ack="client-individual")
    send(clients(embedded_broker.port), "/queue/v11", b"x")
    message = consumer.frame()
    consumer.send(b"ACK\nsubscription:s\nmessage-id:%s\nreceipt:k\n\n\x00" % message.get("message-id").encode())
    assert consumer.frame().get("receipt-id") == "k"
    assert embedded_broker.stats().messages_acked == 1


# --- Transactions ---------------------------------------------------------------------------


def test_sends_in_a_transaction_are_delivered_at_commit(embedded_broker, clients):
    receiver = clients(embedded_broker.port)
    subscribe(receiver, "/queue/tx")
    sender = clients(embedded_broker.port)
    sender.send(b"BEGIN\ntransaction:t1\n\n\x00")
    send(sender, "/queue/tx", b"a", b"transaction:t1\n")
    sync(sender, "held")
    assert receiver.nothing(0.2)
    sender.send(b"COMMIT\ntransaction:t1\n\n\x00")
    assert receiver.frame().body == b"a"


def test_an_aborted_transaction_delivers_nothing(embedded_broker, clients):
    receiver = clients(embedded_broker.port)
    subscribe(receiver, "/queue/ab")
    sender = clients(embedded_broker.port)
    sender.send(b"BEGIN\ntransaction:t\n\n\x00")
    send(sender, "/queue/ab", b"a", b"transaction:t\n")
    sender.send(b"ABORT\ntransaction:t\n\n\x00")
    sync(sender)
    assert receiver.nothing(0.3)


def test_an_aborted_ack_leaves_the_message_unacknowledged(embedded_broker, clients):
    first = clients(embedded_broker.port)
    subscribe(first, "/queue/ta", ack="client-individual")
    send(clients(embedded_broker.port), "/queue/ta", b"m")
    ack = first.frame().get("ack").encode()
    first.send(b"BEGIN\ntransaction:t\n\n\x00ACK\nid:%s\ntransaction:t\n\n\x00ABORT\ntransaction:t\n\n\x00" % ack)
    sync(first)
    first.close()
    second = clients(embedded_broker.port)
    subscribe(second, "/queue/ta")
    assert second.frame().get("redelivered") == "true"


def test_a_committed_ack_acknowledges_the_message(embedded_broker, clients):
    first = clients(embedded_broker.port)
    subscribe(first, "/queue/tc", ack="client-individual")
    send(clients(embedded_broker.port), "/queue/tc", b"m")
    ack = first.frame().get("ack").encode()
    first.send(b"BEGIN\ntransaction:t\n\n\x00ACK\nid:%s\ntransaction:t\n\n\x00COMMIT\ntransaction:t\n\n\x00" % ack)
    sync(first)
    assert embedded_broker.stats().messages_acked == 1


def test_transactions_hold_a_bounded_number_of_frames(start_broker, clients):
    broker = start_broker(max_transaction_frames=3)
    client = clients(broker.port)
    client.send(b"BEGIN\ntransaction:t\n\n\x00" + b"SEND\ndestination:/queue/t\ntransaction:t\n\nx\x00" * 4)
    assert client.frame().get("message") == "Open transactions hold more than 3 frames or 16777216 bytes"


def test_a_queue_is_bounded_in_bytes_too(start_broker, clients):
    broker = start_broker(max_queue_bytes=10)
    client = clients(broker.port)
    send(client, "/queue/b", b"123456")
    send(client, "/queue/b", b"123456")
    assert client.frame().get("message") == "Queue /queue/b is full (1 messages waiting): message refused"


def test_subscriptions_per_connection_are_bounded(start_broker, clients):
    broker = start_broker(max_subscriptions=2)
    client = clients(broker.port)
    subscribe(client, "/topic/a", "1")
    subscribe(client, "/topic/a", "2")
    client.send(b"SUBSCRIBE\ndestination:/topic/a\nid:3\n\n\x00")
    assert client.frame().get("message") == "Too many subscriptions: at most 2 per connection"


def test_an_unknown_transaction_gets_an_error(embedded_broker, clients):
    client = clients(embedded_broker.port)
    client.send(b"COMMIT\ntransaction:nope\n\n\x00")
    assert client.frame().get("message") == "Unknown transaction 'nope'"


# --- Receipts and DISCONNECT ----------------------------------------------------------------


def test_any_frame_with_a_receipt_header_gets_the_literal_receipt(embedded_broker, clients):
    client = clients(embedded_broker.port)
    client.send(b"SUBSCRIBE\ndestination:/topic/r\nid:1\nreceipt:77\n\n\x00")
    assert client.raw_frame() == b"RECEIPT\nreceipt-id:77\n\n\x00"


def test_disconnect_is_receipted_after_everything_sent_before_it(embedded_broker, clients):
    receiver = clients(embedded_broker.port)
    subscribe(receiver, "/queue/d")
    sender = clients(embedded_broker.port)
    sender.send(b"".join(b"SEND\ndestination:/queue/d\n\n%d\x00" % i for i in range(200)) + b"DISCONNECT\nreceipt:bye\n\n\x00")
    assert sender.raw_frame() == b"RECEIPT\nreceipt-id:bye\n\n\x00"
    assert sender.closed()
    assert [receiver.frame().body for _ in range(200)] == [b"%d" % i for i in range(200)]


# --- Bad input: ERROR, close, and everyone else unaffected ----------------------------------


def _error_then_closed(client: RawClient) -> Frame:
    frame = client.frame()
    assert frame.command == "ERROR"
    assert client.closed()
    return frame


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x16\x03\x01garbage\n\n\x00", "Invalid frame: expected a command, got b'\\x16\\x03\\x01garbage'"),
        (b"FOO\n\n\x00", "Unknown command 'FOO'"),
        (b"SEND\nreceipt:1\n\nx\x00", "SEND without a destination header"),
        (b"SUBSCRIBE\nid:1\n\n\x00", "SUBSCRIBE without a destination header"),
        (b"SUBSCRIBE\ndestination:/elsewhere\nid:1\n\n\x00",
         "Unknown destination '/elsewhere': use /topic/<name> (publish-subscribe) or /queue/<name>"),
        (b"SUBSCRIBE\ndestination:/topic/a\nid:1\nack:sometimes\n\n\x00",
         "Invalid ack mode 'sometimes': use auto, client or client-individual"),
        (b"UNSUBSCRIBE\nid:nope\n\n\x00", "No subscription with id 'nope' on this connection"),
        (b"SEND\ndestination:/exchange/x\n\n\x00",
         "Unknown destination '/exchange/x': use /topic/<name> (publish-subscribe) or /queue/<name>"),
        (b"SEND\ndestination:/queue/a\nx:bad\\tescape\n\n\x00", "Undefined escape sequence '\\\\t' in a header"),
    ],
)
def test_bad_input_gets_an_error_naming_the_problem_and_closes(embedded_broker, clients, data, message):
    client = clients(embedded_broker.port)
    client.send(data)
    assert _error_then_closed(client).get("message") == message


def test_an_error_frame_carries_the_receipt_id_of_the_bad_frame(embedded_broker, clients):
    client = clients(embedded_broker.port)
    client.send(b"SEND\nreceipt:r-9\n\nx\x00")
    assert _error_then_closed(client).get("receipt-id") == "r-9"


def test_an_error_frame_has_a_text_body_and_its_content_length(embedded_broker, clients):
    client = clients(embedded_broker.port)
    client.send(b"FOO\n\n\x00")
    assert client.raw_frame() == (
        b"ERROR\nmessage:Unknown command 'FOO'\ncontent-type:text/plain\ncontent-length:21\n\n"
        b"Unknown command 'FOO'\x00"
    )


def test_a_subscription_id_used_twice_gets_an_error(embedded_broker, clients):
    client = clients(embedded_broker.port)
    subscribe(client, "/topic/a", "dup")
    client.send(b"SUBSCRIBE\ndestination:/topic/b\nid:dup\n\n\x00")
    assert _error_then_closed(client).get("message") == "Subscription id 'dup' is already in use on this connection"


def test_an_oversized_frame_gets_an_error(start_broker, clients):
    broker = start_broker(limits=Limits(max_frame_size=2048, max_body_size=1024))
    client = clients(broker.port)
    client.send(b"SEND\ndestination:/queue/a\ncontent-length:5000\n\n")
    assert _error_then_closed(client).get("message") == "Frame body of 5000 bytes is over the limit of 1024 bytes"


def test_a_flood_without_frame_end_is_cut_off_at_the_limit(start_broker, clients):
    broker = start_broker(limits=Limits(max_frame_size=4096, max_body_size=2048))
    client = clients(broker.port)
    client.send(b"SEND\ndestination:/queue/a\n\n" + b"x" * 8192)
    assert client.frame().get("message") == (
        "Frame body is over the limit of 2048 bytes (or its NUL terminator is missing)"
    )


def test_bad_clients_do_not_disturb_the_others(embedded_broker, clients):
    receiver = clients(embedded_broker.port)
    subscribe(receiver, "/queue/keep", ack="client-individual")
    sender = clients(embedded_broker.port)
    for i in range(50):
        send(sender, "/queue/keep", b"%d" % i)
        bad = clients(embedded_broker.port, connect=None)
        bad.send([b"\x00\xff garbage", b"FOO\n\n\x00", CONNECT + b"ACK\nid:x\n\n\x00"][i % 3])
    received = [receiver.frame().body for _ in range(50)]
    assert received == [b"%d" % i for i in range(50)]


def test_an_unexpected_exception_becomes_a_generic_error_without_internals(embedded_broker, clients):
    def broken_publish(*args):
        raise RuntimeError("secret internals at 0xdeadbeef")

    embedded_broker.call(setattr, embedded_broker.broker, "publish", broken_publish)
    client = clients(embedded_broker.port)
    send(client, "/queue/x", b"boom")
    raw = client.raw_frame()
    assert raw == b"ERROR\nmessage:Internal error\ncontent-type:text/plain\ncontent-length:14\n\nInternal error\x00"
    other = clients(embedded_broker.port)
    sync(other)


# --- Backpressure ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_a_subscriber_that_stops_reading_is_disconnected_and_the_others_lose_nothing(start_broker, clients, use_uvloop):
    broker = start_broker(use_uvloop, output_high_water=32 * 1024, slow_consumer_timeout=0.5)
    stuck = RawClient(broker.port)
    stuck.connect()
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    subscribe(stuck, "/topic/flood", "stuck")
    reader = clients(broker.port)
    subscribe(reader, "/topic/flood", "reader")
    sender = clients(broker.port)
    body = b"x" * 1000
    count = 6000
    received = 0
    batch = b"".join(b"SEND\ndestination:/topic/flood\n\n%s\x00" % body for _ in range(100))
    for _ in range(count // 100):
        sender.send(batch)
        while reader._read(time.monotonic() + 0.001):
            pass
        received += reader.buf.count(b"\x00")
        reader.buf = reader.buf[reader.buf.rfind(b"\x00") + 1 :]
    deadline = time.monotonic() + 10
    while received < count and time.monotonic() < deadline:
        reader._read(time.monotonic() + 0.2)
        received += reader.buf.count(b"\x00")
        reader.buf = reader.buf[reader.buf.rfind(b"\x00") + 1 :]
    assert received == count
    stats = broker.stats()
    assert stats.slow_consumers == 1 and stats.producer_pauses >= 1
    stuck.close()


# --- Persistence ----------------------------------------------------------------------------


def test_queued_messages_survive_a_restart_with_a_data_file(start_broker, clients, tmp_path):
    data_file = tmp_path / "broker.sqlite3"
    first = start_broker(data_file=data_file)
    sender = clients(first.port)
    for body in (b"1", b"2", b"3"):
        send(sender, "/queue/durable", body, b"receipt:r%s\nx-kind:job\n" % body)
    assert [sender.frame().get("receipt-id") for _ in range(3)] == ["r1", "r2", "r3"]
    first.stop()
    second = start_broker(data_file=data_file)
    consumer = clients(second.port)
    subscribe(consumer, "/queue/durable")
    frames = [consumer.frame() for _ in range(3)]
    assert [(f.body, f.get("x-kind")) for f in frames] == [(b"1", "job"), (b"2", "job"), (b"3", "job")]


def test_an_unacknowledged_message_survives_a_restart_marked_redelivered(start_broker, clients, tmp_path):
    data_file = tmp_path / "broker.sqlite3"
    first = start_broker(data_file=data_file)
    consumer = clients(first.port)
    subscribe(consumer, "/queue/inflight", ack="client-individual")
    send(clients(first.port), "/queue/inflight", b"work")
    assert consumer.frame().body == b"work"
    first.stop()
    second = start_broker(data_file=data_file)
    again = clients(second.port)
    subscribe(again, "/queue/inflight")
    frame = again.frame()
    assert (frame.body, frame.get("redelivered")) == (b"work", "true")


def test_acknowledged_messages_are_gone_after_a_restart(start_broker, clients, tmp_path):
    data_file = tmp_path / "broker.sqlite3"
    first = start_broker(data_file=data_file)
    consumer = clients(first.port)
    subscribe(consumer, "/queue/done", ack="client-individual")
    send(clients(first.port), "/queue/done", b"work")
    consumer.send(b"ACK\nid:%s\n\n\x00" % consumer.frame().get("ack").encode())
    sync(consumer)
    first.stop()
    second = start_broker(data_file=data_file)
    again = clients(second.port)
    subscribe(again, "/queue/done")
    assert again.nothing(0.3)


# --- Shutdown -------------------------------------------------------------------------------


def test_close_tells_connected_clients_and_closes_them(start_broker, clients):
    broker = start_broker()
    client = clients(broker.port)
    broker.stop()
    assert _error_then_closed(client).get("message") == "Broker shutting down"


def test_close_is_idempotent(start_broker):
    broker = start_broker()
    broker.stop()
    broker.stop()
    assert broker.broker.closing is True


def test_the_fixture_gives_a_stomp_url_on_a_free_loopback_port(embedded_broker):
    assert embedded_broker.url == f"stomp://127.0.0.1:{embedded_broker.port}" and embedded_broker.port > 0


def test_the_broker_serves_on_asyncios_default_loop_too(start_broker, clients):
    broker = start_broker(use_uvloop=False)
    consumer = clients(broker.port)
    subscribe(consumer, "/queue/plain", ack="client-individual")
    send(clients(broker.port), "/queue/plain", b"x")
    consumer.send(b"ACK\nid:%s\nreceipt:a\n\n\x00" % consumer.frame().get("ack").encode())
    assert consumer.frame().get("receipt-id") == "a"


def test_a_broker_thread_on_a_taken_port_raises_address_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError) as info:
            BrokerThread(BrokerConfig(port=taken.getsockname()[1])).start()
    assert info.value.errno == errno.EADDRINUSE


async def test_run_serves_until_its_injected_shutdown_trigger_completes():
    stop = asyncio.Event()
    broker = Broker(BrokerConfig(close_timeout=2.0))
    task = asyncio.create_task(broker.run(stop.wait))
    for _ in range(500):
        if broker.port:
            break
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(CONNECT)
    assert (await asyncio.wait_for(reader.readuntil(b"\x00"), 5)).startswith(b"CONNECTED\n")
    stop.set()
    await asyncio.wait_for(task, 5)
    error = (await asyncio.wait_for(reader.readuntil(b"\x00"), 5)).lstrip(b"\n")  # the EOL ending CONNECTED
    assert error.startswith(b"ERROR\nmessage:Broker shutting down\n")
    writer.close()


# --- A memory budget for the whole broker, and frames that never complete ------------------


def _error_message(client: RawClient, timeout: float = 5.0) -> str | None:
    """The message of the first ERROR frame (other frames skipped), None when the connection ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame = client.frame(max(0.05, deadline - time.monotonic()))
        except AssertionError:
            return None
        if frame.command == "ERROR":
            return frame.get("message")
    return None


def test_unfinished_frames_past_the_memory_budget_get_an_error_and_the_connection_closes(start_broker, clients, caplog):
    broker = start_broker(max_memory=3 * 1024 * 1024)
    part = b"SEND\ndestination:/queue/big\n\n" + b"x" * (1024 * 1024)  # no NUL: a frame in progress
    holders = [clients(broker.port) for _ in range(2)]
    for holder in holders:
        holder.send(part)
        sync(clients(broker.port))  # the broker has read it
    refused = clients(broker.port)
    refused.send(part + b"x" * (1024 * 1024))
    assert _error_message(refused) == "Memory limit reached: frame refused"
    assert refused.closed()
    for holder in holders:  # the frames in progress before the budget ran out are still welcome
        holder.send(b"\x00")
        sync(holder)
    stats = broker.stats()
    assert stats.memory_refusals == 1
    assert any("Memory limit" in r.getMessage() and "frame" in r.getMessage() for r in caplog.records)


def test_queues_share_the_memory_budget_and_a_send_past_it_is_refused(start_broker, clients):
    broker = start_broker(max_memory=2 * 1024 * 1024)
    sender = clients(broker.port)
    body = b"x" * (100 * 1024)
    accepted = 0
    message = None
    for i in range(40):  # 4 MB over five queues, each well under its own cap
        send(sender, f"/queue/q{i % 5}", body, b"receipt:r%d\n" % i)
        frame = sender.frame()
        if frame.command == "ERROR":
            message = frame.get("message")
            break
        accepted += 1
    assert message == "Memory limit reached: message refused"
    assert 15 <= accepted <= 20  # what fits in 2 MiB
    assert sender.closed()
    assert broker.stats().memory_refusals == 1
    # Nothing accepted was lost.
    reader = clients(broker.port)
    got = 0
    for i in range(5):
        subscribe(reader, f"/queue/q{i}", str(i))
    while not reader.nothing(0.3) or reader.pending:
        while reader.pending:
            reader.pending.pop()
            got += 1
        while b"\x00" in reader.buf:
            reader.frame()
            got += 1
    assert got == accepted


def test_a_subscriber_holding_unsent_output_past_the_memory_budget_is_disconnected(start_broker, clients):
    broker = start_broker(
        max_memory=2 * 1024 * 1024, output_high_water=64 * 1024 * 1024, max_output_bytes=64 * 1024 * 1024,
        slow_consumer_timeout=60.0,
    )
    stuck = RawClient(broker.port)
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect()
    subscribe(stuck, "/topic/flood", "stuck")
    sender = clients(broker.port)
    body = b"x" * (64 * 1024)
    for _ in range(512):  # 32 MiB the stuck subscriber never reads (the kernel's buffers take some)
        send(sender, "/topic/flood", body)
    sync(sender)  # the sender is not the one refused
    deadline = time.monotonic() + 5
    while broker.stats().memory_refusals == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = broker.stats()
    assert stats.memory_refusals == 1 and stats.connections_current == 1
    assert stats.memory_used < 2 * 1024 * 1024
    stuck.close()


def test_a_client_trickling_a_frame_after_connect_is_cut_off_at_the_frame_timeout(start_broker, clients):
    broker = start_broker(frame_timeout=1.0, heartbeat_receive_ms=0)
    client = clients(broker.port)
    started = time.monotonic()
    for byte in b"SEND\ndestination:/queue/slow\n\nbody":
        try:
            client.send(bytes([byte]))
        except OSError:
            break
        if b"\x00" in client.buf or client._read(time.monotonic() + 0.2):
            break
    assert _error_message(client) == "Timeout: frame not completed in 1 s"
    assert client.closed()
    assert time.monotonic() - started < 6
    assert broker.stats().frame_timeouts == 1


def test_heart_beats_and_whole_frames_never_trip_the_frame_timeout(start_broker, clients):
    broker = start_broker(frame_timeout=0.5)
    client = clients(broker.port)
    for _ in range(8):
        client.send(b"\n")
        send(client, "/topic/t", b"x")
        time.sleep(0.15)
    sync(client)
    assert broker.stats().frame_timeouts == 0


def test_the_memory_in_use_comes_back_to_zero_when_clients_leave(start_broker, clients):
    broker = start_broker()
    client = clients(broker.port)
    client.send(b"SEND\ndestination:/queue/x\n\n" + b"x" * 10000)
    sync(clients(broker.port))
    assert broker.stats().memory_used >= 10000
    client.close()
    deadline = time.monotonic() + 5
    while broker.stats().memory_used and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.stats().memory_used == 0


def test_connections_past_the_limit_get_an_error_and_are_counted_and_logged_once_per_period(start_broker, clients, caplog):
    broker = start_broker(max_connections=2)
    kept = [clients(broker.port) for _ in range(2)]
    for _ in range(3):
        refused = clients(broker.port, connect=None)
        assert _error_message(refused) == "Too many connections (the broker serves at most 2)"
        assert refused.closed()
    assert broker.stats().connections_refused == 3
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Refused a connection")]
    assert len(refusals) == 1, refusals
    kept[0].close()
    deadline = time.monotonic() + 5
    while broker.stats().connections_current > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    clients(broker.port)  # a place is free again


# --- Frame endings --------------------------------------------------------------------------


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, data
        data += chunk
    return data


def test_every_frame_the_broker_writes_ends_with_nul_and_a_newline(embedded_broker):
    # As RabbitMQ and ActiveMQ do: PHP's stomp extension reads one byte past the NUL.
    with socket.create_connection(("127.0.0.1", embedded_broker.port), timeout=5) as sock:
        sock.sendall(CONNECT)
        connected = b""
        while not connected.endswith(b"\x00"):
            connected += sock.recv(1)
        assert sock.recv(1) == b"\n"
        sock.sendall(b"SUBSCRIBE\ndestination:/topic/end\nid:0\nreceipt:r1\n\n\x00")
        expected = b"RECEIPT\nreceipt-id:r1\n\n\x00\n"
        assert _read_exactly(sock, len(expected)) == expected
        sock.sendall(b"SEND\ndestination:/topic/end\n\nhi\x00")
        message = b""
        while not message.endswith(b"hi\x00"):
            message += sock.recv(1)
        assert message.startswith(b"MESSAGE\n") and sock.recv(1) == b"\n"
        sock.sendall(b"FOO\n\n\x00")
        error = b""
        while not error.endswith(b"\x00"):
            error += sock.recv(1)
        assert error.startswith(b"ERROR\n") and sock.recv(1) == b"\n"
