"""The outbox on real brokers (embedded, RabbitMQ, ActiveMQ): a durable message reaches a stomp.py
subscriber after the commit and its row goes once the broker confirmed it; a relay publishes
rows their writer left behind."""
from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from notifications import api, destinations, outbox
from notifications import publisher as publisher_module
from notifications.models import OutboxMessage
from tests.integration.test_job_events import Subscriber

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


@pytest.fixture
def broker(stomp_broker_url, settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "BROKER_URL": stomp_broker_url,
                              "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.2}
    publisher_module._publisher = None
    yield stomp_broker_url
    made, publisher_module._publisher = publisher_module._publisher, None
    if made is not None:
        made.close()


@pytest.fixture
def subscriber(broker):
    sub = Subscriber(broker)
    yield sub
    sub.close()


def wait_until_no_rows(timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while OutboxMessage.objects.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return OutboxMessage.objects.count()


def test_a_durable_message_arrives_after_the_commit_and_its_row_is_deleted_once_confirmed(broker, subscriber):
    destination = f"/topic/outbox-test.{uuid.uuid4().hex}"
    subscriber.subscribe(destination)
    with transaction.atomic():
        outbox.publish_durable(destination, {"order": 12, "state": "paid"})
        time.sleep(0.3)  # long enough for a message published too early to arrive
        before_commit = list(subscriber.events)
    events = subscriber.wait_until(lambda evs: len(evs) >= 1)
    assert (before_commit, events) == ([], [(destination, {"order": 12, "state": "paid"})])
    assert wait_until_no_rows() == 0


def test_a_notification_reaches_its_users_topic_with_the_unread_count(broker, subscriber):
    alice = get_user_model().objects.create_user("alice")
    subscriber.subscribe(destinations.user_notifications(alice.pk))
    n = api.notify(alice, title="Export ready", text="2,000 rows", level="success", link="/jobs/1/")
    [(_, event)] = subscriber.wait_until(lambda evs: len(evs) >= 1)
    assert event == {"type": "notification", "id": n.pk, "level": "success", "title": "Export ready",
                     "text": "2,000 rows", "link": "/jobs/1/", "created": n.created.isoformat(), "read": False,
                     "unread": 1}
    assert wait_until_no_rows() == 0


def test_a_relay_publishes_rows_left_overdue_and_deletes_them_once_confirmed(broker, subscriber):
    destination = f"/topic/outbox-test.{uuid.uuid4().hex}"
    subscriber.subscribe(destination)
    past = timezone.now() - timedelta(seconds=30)
    OutboxMessage.objects.bulk_create([
        OutboxMessage(destinations=[destination], body=json.dumps({"n": n}), created=past, available_at=past)
        for n in range(5)
    ])
    relay = outbox.Relay()
    assert relay.drain(10, recover=True) is True
    events = subscriber.wait_until(lambda evs: len(evs) >= 5)
    assert [e["n"] for _, e in events] == [0, 1, 2, 3, 4]
    assert (OutboxMessage.objects.count(), relay.stats().recovered, relay.stats().deleted) == (0, 5, 5)


def test_live_publish_with_durable_goes_through_the_outbox(broker, subscriber):
    from notifications import live

    destination = f"/topic/outbox-test.{uuid.uuid4().hex}"
    subscriber.subscribe(destination)
    with transaction.atomic():
        live.publish(destination, {"order": 7}, durable=True)
        rows = [(row.destinations, row.payload) for row in OutboxMessage.objects.all()]
    assert rows == [([destination], {"order": 7})]
    assert subscriber.wait_until(lambda evs: len(evs) >= 1) == [(destination, {"order": 7})]
    assert wait_until_no_rows() == 0


async def test_a_web_process_publishes_a_durable_event_on_its_hubs_one_connection_and_the_row_goes_after_the_receipt(
    stomp_broker_url, settings
):
    # A view's durable event (here live.publish(..., durable=True), as notify() and a cancelled
    # job's final event) in a web process whose hub runs: no second broker connection (DESIGN
    # principle 2), and the outbox row is deleted only once the broker's RECEIPT reached the hub.
    import asyncio

    from channels.db import database_sync_to_async

    from notifications import hub as hub_module
    from notifications import live
    from notifications.conf import parse_broker_url
    from tests.integration.stomp_ws_support import Relay, via

    target = parse_broker_url(stomp_broker_url)
    relay = Relay(target.host, target.port)
    await relay.start()
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "BROKER_URL": via(relay, stomp_broker_url),
                              "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.2}
    publisher_module._publisher = None
    destination = f"/topic/outbox-test.{uuid.uuid4().hex}"
    subscriber = await asyncio.to_thread(Subscriber, stomp_broker_url)  # straight to the broker
    process_hub = hub_module.get_hub()
    rows = database_sync_to_async(OutboxMessage.objects.count)
    try:
        await asyncio.to_thread(subscriber.subscribe, destination)
        assert await process_hub.wait_connected(15)
        relay.hold_replies = True  # the broker gets the SEND; its RECEIPT waits in the relay

        def view_code() -> None:
            with transaction.atomic():
                live.publish(destination, {"order": 12, "state": "paid"}, durable=True)

        await database_sync_to_async(view_code)()
        events = await asyncio.to_thread(subscriber.wait_until, lambda evs: len(evs) >= 1)
        async with asyncio.timeout(5):
            while not relay.commands("SEND", destination):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # long enough for a row deleted without waiting for the RECEIPT to go
        rows_before_receipt = await rows()
        relay.hold_replies = False
        async with asyncio.timeout(10):
            while await rows():
                await asyncio.sleep(0.02)
        assert (events, rows_before_receipt) == ([(destination, {"order": 12, "state": "paid"})], 1)
        [send] = relay.commands("SEND", destination)
        assert send.get("receipt", "").startswith("hub-pub-")
        # Every connection the relay saw is the hub's, and no publisher was made.
        assert (relay.connections, process_hub.stats.connects, publisher_module._publisher) == (
            process_hub.stats.connections_opened, 1, None,
        )
    finally:
        await hub_module.shutdown()
        await asyncio.to_thread(subscriber.close)
        await relay.close()
