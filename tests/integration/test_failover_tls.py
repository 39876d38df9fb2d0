"""Several brokers in BROKER_URL, and TLS, for the hub and the publisher (whose subscriptions are
the worker's wake-ups).

Failover runs on two independent real brokers (two embedded, or embedded then a RabbitMQ vhost),
stopping the one in use: the hub and the publisher move to the other, resubscribe and deliver.
TLS runs against the embedded broker's own TLS listener (certfile/keyfile) with a CA and
certificates made by trustme for this test, the certificate verified by default; a broker asking
for a client certificate is a TLS listener of this test's in front of an embedded broker.
"""
from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time

import pytest

from notifications.broker import BrokerConfig, BrokerThread
from notifications.conf import parse_broker_url
from notifications.hub import Hub
from notifications.publisher import Publisher
from tests.conftest import free_port

pytestmark = [pytest.mark.timeout(90)]


class Recorder:
    def __init__(self):
        self.events = []
        self.reconnects = 0

    def hub_event(self, event) -> None:
        self.events.append(event)

    def hub_reconnected(self) -> None:
        self.reconnects += 1


async def until(predicate, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def wait_until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def embedded() -> BrokerThread:
    return BrokerThread(BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0)).start()


@pytest.fixture
def first_broker():
    broker = embedded()
    yield broker
    broker.stop()


def shown(url: str) -> str:
    """The URL as the clients show it (password masked)."""
    return str(parse_broker_url(url))


@pytest.fixture(params=["embedded", "rabbitmq"])
def second_broker_url(request):
    """The broker taking over: another embedded broker, or RabbitMQ (its own vhost in CI)."""
    if request.param == "rabbitmq":
        yield request.getfixturevalue("rabbitmq_stomp_url")
        return
    broker = embedded()
    yield broker.url
    broker.stop()


# ----------------------------------------------------------------------------- failover


async def test_the_hub_moves_to_the_next_broker_when_the_one_in_use_dies(first_broker, second_broker_url, caplog):
    hub = Hub(f"{first_broker.url},{second_broker_url}", reconnect_min=0.05, reconnect_max=0.3)
    sender = Hub(second_broker_url)
    hub.start()
    sender.start()
    try:
        assert await hub.wait_connected(15) and await sender.wait_connected(15)
        listener = Recorder()
        await hub.subscribe("/topic/test.failover.hub", listener)
        assert str(hub.url) == first_broker.url
        first_broker.stop()  # the broker in use goes away
        await until(lambda: hub.connected and str(hub.url) == shown(second_broker_url) and listener.reconnects == 1)
        sender.publish("/topic/test.failover.hub", {"after": "failover"})
        await until(lambda: listener.events)
    finally:
        await hub.close()
        await sender.close()
    assert [e.data for e in listener.events] == [{"after": "failover"}]
    assert (hub.stats.connects, hub.stats.outages) == (2, 1)
    assert f"STOMP hub lost the broker {first_broker.url} (" in caplog.text and f"trying {shown(second_broker_url)}" in caplog.text


async def test_the_hub_connects_to_the_first_broker_that_answers(embedded_broker, caplog):
    nobody = f"stomp://127.0.0.1:{free_port()}"
    hub = Hub(f"{nobody},{embedded_broker.url}", reconnect_min=0.05, reconnect_max=0.3)
    hub.start()
    try:
        assert await hub.wait_connected(15)
        listener = Recorder()
        await hub.subscribe("/topic/test.failover.first", listener)
        hub.publish("/topic/test.failover.first", {"n": 1})
        await until(lambda: listener.events)
    finally:
        await hub.close()
    assert (str(hub.url), hub.stats.outages) == (embedded_broker.url, 0)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_the_publisher_and_its_subscriptions_move_to_the_next_broker_when_the_one_in_use_dies(
    first_broker, second_broker_url, caplog
):
    caplog.set_level(logging.INFO, logger="notifications.publisher")
    p = Publisher(f"{first_broker.url},{second_broker_url}", reconnect_min=0.05, reconnect_max=0.3)
    got: list[dict] = []
    arrived = threading.Condition()

    def on_message(headers: dict, body: bytes) -> None:  # as the worker's wake-ups
        with arrived:
            got.append(json.loads(body))
            arrived.notify_all()

    try:
        p.subscribe("/topic/test.failover.pub", on_message)
        p.publish("/topic/test.failover.pub", {"n": 1})
        assert p.flush(15) is True
        assert wait_until(lambda: got == [{"n": 1}])
        first_broker.stop()
        assert wait_until(lambda: p.stats().connects == 2 and str(p.url) == shown(second_broker_url))
        p.publish("/topic/test.failover.pub", {"n": 2})
        assert p.flush(15) is True
        assert wait_until(lambda: got[-1:] == [{"n": 2}])
    finally:
        p.close()
    assert got == [{"n": 1}, {"n": 2}]
    assert f"STOMP broker {shown(second_broker_url)} in use instead of {first_broker.url} after" in caplog.text


def test_the_publisher_connects_to_the_first_broker_that_answers(embedded_broker, caplog):
    nobody = f"stomp://127.0.0.1:{free_port()}"
    p = Publisher(f"failover:({nobody},{embedded_broker.url})", reconnect_min=0.05, reconnect_max=0.3)
    try:
        p.publish("/topic/test.failover.first", {"n": 1})
        assert p.flush(15) is True
    finally:
        p.close()
    assert (str(p.url), p.stats().outages) == (embedded_broker.url, 0)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# ----------------------------------------------------------------------------- TLS


class TlsFront:
    """A TLS listener on 127.0.0.1 relaying to a plain broker, on its own event loop thread."""

    def __init__(self, target_port: int, context: ssl.SSLContext):
        self.target_port = target_port
        self.context = context
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> TlsFront:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def stop(self) -> None:
        async def close():
            self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture(scope="module")
def ca():
    trustme = pytest.importorskip("trustme", reason="trustme is in requirements-dev.txt")
    return trustme.CA()


@pytest.fixture
def tls_paths(ca, tmp_path):
    """The CA's certificate, and a client certificate (with its key) the CA signed."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    client = ca.issue_cert("worker@example.test")
    client_file = tmp_path / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(client_file)
    return {"ca": str(ca_file), "client": str(client_file)}


def server_context(ca, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


@pytest.fixture
def tls_front(ca, embedded_broker):
    """A TLS listener that asks for a client certificate signed by the CA, in front of a broker."""
    front = TlsFront(embedded_broker.port, server_context(ca, require_client_cert=True)).start()
    yield front
    front.stop()


@pytest.fixture
def tls_broker(ca, tmp_path):
    """The embedded broker listening with TLS, its certificate (for 127.0.0.1) signed by the CA."""
    cert = tmp_path / "broker.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(cert)
    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0, certfile=str(cert))).start()
    yield broker
    broker.stop()


async def test_the_hub_connects_with_tls_verifying_the_brokers_certificate(tls_broker, tls_paths, caplog):
    caplog.set_level(logging.INFO, logger="notifications.hub")
    hub = Hub(f"stomp+ssl://127.0.0.1:{tls_broker.port}?ca_file={tls_paths['ca']}")
    hub.start()
    try:
        assert await hub.wait_connected(15)
        listener = Recorder()
        await hub.subscribe("/topic/test.tls", listener)
        hub.publish("/topic/test.tls", {"over": "tls"})
        await until(lambda: listener.events)
    finally:
        await hub.close()
    assert listener.events[0].data == {"over": "tls"}
    assert ", TLS TLSv1." in next(r.getMessage() for r in caplog.records if "STOMP hub connected to" in r.getMessage())


def test_the_publisher_connects_with_tls_verifying_the_brokers_certificate(tls_broker, tls_paths):
    p = Publisher(f"stomps://127.0.0.1:{tls_broker.port}?ca_file={tls_paths['ca']}", reconnect_min=0.05, reconnect_max=0.3)
    got = []
    try:
        p.subscribe("/topic/test.tls.pub", lambda headers, body: got.append(body))
        p.publish("/topic/test.tls.pub", {"over": "tls"})
        assert p.flush(15) is True
        assert wait_until(lambda: got)
    finally:
        p.close()
    assert (got, p.stats().connects) == ([b'{"over":"tls"}'], 1)


async def test_the_hub_refuses_an_untrusted_certificate_with_a_clear_error(tls_broker, caplog):
    hub = Hub(f"stomp+ssl://127.0.0.1:{tls_broker.port}", reconnect_min=0.05, reconnect_max=0.3)
    hub.start()
    try:
        assert await hub.wait_connected(1.5) is False
    finally:
        await hub.close()
    assert hub.stats.connects == 0
    assert (
        f"TLS certificate of 127.0.0.1:{tls_broker.port} not trusted: unable to get local issuer certificate "
        "(pass the CA that signed it with ?ca_file=/path/ca.pem)"
    ) in caplog.text


def test_the_publisher_refuses_an_untrusted_certificate_with_a_clear_error(tls_broker, caplog):
    p = Publisher(f"stomp+ssl://127.0.0.1:{tls_broker.port}", reconnect_min=0.05, reconnect_max=0.3)
    try:
        p.publish("/topic/test.tls.untrusted", {"n": 1})
        assert p.flush(1.5) is False
    finally:
        p.close()
    assert p.stats().connects == 0
    assert (
        f"unreachable (TLS certificate of 127.0.0.1:{tls_broker.port} not trusted: unable to get local issuer certificate "
        "(pass the CA that signed it with ?ca_file=/path/ca.pem))"
    ) in caplog.text


async def test_a_broker_that_asks_for_a_client_certificate_gets_the_one_in_the_url(tls_front, tls_paths):
    base = f"stomp+ssl://127.0.0.1:{tls_front.port}?ca_file={tls_paths['ca']}"
    without = Hub(base, reconnect_min=0.05, reconnect_max=0.3)
    with_cert = Hub(f"{base}&cert_file={tls_paths['client']}")
    without.start()
    with_cert.start()
    try:
        assert await with_cert.wait_connected(15)
        assert await without.wait_connected(1) is False
    finally:
        await without.close()
        await with_cert.close()


def test_a_missing_ca_file_is_named_in_the_error(tls_broker, tmp_path, caplog):
    p = Publisher(f"stomp+ssl://127.0.0.1:{tls_broker.port}?ca_file={tmp_path / 'nope.pem'}", reconnect_min=0.05, reconnect_max=0.3)
    try:
        p.publish("/topic/test.tls.noca", {"n": 1})
        assert p.flush(1) is False
    finally:
        p.close()
    assert f"cannot load ca_file '{tmp_path / 'nope.pem'}': No such file or directory" in caplog.text
