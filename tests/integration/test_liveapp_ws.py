"""The test app (tests/liveapp, the README's example) over WebSocket: a model of its own made live
with the public API only. Real ASGI application, session cookies, the embedded broker.
"""
from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from notifications import hub as hub_module
from notifications import publisher as publisher_module

from .stomp_ws_support import WsStomp, session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture
def shop(settings, transactional_db):
    """tests.liveapp installed for this test, its table created (and dropped after)."""
    from django.apps import apps
    from django.contrib.auth.management import create_permissions
    from django.db import connection

    settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "tests.liveapp"]
    Order = apps.get_model("shop", "Order")
    with connection.schema_editor() as editor:
        editor.create_model(Order)
    create_permissions(apps.get_app_config("shop"), verbosity=0)
    yield Order
    with connection.schema_editor() as editor:
        editor.delete_model(Order)
    # Installing the app registered its ModelAdmin (admin autodiscovery): the admin's app list
    # must not name an app that is uninstalled again when the settings are restored.
    from django.contrib import admin

    if admin.site.is_registered(Order):
        admin.site.unregister(Order)


@pytest.fixture
async def live(settings, embedded_broker, shop):
    settings.NOTIFICATIONS = {
        "BROKER_URL": embedded_broker.url,
        "SESSION_RECHECK_SECONDS": 0.3,
        "RECONNECT_MIN": 0.05,
        "RECONNECT_MAX": 0.5,
    }
    publisher_module._publisher = None
    yield shop
    for client in _clients:  # a failed test's sockets too: the process's open-socket gauge starts at 0
        await client.close()
    _clients.clear()
    await hub_module.shutdown()
    made, publisher_module._publisher = publisher_module._publisher, None
    if made is not None:
        made.close()


def _user(name: str, *perms: str):
    user = get_user_model().objects.create_user(name)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="shop"))
    return user


_clients: list[WsStomp] = []


async def _client(user) -> WsStomp:
    client = WsStomp(await database_sync_to_async(session_cookie)(user))
    _clients.append(client)
    assert await client.open()
    assert (await client.connect()).command == "CONNECTED"
    return client


async def _next_change(client: WsStomp, known: dict) -> dict:
    """The next event that differs from the state already known.

    The example model publishes without a seq, so the event of the order's creation, published
    after its commit, may arrive after the snapshot that already showed it.
    """
    while (event := await client.next_message()) == known:
        pass
    return event


async def test_another_customers_order_is_refused_with_an_error(live):
    alice, bob = await database_sync_to_async(_user)("alice"), await database_sync_to_async(_user)("bob")
    order = await database_sync_to_async(live.objects.create)(customer=alice)
    client = await _client(bob)
    await client.subscribe(f"/topic/orders.{order.pk}")
    frame = await client.next_frame()
    assert (frame.command, frame.get("message"), frame.get("destination")) == (
        "ERROR", f"Not allowed to subscribe to /topic/orders.{order.pk}", f"/topic/orders.{order.pk}",
    )
    await client.expect_closed()


async def test_the_customer_gets_the_snapshot_then_every_change(live):
    alice = await database_sync_to_async(_user)("alice")
    order = await database_sync_to_async(live.objects.create)(customer=alice)
    client = await _client(alice)
    await client.subscribe(f"/topic/orders.{order.pk}", receipt="r")
    snapshot = await client.next_message()
    assert (await client.next_frame()).command == "RECEIPT"

    def ship():
        order.status = "shipped"
        order.save()

    await database_sync_to_async(ship)()
    assert [snapshot, await _next_change(client, snapshot)] == [
        {"id": order.pk, "status": "new"}, {"id": order.pk, "status": "shipped"},
    ]
    await client.close()


async def test_the_all_orders_list_needs_the_view_permission(live):
    alice = await database_sync_to_async(_user)("alice")
    staff = await database_sync_to_async(_user)("staff", "view_order")
    refused = await _client(alice)
    await refused.subscribe("/topic/orders.all")
    allowed = await _client(staff)
    await allowed.subscribe("/topic/orders.all", receipt="r")
    assert [(await refused.next_frame()).command, (await allowed.next_frame()).command] == ["ERROR", "RECEIPT"]
    await allowed.close()


async def test_cancelling_by_send_changes_the_order_and_answers_with_a_receipt(live):
    alice = await database_sync_to_async(_user)("alice")
    order = await database_sync_to_async(live.objects.create)(customer=alice)
    client = await _client(alice)
    await client.subscribe(f"/topic/orders.{order.pk}", receipt="r")
    snapshot = await client.next_message()
    await client.next_frame()
    await client.send("SEND", {"destination": "/app/orders.cancel", "receipt": "c"}, json.dumps({"order": order.pk}))
    receipts, events = [], []
    while not receipts or not events:  # the event may overtake the receipt
        frame = await client.next_frame()
        if frame.command == "RECEIPT":
            receipts.append(frame.get("receipt-id"))
        elif json.loads(frame.body) != snapshot:  # the creation's own event may come after the snapshot
            events.append(json.loads(frame.body))
    assert (receipts, events) == (["c"], [{"id": order.pk, "status": "cancelled"}])
    await database_sync_to_async(order.refresh_from_db)()
    assert order.status == "cancelled"
    await client.close()


async def test_cancelling_another_customers_order_is_refused_and_changes_nothing(live):
    alice, bob = await database_sync_to_async(_user)("alice"), await database_sync_to_async(_user)("bob")
    order = await database_sync_to_async(live.objects.create)(customer=alice)
    client = await _client(bob)
    await client.send("SEND", {"destination": "/app/orders.cancel", "receipt": "c"}, json.dumps({"order": order.pk}))
    frame = await client.next_frame()
    assert (frame.command, frame.get("message"), frame.get("receipt-id")) == ("ERROR", "Not your order", "c")
    await client.expect_closed()
    await database_sync_to_async(order.refresh_from_db)()
    assert order.status == "new"


async def test_losing_the_view_permission_ends_the_all_orders_subscription(live):
    staff = await database_sync_to_async(_user)("staff", "view_order")
    client = await _client(staff)
    await client.subscribe("/topic/orders.all", receipt="r")
    assert (await client.next_frame()).command == "RECEIPT"
    await database_sync_to_async(lambda: staff.user_permissions.clear())()
    frame = await client.next_control_frame(timeout=5)
    assert (frame.command, frame.get("message")) == ("ERROR", "Permission withdrawn for /topic/orders.all")
    await client.expect_closed()


def test_the_shop_declarations_and_its_live_admin_pass_the_system_checks(shop):
    from django.core import checks

    errors = [e for e in checks.run_checks() if e.id and e.id.startswith("notifications.E02")]
    assert errors == []
