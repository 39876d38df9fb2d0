"""A closed WebSocket leaves nothing behind, and what it used is freed by reference counting.

Many sockets opened and closed must bring the endpoint's module structures (open sockets,
sessions, the timer and flush sets, the hub's subscriptions) back to their size. And a closed
socket's objects must not wait for a full cyclic collection: a reference cycle through the
consumer (its mailbox called it back through a bound method) or through autobahn's protocol (its
``is_closed`` Deferred resolved with the protocol itself) kept every closed connection until the
oldest generation was collected, which under connect/disconnect churn raised daphne's RSS plateau
(bench/ws_churn.py, bench/RESULTS-reliability.md). The checks run with automatic collection off.
"""
from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from bench.ws_churn import PROBE_DIR, probe
from notifications import consumers
from notifications import hub as hub_module
from tests.browser.stack import PYTHON, ROOT
from tests.integration.test_consumer_shutdown import _subscribed_socket, running_daphne, template_db  # noqa: F401

from .stomp_ws_support import WsStomp, make_job, session_cookie


@pytest.fixture
async def live(settings, embedded_broker):
    settings.NOTIFICATIONS = {"BROKER_URL": embedded_broker.url, "HEARTBEAT_MS": 10_000,
                              "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.5}
    yield settings
    await hub_module.shutdown()


def _alice():
    user = get_user_model().objects.create_user("alice")
    return user, make_job(user), session_cookie(user)


async def _subscribe_page(ws: WsStomp, job) -> None:
    """CONNECT, then the notifications and a job's topic, until both receipts (snapshots sent)."""
    assert (await ws.connect()).command == "CONNECTED"
    await ws.subscribe("/user/queue/notifications", "n", receipt="n")
    await ws.subscribe(f"/topic/jobs.{job.pk}", "j", receipt="j")
    receipts = set()
    while receipts != {"n", "j"}:
        receipts.add((await ws.next_control_frame()).get("receipt-id"))


async def _page(cookie: bytes, job, *, disconnect: bool) -> None:
    """A page's socket: CONNECT, the notifications and a job's topic (snapshots and receipts), close."""
    ws = WsStomp(cookie)
    assert await ws.open()
    await _subscribe_page(ws, job)
    if disconnect:
        await ws.send("DISCONNECT", {"receipt": "bye"})
        assert (await ws.next_control_frame()).get("receipt-id") == "bye"
    await ws.close()


def _sizes() -> dict[str, int]:
    hub = hub_module.current_hub()
    return {
        "open": len(consumers._open),
        "by_session": sum(len(group) for group in consumers._by_session.values()),
        "supervised": sum(len(s.consumers) for s in consumers._supervisors.values()),
        "flush_ready": sum(len(f.ready) for f in consumers._flushers.values()),
        "hub_destinations": len(hub.destinations) if hub else 0,
        "hub_listeners": sum(len(s.listeners) for s in hub._subs.values()) if hub else 0,
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
async def test_sockets_opened_and_closed_leave_the_module_structures_as_they_were(live):
    _, job, cookie = await database_sync_to_async(_alice)()
    await _page(cookie, job, disconnect=True)  # the hub and the loop's supervisor exist from here on
    before = _sizes()
    assert before == dict.fromkeys(before, 0)
    for batch in range(4):
        await asyncio.gather(*(_page(cookie, job, disconnect=i % 2 == 0) for i in range(10)))
    assert _sizes() == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_a_closed_socket_is_freed_without_a_cyclic_collection(live):
    _, job, cookie = await database_sync_to_async(_alice)()
    await _page(cookie, job, disconnect=True)  # warm: the hub is connected, settings read
    ws = WsStomp(cookie)
    assert await ws.open()
    [consumer] = list(consumers._open)
    alive = weakref.ref(consumer)
    del consumer
    gc.collect()
    gc.disable()
    try:
        await _subscribe_page(ws, job)
        await ws.close()
        await asyncio.sleep(0)
        assert alive() is None, [type(r).__name__ for r in gc.get_referrers(alive())]
    finally:
        gc.enable()


# ---------------------------------------------------------------------------- under daphne


@pytest.fixture
def probed_daphne(tmp_path, template_db, embedded_broker):  # noqa: F811
    """daphne serving project.asgi:application with bench/ws_churn.py's probe; (process, port, session, probe dir)."""
    (tmp_path / "probe").mkdir()
    command = [PYTHON, str(ROOT / "bench" / "ws_churn.py"), "--serve-daphne"]
    with running_daphne(tmp_path, template_db, embedded_broker.url, command, debug=False,
                        extra_env={PROBE_DIR: str(tmp_path / "probe")}) as (proc, port, session):
        yield proc, port, session, tmp_path / "probe"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_under_daphne_closed_sockets_leave_no_consumer_or_protocol_to_the_cyclic_collector(probed_daphne):
    proc, port, session, probe_dir = probed_daphne
    sockets = 20

    async def churn() -> None:
        for _ in range(sockets):
            ws = await _subscribed_socket(port, session)
            await ws.close()

    asyncio.run(churn())  # the first sockets: the hub connects, caches fill
    time.sleep(1.5)
    probe(proc, probe_dir, garbage=True)  # automatic collection off from here; what was garbage is freed
    asyncio.run(churn())
    time.sleep(2.5)  # daphne reaps finished application instances every second
    answer = probe(proc, probe_dir, garbage=True, cycles=["notifications.consumers.StompConsumer",
                                                          "daphne.ws_protocol.WebSocketProtocol"])
    garbage = answer["garbage"]
    assert answer["structures"]["consumers._open"] == 0
    assert answer["structures"]["daphne.connections"] == 0
    assert answer["structures"]["hub.listeners"] == 0
    # daphne's upgrade leaves each connection's HTTPChannel and WebRequest referring to each other
    # (not ours to fix): each closed socket shows there, which also shows the probe sees them.
    assert garbage.get("twisted.web.http.HTTPChannel") == sockets, garbage
    left = {name: garbage.get(name, 0) for name in ("notifications.consumers.StompConsumer", "notifications.hub.Mailbox",
                                                    "daphne.ws_protocol.WebSocketProtocol")}
    assert left == dict.fromkeys(left, 0), (left, answer["cycles"])
