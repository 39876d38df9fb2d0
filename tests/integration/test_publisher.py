"""The process publisher against real brokers: order, coalescing, outages, overflow, threads, fork.

Outages are made with a TCP relay this test controls, placed between the publisher and a real
broker: the relay can be absent (broker down), started later (broker back) or cut every
connection (broker killed mid-stream). The checking subscriber connects to the broker directly.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import pytest
import stomp

from notifications import publisher as publisher_module
from notifications.conf import parse_broker_url
from notifications.publisher import Publisher, get_publisher, publish
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)

LOGGER = "notifications.publisher"


@pytest.fixture
def broker_url(every_stomp_broker_url) -> str:
    """A real broker: each test runs on every broker of tests.conftest.EVERY_BROKER."""
    return every_stomp_broker_url


def with_credentials(url: str, port: int) -> str:
    """The same broker URL (login, vhost) pointed at another local port."""
    parsed = parse_broker_url(url)
    auth = f"{parsed.login}:{parsed.passcode or ''}@" if parsed.login else ""
    vhost = f"/{parsed.vhost}" if parsed.vhost else ""
    return f"stomp://{auth}127.0.0.1:{port}{vhost}"


class Relay:
    """A TCP relay to a broker on a port chosen up front: start(), cut() every connection, stop()."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.accepted = 0
        self.frozen = False  # bytes are held, not relayed: a broker that stopped processing

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        server.settimeout(0.1)
        self._server = server
        t = threading.Thread(target=self._accept, args=(server,), daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self, server: socket.socket) -> None:
        while self._server is server:
            try:
                client, _ = server.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.frozen:
                    time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Drop every relayed connection at once, as if the broker died."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self.cut()
        for t in self._threads:
            t.join(2)


def stomppy_connection(url: str, listener) -> stomp.Connection12:
    """A plain stomp.py connection to the broker at ``url``, the checking side of these tests.

    The host header is the URL's virtual host if it has one; else "/" (RabbitMQ's default
    virtual host), then this machine's name (CoilMQ accepts only that; on loopback the broker's
    machine is this one). No heart-beats, so CoilMQ's heart-beat defect stays out of the way.
    """
    parsed = parse_broker_url(url)
    refused = []
    for host in [parsed.vhost] if parsed.vhost else ["/", socket.getfqdn()]:
        conn = stomp.Connection12([(parsed.host, parsed.port)], vhost=host, auto_decode=False)
        conn.set_listener("collect", listener)
        try:
            conn.connect(parsed.login, parsed.passcode, wait=True, with_connect_command=True)
            return conn
        except stomp.exception.ConnectFailedException as exc:
            refused.append(f"host {host!r}: {exc}")
            conn.disconnect()
    raise AssertionError(f"the broker at {url} refused every host header: {refused}")


class Subscriber:
    """A plain stomp.py client, straight to the broker, collecting one destination's messages."""

    def __init__(self, url: str, destination: str):
        self.messages: list[tuple[dict, bytes]] = []
        self._cond = threading.Condition()
        self._receipt = threading.Event()
        self.conn = stomppy_connection(url, self)
        self.conn.subscribe(destination, id="s1", ack="auto", headers={"receipt": "subscribed"})
        assert self._receipt.wait(5), "no RECEIPT for SUBSCRIBE"

    def on_receipt(self, frame) -> None:
        self._receipt.set()

    def on_message(self, frame) -> None:
        with self._cond:
            self.messages.append((dict(frame.headers), frame.body))
            self._cond.notify_all()

    def wait_raw(self, count: int, timeout: float = 10.0, distinct: bool = False) -> list[tuple[dict, bytes]]:
        """The messages once ``count`` arrived (``distinct``: ``count`` different bodies, for
        at-least-once streams where a re-sent message arrives twice), or at the timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while time.monotonic() < deadline:
                have = len({body for _, body in self.messages}) if distinct else len(self.messages)
                if have >= count:
                    break
                self._cond.wait(deadline - time.monotonic())
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 10.0, distinct: bool = False) -> list[dict]:
        return [json.loads(body) for _, body in self.wait_raw(count, timeout, distinct)]

    def close(self) -> None:
        try:
            self.conn.disconnect()
        except Exception:
            pass


@pytest.fixture
def destination() -> str:
    return f"/topic/test.publisher.{uuid.uuid4().hex}"


@pytest.fixture
def subscriber(broker_url, destination):
    sub = Subscriber(broker_url, destination)
    yield sub
    sub.close()


@pytest.fixture
def relay(broker_url):
    parsed = parse_broker_url(broker_url)
    r = Relay((parsed.host, parsed.port))
    yield r
    r.stop()


@pytest.fixture
def make_publisher():
    made: list[Publisher] = []

    def make(url: str, **kwargs) -> Publisher:
        kwargs.setdefault("reconnect_min", 0.05)
        kwargs.setdefault("reconnect_max", 0.2)
        p = Publisher(url, **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def fresh_singleton():
    """Make get_publisher() build a new publisher from the current settings, and close it after."""
    publisher_module._publisher = None
    yield
    p = publisher_module._publisher
    publisher_module._publisher = None
    if p is not None:
        p.close()


def test_messages_arrive_in_order_with_a_json_content_type(broker_url, subscriber, destination, make_publisher):
    p = make_publisher(broker_url)
    for i in range(50):
        p.publish(destination, {"n": i})
    assert p.flush(10) is True
    received = subscriber.wait_for(50)
    assert received == [{"n": i} for i in range(50)]
    assert {headers["content-type"] for headers, _ in subscriber.messages} == {"application/json"}


def test_text_and_bytes_payloads_keep_their_content_types(broker_url, subscriber, destination, make_publisher):
    p = make_publisher(broker_url)
    p.publish(destination, "héllo")
    p.publish(destination, b"\x00\x01raw", headers={"x-kind": "raw"})
    assert p.flush(10) is True
    (h1, b1), (h2, b2) = subscriber.wait_raw(2)
    assert (h1["content-type"], b1) == ("text/plain;charset=utf-8", "héllo".encode())
    assert (h2["content-type"], h2["x-kind"], b2) == ("application/octet-stream", "raw", b"\x00\x01raw")


def test_a_pending_message_with_the_same_coalesce_key_is_replaced_in_its_place(
    broker_url, subscriber, destination, relay, make_publisher
):
    p = make_publisher(with_credentials(broker_url, relay.port))
    p.publish(destination, {"m": "a"})
    p.publish(destination, {"m": "job 1", "done": 1}, coalesce_key="job:1")
    p.publish(destination, {"m": "c"})
    p.publish(destination, {"m": "job 1", "done": 2}, coalesce_key="job:1")
    p.publish(destination, {"m": "job 1", "done": 3}, coalesce_key="job:1")
    assert p.stats().coalesced == 2
    relay.start()
    assert p.flush(10) is True
    received = subscriber.wait_for(3)
    time.sleep(0.2)  # nothing more may follow
    assert received == [{"m": "a"}, {"m": "job 1", "done": 3}, {"m": "c"}]
    assert len(subscriber.messages) == 3


def test_a_broker_down_at_first_gets_the_buffered_messages_once_up_with_one_warning(
    broker_url, subscriber, destination, relay, make_publisher, caplog
):
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = make_publisher(with_credentials(broker_url, relay.port))
    for i in range(20):
        p.publish(destination, {"n": i})
    assert p.flush(0.5) is False
    time.sleep(0.5)  # several failed attempts happen while the broker is away
    relay.start()
    assert p.flush(10) is True
    assert subscriber.wait_for(20) == [{"n": i} for i in range(20)]
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
    assert len(warnings) == 1
    assert "unreachable" in warnings[0].getMessage()
    assert len(infos) == 1
    assert "back after" in infos[0].getMessage() and "20 buffered" in infos[0].getMessage()
    assert [r for r in caplog.records if r.name == "stomp.py" and r.levelno >= logging.INFO] == []


def test_a_broker_killed_mid_stream_gets_every_message_after_reconnecting(
    broker_url, subscriber, destination, relay, make_publisher, caplog
):
    caplog.set_level(logging.INFO, logger=LOGGER)
    relay.start()
    p = make_publisher(with_credentials(broker_url, relay.port))
    for block in range(3):
        for i in range(block * 100, block * 100 + 100):
            p.publish(destination, {"n": i})
        # Cut while this block is on its way: the connection is up and sending.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and p.stats().sent <= block * 100:
            time.sleep(0.001)
        relay.cut()
    assert p.flush(15) is True
    # At least once, in order of first arrival: a batch cut before its RECEIPT is re-sent, so
    # 300 messages may arrive (duplicates included) before the last distinct one does.
    numbers = [body["n"] for body in subscriber.wait_for(300, distinct=True)]
    first_seen = list(dict.fromkeys(numbers))
    assert first_seen == list(range(300))
    assert p.stats().connects >= 3
    assert relay.accepted >= 3


def test_a_full_buffer_drops_the_oldest_messages_and_counts_them(
    broker_url, subscriber, destination, relay, make_publisher
):
    p = make_publisher(with_credentials(broker_url, relay.port), buffer_size=10)
    for i in range(25):
        p.publish(destination, {"n": i})
    assert p.stats().dropped == 15
    assert p.stats().pending == 10
    relay.start()
    assert p.flush(10) is True
    assert subscriber.wait_for(10) == [{"n": i} for i in range(15, 25)]


def test_publish_from_many_threads_delivers_every_message_in_each_threads_order(
    broker_url, subscriber, destination, make_publisher
):
    p = make_publisher(broker_url)
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        start.wait()
        for i in range(100):
            p.publish(destination, {"t": t, "i": i})

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert p.flush(15) is True
    received = subscriber.wait_for(800)
    assert len(received) == 800
    for t in range(8):
        assert [m["i"] for m in received if m["t"] == t] == list(range(100))


def test_publish_does_not_block_when_the_broker_never_answers(make_publisher):
    # A listener that accepts TCP connections and never says CONNECTED: the worst broker.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        p = make_publisher(f"stomp://127.0.0.1:{silent.getsockname()[1]}")
        started = time.perf_counter()
        for i in range(2000):
            p.publish("/topic/test.silent", {"n": i})
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5
        assert p.stats().pending == 2000


def test_publish_of_a_payload_that_is_not_json_is_refused_without_raising(make_publisher, caplog):
    p = make_publisher(f"stomp://127.0.0.1:{free_port()}")
    p.publish("/topic/test.bad", {"when": object()})
    assert p.stats().rejected == 1
    assert p.stats().pending == 0
    assert "Not publishing to '/topic/test.bad'" in caplog.text


def test_a_subscription_is_renewed_after_a_reconnect(broker_url, destination, relay, make_publisher):
    relay.start()
    p = make_publisher(with_credentials(broker_url, relay.port))
    got: list[bytes] = []
    arrived = threading.Event()

    def on_message(headers: dict, body: bytes) -> None:
        got.append(body)
        arrived.set()

    p.subscribe(destination, on_message)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not p.stats().connected:
        time.sleep(0.01)
    relay.cut()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and p.stats().connects < 2:
        time.sleep(0.02)
    assert p.stats().connects == 2
    other = make_publisher(broker_url)
    # The renewed SUBSCRIBE went out before anything else on the new connection; a message
    # through the same publisher after it proves it is active.
    p.publish(destination, {"after": "reconnect"})
    assert p.flush(5) is True
    assert arrived.wait(5)
    assert json.loads(got[0]) == {"after": "reconnect"}
    other.close()


def _nodelay_of(p: Publisher) -> int:
    return p._conn.transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_the_publisher_socket_has_nagle_off_on_every_connection(broker_url, destination, relay, make_publisher):
    # A job event is two frames back to back; with Nagle on, the second waited for the
    # broker's delayed ACK of the first (tens of milliseconds).
    relay.start()
    p = make_publisher(with_credentials(broker_url, relay.port))
    p.publish(destination, {"n": 1})
    assert p.flush(10) is True
    assert _nodelay_of(p) != 0
    relay.cut()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and p.stats().connects < 2:
        time.sleep(0.02)
    p.publish(destination, {"n": 2})
    assert p.flush(10) is True
    assert (p.stats().connects, _nodelay_of(p) != 0) == (2, True)


def test_close_is_idempotent_and_later_publishes_are_counted_as_rejected(broker_url, make_publisher):
    p = make_publisher(broker_url)
    p.publish("/topic/test.close", {"n": 1})
    assert p.flush(5) is True
    p.close()
    p.close()
    p.publish("/topic/test.close", {"n": 2})
    assert p.stats().rejected == 1
    assert p.stats().connected is False


def test_get_publisher_returns_one_publisher_per_process_built_from_settings(
    broker_url, settings, fresh_singleton, subscriber, destination
):
    settings.NOTIFICATIONS = {"BROKER_URL": broker_url}
    assert get_publisher() is get_publisher()
    publish(destination, {"via": "module"})
    assert get_publisher().flush(10) is True
    assert subscriber.wait_for(1) == [{"via": "module"}]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_forked_child_gets_its_own_publisher_and_the_parent_keeps_working(
    broker_url, settings, fresh_singleton, subscriber, destination
):
    settings.NOTIFICATIONS = {"BROKER_URL": broker_url}
    parent = get_publisher()
    publish(destination, {"from": "parent", "n": 1})
    assert parent.flush(10) is True
    pid = os.fork()
    if pid == 0:  # child: only os._exit, never return into pytest
        code = 1
        try:
            child = get_publisher()
            if child is not parent and child._pid == os.getpid():
                publish(destination, {"from": "child"})
                code = 0 if child.flush(10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    publish(destination, {"from": "parent", "n": 2})
    assert parent.flush(10) is True
    received = subscriber.wait_for(3)
    assert received == [{"from": "parent", "n": 1}, {"from": "child"}, {"from": "parent", "n": 2}]


class PickyBroker:
    """A minimal STOMP server on a real socket, built on the project's codec: CONNECTED, RECEIPTs,
    and for a SEND whose body is b"poison" an ERROR frame and a closed connection."""

    def __init__(self):
        from notifications.codec import Frame

        self.Frame = Frame
        self.received: list[bytes] = []
        self.connections = 0
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(8)
        self._server.settimeout(0.1)
        self.port = self._server.getsockname()[1]
        self._running = True
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while self._running:
            try:
                sock, _ = self._server.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, sock: socket.socket) -> None:
        from notifications.codec import FrameParser, encode_frame

        Frame = self.Frame
        parser = FrameParser()
        sock.settimeout(5)
        with sock:
            while self._running:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                parser.receive_data(data)
                for frame in parser.events_received():
                    if not isinstance(frame, Frame):
                        continue
                    if frame.command in ("CONNECT", "STOMP"):
                        sock.sendall(encode_frame(Frame("CONNECTED", (("version", "1.2"), ("heart-beat", "0,0")))))
                    elif frame.command == "SEND" and frame.body == b"poison":
                        sock.sendall(encode_frame(Frame("ERROR", (("message", "refused"),))))
                        return
                    elif frame.command == "SEND":
                        self.received.append(frame.body)
                    if frame.get("receipt"):
                        sock.sendall(encode_frame(Frame("RECEIPT", (("receipt-id", frame.get("receipt")),))))

    def close(self) -> None:
        self._running = False
        self._server.close()
        for t in self._threads:
            t.join(2)


def test_a_message_the_broker_keeps_refusing_is_dropped_and_the_rest_delivered(make_publisher, caplog):
    broker = PickyBroker()
    try:
        p = make_publisher(f"stomp://127.0.0.1:{broker.port}")
        p.publish("/topic/test.picky", {"n": 1})
        p.publish("/topic/test.picky", "poison")
        p.publish("/topic/test.picky", {"n": 2})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (p.stats().pending or p.stats().in_flight):
            time.sleep(0.02)
        # At least once: {"n":1} went out in the first batch and again after the ERROR.
        assert list(dict.fromkeys(broker.received)) == [b'{"n":1}', b'{"n":2}']
        assert p.stats().dropped == 1
        assert "Dropped a message to /topic/test.picky" in caplog.text
        # 1: [1, poison, 2] -> ERROR; 2: [1] -> RECEIPT, then [poison, 2] -> ERROR; 3 and 4: [poison]
        # alone -> ERROR, the third in a row: dropped; 5: [2].
        assert broker.connections == 5
    finally:
        broker.close()


def test_publishing_to_a_destination_outside_topic_and_queue_is_refused_without_raising(make_publisher, caplog):
    p = make_publisher(f"stomp://127.0.0.1:{free_port()}")
    p.publish("/exchange/amq.direct/x", {"n": 1})
    p.publish("/topic/", {"n": 2})
    assert p.stats().rejected == 2
    assert "destination must start with /topic/ or /queue/" in caplog.text


def test_a_broker_that_stops_confirming_is_dropped_counted_and_logged_and_the_unconfirmed_resent(
    broker_url, subscriber, destination, relay, make_publisher, caplog
):
    relay.start()
    p = make_publisher(with_credentials(broker_url, relay.port), heartbeat_ms=0, receipt_timeout=0.5)
    p.publish(destination, {"n": 0})
    assert p.flush(10) is True
    relay.frozen = True  # the broker takes the bytes and never answers
    p.publish(destination, {"n": 1})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and p.stats().receipt_timeouts == 0:
        time.sleep(0.02)
    relay.frozen = False
    relay.cut()
    assert p.flush(15) is True
    assert [m["n"] for m in subscriber.wait_for(2, distinct=True)][:2] == [0, 1]
    assert (p.stats().receipt_timeouts, p.stats().connects >= 2) == (1, True)
    assert "sent no RECEIPT for 1 messages within 0.5 s; reconnecting (they will be re-sent)" in caplog.text


def test_the_heartbeat_option_overrides_the_coilmq_workaround_and_the_receipt_deadline_catches_the_stall(
    coilmq_stomp_url, make_publisher, caplog
):
    # What the issue saw: heart-beats on, CoilMQ stops reading, messages were never confirmed.
    p = make_publisher(coilmq_stomp_url + "?heartbeat=200", receipt_timeout=1)
    p.publish("/topic/test.coil.stall", {"n": 0})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not p.stats().connects:
        time.sleep(0.02)
    time.sleep(0.5)  # a heart-beat has gone out: CoilMQ reads nothing more on this connection
    # A message sent now waits on the stalled connection until the deadline catches it. On a busy
    # machine the connection may drop (and the message go out on a fresh one) first: keep
    # publishing until one is caught, as a producer would.
    n = 1
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and p.stats().receipt_timeouts == 0:
        p.publish("/topic/test.coil.stall", {"n": n})
        n += 1
        time.sleep(0.3)
    assert p.stats().receipt_timeouts >= 1
    assert "messages within 1 s; reconnecting (they will be re-sent)" in caplog.text
    assert "the URL's heartbeat option keeps heart-beats on" in caplog.text


def test_coilmq_is_recognised_at_connect_with_one_warning_and_sent_no_heart_beats(coilmq_stomp_url, make_publisher, caplog):
    p = make_publisher(coilmq_stomp_url, heartbeat_ms=200, receipt_timeout=2)
    got = []
    p.subscribe("/topic/test.coil.pub", lambda headers, body: got.append(body))
    p.publish("/topic/test.coil.pub", {"n": 1})
    assert p.flush(10) is True
    time.sleep(0.8)  # four heart-beat intervals: CoilMQ would have stopped reading at the first
    p.publish("/topic/test.coil.pub", {"n": 2})
    assert p.flush(10) is True
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(got) < 2:
        time.sleep(0.02)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is coilmq/" in warnings[0]
    assert (got, p.stats().connects, p.stats().receipt_timeouts) == ([b'{"n":1}', b'{"n":2}'], 1, 0)


def test_the_connect_log_line_says_what_a_stomp_1_0_broker_negotiated(stompserver_stomp_url, make_publisher, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    p = make_publisher(stompserver_stomp_url)
    p.publish("/topic/test.log", {"n": 1})
    assert p.flush(10) is True
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO] == [
        f"STOMP publisher connected to {stompserver_stomp_url}: no server header, STOMP 1.0 (messages routed by "
        "destination), no heart-beats (the broker offers none), host header '/'"
    ]


def test_a_subscription_on_a_broker_without_subscription_headers_is_routed_by_destination(
    stompserver_stomp_url, make_publisher
):
    p = make_publisher(stompserver_stomp_url)
    got = {"a": [], "b": []}
    p.subscribe("/topic/test.route.a", lambda headers, body: got["a"].append(body))
    p.subscribe("/topic/test.route.b", lambda headers, body: got["b"].append(body))
    p.publish("/topic/test.route.b", "to b")
    p.publish("/topic/test.route.a", "to a")
    assert p.flush(10) is True
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (got["a"] and got["b"]):
        time.sleep(0.02)
    assert got == {"a": [b"to a"], "b": [b"to b"]}
