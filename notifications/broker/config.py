"""Configuration and statistics values of the embedded broker."""
from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from notifications.codec import Limits

__all__ = ["BrokerConfig", "BrokerStats", "QueueOverflow"]


class QueueOverflow(enum.Enum):
    """What a /queue/ destination does with a new message when it already holds its maximum."""

    REJECT = "reject"
    """The SEND is refused with an ERROR frame naming the full queue; nothing accepted is lost."""
    DROP_OLDEST = "drop-oldest"
    """The oldest waiting message is discarded (counted and logged) to make room."""


@dataclass(frozen=True)
class BrokerConfig:
    """Everything a Broker needs; the defaults suit one machine (loopback, any login)."""

    host: str = "127.0.0.1"
    port: int = 0
    # {login: passcode}; empty accepts any login or none, like RabbitMQ's guest on loopback.
    users: Mapping[str, str] = field(default_factory=dict)
    # SQLite file keeping messages waiting in /queue/ destinations across restarts; None: memory only.
    data_file: str | os.PathLike[str] | None = None
    # TLS: a PEM certificate chain and its private key (None: in the certificate file). With a
    # certificate the broker speaks TLS only, on the same port; its URL is stomp+ssl://.
    certfile: str | os.PathLike[str] | None = None
    keyfile: str | os.PathLike[str] | None = None
    # Accepted CONNECT `host` values; None accepts any.
    virtual_hosts: frozenset[str] | None = None
    limits: Limits = field(default_factory=Limits)
    # Heart-beats, milliseconds: how often the broker can send them, and wants to receive them.
    heartbeat_send_ms: int = 10_000
    heartbeat_receive_ms: int = 10_000
    # A peer silent for this many times its negotiated heart-beat period is disconnected
    # (the specification leaves the margin to the implementation; network jitter needs one).
    heartbeat_tolerance: float = 2.0
    # Messages a /queue/ destination holds for absent or busy consumers, and what happens past it.
    max_queue_messages: int = 100_000
    max_queue_bytes: int = 64 * 1024 * 1024
    queue_overflow: QueueOverflow = QueueOverflow.REJECT
    # Unacknowledged messages per client/client-individual subscription on a queue; a SUBSCRIBE
    # may ask for fewer (or more, up to max_unacked) with a `prefetch-count` header.
    prefetch: int = 1_000
    # Unacknowledged messages a subscription may hold at most (topics included): past it the
    # subscriber gets an ERROR and is disconnected, so a client that never acks cannot grow memory.
    max_unacked: int = 10_000
    # Output per connection: above the high-water mark, producers feeding it are paused; a
    # subscriber that stays above it for slow_consumer_timeout seconds, or whose pending output
    # passes max_output_bytes, gets an ERROR and is disconnected (counted and logged).
    output_high_water: int = 1024 * 1024
    max_output_bytes: int = 16 * 1024 * 1024
    slow_consumer_timeout: float = 10.0
    # Frames (and their body bytes) held by all open transactions of one connection.
    max_transaction_frames: int = 10_000
    max_transaction_bytes: int = 16 * 1024 * 1024
    # Subscriptions per connection.
    max_subscriptions: int = 1_000
    # Client connections at once; past it a new one gets an ERROR and is closed (counted, and
    # logged at most once per log_interval). None: the file-descriptor limit less a reserve
    # for the broker's own files, so the process never runs out of descriptors mid-accept
    # (where the event loop would reset clients without a word).
    max_connections: int | None = None
    # Raise the soft RLIMIT_NOFILE to the hard limit at start (Linux's usual soft limit, 1,024,
    # caps a broker at about a thousand clients while the hard limit allows far more).
    raise_fd_limit: bool = True
    # Seconds between two log lines about the same kind of repeated refusal.
    log_interval: float = 10.0
    # Seconds a new connection has to send its CONNECT frame.
    connect_timeout: float = 10.0
    # Seconds a frame has, from its first byte, to arrive whole: a client trickling a byte now
    # and then passes every heart-beat check, and must not hold its connection forever.
    frame_timeout: float = 30.0
    # Bytes the broker holds for all its clients together: unfinished frames and open
    # transactions (input), messages in /queue/ destinations, waiting or unacknowledged, and
    # output not yet taken by the socket. Past it the broker refuses what would add more: the
    # frame in progress, the SEND to a queue, or the subscriber holding the most unsent output
    # (an ERROR, then the connection closes; counted in stats().memory_refusals and logged).
    # 256 MiB: a quarter of a small (1 GiB) machine.
    max_memory: int = 256 * 1024 * 1024
    # Seconds close() waits for clients to take their last frames before cutting them off.
    close_timeout: float = 5.0
    server_name: str = "notifications-broker/1.0"

    @property
    def requires_login(self) -> bool:
        return bool(self.users)


@dataclass(frozen=True)
class BrokerStats:
    """A snapshot of the broker's counters."""

    connections_total: int
    connections_current: int
    subscriptions: int
    messages_received: int
    messages_delivered: int
    messages_queued: int
    messages_acked: int
    messages_redelivered: int
    queue_overflows: int
    slow_consumers: int
    errors_sent: int
    producer_pauses: int
    connections_refused: int
    """Connections refused at max_connections (or the file-descriptor limit)."""
    memory_used: int
    """Bytes held for clients now: unfinished frames, transactions, queued messages, unsent output."""
    memory_refusals: int
    """Frames, SENDs and subscribers refused because max_memory was reached."""
    frame_timeouts: int
    """Connections closed because a frame did not complete within frame_timeout."""
