"""A broker restart in the middle of a job: the browser still ends up with the job's final state.

On the embedded broker the broker itself is stopped and a new one started on the same port
(every subscription and message it held is gone). On RabbitMQ, which a test cannot restart, a
relay between the web process and the broker drops every connection and refuses new ones for
a while, which is what the web process sees of a restart.
"""
from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from jobs import live as jobs_live
from notifications import destinations
from notifications import hub as hub_module
from notifications.hub import Hub

from .stomp_ws_support import Relay, WsStomp, make_job, session_cookie, via

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90), pytest.mark.slow]


def _settings(settings, url: str) -> None:
    settings.NOTIFICATIONS = {
        "BROKER_URL": url,
        "HEARTBEAT_MS": 1000,
        "SESSION_RECHECK_SECONDS": 5,
        "RECONNECT_MIN": 0.05,
        "RECONNECT_MAX": 0.3,
    }


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice")


async def _watch(alice, job) -> WsStomp:
    client = WsStomp(await database_sync_to_async(session_cookie)(alice))
    assert await client.open()
    assert (await client.connect()).command == "CONNECTED"
    await client.subscribe(jobs_live.job(job.pk), receipt="r")
    assert (await client.next_message())["status"] == "READY"
    assert (await client.next_frame()).command == "RECEIPT"
    return client


async def _write(job, **changes) -> dict:
    from jobs.events import job_event

    def write():
        assert job.cas_update(**changes)
        return job_event(job)

    return await database_sync_to_async(write)()


async def _until_final(client: WsStomp, timeout: float = 15.0) -> list[dict]:
    seen = []
    async with asyncio.timeout(timeout):
        while not (seen and seen[-1]["final"]):
            seen.append(await client.next_message(timeout))
    return seen


async def test_a_job_that_finished_while_the_embedded_broker_was_down_shows_its_final_state(settings, alice):
    from notifications.broker import BrokerConfig, BrokerThread

    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0)).start()
    port = broker.port
    _settings(settings, broker.url)
    job = await database_sync_to_async(make_job)(alice, progress_total=10)
    worker = Hub(broker.url, reconnect_min=0.05, reconnect_max=0.3)
    worker.start()
    client = None
    try:
        assert await worker.wait_connected(10)
        client = await _watch(alice, job)
        worker.publish(jobs_live.job(job.pk), await _write(job, status="RUNNING", progress_done=3))
        assert (await client.next_message())["progress"]["done"] == 3

        await asyncio.to_thread(broker.stop)
        # The job ends while no broker runs: its event is lost with the broker, the row is not.
        await _write(job, status="SUCCESSFUL", progress_done=10)
        broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=port, close_timeout=2.0)).start()

        seen = await _until_final(client)
        assert [(e["status"], e["seq"]) for e in seen][-1] == ("SUCCESSFUL", 2)
        assert await worker.wait_connected(10)
        # The late live copy of the same state is not shown twice.
        from jobs.events import job_event

        worker.publish(jobs_live.job(job.pk), await database_sync_to_async(job_event)(job))
        assert await client.nothing_more(0.5)
    finally:
        if client is not None:
            await client.close()
        await worker.close()
        await hub_module.shutdown()
        await asyncio.to_thread(broker.stop)


async def test_events_published_after_a_broker_restart_reach_the_browser(settings, alice):
    from notifications.broker import BrokerConfig, BrokerThread

    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0)).start()
    port = broker.port
    _settings(settings, broker.url)
    job = await database_sync_to_async(make_job)(alice, progress_total=10)
    worker = Hub(broker.url, reconnect_min=0.05, reconnect_max=0.3)
    worker.start()
    client = None
    try:
        assert await worker.wait_connected(10)
        client = await _watch(alice, job)
        await asyncio.to_thread(broker.stop)
        broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=port, close_timeout=2.0)).start()
        process_hub = hub_module.current_hub()
        async with asyncio.timeout(10):
            while not (process_hub.connected and process_hub.stats.connects >= 2):
                await asyncio.sleep(0.02)
        assert await worker.wait_connected(10)
        worker.publish(jobs_live.job(job.pk), await _write(job, status="RUNNING", progress_done=5))
        worker.publish(jobs_live.job(job.pk), await _write(job, status="SUCCESSFUL", progress_done=10))
        seen = await _until_final(client)
        assert [(e["status"], e["seq"]) for e in seen][-1] == ("SUCCESSFUL", 2)
    finally:
        if client is not None:
            await client.close()
        await worker.close()
        await hub_module.shutdown()
        await asyncio.to_thread(broker.stop)


@pytest.fixture(params=["rabbitmq", "activemq"])
def external_broker_url(request) -> str:
    """RabbitMQ's STOMP plugin, then ActiveMQ: the brokers a deployment outgrows the embedded one for."""
    return request.getfixturevalue(f"{request.param}_stomp_url")


async def test_a_job_that_finished_during_an_external_broker_outage_shows_its_final_state(settings, alice, external_broker_url):
    from notifications.conf import parse_broker_url


    target = parse_broker_url(external_broker_url)
    relay = Relay(target.host, target.port)
    await relay.start()
    _settings(settings, via(relay, external_broker_url))
    job = await database_sync_to_async(make_job)(alice, progress_total=10)
    worker = Hub(external_broker_url)
    worker.start()
    client = None
    try:
        assert await worker.wait_connected(15)
        client = await _watch(alice, job)
        worker.publish(jobs_live.job(job.pk), await _write(job, status="RUNNING", progress_done=3))
        assert (await client.next_message())["progress"]["done"] == 3

        relay.refuse = True
        relay.cut()
        # Published while the web process is cut off: the broker drops it (no subscriber).
        worker.publish(jobs_live.job(job.pk), await _write(job, status="SUCCESSFUL", progress_done=10))
        await asyncio.sleep(0.5)
        relay.refuse = False

        seen = await _until_final(client)
        assert [(e["status"], e["seq"]) for e in seen][-1] == ("SUCCESSFUL", 2)
    finally:
        if client is not None:
            await client.close()
        await worker.close()
        await hub_module.shutdown()
        await relay.close()


async def test_a_notification_sent_during_an_outage_is_counted_after_reconnect(settings, alice, external_broker_url):
    from notifications.api import notify
    from notifications.conf import parse_broker_url


    target = parse_broker_url(external_broker_url)
    relay = Relay(target.host, target.port)
    await relay.start()
    _settings(settings, via(relay, external_broker_url))
    client = WsStomp(await database_sync_to_async(session_cookie)(alice))
    try:
        assert await client.open()
        await client.connect()
        await client.subscribe(destinations.USER_NOTIFICATIONS, receipt="r")
        assert (await client.next_message())["unread"] == 0
        await client.next_frame()
        relay.refuse = True
        relay.cut()
        process_hub = hub_module.current_hub()
        async with asyncio.timeout(5):
            while process_hub.connected:
                await asyncio.sleep(0.01)
        await database_sync_to_async(notify)(alice, title="While away")
        relay.refuse = False
        messages = [await client.next_message(10)]
        while messages[-1]["type"] != "notifications.sync":
            messages.append(await client.next_message(10))
        sync = messages[-1]
        assert (sync["unread"], [n["title"] for n in sync["notifications"]]) == (1, ["While away"])
    finally:
        await client.close()
        await hub_module.shutdown()
        await relay.close()


async def test_the_all_jobs_list_learns_how_a_job_ended_during_an_outage(settings, embedded_broker):
    from django.contrib.auth.models import Permission

    from .stomp_ws_support import Relay, via

    relay = Relay(embedded_broker.host, embedded_broker.port)
    await relay.start()
    _settings(settings, via(relay, embedded_broker.url))

    def make_staff():
        user = get_user_model().objects.create_user("staff")
        user.user_permissions.add(Permission.objects.get(codename="view_job", content_type__app_label="jobs"))
        return user

    staff = await database_sync_to_async(make_staff)()
    owner = await database_sync_to_async(get_user_model().objects.create_user)("owner")
    job = await database_sync_to_async(make_job)(owner, progress_total=10)
    worker = Hub(embedded_broker.url)
    worker.start()
    client = WsStomp(await database_sync_to_async(session_cookie)(staff))
    try:
        assert await worker.wait_connected(10)
        assert await client.open()
        await client.connect()
        await client.subscribe(jobs_live.JOBS_ALL)
        assert (await client.next_message())["status"] == "READY"  # the list snapshot: active jobs
        worker.publish(jobs_live.JOBS_ALL, await _write(job, status="RUNNING"))
        assert (await client.next_message())["status"] == "RUNNING"

        relay.refuse = True
        relay.cut()
        worker.publish(jobs_live.JOBS_ALL, await _write(job, status="FAILED", error_type="x.Boom", error_message="boom"))
        await asyncio.sleep(0.3)
        relay.refuse = False

        seen = await _until_final(client)
        assert (seen[-1]["id"], seen[-1]["status"], seen[-1]["error"]) == (
            str(job.pk), "FAILED", {"type": "x.Boom", "message": "boom"},
        )
    finally:
        await client.close()
        await worker.close()
        await hub_module.shutdown()
        await relay.close()


async def test_after_a_broker_restart_a_list_shows_how_every_job_it_showed_unfinished_ended_and_the_jobs_of_the_outage(settings):
    # Issue 8, defect 2: J is shown RUNNING, 60 later jobs push it out of any "recently seen"
    # window, the broker dies, J finishes and K runs from start to end while it is down.
    from django.contrib.auth.models import Permission
    from django.utils import timezone

    from notifications.broker import BrokerConfig, BrokerThread

    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0)).start()
    port = broker.port
    _settings(settings, broker.url)

    def users():
        staff = get_user_model().objects.create_user("staff")
        staff.user_permissions.add(Permission.objects.get(codename="view_job", content_type__app_label="jobs"))
        return staff, get_user_model().objects.create_user("owner")

    staff, owner = await database_sync_to_async(users)()
    j = await database_sync_to_async(make_job)(owner, name="J")
    worker = Hub(broker.url, reconnect_min=0.05, reconnect_max=0.3)
    worker.start()
    client = WsStomp(await database_sync_to_async(session_cookie)(staff))
    try:
        assert await worker.wait_connected(10)
        assert await client.open()
        await client.connect()
        await client.subscribe(jobs_live.JOBS_ALL, receipt="r")
        assert (await client.next_message())["name"] == "J"
        assert (await client.next_frame()).command == "RECEIPT"
        worker.publish(jobs_live.JOBS_ALL, await _write(j, status="RUNNING", started_at=timezone.now()))
        assert (await client.next_message())["status"] == "RUNNING"
        short = [await database_sync_to_async(make_job)(owner, name=f"short {n}") for n in range(60)]
        for job in short:
            worker.publish(jobs_live.JOBS_ALL, await _write(job, status="SUCCESSFUL", finished_at=timezone.now()))
        finals = set()
        async with asyncio.timeout(30):
            while len(finals) < 60:
                finals.add((await client.next_message(30))["name"])

        await asyncio.to_thread(broker.stop)
        await _write(j, status="SUCCESSFUL", finished_at=timezone.now())
        k = await database_sync_to_async(make_job)(owner, name="K")
        await _write(k, status="RUNNING", started_at=timezone.now())
        await _write(k, status="SUCCESSFUL", finished_at=timezone.now())
        broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=port, close_timeout=2.0)).start()

        last: dict[str, str] = {}
        async with asyncio.timeout(20):
            while last.get("J") != "SUCCESSFUL" or last.get("K") != "SUCCESSFUL":
                event = await client.next_message(20)
                last[event["name"]] = event["status"]
        assert (last["J"], last["K"]) == ("SUCCESSFUL", "SUCCESSFUL")
        assert not any(name.startswith("short") for name in last)  # already final there: not sent again
    finally:
        await client.close()
        await worker.close()
        await hub_module.shutdown()
        await asyncio.to_thread(broker.stop)


async def test_every_notification_created_during_an_outage_reaches_the_socket_after_it(settings, embedded_broker, alice):
    # Issue 8, defect 4: 40 notifications while the web process is cut off from the broker.
    from notifications.api import notify

    relay = Relay(embedded_broker.host, embedded_broker.port)
    await relay.start()
    _settings(settings, via(relay, embedded_broker.url))
    client = WsStomp(await database_sync_to_async(session_cookie)(alice))
    try:
        assert await client.open()
        await client.connect()
        await client.subscribe(destinations.USER_NOTIFICATIONS, receipt="r")
        assert (await client.next_message())["unread"] == 0
        await client.next_frame()
        relay.refuse = True
        relay.cut()
        process_hub = hub_module.current_hub()
        async with asyncio.timeout(5):
            while process_hub.connected:
                await asyncio.sleep(0.01)

        def forty():
            for n in range(40):
                notify(alice, title=f"While away {n}")

        await database_sync_to_async(forty)()
        relay.refuse = False
        message = await client.next_message(15)
        while message["type"] != "notifications.sync":
            message = await client.next_message(15)
        assert message["unread"] == 40
        assert [n["title"] for n in message["missed"]] == [f"While away {n}" for n in range(40)]
        assert message["more"] is False
    finally:
        await client.close()
        await hub_module.shutdown()
        await relay.close()
