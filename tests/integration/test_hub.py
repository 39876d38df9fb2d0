"""The process hub against a real broker, seen on the wire through a TCP relay this test controls.

The relay records every frame the hub sends (so one broker SUBSCRIBE for many listeners is
observed on the wire, not taken from the hub's own counters) and can cut or freeze the
connection to make broker outages.
"""
from __future__ import annotations

import asyncio
import logging
import re
import socket

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


async def relay_to(broker_url: str):
    url = parse_broker_url(broker_url)
    relay = Relay(url.host, url.port)
    await relay.start()
    yield relay
    await relay.close()


@pytest.fixture
async def relay(every_stomp_broker_url):
    async for relay in relay_to(every_stomp_broker_url):
        yield relay


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


# ------------------------------------------------------------- any broker: what they get wrong


async def test_unsubscribe_names_the_destination_as_well_as_the_id(hub, relay):
    # StompServer ignores an UNSUBSCRIBE without destination and CoilMQ answers it with ERROR.
    listener = Recorder()
    await hub.subscribe("/topic/test.unsub", listener)
    hub.unsubscribe("/topic/test.unsub", listener)
    async with asyncio.timeout(5):
        while not relay.commands("UNSUBSCRIBE"):
            await asyncio.sleep(0.01)
    subscribe, unsubscribe = relay.commands("SUBSCRIBE", "/topic/test.unsub")[0], relay.commands("UNSUBSCRIBE")[0]
    assert (unsubscribe.get("id"), unsubscribe.get("destination")) == (subscribe.get("id"), "/topic/test.unsub")


async def test_after_leaving_and_resubscribing_each_message_arrives_once(hub, sender):
    first, second = Recorder(), Recorder()
    await hub.subscribe("/topic/test.again", first)
    hub.unsubscribe("/topic/test.again", first)
    await hub.subscribe("/topic/test.again", second)
    sender.publish("/topic/test.again", {"n": 1})
    sender.publish("/topic/test.again", {"n": 2})
    await second.wait_for(2)
    await asyncio.sleep(0.3)  # a duplicate from a subscription the broker kept would be here by now
    assert ([e.data for e in second.events], hub.stats.connects) == ([{"n": 1}, {"n": 2}], 1)


async def test_a_message_to_the_hubs_own_subscription_arrives_once_and_its_receipt_confirms_it(hub):
    # StompServer and CoilMQ copy the sender's receipt header into the MESSAGE: only the RECEIPT
    # frame may count, and the MESSAGE must still be delivered.
    listener = Recorder()
    await hub.subscribe("/topic/test.own", listener)
    hub.publish("/topic/test.own", {"own": True})
    await listener.wait_for(1)
    async with asyncio.timeout(5):
        while hub.unconfirmed:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert ([e.data for e in listener.events], hub.stats.publish_confirmed, hub.stats.connects) == ([{"own": True}], 1, 1)


async def wait_until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_publish_is_confirmed_once_the_brokers_receipt_covers_it_and_not_before(hub, relay):
    confirmed = []
    relay.hold_replies = True  # the SEND reaches the broker, its RECEIPT waits in the relay
    hub.publish("/topic/test.confirm", {"n": 1}, on_confirmed=lambda: confirmed.append("n1"))
    await wait_until(lambda: relay.commands("SEND", "/topic/test.confirm"))
    await asyncio.sleep(0.3)  # long enough for a confirmation that did not wait for the RECEIPT
    before_receipt = list(confirmed)
    relay.hold_replies = False
    await wait_until(lambda: confirmed)
    await asyncio.sleep(0.2)
    [send] = relay.commands("SEND", "/topic/test.confirm")
    assert (before_receipt, confirmed, send.get("receipt", "").startswith("hub-pub-")) == ([], ["n1"], True)


async def test_a_message_sent_again_after_a_reconnect_is_confirmed_once(hub, relay):
    confirmed = []
    relay.hold_replies = True
    hub.publish("/topic/test.confirm.again", {"n": 1}, on_confirmed=lambda: confirmed.append("n1"))
    await wait_until(lambda: relay.commands("SEND", "/topic/test.confirm.again"))
    relay.cut()  # the connection ends before the RECEIPT came: the hub sends it again
    relay.hold_replies = False
    await wait_until(lambda: confirmed, timeout=15)
    await asyncio.sleep(0.3)
    assert (confirmed, len(relay.commands("SEND", "/topic/test.confirm.again")), hub.stats.publish_resent) == (
        ["n1"], 2, 1,
    )


async def test_a_message_the_full_publish_buffer_dropped_is_never_confirmed(relay, every_stomp_broker_url):
    hub = Hub(via(relay, every_stomp_broker_url), publish_buffer=2, reconnect_min=0.05, reconnect_max=0.3)
    hub.start()
    try:
        assert await hub.wait_connected(15)
        relay.refuse = True
        relay.cut()
        await wait_until(lambda: not hub.connected)
        confirmed = []
        for n in (1, 2, 3):
            hub.publish("/topic/test.confirm.dropped", {"n": n}, on_confirmed=lambda n=n: confirmed.append(n))
        relay.refuse = False
        assert await hub.wait_connected(15)
        await wait_until(lambda: not hub.unconfirmed, timeout=10)
        await asyncio.sleep(0.2)
    finally:
        await hub.close()
    assert (confirmed, hub.stats.publish_dropped, hub.stats.publish_confirmed) == ([2, 3], 1, 2)


async def test_a_burst_of_publishes_far_larger_than_4_KiB_arrives_whole_on_one_connection(hub, sender):
    # CoilMQ drops a connection when a frame straddles two of its 4 KiB reads.
    listener = Recorder()
    await sender.subscribe("/topic/test.burst", listener)
    for i in range(300):
        hub.publish("/topic/test.burst", {"n": i, "pad": "x" * 100})
    await listener.wait_for(300, timeout=20)
    assert ([e.data["n"] for e in listener.events], hub.stats.connects) == (list(range(300)), 1)


async def test_a_broker_that_stops_confirming_is_dropped_counted_and_logged_and_the_unconfirmed_resent(
    relay, every_stomp_broker_url, sender, caplog
):
    listener = Recorder()
    await sender.subscribe("/topic/test.silent", listener)
    hub = Hub(via(relay, every_stomp_broker_url), heartbeat_ms=0, receipt_timeout=0.5, reconnect_min=0.05, reconnect_max=0.3)
    hub.start()
    try:
        assert await hub.wait_connected(15)
        relay.frozen = True  # the broker takes the bytes and never answers
        hub.publish("/topic/test.silent", {"n": 1})
        async with asyncio.timeout(10):
            while hub.stats.receipt_timeouts == 0:
                await asyncio.sleep(0.02)
        relay.frozen = False
        relay.cut()
        await listener.wait_for(1, timeout=15)
        async with asyncio.timeout(10):
            while hub.unconfirmed:
                await asyncio.sleep(0.02)
    finally:
        await hub.close()
    assert listener.events[0].data == {"n": 1}
    assert (hub.stats.receipt_timeouts, hub.stats.publish_resent >= 1) == (1, True)
    assert "no RECEIPT for 1 SEND frames within 0.5 s" in caplog.text


async def test_the_connect_log_line_says_what_a_stomp_1_0_broker_negotiated(stompserver_stomp_url, caplog):
    caplog.set_level(logging.INFO, logger="notifications.hub")
    hub = Hub(stompserver_stomp_url)
    hub.start()
    try:
        assert await hub.wait_connected(15)
    finally:
        await hub.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "notifications.hub" and "connected to" in r.getMessage()]
    assert lines == [
        f"STOMP hub connected to {stompserver_stomp_url}: no server header, STOMP 1.0 (messages routed by destination), "
        "no heart-beats (the broker offers none), host header '/'"
    ]


async def test_the_connect_log_line_says_what_a_stomp_1_2_broker_negotiated(embedded_broker, caplog):
    caplog.set_level(logging.INFO, logger="notifications.hub")
    hub = Hub(embedded_broker.url, heartbeat_ms=4000)
    hub.start()
    try:
        assert await hub.wait_connected(15)
    finally:
        await hub.close()
    line = next(r.getMessage() for r in caplog.records if "STOMP hub connected to" in r.getMessage())
    assert re.search(r": server 'notifications-broker/[\d.]+', STOMP 1\.2, heart-beats: sending every \d+ ms, "
                     r"expecting every \d+ ms, host header '/'$", line), line


@pytest.fixture
async def coilmq_relay(coilmq_stomp_url):
    async for relay in relay_to(coilmq_stomp_url):
        yield relay


async def test_coilmq_gets_the_machines_name_as_host_header_after_refusing_the_others(coilmq_relay, coilmq_stomp_url):
    hub = Hub(via(coilmq_relay, coilmq_stomp_url), heartbeat_ms=0)
    hub.start()
    try:
        assert await hub.wait_connected(15)
    finally:
        await hub.close()
    hosts = [f.get("host") for f in coilmq_relay.commands("CONNECT")]
    assert hosts == ["/", "127.0.0.1", socket.getfqdn()]


async def test_a_path_in_the_url_forces_the_virtual_host_with_no_fallback(coilmq_relay, coilmq_stomp_url, caplog):
    hub = Hub(via(coilmq_relay, coilmq_stomp_url) + "/elsewhere", reconnect_min=0.05, reconnect_max=0.1)
    hub.start()
    try:
        assert await hub.wait_connected(1) is False
    finally:
        await hub.close()
    assert {f.get("host") for f in coilmq_relay.commands("CONNECT")} == {"elsewhere"}
    assert "broker refused the connection: Virtual hosting is not supported or host is unknown" in caplog.text


async def test_coilmq_is_recognised_at_connect_with_one_warning_and_sent_no_heart_beats(coilmq_relay, coilmq_stomp_url, caplog):
    hub = Hub(via(coilmq_relay, coilmq_stomp_url), heartbeat_ms=200, receipt_timeout=2)
    hub.start()
    try:
        assert await hub.wait_connected(15)
        await asyncio.sleep(0.8)  # four heart-beat intervals: CoilMQ would have stopped reading at the first
        listener = Recorder()
        await hub.subscribe("/topic/test.coil", listener)
        hub.publish("/topic/test.coil", {"n": 1})
        await listener.wait_for(1)
    finally:
        await hub.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is coilmq/" in warnings[0] and "stops reading a connection at the first heart-beat" in warnings[0]
    assert coilmq_relay.commands("CONNECT")[-1].get("heart-beat") == "0,200"
    assert (hub.stats.connects, hub.stats.receipt_timeouts) == (1, 0)


async def test_the_heartbeat_option_overrides_the_coilmq_workaround_and_the_receipt_deadline_catches_the_stall(
    coilmq_relay, coilmq_stomp_url, caplog
):
    # What the issue saw: heart-beats on, CoilMQ stops reading, the hub used to wait forever.
    hub = Hub(via(coilmq_relay, coilmq_stomp_url) + "?heartbeat=200", receipt_timeout=1, reconnect_min=0.05, reconnect_max=0.2)
    hub.start()
    try:
        assert await hub.wait_connected(15)
        await asyncio.sleep(0.5)  # a heart-beat has gone out
        await hub.subscribe("/topic/test.coil.stall", Recorder())
        async with asyncio.timeout(10):
            while hub.stats.receipt_timeouts == 0:
                await asyncio.sleep(0.05)
    finally:
        await hub.close()
    assert coilmq_relay.commands("CONNECT")[-1].get("heart-beat") == "200,200"
    assert "no RECEIPT for SUBSCRIBE /topic/test.coil.stall within 1 s" in caplog.text
