"""Prometheus collectors for the live layer, read from the stats its parts already keep.

Nothing here counts anything itself: at each scrape the collectors read this process's
publisher (PublisherStats), hub (HubStats), WebSocket consumers (ConsumerStats and the open
sockets), outbox relay (RelayStats) and, where one runs in this process, the embedded broker
(BrokerStats and its queues). A part this process does not have is simply absent from the
output (a scrape never starts a publisher, a hub or a relay). OutboxBacklogCollector is the one
that reads the database (the outbox table: the same from every process). Register them on any
prometheus_client registry:

    registry.register(PublisherCollector()); registry.register(HubCollector()); ...
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["PublisherCollector", "HubCollector", "ConsumerCollector", "OutboxCollector", "OutboxBacklogCollector",
           "BrokerCollector", "live_collectors", "serve_broker_metrics"]

logger = logging.getLogger(__name__)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class PublisherCollector(Collector):
    """notifications_publisher_*: this process's publisher (worker, shell, WSGI; a web process
    uses it only while its hub is away). Absent until the process published something."""

    def collect(self) -> Iterator[Metric]:
        from . import publisher as module

        publisher = getattr(module, "_publisher", None)  # never create one just to be scraped
        if publisher is None or getattr(publisher, "_pid", None) != os.getpid():
            return
        stats = publisher.stats()
        yield _gauge("notifications_publisher_connected", "1 while the publisher has a broker session.",
                     1 if stats.connected else 0)
        yield _gauge("notifications_publisher_buffered", "Messages waiting to be sent (the outage buffer).",
                     stats.pending)
        yield _gauge("notifications_publisher_in_flight", "Messages sent, waiting for the broker's RECEIPT.",
                     stats.in_flight)
        for field, doc in (
            ("published", "publish() calls accepted."),
            ("sent", "SEND frames written, re-sends included."),
            ("acknowledged", "Messages confirmed by a RECEIPT."),
            ("coalesced", "Buffered messages replaced by a newer one with the same key."),
            ("dropped", "Oldest buffered messages dropped because the buffer was full."),
            ("rejected", "publish() calls refused (not serialisable, publisher closed)."),
            ("outages", "Times the broker became unreachable."),
            ("connects", "Successful broker connections."),
        ):
            yield _counter(f"notifications_publisher_{field}", doc, getattr(stats, field))


class HubCollector(Collector):
    """notifications_hub_*: this web process's one broker connection, shared by its WebSockets."""

    def collect(self) -> Iterator[Metric]:
        from .hub import current_hub

        hub = current_hub()
        if hub is None:
            return
        stats = hub.stats
        yield _gauge("notifications_hub_connected", "1 while the hub has its broker session.", 1 if hub.connected else 0)
        yield _counter("notifications_hub_connects", "Broker sessions opened (reconnects = this - 1).", stats.connects)
        yield _counter("notifications_hub_outages", "Broker sessions lost.", stats.outages)
        yield _counter("notifications_hub_messages_received", "Messages received from the broker.", stats.messages_received)
        yield _counter("notifications_hub_deliveries", "Messages handed to WebSocket subscriptions.", stats.deliveries)
        yield _counter("notifications_hub_published", "Messages this hub published for the process.", stats.published)
        yield _counter("notifications_hub_publish_dropped", "Messages the hub's publish buffer dropped.",
                       stats.publish_dropped)
        subscriptions = getattr(hub, "_subs", {})
        yield _gauge("notifications_hub_broker_subscriptions", "Broker subscriptions the hub holds.", len(subscriptions))
        yield _gauge("notifications_websocket_subscriptions", "WebSocket subscriptions relayed by the hub.",
                     sum(len(getattr(s, "listeners", ())) for s in list(subscriptions.values())))


class ConsumerCollector(Collector):
    """notifications_websocket_*: the STOMP-over-WebSocket endpoint of this process."""

    def collect(self) -> Iterator[Metric]:
        from . import consumers

        sockets = getattr(consumers, "_open", None)
        if sockets is not None:
            yield _gauge("notifications_websocket_connections", "Open STOMP WebSockets.", len(list(sockets)))
        stats = getattr(consumers, "stats", None)
        if stats is None:
            return
        yield _counter("notifications_websocket_slow_disconnects",
                       "WebSockets closed because their outbox was full (a client too slow).",
                       getattr(stats, "overflows", 0))
        yield _counter("notifications_websocket_snapshots_truncated", "Snapshots or resyncs cut at their limit.",
                       getattr(stats, "snapshots_truncated", 0))


class OutboxCollector(Collector):
    """notifications_outbox_*: this process's outbox relay (notifications.outbox): durable messages
    it wrote, handed over, saw confirmed, deleted, published again and expired. Absent until the
    process used the outbox."""

    def collect(self) -> Iterator[Metric]:
        from . import outbox

        relay = getattr(outbox, "_relay", None)  # never create one just to be scraped
        if relay is None or getattr(relay, "_pid", None) != os.getpid():
            return
        stats = relay.stats()
        for field, name, doc in (
            ("written", "written", "Outbox rows this process wrote (their transaction committed)."),
            ("handed_off", "published", "Outbox messages handed to the hub or the publisher, retries included."),
            ("confirmed", "confirmed", "Outbox messages whose every SEND a broker RECEIPT confirmed."),
            ("deleted", "deleted", "Outbox rows deleted after their confirmation."),
            ("recovered", "retried", "Overdue outbox rows this process claimed and published again."),
            ("expired", "expired", "Outbox rows deleted unconfirmed past OUTBOX_MAX_AGE."),
        ):
            yield _counter(f"notifications_outbox_{name}", doc, getattr(stats, field))
        yield _gauge("notifications_outbox_unconfirmed",
                     "Outbox messages handed over and not confirmed (dropped ones stay until a relay retries them).",
                     stats.unconfirmed)


class OutboxBacklogCollector(Collector):
    """notifications_outbox_pending, _overdue, _oldest_age_seconds: the outbox table, read at each
    scrape (the same from every process that reads it: the web endpoint's database gauges)."""

    def collect(self) -> Iterator[Metric]:
        from django.db.models import Count, Min, Q
        from django.utils import timezone

        from .models import OutboxMessage

        now = timezone.now()
        row = OutboxMessage.objects.aggregate(
            pending=Count("id"), overdue=Count("id", filter=Q(available_at__lte=now)), oldest=Min("created")
        )
        age = max(0.0, (now - row["oldest"]).total_seconds()) if row["oldest"] is not None else 0.0
        yield _gauge("notifications_outbox_pending", "Outbox rows waiting for their broker confirmation (all processes).",
                     row["pending"])
        yield _gauge("notifications_outbox_overdue",
                     "Outbox rows past their bound, for a worker's relay to publish again.", row["overdue"])
        yield _gauge("notifications_outbox_oldest_age_seconds", "Age of the oldest outbox row (0 with none).", age)


class BrokerCollector(Collector):
    """notifications_broker_*: an embedded broker running in this process. ``source`` returns
    (BrokerStats, {queue name: messages waiting}), e.g. through BrokerThread.call()."""

    def __init__(self, source: Callable[[], tuple[Any, dict[str, int]]]) -> None:
        self.source = source

    @classmethod
    def for_thread(cls, running: Any) -> BrokerCollector:
        """For a notifications.broker.BrokerThread: read on the broker's own loop."""

        def read() -> tuple[Any, dict[str, int]]:
            def snapshot():
                return running.broker.stats(), {name: len(q.messages) for name, q in running.broker.queues.items()}

            return running.call(snapshot)

        return cls(read)

    def collect(self) -> Iterator[Metric]:
        try:
            stats, queues = self.source()
        except Exception:
            logger.exception("Could not read the embedded broker's stats")
            return
        yield _gauge("notifications_broker_connections", "Client connections open now.", stats.connections_current)
        yield _counter("notifications_broker_connections_accepted", "Client connections accepted.", stats.connections_total)
        yield _gauge("notifications_broker_subscriptions", "Subscriptions open now.", stats.subscriptions)
        yield _counter("notifications_broker_messages_in", "Messages received (SEND).", stats.messages_received)
        yield _counter("notifications_broker_messages_out", "Messages delivered (MESSAGE).", stats.messages_delivered)
        yield _counter("notifications_broker_slow_consumers", "Subscribers disconnected for not keeping up.",
                       stats.slow_consumers)
        depth = GaugeMetricFamily("notifications_broker_queue_depth", "Messages waiting in a /queue/ destination.",
                                  labels=["queue"])
        for name, count in sorted(queues.items()):
            depth.add_metric([name], count)
        yield depth


def live_collectors() -> list[Collector]:
    """The collectors every process of the live layer registers (the broker's is separate)."""
    return [PublisherCollector(), HubCollector(), ConsumerCollector(), OutboxCollector()]


# How long a scrape waits for the broker's loop to read its stats.
BROKER_READ_TIMEOUT = 5.0


def serve_broker_metrics(broker: Any, loop: Any, port: int, host: str = "127.0.0.1") -> Any:
    """Serve an embedded broker's metrics (and its process's) at http://host:port/metrics from a
    daemon thread; the stats are read on the broker's own loop. Returns the server (.shutdown()).
    There is no token here: keep it on loopback, or behind a firewall."""
    import asyncio

    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, start_http_server

    def read() -> tuple[Any, dict[str, int]]:
        async def snapshot():
            return broker.stats(), {name: len(q.messages) for name, q in broker.queues.items()}

        return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(BROKER_READ_TIMEOUT)

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(BrokerCollector(read))
    server, _ = start_http_server(port, addr=host, registry=registry)
    logger.info("Broker metrics on http://%s:%d/metrics", host, server.server_port)
    return server
