"""The process hub outlives whatever started it: a page resynchronises after a broker outage even
when the hub was started by a request that has long finished (a load balancer's first health
probe starts it in a web process behind nginx, before any WebSocket)."""
from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.testing import HttpCommunicator
from django.contrib.auth import get_user_model

from notifications import hub as hub_module

from .stomp_ws_support import make_job
from .test_consumer_restart import _watch

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


async def test_a_page_catches_up_after_a_broker_outage_when_a_finished_health_request_started_the_hub(settings):
    from notifications.broker import BrokerConfig, BrokerThread
    from project.asgi import application

    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0)).start()
    port = broker.port
    settings.NOTIFICATIONS = {"BROKER_URL": broker.url, "HEARTBEAT_MS": 1000, "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.3}
    alice = await database_sync_to_async(get_user_model().objects.create_user)("alice")
    job = await database_sync_to_async(make_job)(alice, progress_total=10)
    client = None
    try:
        probe = HttpCommunicator(application, "GET", "/ops/health/", headers=[(b"host", b"localhost")])
        assert (await probe.get_response(timeout=10))["status"] == 200  # the probe started the hub and ended
        client = await _watch(alice, job)

        await asyncio.to_thread(broker.stop)

        def finish():  # while no broker runs: only the resync can tell the page
            assert job.cas_update(status="SUCCESSFUL", progress_done=10)

        await database_sync_to_async(finish)()
        broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=port, close_timeout=2.0)).start()

        seen = []
        async with asyncio.timeout(20):
            while not (seen and seen[-1]["final"]):
                seen.append(await client.next_message(20))
        assert seen[-1]["status"] == "SUCCESSFUL"
    finally:
        if client is not None:
            await client.close()
        await hub_module.shutdown()
        await asyncio.to_thread(broker.stop)
