"""The embedded STOMP 1.0/1.1/1.2 broker: asyncio Protocol connections, topics, queues, acks.

Design for throughput in pure Python:

* each connection is an ``asyncio.Protocol``: ``data_received`` parses every frame of a read
  and handles them all before yielding to the loop;
* frames for a peer are collected in a list during that turn and written with one
  ``transport.write`` at its end (``Broker.flush``), so fan-out costs one syscall per subscriber
  per read, not one per message;
* a MESSAGE is encoded once per destination: the header block without the per-subscriber
  lines and the body part are built once, then joined with each subscriber's
  ``subscription:``/``ack:`` lines.

Backpressure policy: a connection whose unsent output passes ``output_high_water`` pauses the
producers that feed it (they stop being read) until it drains; if it stays above the mark for
``slow_consumer_timeout`` seconds, or its output passes ``max_output_bytes``, it gets an ERROR
("slow consumer") and is disconnected, counted in ``stats().slow_consumers`` and logged.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import logging
import os
import secrets
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable

from notifications.codec import (
    HEARTBEAT,
    FRAME_END,
    HEARTBEAT_BYTES,
    Frame,
    FrameParser,
    RemoteProtocolError,
    encode_frame,
    escape,
    negotiate_heartbeat,
    negotiate_version,
    parse_heartbeat,
)

from .config import BrokerConfig, BrokerStats, QueueOverflow
from .store import QueueStore

__all__ = ["Broker"]

logger = logging.getLogger(__name__)

TOPIC_PREFIX = "/topic/"
QUEUE_PREFIX = "/queue/"

# Headers the broker sets itself on MESSAGE frames, or that only mean something on the SEND.
_RESERVED = frozenset(
    {"destination", "message-id", "subscription", "ack", "redelivered", "content-length", "transaction", "receipt"}
)
_AUTO, _CLIENT, _INDIVIDUAL = 0, 1, 2
# A heart-beat goes out once the connection was silent for this share of the agreed interval.
HEARTBEAT_EARLY = 0.9
_ACK_MODES = {"auto": _AUTO, "client": _CLIENT, "client-individual": _INDIVIDUAL}


class BrokerError(Exception):
    """A client frame the broker refuses: becomes an ERROR frame, then the connection closes."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


class QueuedMessage:
    """A message held by a /queue/ destination (or delivered and waiting for its ACK)."""

    __slots__ = ("id", "destination", "headers", "body", "redelivered", "_common", "_common10", "_tail")

    def __init__(
        self, msg_id: str, destination: str, headers: tuple[tuple[str, str], ...], body: bytes, redelivered: bool = False
    ) -> None:
        self.id = msg_id
        self.destination = destination
        self.headers = headers
        self.body = body
        self.redelivered = redelivered
        self._common: bytes | None = None
        self._common10: bytes | None = None
        self._tail: bytes | None = None

    def parts(self, escaped: bool) -> tuple[bytes, bytes]:
        if escaped:
            if self._common is None:
                self._common = _common_block(self.destination, self.id, self.headers, len(self.body), True)
            common = self._common
        else:
            if self._common10 is None:
                self._common10 = _common_block(self.destination, self.id, self.headers, len(self.body), False)
            common = self._common10
        if self._tail is None:
            self._tail = b"\n" + self.body + FRAME_END
        return common, self._tail


def _user_headers(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple(h for h in headers if h[0] not in _RESERVED)


def _common_block(
    destination: str, msg_id: str, headers: tuple[tuple[str, str], ...], length: int, escaped: bool
) -> bytes:
    """MESSAGE header lines shared by every subscriber (all but subscription, ack, redelivered)."""
    if escaped:
        lines = [f"MESSAGE\ndestination:{escape(destination)}\nmessage-id:{msg_id}\n"]
        for name, value in headers:
            lines.append(f"{escape(name)}:{escape(value)}\n")
    else:
        # STOMP 1.0 cannot carry line breaks in headers: they become spaces for such peers.
        lines = [f"MESSAGE\ndestination:{_one_line(destination)}\nmessage-id:{msg_id}\n"]
        for name, value in headers:
            lines.append(f"{_one_line(name).replace(':', '_')}:{_one_line(value)}\n")
    lines.append(f"content-length:{length}\n")
    return "".join(lines).encode("utf-8")


class Subscription:
    __slots__ = ("conn", "id", "num", "destination", "ack_mode", "prefetch", "line", "pending", "queue", "topic")

    def __init__(self, conn: Connection, sub_id: str, num: int, destination: str, ack_mode: int, prefetch: int) -> None:
        self.conn = conn
        self.id = sub_id
        self.num = num
        self.destination = destination
        self.ack_mode = ack_mode
        self.prefetch = prefetch
        sub = escape(sub_id) if conn.escaped else _one_line(sub_id)
        self.line = f"subscription:{sub}\n".encode("utf-8")
        # ack id -> QueuedMessage (queues) or None (topics), in delivery order.
        self.pending: dict[str, QueuedMessage | None] | None = {} if ack_mode != _AUTO else None
        self.queue: Queue | None = None
        self.topic: dict[Subscription, None] | None = None

    def can_take(self) -> bool:
        conn = self.conn
        if conn.write_paused or conn.closing:
            return False
        return self.pending is None or len(self.pending) < self.prefetch


class Queue:
    __slots__ = ("name", "messages", "consumers", "rr", "size")

    def __init__(self, name: str) -> None:
        self.name = name
        self.size = 0  # body bytes of the waiting messages
        self.messages: deque[QueuedMessage] = deque()
        self.consumers: list[Subscription] = []
        self.rr = 0

    def pick(self) -> Subscription | None:
        consumers = self.consumers
        n = len(consumers)
        if not n:
            return None
        start = self.rr
        for i in range(n):
            idx = (start + i) % n
            sub = consumers[idx]
            if sub.can_take():
                self.rr = idx + 1
                return sub
        return None


class Connection(asyncio.Protocol):
    """One client: parses its frames, keeps its subscriptions, transactions and output."""

    __slots__ = (
        "broker", "transport", "parser", "version", "escaped", "session", "connected", "closing",
        "subs", "subs_by_num", "sub_counter", "transactions", "out", "last_read", "last_write", "hb_in", "hb_out",
        "hb_in_handle", "hb_out_handle", "write_paused", "slow_handle", "waiters", "blocked_by",
        "reading_paused", "login", "peer", "close_handle", "held", "in_bytes", "out_bytes", "partial_since",
        "frame_handle",
    )

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.parser = FrameParser(broker.config.limits)
        self.version = "1.2"
        self.escaped = True
        self.session = ""
        self.connected = False
        self.closing = False
        self.subs: dict[str, Subscription] = {}
        self.subs_by_num: dict[int, Subscription] = {}
        self.sub_counter = 0
        self.transactions: dict[str, list[Frame]] | None = None
        self.held = (0, 0)  # frames and body bytes held by open transactions
        self.out: list[bytes] = []
        self.last_read = 0.0  # loop time of the last bytes read
        self.last_write = 0.0  # loop time of the last bytes handed to the socket
        self.hb_in = 0.0
        self.hb_out = 0.0
        self.hb_in_handle: asyncio.TimerHandle | None = None
        self.hb_out_handle: asyncio.TimerHandle | None = None
        self.write_paused = False
        self.slow_handle: asyncio.TimerHandle | None = None
        self.waiters: set[Connection] | None = None  # producers paused because of us
        self.blocked_by: set[Connection] | None = None  # consumers we are paused for
        self.reading_paused = False
        self.login: str | None = None
        self.peer = ""
        self.close_handle: asyncio.TimerHandle | None = None
        # What this connection counts in the broker's memory budget: its unfinished frame, and
        # its unsent output as of the last write (refreshed when the budget is checked).
        self.in_bytes = 0
        self.out_bytes = 0
        self.partial_since: float | None = None  # loop time the unfinished frame started
        self.frame_handle: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        broker = self.broker
        transport.set_write_buffer_limits(high=broker.config.output_high_water)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                # Frames are written whole, once per loop turn: Nagle would only add latency.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if broker.closing:
            transport.abort()
            return
        if len(broker.connections) >= broker.max_connections:
            broker.refuse_connection(self)
            return
        broker.connections.add(self)
        broker.n_connections_total += 1
        # A client that never sends CONNECT is cut off like a silent one.
        self.hb_in_handle = broker.loop.call_later(broker.config.connect_timeout, self._connect_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        broker = self.broker
        self.last_read = now = broker.loop.time()
        parser = self.parser
        error: str | None = None
        try:
            parser.receive_data(data)
        except RemoteProtocolError as exc:
            # The text only: the exception's traceback would tie this frame (and ``data``) to
            # itself in a cycle, keeping MiBs alive until a cyclic collection.
            error = exc.error_message
        events = parser.events_received()
        buffered = parser.buffered
        grown = buffered - self.in_bytes
        if grown:
            self.in_bytes = buffered
            broker.input_bytes += grown
        if buffered:
            if events or self.partial_since is None:
                self.partial_since = now  # a new frame began in this read
            if self.frame_handle is None:
                self.frame_handle = broker.loop.call_at(now + broker.config.frame_timeout, self._frame_timeout)
        else:
            self.partial_since = None
        broker.sender = self
        try:
            for event in events:
                if event is HEARTBEAT:
                    continue
                self.handle(event)
                if self.closing:
                    break
            if error is not None and not self.closing:
                self.fail(error)
            elif grown > 0 and not self.closing and broker.over_budget():
                broker.refused_for_memory(self, f"an unfinished frame of {buffered} bytes")
                self.fail(
                    "Memory limit reached: frame refused",
                    f"The broker holds as much for its clients as it may ({broker.config.max_memory} bytes):"
                    f" this frame, {buffered} bytes so far, was refused.",
                )
            elif self.blocked_by and not self.reading_paused and not self.closing:
                self.reading_paused = True
                broker.n_producer_pauses += 1
                self.transport.pause_reading()
        except Exception:
            logger.exception("Internal error on connection %s", self.peer)
            if not self.closing:
                self.fail("Internal error")
        finally:
            broker.sender = None
            broker.flush(first=self)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.close_handle is not None:
            self.close_handle.cancel()
            self.close_handle = None
        broker = self.broker
        try:
            self._cleanup()
            if self.out_bytes:
                self.note_output(0)
        finally:
            broker.connections.discard(self)
            broker.flush()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.slow_handle is None and not self.closing:
            self.slow_handle = self.broker.loop.call_later(
                self.broker.config.slow_consumer_timeout, self._slow_consumer_timeout
            )

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.slow_handle is not None:
            self.slow_handle.cancel()
            self.slow_handle = None
        self._release_waiters()
        if not self.closing:
            for sub in self.subs.values():
                if sub.queue is not None:
                    self.broker.dispatch(sub.queue)
        self.broker.flush()

    # --- output ---------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        out = self.out
        if not out:
            self.broker.dirty.append(self)
        out.append(data)

    def send_frame(self, frame: Frame) -> None:
        self.send(encode_frame(frame, self.version, eol=True))

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        self.out = []
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        broker = self.broker
        self.last_write = broker.loop.time()
        unsent = transport.get_write_buffer_size()
        if unsent != self.out_bytes:
            self.note_output(unsent)
        if unsent > broker.config.max_output_bytes and not self.closing:
            self.slow_consumer(f"its unsent output passed {broker.config.max_output_bytes} bytes")
            self.flush()

    def note_output(self, unsent: int) -> None:
        """Record ``unsent`` bytes waiting in the socket's buffer, in the broker's memory count."""
        broker = self.broker
        broker.output_bytes += unsent - self.out_bytes
        self.out_bytes = unsent
        if unsent:
            broker.output_holders.add(self)
        else:
            broker.output_holders.discard(self)

    def _slow_consumer_timeout(self) -> None:
        self.slow_handle = None
        if self.write_paused and not self.closing:
            self.slow_consumer(
                f"it read nothing for {self.broker.config.slow_consumer_timeout:g} s while messages waited"
            )
            self.broker.flush()

    def slow_consumer(self, why: str) -> None:
        self.broker.n_slow_consumers += 1
        logger.warning("Slow consumer %s (session %s) disconnected: %s", self.peer, self.session, why)
        self.fail("Slow consumer: disconnected", f"The broker disconnected this client because {why}.")

    def _release_waiters(self) -> None:
        waiters = self.waiters
        if not waiters:
            return
        self.waiters = None
        for producer in waiters:
            blocked = producer.blocked_by
            if blocked is not None:
                blocked.discard(self)
                if not blocked and producer.reading_paused and not producer.closing:
                    producer.reading_paused = False
                    producer.last_read = self.broker.loop.time()  # its silence while paused was our doing
                    producer.transport.resume_reading()

    # --- closing --------------------------------------------------------------------------

    def fail(self, message: str, details: str = "", receipt: str | None = None) -> None:
        """Send an ERROR frame, then close: the STOMP way to end a connection that went wrong."""
        if self.closing:
            return
        self.broker.n_errors_sent += 1
        logger.info("ERROR to %s (session %s): %s", self.peer, self.session or "-", message)
        headers = [("message", _one_line(message)), ("content-type", "text/plain")]
        if receipt is not None:
            headers.append(("receipt-id", receipt))
        body = (details or message).encode("utf-8")
        headers.append(("content-length", str(len(body))))
        self.send(encode_frame(Frame("ERROR", tuple(headers), body), self.version, eol=True))
        self.close()

    def close(self) -> None:
        """Stop reading, release everything, write what is pending, then close the socket."""
        if self.closing:
            return
        self.closing = True
        self._cleanup()
        transport = self.transport
        if transport is not None:
            self.flush()
            if transport.can_write_eof():
                # Lingering close: send FIN once the ERROR or RECEIPT is out, and keep reading
                # (and discarding) until the peer closes. Closing with unread input would send a
                # reset, and a reset can destroy the ERROR frame before the peer reads it.
                transport.write_eof()
            else:
                transport.close()
            # A peer that never reads, or never closes, is cut off after close_timeout.
            self.close_handle = self.broker.loop.call_later(self.broker.config.close_timeout, transport.abort)

    def _cleanup(self) -> None:
        broker = self.broker
        for handle in (self.hb_in_handle, self.hb_out_handle, self.slow_handle, self.frame_handle):
            if handle is not None:
                handle.cancel()
        self.hb_in_handle = self.hb_out_handle = self.slow_handle = self.frame_handle = None
        # Nothing more is read: an unfinished frame and open transactions are dropped now, not
        # when the lingering close ends.
        if self.in_bytes or self.parser.buffered:
            self.parser = FrameParser(broker.config.limits, self.version)
            broker.input_bytes -= self.in_bytes
            self.in_bytes = 0
        self.partial_since = None
        self.transactions = None
        if self.held[1]:
            broker.input_bytes -= self.held[1]
        self.held = (0, 0)
        for sub in list(self.subs.values()):
            broker.unsubscribe(sub)
        self.subs.clear()
        self.subs_by_num.clear()
        self._release_waiters()
        if self.blocked_by:
            for consumer in self.blocked_by:
                if consumer.waiters is not None:
                    consumer.waiters.discard(self)
            self.blocked_by = None

    # --- heart-beats ----------------------------------------------------------------------

    def _connect_timeout(self) -> None:
        self.hb_in_handle = None
        if not self.connected and not self.closing:
            logger.info("Disconnecting %s: no CONNECT frame in %g s", self.peer, self.broker.config.connect_timeout)
            self.fail("Timeout: no CONNECT frame received")
            self.broker.flush()

    # Both heart-beat timers are lazy: one timer per direction, re-armed only when it fires, for
    # the moment the silence would reach its bound counted from the last byte read or written
    # (a flag checked once per period would let the silence reach twice the period).

    def _frame_timeout(self) -> None:
        self.frame_handle = None
        if self.closing or self.partial_since is None:
            return
        loop = self.broker.loop
        now = loop.time()
        if self.reading_paused:
            self.partial_since = now  # the rest of the frame waits for us, not for the client
        timeout = self.broker.config.frame_timeout
        if now - self.partial_since < timeout:
            self.frame_handle = loop.call_at(self.partial_since + timeout, self._frame_timeout)
            return
        self.broker.n_frame_timeouts += 1
        logger.warning(
            "Disconnecting %s (session %s): a frame did not complete in %g s (%d bytes of it arrived)",
            self.peer, self.session or "-", timeout, self.parser.buffered,
        )
        self.fail(f"Timeout: frame not completed in {timeout:g} s")
        self.broker.flush()

    def _check_incoming(self) -> None:
        self.hb_in_handle = None
        if self.closing:
            return
        loop = self.broker.loop
        now = loop.time()
        if self.reading_paused:
            self.last_read = now  # its silence while paused is our doing
        if now - self.last_read >= self.hb_in:
            logger.info(
                "Disconnecting %s (session %s): silent for %.1f s", self.peer, self.session, now - self.last_read
            )
            self.fail("Heart-beat timeout: nothing received from the client in time")
            self.broker.flush()
            return
        self.hb_in_handle = loop.call_at(self.last_read + self.hb_in, self._check_incoming)

    def _send_heartbeat(self) -> None:
        self.hb_out_handle = None
        if self.closing:
            return
        loop = self.broker.loop
        now = loop.time()
        due = self.last_write + self.hb_out
        if now >= due and self.transport is not None:
            self.transport.write(HEARTBEAT_BYTES)
            self.last_write = now
            due = now + self.hb_out
        self.hb_out_handle = loop.call_at(due, self._send_heartbeat)

    # --- frames ---------------------------------------------------------------------------

    def handle(self, frame: Frame) -> None:
        command = frame.command
        handler = _HANDLERS.get(command)
        if handler is None:
            self.fail(f"Unknown command {command!r}", receipt=frame.get("receipt"))
            return
        if not self.connected and command not in ("CONNECT", "STOMP"):
            self.fail(f"Not connected: the first frame must be CONNECT or STOMP, not {command}")
            return
        try:
            handler(self, frame)
        except BrokerError as exc:
            self.fail(exc.message, exc.details, receipt=frame.get("receipt"))
            return
        if command != "CONNECT" and command != "STOMP":
            receipt = frame.get("receipt")
            if receipt is not None and not self.closing:
                # The RECEIPT's bytes directly: it is one per frame for a producer asking for
                # them, and the generic encoder (a Frame, a header loop) is most of its cost.
                value = escape(receipt) if self.escaped else receipt
                self.send(b"RECEIPT\nreceipt-id:" + value.encode() + b"\n\n" + FRAME_END)
        if command == "DISCONNECT":
            self.close()

    def on_connect(self, frame: Frame) -> None:
        if self.connected:
            raise BrokerError("Already connected: a second CONNECT on the same connection")
        broker = self.broker
        config = broker.config
        headers = frame.header_dict()
        version = negotiate_version(headers.get("accept-version"))
        if version is None:
            self.send_frame(Frame("ERROR", (("version", "1.0,1.1,1.2"), ("content-type", "text/plain"),
                                            ("message", "Supported protocol versions are 1.0, 1.1 and 1.2"))))
            self.close()
            return
        self._set_version(version)
        host = headers.get("host")
        if config.virtual_hosts is not None and host not in config.virtual_hosts:
            raise BrokerError(f"Unknown virtual host {host!r}")
        login = headers.get("login")
        if config.users:
            expected = config.users.get(login or "")
            given = headers.get("passcode") or ""
            if expected is None or not hmac.compare_digest(expected.encode(), given.encode()):
                logger.warning("Refused login %r from %s", login, self.peer)
                raise BrokerError("Access refused: wrong login or passcode")
        self.login = login
        try:
            client_hb = parse_heartbeat(headers.get("heart-beat", "0,0"))
        except ValueError as exc:
            raise BrokerError(str(exc)) from None
        sx, sy = config.heartbeat_send_ms, config.heartbeat_receive_ms
        send_ms, expect_ms = negotiate_heartbeat((sx, sy), client_hb)
        self.connected = True
        self.session = broker.new_session_id()
        self.send_frame(
            Frame(
                "CONNECTED",
                (("version", version), ("session", self.session), ("server", config.server_name),
                 ("heart-beat", f"{sx},{sy}")),
            )
        )
        loop = broker.loop
        if self.hb_in_handle is not None:
            self.hb_in_handle.cancel()
            self.hb_in_handle = None
        now = loop.time()
        self.hb_in = expect_ms / 1000.0 * config.heartbeat_tolerance
        if self.hb_in:
            self.last_read = now
            self.hb_in_handle = loop.call_at(now + self.hb_in, self._check_incoming)
        # STOMP: the sender MUST send something at least every agreed interval. Beat a little
        # before it (HEARTBEAT_EARLY), since a timer on a busy loop fires late, never early.
        self.hb_out = send_ms / 1000.0 * HEARTBEAT_EARLY
        if self.hb_out:
            self.last_write = now
            self.hb_out_handle = loop.call_at(now + self.hb_out, self._send_heartbeat)

    def _set_version(self, version: str) -> None:
        self.version = version
        self.escaped = version != "1.0"
        self.parser.version = version

    def on_send(self, frame: Frame, in_transaction: bool = False) -> None:
        headers = frame.headers
        destination = None
        tx = None
        for name, value in headers:
            if name == "destination":
                if destination is None:
                    destination = value
            elif name == "transaction":
                if tx is None:
                    tx = value
        if not destination:
            raise BrokerError("SEND without a destination header")
        if tx is not None and not in_transaction:
            self._hold(tx, frame)
            return
        self.broker.publish(destination, headers, frame.body)

    def on_subscribe(self, frame: Frame) -> None:
        headers = frame.header_dict()
        destination = headers.get("destination")
        if not destination:
            raise BrokerError("SUBSCRIBE without a destination header")
        sub_id = headers.get("id")
        if sub_id is None:
            if self.version != "1.0":
                raise BrokerError("SUBSCRIBE without an id header")
            sub_id = destination
        if sub_id in self.subs:
            raise BrokerError(f"Subscription id {sub_id!r} is already in use on this connection")
        if len(self.subs) >= self.broker.config.max_subscriptions:
            raise BrokerError(f"Too many subscriptions: at most {self.broker.config.max_subscriptions} per connection")
        mode = _ACK_MODES.get(headers.get("ack", "auto"))
        if mode is None:
            raise BrokerError(f"Invalid ack mode {headers.get('ack')!r}: use auto, client or client-individual")
        config = self.broker.config
        prefetch = min(config.prefetch, config.max_unacked)
        asked = headers.get("prefetch-count")
        if asked is not None:
            if not asked.isdigit() or int(asked) < 1:
                raise BrokerError(f"Invalid prefetch-count {asked!r}: expected a positive number")
            prefetch = min(int(asked), config.max_unacked)
        self.broker.check_destination(destination)
        self.sub_counter += 1
        sub = Subscription(self, sub_id, self.sub_counter, destination, mode, prefetch)
        self.subs[sub_id] = sub
        self.subs_by_num[sub.num] = sub
        self.broker.subscribe(sub)

    def on_unsubscribe(self, frame: Frame) -> None:
        sub_id = frame.get("id")
        if sub_id is None and self.version == "1.0":
            sub_id = frame.get("destination")
        if sub_id is None:
            raise BrokerError("UNSUBSCRIBE without an id header")
        sub = self.subs.pop(sub_id, None)
        if sub is None:
            raise BrokerError(f"No subscription with id {sub_id!r} on this connection")
        del self.subs_by_num[sub.num]
        self.broker.unsubscribe(sub)

    def _find_ack(self, frame: Frame) -> tuple[Subscription, str]:
        if self.version == "1.2":
            ack_id = frame.get("id")
            if ack_id is None:
                raise BrokerError(f"{frame.command} without an id header")
        else:
            msg_id = frame.get("message-id")
            if msg_id is None:
                raise BrokerError(f"{frame.command} without a message-id header")
            sub_id = frame.get("subscription")
            candidates = (
                [self.subs[sub_id]] if sub_id is not None and sub_id in self.subs else list(self.subs.values())
            )
            for sub in candidates:
                key = f"{sub.num}/{msg_id}"
                if sub.pending is not None and key in sub.pending:
                    return sub, key
            raise BrokerError(f"{frame.command} for an unknown message: message-id {msg_id!r}")
        num, _, _ = ack_id.partition("/")
        sub = self.subs_by_num.get(int(num)) if num.isdigit() else None
        if sub is None or sub.pending is None or ack_id not in sub.pending:
            raise BrokerError(f"{frame.command} for an unknown message: id {ack_id!r}")
        return sub, ack_id

    def on_ack(self, frame: Frame, in_transaction: bool = False) -> None:
        tx = frame.get("transaction")
        sub, ack_id = self._find_ack(frame)
        if tx is not None and not in_transaction:
            self._hold(tx, frame)
            return
        self.broker.settle(sub, ack_id, requeue=False)

    def on_nack(self, frame: Frame, in_transaction: bool = False) -> None:
        tx = frame.get("transaction")
        sub, ack_id = self._find_ack(frame)
        if tx is not None and not in_transaction:
            self._hold(tx, frame)
            return
        self.broker.settle(sub, ack_id, requeue=True)

    def _hold(self, tx: str, frame: Frame) -> None:
        transactions = self.transactions
        if transactions is None or tx not in transactions:
            raise BrokerError(f"Unknown transaction {tx!r}")
        config = self.broker.config
        frames, size = self.held
        if frames >= config.max_transaction_frames or size + len(frame.body) > config.max_transaction_bytes:
            raise BrokerError(
                f"Open transactions hold more than {config.max_transaction_frames} frames"
                f" or {config.max_transaction_bytes} bytes"
            )
        broker = self.broker
        if broker.over_budget(len(frame.body)):
            broker.refused_for_memory(self, f"a {frame.command} of {len(frame.body)} bytes in transaction {tx!r}")
            raise BrokerError(
                "Memory limit reached: frame refused",
                f"The broker holds as much for its clients as it may ({config.max_memory} bytes).",
            )
        transactions[tx].append(frame)
        self.held = (frames + 1, size + len(frame.body))
        broker.input_bytes += len(frame.body)

    def _transaction_id(self, frame: Frame) -> str:
        tx = frame.get("transaction")
        if tx is None:
            raise BrokerError(f"{frame.command} without a transaction header")
        return tx

    def on_begin(self, frame: Frame) -> None:
        tx = self._transaction_id(frame)
        if self.transactions is None:
            self.transactions = {}
        if tx in self.transactions:
            raise BrokerError(f"Transaction {tx!r} is already open")
        self.transactions[tx] = []

    def on_commit(self, frame: Frame) -> None:
        tx = self._transaction_id(frame)
        if self.transactions is None or tx not in self.transactions:
            raise BrokerError(f"Unknown transaction {tx!r}")
        frames = self.transactions.pop(tx)
        self._release_held(frames)
        for held in frames:
            if held.command == "SEND":
                self.on_send(held, in_transaction=True)
            else:
                try:
                    sub, ack_id = self._find_ack(held)
                except BrokerError:
                    # Acknowledged meanwhile outside the transaction, or its subscriber left.
                    continue
                self.broker.settle(sub, ack_id, requeue=held.command == "NACK")

    def on_abort(self, frame: Frame) -> None:
        tx = self._transaction_id(frame)
        if self.transactions is None or tx not in self.transactions:
            raise BrokerError(f"Unknown transaction {tx!r}")
        self._release_held(self.transactions.pop(tx))

    def _release_held(self, frames: list[Frame]) -> None:
        count, size = self.held
        released = sum(len(f.body) for f in frames)
        self.held = (count - len(frames), size - released)
        self.broker.input_bytes -= released

    def on_disconnect(self, frame: Frame) -> None:
        # Everything before it in this read was handled already; the receipt follows in handle().
        pass


_HANDLERS: dict[str, Callable[[Connection, Frame], None]] = {
    "CONNECT": Connection.on_connect,
    "STOMP": Connection.on_connect,
    "SEND": Connection.on_send,
    "SUBSCRIBE": Connection.on_subscribe,
    "UNSUBSCRIBE": Connection.on_unsubscribe,
    "ACK": Connection.on_ack,
    "NACK": Connection.on_nack,
    "BEGIN": Connection.on_begin,
    "COMMIT": Connection.on_commit,
    "ABORT": Connection.on_abort,
    "DISCONNECT": Connection.on_disconnect,
}


# Descriptors kept for the broker's own use (listening socket, event loop, data file, logs)
# when the connection limit comes from the file-descriptor limit: 64, or an eighth of a low limit.
FD_RESERVE = 64


def raise_fd_limit() -> tuple[int, int] | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; (soft now, soft before), None where unknown."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # macOS caps it below an unlimited hard limit
            logger.warning("Could not raise the file descriptor limit from %d to %d: %s", soft, target, exc)
            return soft, soft
        return target, soft
    current = soft if soft != resource.RLIM_INFINITY else 1 << 20
    return current, current


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Broker:
    """A STOMP broker serving one address.

    ``await start()`` binds and returns; ``await close()`` (idempotent) stops accepting, sends
    every client an ERROR saying the broker shuts down, waits up to ``close_timeout`` and cuts
    off the rest. ``await run(shutdown_trigger)`` does both around an awaitable trigger.
    """

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.server: asyncio.Server | None = None
        self.connections: set[Connection] = set()
        self.topics: dict[str, dict[Subscription, None]] = {}
        self.queues: dict[str, Queue] = {}
        self.dirty: list[Connection] = []
        self.sender: Connection | None = None
        self.closing = False
        self._closed: asyncio.Event | None = None
        self._store: QueueStore | None = None
        self._boot = secrets.token_hex(3)
        self._msg_counter = itertools.count(1)
        self._prefixes: dict[str, bytes] = {}  # destination -> escaped MESSAGE header start
        self._session_counter = itertools.count(1)
        self.n_connections_total = 0
        self.n_received = 0
        self.n_delivered = 0
        self.n_acked = 0
        self.n_redelivered = 0
        self.n_overflows = 0
        self.n_slow_consumers = 0
        self.n_errors_sent = 0
        self.n_producer_pauses = 0
        self.n_memory_refusals = 0
        self.n_frame_timeouts = 0
        self.n_connections_refused = 0
        self.max_connections = self.config.max_connections or 1 << 30  # set from the fd limit by start()
        self._refusals_unlogged = 0
        self._refusal_log_handle: asyncio.TimerHandle | None = None
        # The memory budget (config.max_memory): bytes of unfinished frames and transactions,
        # of queue messages (waiting or unacknowledged), and of unsent output as of each
        # connection's last write (stale until refreshed: refresh_output() before deciding).
        self.input_bytes = 0
        self.queued_bytes = 0
        self.output_bytes = 0
        self.output_holders: set[Connection] = set()
        self._port = 0

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self.config.host

    @property
    def port(self) -> int:
        """The bound port (the real one when configured with port 0); 0 before start()."""
        return self._port

    @property
    def url(self) -> str:
        scheme = "stomp+ssl" if self.config.certfile else "stomp"
        return f"{scheme}://{self.config.host}:{self._port}"

    def _tls_context(self) -> ssl.SSLContext | None:
        """The server side of TLS when a certificate is configured; ValueError saying what is wrong."""
        config = self.config
        if not config.certfile:
            if config.keyfile:
                raise ValueError("A TLS key file was given without its certificate (certfile)")
            return None
        for path in (config.certfile, config.keyfile):
            if path and not os.path.isfile(path):
                raise ValueError(f"TLS certificate or key file not found: {os.fspath(path)}")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(config.certfile, config.keyfile)
        except (ssl.SSLError, OSError) as exc:
            key = f" with the key {config.keyfile}" if config.keyfile else ""
            raise ValueError(
                f"Cannot use the TLS certificate {config.certfile}{key}: {exc}. Give a PEM certificate"
                " chain, and its private key unless the certificate file holds it"
            ) from None
        return context

    async def start(self) -> None:
        """Open the data file (restoring queued messages) and start listening.

        Raises ValueError for a TLS certificate or key that cannot be used, OSError when the
        address cannot be bound.
        """
        if self.server is not None:
            return
        self.loop = asyncio.get_running_loop()
        config = self.config
        tls = self._tls_context()
        if config.data_file is not None:
            self._store = QueueStore(config.data_file)
            restored = 0
            for stored in self._store.load():
                queue = self._queue(stored.destination)
                queue.messages.append(
                    QueuedMessage(stored.message_id, stored.destination, stored.headers, stored.body, stored.redelivered)
                )
                queue.size += len(stored.body)
                self.queued_bytes += len(stored.body)
                restored += 1
            if restored:
                logger.info("Restored %d queued messages from %s", restored, config.data_file)
        self._set_connection_limit()
        if not config.users and not _is_loopback(config.host):
            logger.warning(
                "The STOMP broker listens on %s with no users configured: anyone who can reach it can log in",
                config.host,
            )
        try:
            self.server = await self.loop.create_server(
                lambda: Connection(self), config.host, config.port, reuse_address=True, backlog=1024,
                ssl=tls, ssl_handshake_timeout=config.connect_timeout if tls else None,
            )
        except BaseException:
            if self._store is not None:
                self._store.close()
                self._store = None
            raise
        self._port = self.server.sockets[0].getsockname()[1]
        self._closed = asyncio.Event()
        logger.info("STOMP broker listening on %s:%d%s", config.host, self._port, " (TLS)" if tls else "")

    async def run(self, shutdown_trigger: Callable[[], Awaitable[object]] | None = None) -> None:
        """Start, serve until ``shutdown_trigger()`` completes (or close() is called), then close."""
        await self.start()
        assert self._closed is not None
        waiters = [asyncio.ensure_future(self._closed.wait())]
        if shutdown_trigger is not None:
            waiters.append(asyncio.ensure_future(shutdown_trigger()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await self.close()

    async def close(self) -> None:
        """Stop accepting, tell clients, wait up to close_timeout, cut off the rest. Idempotent."""
        if self.closing:
            if self._closed is not None:
                await self._closed.wait()
            return
        self.closing = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.connected:
                conn.fail("Broker shutting down")
            else:
                conn.close()
        self.flush()
        # Wait until every client was handed its last frames (or went away), not for clients
        # to close their side: a shutdown should not take close_timeout because one is idle.
        deadline = self.loop.time() + self.config.close_timeout if self.loop else 0
        while self.loop is not None and self.loop.time() < deadline and any(
            c.transport is not None and c.transport.get_write_buffer_size() for c in self.connections
        ):
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                if conn.transport.get_write_buffer_size():
                    conn.transport.abort()
                else:
                    conn.transport.close()
        for _ in range(100):
            if not self.connections:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.wait_closed(), timeout=1.0)
            except TimeoutError:
                pass
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._refusal_log_handle is not None:
            self._refusal_log_handle.cancel()
            self._refusal_log_handle = None
            self._log_refusals()
        logger.info("STOMP broker on %s:%d closed", self.config.host, self._port)
        if self._closed is not None:
            self._closed.set()

    def stats(self) -> BrokerStats:
        """Counters so far (call on the broker's loop thread, or through BrokerThread.stats())."""
        return BrokerStats(
            connections_total=self.n_connections_total,
            connections_current=len(self.connections),
            subscriptions=sum(len(c.subs) for c in self.connections),
            messages_received=self.n_received,
            messages_delivered=self.n_delivered,
            messages_queued=sum(len(q.messages) for q in self.queues.values()),
            messages_acked=self.n_acked,
            messages_redelivered=self.n_redelivered,
            queue_overflows=self.n_overflows,
            slow_consumers=self.n_slow_consumers,
            errors_sent=self.n_errors_sent,
            producer_pauses=self.n_producer_pauses,
            connections_refused=self.n_connections_refused,
            memory_used=self.memory_used(refresh=True),
            memory_refusals=self.n_memory_refusals,
            frame_timeouts=self.n_frame_timeouts,
        )

    # --- connections and file descriptors -------------------------------------------------

    def _set_connection_limit(self) -> None:
        config = self.config
        limit = raise_fd_limit() if config.raise_fd_limit else None
        if limit is None:
            return
        soft, before = limit
        if not config.max_connections:
            self.max_connections = max(1, soft - min(FD_RESERVE, soft // 8))
        raised = f" (raised from {before})" if before != soft else ""
        logger.info("File descriptor limit %d%s: up to %d client connections", soft, raised, self.max_connections)

    def refuse_connection(self, conn: Connection) -> None:
        """A connection past max_connections: an ERROR, close, counted; logged at most once per interval."""
        self.n_connections_refused += 1
        message = f"Too many connections (the broker serves at most {self.max_connections})"
        transport = conn.transport
        conn.closing = True
        transport.write(encode_frame(Frame("ERROR", (("message", message), ("content-type", "text/plain")), message.encode()), eol=True))
        # Closed at once, not lingering: under a flood, lingering sockets would hold descriptors.
        transport.close()
        if self._refusal_log_handle is None:
            logger.warning(
                "Refused a connection from %s: %d connections open, the most allowed%s; further refusals"
                " are summed up every %g s",
                conn.peer, len(self.connections), "" if self.config.max_connections else " by the file-descriptor limit",
                self.config.log_interval,
            )
            self._refusal_log_handle = self.loop.call_later(self.config.log_interval, self._log_refusals)
        else:
            self._refusals_unlogged += 1

    def _log_refusals(self) -> None:
        self._refusal_log_handle = None
        if self._refusals_unlogged:
            logger.warning(
                "Refused %d more connections in the last %g s (at most %d at once)",
                self._refusals_unlogged, self.config.log_interval, self.max_connections,
            )
            self._refusals_unlogged = 0
            self._refusal_log_handle = self.loop.call_later(self.config.log_interval, self._log_refusals)

    # --- the memory budget ----------------------------------------------------------------

    def memory_used(self, refresh: bool = False) -> int:
        """Bytes held for clients; with ``refresh``, unsent output is re-read from every socket."""
        if refresh:
            self.refresh_output()
        return self.input_bytes + self.queued_bytes + self.output_bytes

    def refresh_output(self) -> None:
        for conn in list(self.output_holders):
            transport = conn.transport
            conn.note_output(transport.get_write_buffer_size() if transport is not None else 0)

    def over_budget(self, extra: int = 0) -> bool:
        """Whether holding ``extra`` more bytes would pass max_memory (cheap while well under it)."""
        limit = self.config.max_memory
        if self.input_bytes + self.queued_bytes + self.output_bytes + extra <= limit:
            return False
        return self.memory_used(refresh=True) + extra > limit

    def refused_for_memory(self, conn: Connection, what: str) -> None:
        """Count and log one refusal of the memory budget (the caller sends the ERROR)."""
        self.n_memory_refusals += 1
        logger.warning(
            "Memory limit: refused %s from %s (session %s); the broker holds %d bytes for its clients"
            " (input %d, queues %d, output %d), its limit is %d",
            what, conn.peer, conn.session or "-", self.memory_used(), self.input_bytes, self.queued_bytes,
            self.output_bytes, self.config.max_memory,
        )

    def _shed_output(self) -> None:
        """Past the budget because of unsent output: disconnect the subscribers holding the most."""
        while self.output_holders and self.over_budget():
            conn = max(self.output_holders, key=lambda c: c.out_bytes)
            held = conn.out_bytes
            self.refused_for_memory(conn, f"a subscriber holding {held} bytes of unsent output")
            conn.fail(
                "Memory limit reached: disconnected",
                f"The broker holds as much for its clients as it may ({self.config.max_memory} bytes),"
                f" and this client left the most output unread ({held} bytes).",
            )
            # Its output is freed now: a lingering close would keep it while the client reads nothing.
            if conn.transport is not None:
                conn.transport.abort()
            conn.note_output(0)

    def new_session_id(self) -> str:
        return f"{self._boot}-{next(self._session_counter)}"

    def flush(self, first: Connection | None = None) -> None:
        """Write what this loop turn produced: persistence first, then one write per connection.

        ``first`` (the connection whose frames were just handled) is written before the others:
        its RECEIPTs then leave before the fan-out's writes, which on a small machine each cost
        a wake-up of a subscriber; a producer waiting for each RECEIPT gets it that much sooner.
        """
        if self._store is not None and self._store.dirty:
            self._store.commit()
        if first is not None and first.out:
            first.flush()
        dirty = self.dirty
        while dirty:
            self.dirty = []
            for conn in dirty:
                conn.flush()
            dirty = self.dirty
        if self.output_bytes and self.input_bytes + self.queued_bytes + self.output_bytes > self.config.max_memory:
            self._shed_output()

    # --- routing --------------------------------------------------------------------------

    def check_destination(self, destination: str) -> None:
        for prefix in (TOPIC_PREFIX, QUEUE_PREFIX):
            if destination.startswith(prefix) and len(destination) > len(prefix):
                return
        raise BrokerError(
            f"Unknown destination {destination!r}: use /topic/<name> (publish-subscribe) or /queue/<name>"
        )

    def _queue(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = Queue(name)
        return queue

    def subscribe(self, sub: Subscription) -> None:
        destination = sub.destination
        if destination.startswith(TOPIC_PREFIX):
            subs = self.topics.get(destination)
            if subs is None:
                subs = self.topics[destination] = {}
            subs[sub] = None
            sub.topic = subs
        else:
            queue = self._queue(destination)
            queue.consumers.append(sub)
            sub.queue = queue
            self.dispatch(queue)

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a subscription; its unacknowledged queue messages go back, marked redelivered."""
        if sub.topic is not None:
            sub.topic.pop(sub, None)
            if not sub.topic:
                self.topics.pop(sub.destination, None)
            sub.topic = None
        queue = sub.queue
        if queue is None:
            return
        sub.queue = None
        try:
            queue.consumers.remove(sub)
        except ValueError:
            pass
        pending = sub.pending
        if pending:
            sub.pending = {}
            self._requeue(queue, [m for m in pending.values() if m is not None])
        if not self.closing:
            self.dispatch(queue)
        if not queue.consumers and not queue.messages:
            self.queues.pop(queue.name, None)

    def _requeue(self, queue: Queue, messages: list[QueuedMessage]) -> None:
        store = self._store
        for msg in reversed(messages):
            if not msg.redelivered:
                msg.redelivered = True
                if store is not None:
                    store.mark_redelivered(msg.id)
            queue.messages.appendleft(msg)
            queue.size += len(msg.body)
        self.n_redelivered += len(messages)
        if queue.name not in self.queues:
            self.queues[queue.name] = queue

    def publish(self, destination: str, headers: tuple[tuple[str, str], ...], body: bytes) -> None:
        """Route one SEND: fan out to a topic's subscribers, or hand to one queue consumer."""
        if destination.startswith(TOPIC_PREFIX) and len(destination) > len(TOPIC_PREFIX):
            self.n_received += 1
            subs = self.topics.get(destination)
            if not subs:
                return
            msg_id = f"{self._boot}-{next(self._msg_counter)}"
            user = [h for h in headers if h[0] not in _RESERVED]
            prefix = self._prefixes.get(destination)
            if prefix is None:
                if len(self._prefixes) > 4096:  # per-job topics come and go: keep the cache small
                    self._prefixes.clear()
                prefix = self._prefixes[destination] = f"MESSAGE\ndestination:{escape(destination)}\nmessage-id:".encode()
            if user:
                user_block = "".join([f"{escape(n)}:{escape(v)}\n" for n, v in user]).encode()
            else:
                user_block = b""
            common = b"%s%s\n%scontent-length:%d\n" % (prefix, msg_id.encode(), user_block, len(body))
            common10: bytes | None = None
            tail = b"\n" + body + FRAME_END
            sender = self.sender
            for sub in subs:
                conn = sub.conn
                if conn.escaped:
                    block = common
                else:
                    if common10 is None:
                        common10 = _common_block(destination, msg_id, user, len(body), False)
                    block = common10
                if conn.write_paused and sender is not None and sender is not conn:
                    self._pause_for(sender, conn)
                if sub.pending is None:
                    out = conn.out
                    if not out:
                        self.dirty.append(conn)
                    out.append(block)
                    out.append(sub.line)
                    out.append(tail)
                    self.n_delivered += 1
                else:
                    self._deliver_tracked(sub, block, tail, msg_id, None)
            return
        if destination.startswith(QUEUE_PREFIX) and len(destination) > len(QUEUE_PREFIX):
            if self.over_budget(len(body)):
                if self.sender is not None:
                    self.refused_for_memory(self.sender, f"a SEND of {len(body)} bytes to {destination}")
                raise BrokerError(
                    "Memory limit reached: message refused",
                    f"The broker holds as much for its clients as it may ({self.config.max_memory} bytes):"
                    f" the message to {destination} was not accepted.",
                )
            self.n_received += 1
            self.queued_bytes += len(body)
            msg = QueuedMessage(f"{self._boot}-{next(self._msg_counter)}", destination, _user_headers(headers), body)
            queue = self._queue(destination)
            if not queue.messages:
                sub = queue.pick()
                if sub is not None:
                    if sub.pending is not None and self._store is not None:
                        # Unacknowledged, it must survive a restart like a waiting message.
                        self._store.add(msg.id, destination, msg.headers, body)
                    self._deliver_queued(sub, msg)
                    return
            config = self.config
            while queue.messages and (
                len(queue.messages) >= config.max_queue_messages or queue.size + len(body) > config.max_queue_bytes
            ):
                self.n_overflows += 1
                if config.queue_overflow is QueueOverflow.REJECT:
                    logger.warning("Queue %s is full (%d messages): SEND refused", destination, len(queue.messages))
                    raise BrokerError(
                        f"Queue {destination} is full ({len(queue.messages)} messages waiting): message refused"
                    )
                dropped = queue.messages.popleft()
                queue.size -= len(dropped.body)
                self.queued_bytes -= len(dropped.body)
                logger.warning("Queue %s is full: dropped its oldest message %s", destination, dropped.id)
                if self._store is not None:
                    self._store.remove(dropped.id)
            queue.messages.append(msg)
            queue.size += len(body)
            if self._store is not None:
                self._store.add(msg.id, destination, msg.headers, body)
            if self.sender is not None:
                # A producer filling a queue whose consumers are all blocked waits for them.
                for consumer in queue.consumers:
                    if consumer.conn.write_paused and consumer.conn is not self.sender:
                        self._pause_for(self.sender, consumer.conn)
            return
        self.check_destination(destination)

    def _pause_for(self, producer: Connection, consumer: Connection) -> None:
        if consumer.waiters is None:
            consumer.waiters = set()
        consumer.waiters.add(producer)
        if producer.blocked_by is None:
            producer.blocked_by = set()
        producer.blocked_by.add(consumer)

    def _deliver_tracked(
        self, sub: Subscription, block: bytes, tail: bytes, msg_id: str, msg: QueuedMessage | None
    ) -> None:
        pending = sub.pending
        assert pending is not None
        conn = sub.conn
        if len(pending) >= self.config.max_unacked:
            # Not failed right here: we may be iterating over the topic's subscribers.
            if not conn.closing:
                self.loop.call_soon(
                    self._fail_soon,
                    conn,
                    "Too many unacknowledged messages",
                    f"Subscription {sub.id!r} holds {len(pending)} unacknowledged messages, the most allowed.",
                )
            return
        ack_id = f"{sub.num}/{msg_id}"
        pending[ack_id] = msg
        extra = b"ack:" + ack_id.encode() + b"\n"
        if msg is not None and msg.redelivered:
            extra += b"redelivered:true\n"
        out = conn.out
        if not out:
            self.dirty.append(conn)
        out.append(block)
        out.append(sub.line)
        out.append(extra)
        out.append(tail)
        self.n_delivered += 1

    def _deliver_queued(self, sub: Subscription, msg: QueuedMessage) -> None:
        block, tail = msg.parts(sub.conn.escaped)
        if sub.pending is None:
            conn = sub.conn
            out = conn.out
            if not out:
                self.dirty.append(conn)
            out.append(block)
            out.append(sub.line)
            if msg.redelivered:
                out.append(b"redelivered:true\n")
            out.append(tail)
            self.n_delivered += 1
            self.queued_bytes -= len(msg.body)  # from here on it is output
            if self._store is not None:
                self._store.remove(msg.id)
        else:
            self._deliver_tracked(sub, block, tail, msg.id, msg)

    def _fail_soon(self, conn: Connection, message: str, details: str) -> None:
        conn.fail(message, details)
        self.flush()

    def dispatch(self, queue: Queue) -> None:
        """Hand waiting messages to consumers that can take them, round robin."""
        messages = queue.messages
        while messages:
            sub = queue.pick()
            if sub is None:
                return
            msg = messages.popleft()
            queue.size -= len(msg.body)
            self._deliver_queued(sub, msg)

    def settle(self, sub: Subscription, ack_id: str, requeue: bool) -> None:
        """ACK (or NACK when requeue) one delivery; in client mode, every earlier one too."""
        pending = sub.pending
        assert pending is not None
        if sub.ack_mode == _CLIENT:
            settled = []
            for key in pending:
                settled.append(key)
                if key == ack_id:
                    break
            messages = [pending.pop(key) for key in settled]
        else:
            messages = [pending.pop(ack_id)]
        queued = [m for m in messages if m is not None]
        queue = sub.queue
        if requeue:
            if queue is not None and queued:
                self._requeue(queue, queued)
        else:
            self.n_acked += len(messages)
            for msg in queued:
                self.queued_bytes -= len(msg.body)
            if self._store is not None:
                for msg in queued:
                    self._store.remove(msg.id)
        if queue is not None:
            self.dispatch(queue)
