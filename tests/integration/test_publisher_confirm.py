"""Publisher confirmations on real brokers: on_confirmed runs once the broker's RECEIPT covers a
message, and never for a message the broker did not get (what the notifications outbox relies on)."""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import stomp

from notifications.broker import BrokerConfig, BrokerThread
from notifications.conf import parse_broker_url
from notifications.publisher import Publisher
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)


class Confirmations:
    """Counts the on_confirmed calls per message name."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def callback(self, name: str):
        def confirmed() -> None:
            with self._lock:
                self.calls[name] = self.calls.get(name, 0) + 1

        return confirmed


def subscribe(url: str, destination: str) -> tuple[stomp.Connection12, list[dict]]:
    parsed = parse_broker_url(url)
    received: list[dict] = []
    ready = threading.Event()

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame):
            received.append(json.loads(frame.body))

        def on_receipt(self, frame):
            ready.set()

    conn = stomp.Connection12([(parsed.host, parsed.port)], vhost=parsed.vhost or "/")
    conn.set_listener("", Listener())
    conn.connect(parsed.login, parsed.passcode, wait=True)
    conn.subscribe(destination, id="1", ack="auto", headers={"receipt": "subscribed"})
    assert ready.wait(10), "no RECEIPT for SUBSCRIBE"
    return conn, received


def test_every_message_is_confirmed_exactly_once_after_the_broker_has_it(stomp_broker_url):
    destination = f"/topic/confirm-test.{uuid.uuid4().hex}"
    conn, received = subscribe(stomp_broker_url, destination)
    confirmations = Confirmations()
    publisher = Publisher(stomp_broker_url, reconnect_min=0.05, reconnect_max=0.2)
    try:
        for n in range(450):  # more than two publisher batches
            publisher.publish(destination, {"n": n}, on_confirmed=confirmations.callback(f"m{n}"))
        assert publisher.flush(20)
        deadline = time.monotonic() + 10
        while len(received) < 450 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        publisher.close()
        conn.disconnect()
    assert confirmations.calls == {f"m{n}": 1 for n in range(450)}
    assert sorted(m["n"] for m in received) == list(range(450))


def test_a_message_the_broker_never_got_is_never_confirmed():
    confirmations = Confirmations()
    publisher = Publisher(f"stomp://127.0.0.1:{free_port()}", reconnect_min=0.05, reconnect_max=0.1)
    try:
        publisher.publish("/topic/confirm-test.nobody", {"n": 1}, on_confirmed=confirmations.callback("lost"))
        assert publisher.flush(0.5) is False
    finally:
        publisher.close()
    assert confirmations.calls == {}


def test_a_message_dropped_from_a_full_buffer_is_not_confirmed_while_the_kept_ones_are():
    port = free_port()
    confirmations = Confirmations()
    publisher = Publisher(f"stomp://127.0.0.1:{port}", buffer_size=2, reconnect_min=0.05, reconnect_max=0.1)
    broker = None
    try:
        for name in ("oldest", "kept-1", "kept-2"):  # the broker is not there yet: the oldest is dropped
            publisher.publish("/topic/confirm-test.late", {"name": name}, on_confirmed=confirmations.callback(name))
        broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=port, close_timeout=2.0)).start()
        assert publisher.flush(10) is True
        stats = publisher.stats()
    finally:
        publisher.close()
        if broker is not None:
            broker.stop()
    assert (confirmations.calls, stats.dropped) == ({"kept-1": 1, "kept-2": 1}, 1)


def test_a_message_replaced_by_a_newer_one_with_its_coalesce_key_confirms_only_the_newer():
    port = free_port()
    confirmations = Confirmations()
    publisher = Publisher(f"stomp://127.0.0.1:{port}", reconnect_min=0.05, reconnect_max=0.1)
    broker = None
    try:
        for name in ("first", "second"):
            publisher.publish("/topic/confirm-test.key", {"name": name}, coalesce_key="k",
                              on_confirmed=confirmations.callback(name))
        broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=port, close_timeout=2.0)).start()
        assert publisher.flush(10) is True
    finally:
        publisher.close()
        if broker is not None:
            broker.stop()
    assert confirmations.calls == {"second": 1}


def test_flush_returns_only_once_the_confirmation_callbacks_have_returned(embedded_broker):
    done = threading.Event()

    def slow_confirmation() -> None:
        time.sleep(0.3)
        done.set()

    publisher = Publisher(embedded_broker.url)
    try:
        publisher.publish("/topic/confirm-test.slow", {"n": 1}, on_confirmed=slow_confirmation)
        assert publisher.flush(10) is True
        confirmed_when_flushed = done.is_set()
    finally:
        publisher.close()
    assert confirmed_when_flushed is True
