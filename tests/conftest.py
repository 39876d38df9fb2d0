"""Fixtures shared by every test: real brokers on real sockets, real databases.

External services are optional on a developer's machine (their tests skip with the reason),
and required in CI (REQUIRE_SERVICES=1 turns a skip into a failure).
"""
from __future__ import annotations

import os
import socket

import pytest

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"


def service_missing(reason: str) -> None:
    """Skip locally, fail in CI: a service CI must provide is never silently skipped there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (free at the time of the call)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def rabbitmq_stomp_url() -> str:
    """stomp:// URL of RabbitMQ's STOMP plugin (STOMP_RABBITMQ_URL, default guest on 127.0.0.1:61613)."""
    url = os.environ.get("STOMP_RABBITMQ_URL", "stomp://guest:guest@127.0.0.1:61613")
    from notifications.conf import parse_broker_url

    parsed = parse_broker_url(url)
    if not port_open(parsed.host, parsed.port):
        service_missing(f"RabbitMQ STOMP not reachable at {parsed} (rabbitmq-plugins enable rabbitmq_stomp)")
    return url


def _launched(name: str, tmp_path_factory):
    """Start the broker of launcher module tests.<name> on a free port for the session; yields its URL."""
    import importlib

    launcher = importlib.import_module(f"tests.{name}")
    why = launcher.missing()
    if why is not None:
        service_missing(why)
    port = free_port()
    proc = launcher.start(tmp_path_factory.mktemp(name), port)
    try:
        yield f"stomp://127.0.0.1:{port}"
    finally:
        launcher.stop(proc)


@pytest.fixture(scope="session")
def activemq_stomp_url(tmp_path_factory) -> str:
    """stomp:// URL of an ActiveMQ (Debian's package) this test session starts on a free port."""
    yield from _launched("activemq", tmp_path_factory)


@pytest.fixture(scope="session")
def stompserver_stomp_url(tmp_path_factory) -> str:
    """stomp:// URL of Debian's StompServer (STOMP 1.0) this test session starts on a free port."""
    yield from _launched("stompserver", tmp_path_factory)


@pytest.fixture(scope="session")
def coilmq_stomp_url(tmp_path_factory) -> str:
    """stomp:// URL of a CoilMQ this test session starts on a free port."""
    yield from _launched("coilmq", tmp_path_factory)


def _broker_url(request, name: str) -> str:
    if name == "embedded":
        return request.getfixturevalue("embedded_broker").url
    return request.getfixturevalue(f"{name}_stomp_url")


@pytest.fixture(params=["embedded", "rabbitmq", "activemq"])
def stomp_broker_url(request) -> str:
    """A real STOMP broker URL: each test using it runs on the embedded broker, on RabbitMQ's
    STOMP plugin and on ActiveMQ (the three brokers the product supports unchanged)."""
    return _broker_url(request, request.param)


# Every broker the hub and the publisher are tested on: the three above, plus StompServer (STOMP 1.0:
# no subscription header, no heart-beats) and CoilMQ (a host header check, a heart-beat defect).
EVERY_BROKER = ["embedded", "rabbitmq", "activemq", "stompserver", "coilmq"]


@pytest.fixture(params=EVERY_BROKER)
def every_stomp_broker_url(request) -> str:
    """A plain stomp://127.0.0.1:PORT URL (RabbitMQ's with its login) of each broker in EVERY_BROKER."""
    return _broker_url(request, request.param)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory) -> None:
    """On SQLite, the test database is a file, not shared-cache memory: a worker thread or a
    Channels executor thread then waits on the write lock (busy timeout) instead of failing
    with "database table is locked"."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3":
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("sqlite") / "test.sqlite3")


@pytest.fixture
def embedded_broker():
    """A real embedded STOMP broker on 127.0.0.1, a free port, its own loop in a background thread.

    Yields a notifications.broker.BrokerThread: .host, .port, .url, .broker, .stats(), .call(fn).
    """
    from notifications.broker import BrokerConfig, BrokerThread

    running = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0)).start()
    try:
        yield running
    finally:
        running.stop()
