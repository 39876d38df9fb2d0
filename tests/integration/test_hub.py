"""The process hub against a real broker, seen on the wire through a TCP relay this test controls.

The relay records every frame the hub sends (so one broker SUBSCRIBE for many listeners is
observed on the wire, not taken from the hub's own counters) and can cut or freeze the
connection to make broker outages.
"""
from __future__ import annotations

import asyncio

import pytest

from notifications.conf import parse_broker_url
from notifications.hub import Hub

from .stomp_ws_support import Relay, via

pytestmark = [pytest.mark.timeout(60)]


class Recorder:
    def __init__(self):
        self.events = []
        self.reconnects = 0
        self.arrived = asyncio.Event()

    def hub_event(self, event) -> None:
        self.events.append(event)
        self.arrived.set()

    def hub_reconnected(self) -> None:
        self.reconnects += 1

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def relay(every_stomp_broker_url):
    url = parse_broker_url(every_stomp_broker_url)
    relay = Relay(url.host, url.port)
    await relay.start()
    yield relay
    await relay.close()


@pytest.fixture
async def hub(relay, every_stomp_broker_url):
    hub = Hub(via(relay, every_stomp_broker_url), heartbeat_ms=10_000, reconnect_min=0.05, reconnect_max=0.3)
    hub.start()
    assert await hub.wait_connected(15)
    yield hub
    await hub.close()


@pytest.fixture
async def sender(every_stomp_broker_url):
    """A second connection, straight to the broker, publishing like a worker."""
    hub = Hub(every_stomp_broker_url)
    hub.start()
    assert await hub.wait_connected(15)
    yield hub
    await hub.close()


async def test_many_local_listeners_make_one_subscription_at_the_embedded_broker(embedded_broker):
    hub = Hub(embedded_broker.url)
    hub.start()
    try:
        assert await hub.wait_connected(10)
        for _ in range(5):
            await hub.subscribe("/topic/test.refcount", Recorder())
        assert embedded_broker.stats().subscriptions == 1
    finally:
        await hub.close()


async def test_many_local_listeners_make_one_broker_subscription(hub, relay):
    listeners = [Recorder() for _ in range(5)]
    for listener in listeners:
        await hub.subscribe("/topic/test.refcount", listener)
    assert len(relay.commands("SUBSCRIBE", "/topic/test.refcount")) == 1


async def test_one_broker_message_reaches_every_local_listener(hub, sender):
    listeners = [Recorder() for _ in range(3)]
    for listener in listeners:
        await hub.subscribe("/topic/test.fanout", listener)
    sender.publish("/topic/test.fanout", {"type": "job", "id": "j1", "seq": 7})
    for listener in listeners:
        await listener.wait_for(1)
    assert [(r.events[0].data, r.events[0].seq, r.events[0].job_id) for r in listeners] == [
        ({"type": "job", "id": "j1", "seq": 7}, 7, "j1")
    ] * 3


async def test_the_broker_unsubscribe_waits_for_the_last_local_listener(hub, relay):
    first, second = Recorder(), Recorder()
    await hub.subscribe("/topic/test.leave", first)
    await hub.subscribe("/topic/test.leave", second)
    hub.unsubscribe("/topic/test.leave", first)
    await asyncio.sleep(0.1)
    unsubscribes_after_first = len(relay.commands("UNSUBSCRIBE"))
    hub.unsubscribe("/topic/test.leave", second)
    await asyncio.sleep(0.1)
    assert (unsubscribes_after_first, len(relay.commands("UNSUBSCRIBE"))) == (0, 1)


async def test_a_listener_that_left_gets_nothing_more(hub, sender):
    stays, leaves = Recorder(), Recorder()
    await hub.subscribe("/topic/test.gone", stays)
    await hub.subscribe("/topic/test.gone", leaves)
    hub.unsubscribe_all(leaves)
    sender.publish("/topic/test.gone", "hello")
    await stays.wait_for(1)
    assert (len(stays.events), len(leaves.events), stays.events[0].body) == (1, 0, b"hello")


async def test_after_the_connection_drops_the_hub_resubscribes_and_delivers_again(hub, relay, sender):
    listener = Recorder()
    await hub.subscribe("/topic/test.restart", listener)
    relay.cut()
    async with asyncio.timeout(10):
        while listener.reconnects == 0:
            await asyncio.sleep(0.02)
    sender.publish("/topic/test.restart", {"after": "reconnect"})
    await listener.wait_for(1)
    assert (len(relay.commands("SUBSCRIBE", "/topic/test.restart")), listener.events[0].data, hub.stats.connects) == (
        2, {"after": "reconnect"}, 2,
    )


async def test_the_hub_keeps_retrying_while_the_broker_is_away(hub, relay):
    relay.refuse = True
    relay.cut()
    await asyncio.sleep(0.8)
    assert hub.connected is False
    relay.refuse = False
    assert await hub.wait_connected(5)
    assert hub.stats.outages == 1


async def test_messages_published_while_the_broker_is_away_are_sent_after_reconnect(hub, relay, sender):
    listener = Recorder()
    await sender.subscribe("/topic/test.buffered", listener)
    relay.refuse = True
    relay.cut()
    async with asyncio.timeout(5):
        while hub.connected:
            await asyncio.sleep(0.01)
    hub.publish("/topic/test.buffered", {"n": 1})
    relay.refuse = False
    await listener.wait_for(1)
    assert listener.events[0].data == {"n": 1}


@pytest.fixture(params=["embedded", "rabbitmq"])
def fast_heartbeat_broker_url(request):
    """A broker that heart-beats every 200 ms when asked (the embedded one is told so)."""
    if request.param == "rabbitmq":
        yield request.getfixturevalue("rabbitmq_stomp_url")
        return
    from notifications.broker import BrokerConfig, BrokerThread

    broker = BrokerThread(
        BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0, heartbeat_send_ms=200, heartbeat_receive_ms=200)
    ).start()
    try:
        yield broker.url
    finally:
        broker.stop()


async def test_a_silent_broker_is_detected_by_heart_beats_and_replaced(fast_heartbeat_broker_url):
    target = parse_broker_url(fast_heartbeat_broker_url)
    relay = Relay(target.host, target.port)
    await relay.start()
    hub = Hub(via(relay, fast_heartbeat_broker_url), heartbeat_ms=200, reconnect_min=0.05, reconnect_max=0.3)
    hub.start()
    try:
        assert await hub.wait_connected(15)
        relay.frozen = True
        async with asyncio.timeout(5):
            while hub.connected:
                await asyncio.sleep(0.02)
        relay.frozen = False
        relay.cut()
        assert await hub.wait_connected(5)
        assert hub.stats.connects == 2
    finally:
        await hub.close()
        await relay.close()


async def test_subscribe_returns_once_the_broker_confirmed_it(hub, relay):
    await hub.subscribe("/topic/test.receipt", Recorder())
    subscribe = relay.commands("SUBSCRIBE", "/topic/test.receipt")[0]
    assert subscribe.get("receipt", "").startswith("hub-sub-")


async def test_close_is_idempotent_and_stops_reconnecting(relay, every_stomp_broker_url):
    hub = Hub(via(relay, every_stomp_broker_url), reconnect_min=0.05, reconnect_max=0.1)
    hub.start()
    assert await hub.wait_connected(15)
    await hub.close()
    await hub.close()
    connections = relay.connections
    await asyncio.sleep(0.3)
    assert (hub.connected, relay.connections) == (False, connections)


async def test_job_events_and_wakeups_sent_by_code_in_a_web_process_use_its_hub_connection(relay, every_stomp_broker_url, settings):
    # A view enqueuing or cancelling a job runs in a worker thread of the web process: its events
    # go out on the process hub's connection, and no second broker connection (publisher) is made.
    from asgiref.sync import sync_to_async

    from jobs import events
    from jobs import live as destinations
    from notifications import hub as hub_module, publisher as publisher_module

    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "BROKER_URL": via(relay, every_stomp_broker_url)}
    publisher_module._publisher = None
    process_hub = hub_module.get_hub()
    try:
        assert await process_hub.wait_connected(15)
        job_id = "5a0c7a52-8f7c-4b8e-9d43-0f3f2d1a0b11"
        watcher = Recorder()
        await process_hub.subscribe(destinations.job(job_id), watcher)
        event = {"type": "job", "id": job_id, "seq": 1, "status": "READY", "attempts": 0,
                 "progress": {"done": 0, "total": None, "percent": None}}

        def view_code() -> None:
            events.publish_event(event)
            events.publish_wakeup("default")

        await sync_to_async(view_code)()
        await watcher.wait_for(1)
        async with asyncio.timeout(5):
            while not relay.commands("SEND", destinations.JOBS_WAKEUP):
                await asyncio.sleep(0.01)
        assert watcher.events[0].data == event
        assert [len(relay.commands("SEND", d)) for d in (destinations.job(job_id), destinations.JOBS_ALL, destinations.JOBS_WAKEUP)] == [1, 1, 1]
        # Every connection the relay saw is the hub's (one, or more on a broker that refused a host
        # header first or needed a workaround: CoilMQ), and no publisher was made.
        assert (relay.connections, publisher_module._publisher) == (process_hub.stats.connections_opened, None)
        assert process_hub.stats.connects == 1
    finally:
        await hub_module.shutdown()
