"""notifications.live.publish: the one publishing call of every app, against a real broker.

Inside a transaction an event goes out once the transaction commits, never for a rollback.
"""
from __future__ import annotations

import time

import pytest
from django.db import transaction

from notifications import live
from notifications import publisher as publisher_module

from .test_job_events import Subscriber

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def subscriber(stomp_broker_url, settings):
    settings.NOTIFICATIONS = {"BROKER_URL": stomp_broker_url, "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.2}
    publisher_module._publisher = None
    sub = Subscriber(stomp_broker_url)
    sub.subscribe("/topic/orders.live-publish")
    yield sub
    sub.close()
    made, publisher_module._publisher = publisher_module._publisher, None
    if made is not None:
        made.close()


def test_an_event_published_outside_a_transaction_goes_out_at_once(subscriber):
    live.publish("/topic/orders.live-publish", {"n": 1})
    assert subscriber.wait_until(lambda events: events) == [("/topic/orders.live-publish", {"n": 1})]


def test_an_event_published_in_a_transaction_waits_for_the_commit(subscriber):
    with transaction.atomic():
        live.publish("/topic/orders.live-publish", {"n": 2})
        time.sleep(0.5)  # time enough for a message sent at once to arrive
        during = list(subscriber.events)
    assert during == []
    assert subscriber.wait_until(lambda events: events) == [("/topic/orders.live-publish", {"n": 2})]


def test_an_event_published_in_a_rolled_back_transaction_never_goes_out(subscriber):
    with pytest.raises(RuntimeError), transaction.atomic():
        live.publish("/topic/orders.live-publish", {"n": "rolled back"})
        raise RuntimeError("roll back")
    live.publish("/topic/orders.live-publish", {"n": "after"})
    assert subscriber.wait_until(lambda events: events) == [("/topic/orders.live-publish", {"n": "after"})]
