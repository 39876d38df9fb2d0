"""The embedded broker's heart-beats on the wire: data at least every agreed interval, counted
from the last byte it wrote, with and without messages in between; and an idle real stack (a Hub
connected to the broker) that keeps its one connection."""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import pytest

from notifications.broker import BrokerConfig, BrokerThread
from notifications.hub import Hub


class Arrivals:
    """A subscriber on a plain socket that notes when each chunk of bytes arrives."""

    def __init__(self, port: int, connect: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(connect)
        self.times: list[float] = []
        self.data = b""

    def read_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return
            if not chunk:
                raise AssertionError(f"the broker closed the connection: {self.data[-200:]!r}")
            self.times.append(time.monotonic())
            self.data += chunk

    def largest_silence(self) -> float:
        return max(b - a for a, b in zip(self.times, self.times[1:]))


@pytest.fixture
def broker():
    running = BrokerThread(BrokerConfig(heartbeat_send_ms=500, heartbeat_receive_ms=0, close_timeout=1.0)).start()
    yield running
    running.stop()


def test_the_broker_is_never_silent_longer_than_the_agreed_interval_from_connected_on(broker):
    client = Arrivals(broker.port, b"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,500\n\n\x00")
    client.read_for(2.6)  # five intervals
    client.sock.close()
    connected, _, beats = client.data.partition(b"\x00")
    assert connected.startswith(b"CONNECTED\n") and beats == b"\n" * len(beats) and len(beats) >= 4
    # Agreed: data at least every 500 ms. Some slack for a busy machine's scheduling, far
    # below the 1,000 ms a beat skipped after CONNECTED (or after a message) leaves.
    assert client.largest_silence() < 0.65, client.times


def test_messages_between_beats_do_not_stretch_the_silence_past_the_agreed_interval(broker):
    client = Arrivals(broker.port, b"CONNECT\naccept-version:1.2\nhost:x\nheart-beat:0,500\n\n\x00")
    client.sock.sendall(b"SUBSCRIBE\ndestination:/topic/hb\nid:0\n\n\x00")
    sender = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
    sender.sendall(b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00")
    stop = threading.Event()

    def send_now_and_then() -> None:
        # Irregular moments: just after a beat, mid-interval, twice in a row.
        for pause in (0.3, 0.45, 0.1, 0.55, 0.05, 0.4, 0.2):
            if stop.wait(pause):
                return
            sender.sendall(b"SEND\ndestination:/topic/hb\n\nping\x00")

    thread = threading.Thread(target=send_now_and_then)
    thread.start()
    try:
        client.read_for(3.1)  # six intervals
    finally:
        stop.set()
        thread.join()
        sender.close()
        client.sock.close()
    assert client.data.count(b"MESSAGE\n") == 7
    assert client.largest_silence() < 0.65, client.times


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_an_idle_hub_keeps_its_connection_to_the_broker_for_a_minute(embedded_broker, caplog):
    class Listener:
        reconnects = 0

        def hub_event(self, event) -> None:
            pass

        def hub_reconnected(self) -> None:
            self.reconnects += 1

    caplog.set_level(logging.INFO, logger="notifications.hub")
    # The defaults of both sides: 10 s heart-beats, the hub dropping a broker silent for 15 s.
    hub = Hub(embedded_broker.url, heartbeat_ms=10_000, reconnect_min=0.1, reconnect_max=1.0)
    hub.start()
    try:
        assert await hub.wait_connected(10)
        await hub.subscribe("/topic/jobs.all", Listener())
        await asyncio.sleep(60)
        assert (hub.stats.connects, hub.stats.outages) == (1, 0)
    finally:
        await hub.close()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
