"""The embedded asyncio STOMP 1.2 broker (no Django): the default broker on one machine.

    broker = Broker(BrokerConfig(host="127.0.0.1", port=0))
    await broker.start(); ...; await broker.close()

or from sync code: ``with BrokerThread(BrokerConfig()) as running: running.url``.
"""
from __future__ import annotations

from .config import BrokerConfig, BrokerStats, QueueOverflow
from .runner import BrokerThread, new_event_loop, parse_size, parse_user, until_signalled
from .server import Broker

__all__ = ["Broker", "BrokerConfig", "BrokerStats", "BrokerThread", "QueueOverflow", "new_event_loop", "parse_size", "parse_user", "until_signalled"]
