"""STOMP 1.2 over WebSocket for browsers: a Channels consumer that relays the hub and guards access.

One consumer per WebSocket. Frames are parsed with the project codec. What a browser may
subscribe to and send to is whatever the installed apps declared in the live registry
(notifications.live): this module knows no destination itself. Every broker message reaches
the browser through the process hub (notifications.hub), never through a connection of its own.

A SUBSCRIBE is matched against the registry; the destination's permission callable runs in a
thread; the hub subscribes to the destination's broker topics (waiting for the broker's
receipt), then its snapshot is read from the database and sent, then the live events, minus
those not newer (by the declared ``seq``) than what the subscription already sent. After the hub
reconnects to the broker, every subscription gets its resync (what was written since shortly
before the outage, and the items it last showed unfinished) or else its snapshot again. A client
coming back resubscribes with a ``since`` header (milliseconds, in the server's clock that
CONNECTED's ``server-time`` gives) and gets the resync from then instead of the snapshot. A SEND
to /app/... runs the declared handler in a thread and transaction; a RECEIPT follows when asked.

Refusals are ERROR frames (with ``message`` and, when a destination is at fault, a
``destination`` header), after which the socket closes, as STOMP requires. Anonymous sockets
are refused at CONNECT. The session is read again on every SEND, every
NOTIFICATIONS["SESSION_RECHECK_SECONDS"] for sockets with subscriptions (batched for all the
sockets of the process, re-running each subscription's permission callable), and at once on
user_logged_out in this process: a session that ended or a withdrawn permission ends the
socket with an ERROR.

Backpressure: keyed events coalesce per subscription (the newest seq wins) while a socket's
outbox waits; past MAILBOX_SIZE pending messages the socket gets an ERROR and is closed, and
its client reconnects and resyncs from snapshots. (Daphne gives an ASGI app no view of a
socket's write buffer, so a browser that reads slowly is buffered by daphne, not here.)
"""
from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.consumer import get_handler_name
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.dispatch import receiver

from . import conf, live, permissions
from .codec import (
    HEARTBEAT,
    Frame,
    FrameParser,
    LocalProtocolError,
    Limits,
    RemoteProtocolError,
    encode_frame,
    escape,
    negotiate_heartbeat,
    negotiate_version,
    parse_heartbeat,
)
from .hub import Event, Mailbox, current_hub, get_hub

__all__ = [
    "StompConsumer",
    "SUBPROTOCOLS",
    "BROWSER_LIMITS",
    "MAX_SUBSCRIPTIONS",
    "MAILBOX_SIZE",
    "COALESCE_AFTER",
    "BATCH_BYTES",
    "SERVER_NAME",
    "SNAPSHOT_LIMIT",
    "RESYNC_MARGIN",
    "stats",
]

logger = logging.getLogger(__name__)

# WebSocket subprotocol -> STOMP version, best first (what @stomp/stompjs offers, in its order).
SUBPROTOCOLS = {"v12.stomp": "1.2", "v11.stomp": "1.1", "v10.stomp": "1.0"}
SERVER_NAME = conf.SERVER_NAME
# Browsers only send small control frames (SUBSCRIBE, SEND of a tiny JSON body): a few KiB
# would do; 64 KiB keeps room for long destination names without letting a tab buffer megabytes.
BROWSER_LIMITS = Limits(max_frame_size=64 * 1024, max_body_size=16 * 1024, max_headers=64, max_header_line=4 * 1024)
# A page needs a handful (its notifications, an object or two, a list); this bounds what one socket costs.
MAX_SUBSCRIPTIONS = 64
# Messages waiting for one browser after coalescing (keyed events of one item share a slot).
MAILBOX_SIZE = 512
# A socket with fewer messages waiting than this gets every state of an item; from there on, an
# item's newer event replaces its pending one. Several events read from the broker in one go are so
# all delivered (in one WebSocket message), and coalescing starts only when the socket is
# really behind (a burst, a loaded process).
COALESCE_AFTER = 16
# Pending frames of one socket are joined into WebSocket messages of at most this size
# (STOMP allows several frames in one message; stompjs and our client parse them as a stream).
# One message instead of several is what saves daphne's per-message cost under load.
BATCH_BYTES = 64 * 1024
# A browser silent for this many times its negotiated heart-beat is gone.
HEARTBEAT_GRACE = 2.0
# Messages one snapshot or resync may send; past it the rest is left out, counted and logged
# (a destination's own snapshot should bound itself well below this).
SNAPSHOT_LIMIT = 5000
# Per-subscription memory of the last seq sent per item (list subscriptions see many items).
SEQ_MEMORY = 2000
# After a broker outage, a resync asks for what was written from this many seconds before the
# hub was last seen connected: events in flight (written, not yet relayed) and clocks of other
# machines a little behind ours are covered.
RESYNC_MARGIN = 30.0


@dataclass
class ConsumerStats:
    """What the WebSocket endpoint of this process refused or cut short (also logged)."""

    snapshots_truncated: int = 0  # snapshot or resync past SNAPSHOT_LIMIT messages
    overflows: int = 0  # sockets closed because their mailbox was full
    pending_forgotten: int = 0  # unfinished items forgotten past SEQ_MEMORY


stats = ConsumerStats()

# WebSocket close code for a server that stops (RFC 6455 "going away"): reconnect elsewhere now.
GOING_AWAY = 1001
# How long a stopping server waits for those close frames to go out.
SHUTDOWN_CLOSE_TIMEOUT = 2.0

# Sockets of this process by session key, for user_logged_out.
_by_session: dict[str, weakref.WeakSet] = {}
# Every open socket of this process, for a graceful stop of the server.
_open: weakref.WeakSet = weakref.WeakSet()


@dataclass(eq=False)
class ClientSubscription:
    id: str
    destination: str  # as the browser named it
    declared: live.Destination
    parts: dict[str, Any]  # the pattern's parts, converted
    broker_destinations: tuple[str, ...]
    # Copied from the declaration: read for every event, so without an attribute hop.
    filter: Any = None
    key: str | None = None
    seq: str | None = None
    final: str | None = None
    active: bool = True
    primed: bool = False  # the snapshot went out; live events may follow
    early: list = field(default_factory=list)  # events that arrived before the snapshot
    last_seq: dict[Any, int] = field(default_factory=dict)
    unfinished: dict[Any, None] = field(default_factory=dict)  # keys last shown not final (ordered set)
    header_prefix: str = ""  # "MESSAGE\ndestination:...\nsubscription:...\n", escaped for the version
    read_at: float = 0.0  # wall-clock time of the last snapshot or resync: what came before is known

    @property
    def check(self) -> permissions.Check | None:
        """The permission check a session re-check runs again, if the destination has one."""
        permission = self.declared.permission
        return (permission, self.parts) if permission is not None else None


class _Close(Exception):
    """End the STOMP session: send an ERROR frame with this message, then close the socket."""

    def __init__(self, message: str, *, destination: str | None = None, receipt: str | None = None, body: str = ""):
        super().__init__(message)
        self.message = message
        self.destination = destination
        self.receipt = receipt
        self.body = body


class StompConsumer(AsyncWebsocketConsumer):
    """A STOMP 1.0-1.2 server session per WebSocket, relaying the process hub."""

    # Live events come from STOMP: no Channels layer queue per socket (it would cost memory).
    channel_layer_alias = "__notifications_no_channel_layer__"

    # ------------------------------------------------------------------ WebSocket

    async def dispatch(self, message: dict) -> None:
        # Channels' dispatch runs close_old_connections in a thread before every message,
        # heart-beats included; every database access here goes through
        # database_sync_to_async, which does that itself, so skip the thread hop.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        offered = self.scope.get("subprotocols") or []
        subprotocol = next((p for p in SUBPROTOCOLS if p in offered), None)
        if offered and subprotocol is None:
            # A client that only speaks other subprotocols cannot talk STOMP to us: refuse the
            # handshake (the browser sees close code 1006) rather than pick one it did not offer.
            logger.info("WebSocket refused: no STOMP subprotocol among %s", offered)
            await self.close()
            return
        self.ws_version = SUBPROTOCOLS.get(subprotocol) if subprotocol else None
        self.version = self.ws_version or "1.2"
        self.parser = FrameParser(BROWSER_LIMITS, version=self.version)
        self.stomp_connected = False
        self.closing = False
        self.user = None
        self.session_key = None
        self.subs: dict[str, ClientSubscription] = {}
        self.by_broker: dict[str, list[ClientSubscription]] = {}
        # The mailbox calls back through a weak reference: a bound method would make a reference
        # cycle (consumer -> mailbox -> consumer) that keeps a closed socket's consumer, scope,
        # parser and daphne connection (through base_send) until a full cyclic collection.
        self.mailbox = Mailbox(MAILBOX_SIZE, _weak_ready(self), coalesce_after=COALESCE_AFTER)
        self.message_ids = 0
        self.send_ms = 0
        self.expect_ms = 0
        self.last_sent = self.last_received = self.last_check = time.monotonic()
        self.hub = None
        self.writes: list[bytes | str] = []  # encoded frames, sent in order by _flush_pending_writes
        self.overflowing = False
        self.write_text: Callable[[str], bool] | None = None
        await self.accept(subprotocol)
        # Under daphne on plain TCP, text messages skip daphne's and autobahn's per-message layers.
        self.write_text = _daphne_text_writer(self.base_send)
        _release_protocol_on_close(self.base_send)
        _open.add(self)
        _close_on_server_stop()

    async def disconnect(self, code: int) -> None:
        await self._teardown()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        data = text_data.encode("utf-8") if text_data is not None else (bytes_data or b"")
        self.last_received = time.monotonic()
        try:
            try:
                self.parser.receive_data(data)
            except RemoteProtocolError as exc:
                # Frames parsed before the bad bytes are still handled, then the ERROR.
                for event in self.parser.events_received():
                    if event is not HEARTBEAT:
                        await self._handle(event)
                raise _Close(exc.error_message) from None
            for event in self.parser.events_received():
                if event is HEARTBEAT or self.closing:
                    continue
                await self._handle(event)
        except _Close as close:
            await self._error_and_close(close)
        except Exception:
            # Never show internals to the browser; the log has them.
            logger.exception("STOMP WebSocket session failed")
            await self._error_and_close(_Close("Internal server error"))

    # ------------------------------------------------------------------ frames

    async def _handle(self, frame: Frame) -> None:
        command = frame.command
        if not self.stomp_connected:
            if command in ("CONNECT", "STOMP"):
                await self._on_connect(frame)
                return
            raise _Close(f"Expected CONNECT, got {command}")
        handler = {
            "SUBSCRIBE": self._on_subscribe,
            "UNSUBSCRIBE": self._on_unsubscribe,
            "SEND": self._on_send,
            "DISCONNECT": self._on_disconnect,
            "ACK": self._on_ack,
            "NACK": self._on_ack,
        }.get(command)
        if handler is None:
            if command in ("BEGIN", "COMMIT", "ABORT"):
                raise _Close(f"Transactions are not supported ({command})", receipt=frame.get("receipt"))
            if command in ("CONNECT", "STOMP"):
                raise _Close("Already connected", receipt=frame.get("receipt"))
            raise _Close(f"Unknown command {command}", receipt=frame.get("receipt"))
        await handler(frame)

    async def _on_connect(self, frame: Frame) -> None:
        supported = ("1.0", "1.1", "1.2")
        if self.ws_version is not None:
            supported = tuple(v for v in supported if v <= self.ws_version)
        version = negotiate_version(frame.get("accept-version"), supported)
        if version is None:
            self.version = "1.2"
            raise _Close(
                f"Supported protocol versions are {','.join(supported)}",
                body=f"Supported protocol versions are {','.join(supported)}",
            )
        self.version = version
        self.parser.version = version
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            raise _Close("Log in to receive live updates")
        self.user = user
        session = self.scope.get("session")
        self.session_key = getattr(session, "session_key", None)
        if self.session_key:
            _by_session.setdefault(self.session_key, weakref.WeakSet()).add(self)

        try:
            client_hb = parse_heartbeat(frame.get("heart-beat", "0,0"))
        except ValueError as exc:
            raise _Close(str(exc)) from None
        ours = int(conf.get("HEARTBEAT_MS"))
        self.send_ms, self.expect_ms = negotiate_heartbeat((ours, ours), client_hb)
        self.stomp_connected = True
        self.recheck_seconds = float(conf.get("SESSION_RECHECK_SECONDS"))
        self.hub = get_hub()
        headers = [
            ("version", version),
            ("heart-beat", f"{ours},{ours}"),
            ("server", SERVER_NAME),
            # The process id makes it unique across web processes and says which one serves it.
            ("session", f"ws-{os.getpid()}-{id(self):x}"),
            ("user-name", user.get_username()),
            # The server's clock, so a client can name "since" in it when it resubscribes.
            ("server-time", str(int(time.time() * 1000))),
        ]
        await self._send_frame(Frame("CONNECTED", tuple(headers)))
        _supervisor().add(self)

    async def _on_subscribe(self, frame: Frame) -> None:
        destination = frame.get("destination")
        if not destination:
            raise _Close("SUBSCRIBE needs a destination header", receipt=frame.get("receipt"))
        sub_id = frame.get("id")
        if sub_id is None:
            if self.version != "1.0":
                raise _Close("SUBSCRIBE needs an id header", destination=destination, receipt=frame.get("receipt"))
            sub_id = destination
        if sub_id in self.subs:
            raise _Close(f"Subscription id {sub_id} is already in use", destination=destination)
        if len(self.subs) >= MAX_SUBSCRIPTIONS:
            raise _Close(f"At most {MAX_SUBSCRIPTIONS} subscriptions per connection", destination=destination)
        since = _since_header(frame.get("since"), destination, frame.get("receipt"))
        sub = await self._authorize(sub_id, destination, frame.get("receipt"))
        esc = escape if self.version != "1.0" else str
        sub.header_prefix = f"MESSAGE\ndestination:{esc(sub.destination)}\nsubscription:{esc(sub.id)}\n"
        self.subs[sub_id] = sub
        for broker_destination in sub.broker_destinations:
            self.by_broker.setdefault(broker_destination, []).append(sub)
        # Subscribe at the broker (waiting for its receipt) before reading the snapshot, so that
        # nothing written after the snapshot can be missed; events that arrive meanwhile wait in
        # sub.early and are sent after it, minus those the snapshot already covers.
        for broker_destination in sub.broker_destinations:
            await self.hub.subscribe(broker_destination, self)
        if not sub.active:
            return
        await self._send_snapshot(sub, since)
        if frame.get("receipt"):
            await self._send_frame(Frame("RECEIPT", (("receipt-id", frame.get("receipt")),)))

    async def _authorize(self, sub_id: str, destination: str, receipt: str | None) -> ClientSubscription:
        match = live.registry.match_subscription(destination)
        if match is None:
            raise _Close(f"Not allowed to subscribe to {destination}", destination=destination, receipt=receipt)
        declared, parts = match
        if declared.permission is not None:
            try:
                allowed = await database_sync_to_async(declared.permission)(self.user, **parts)
            except live.Refused as refused:
                raise _Close(
                    refused.message or f"Not allowed to subscribe to {destination}", destination=destination, receipt=receipt
                ) from None
            if not allowed:
                raise _Close(f"Not allowed to subscribe to {destination}", destination=destination, receipt=receipt)
        return ClientSubscription(
            sub_id, destination, declared, parts, declared.topics_for(self.user, parts),
            filter=declared.filter, key=declared.key, seq=declared.seq,
            # Unfinished items are remembered only for a resync to re-read them.
            final=declared.final if declared.resync is not None else None,
        )

    async def _on_unsubscribe(self, frame: Frame) -> None:
        sub_id = frame.get("id")
        if sub_id is None and self.version == "1.0":
            sub_id = frame.get("destination")
        if sub_id is None:
            raise _Close("UNSUBSCRIBE needs an id header", receipt=frame.get("receipt"))
        sub = self.subs.get(sub_id)
        if sub is not None:
            self._drop_subscription(sub)
        # Unsubscribing an unknown id is harmless (a client racing its own cleanup): no ERROR.
        if frame.get("receipt"):
            await self._send_frame(Frame("RECEIPT", (("receipt-id", frame.get("receipt")),)))

    async def _on_send(self, frame: Frame) -> None:
        destination = frame.get("destination")
        receipt = frame.get("receipt")
        if not destination:
            raise _Close("SEND needs a destination header", receipt=receipt)
        # Every SEND re-reads the session: a logged-out tab must not act for its former user.
        if not await self._recheck():
            return
        match = live.registry.match_handler(destination)
        if match is None:
            raise _Close(f"Not allowed to send to {destination}", destination=destination, receipt=receipt)
        declared, parts = match
        shape = f"{destination} needs a JSON body" + (f" {declared.body}" if declared.body else "")
        try:
            body = json.loads(frame.body.decode("utf-8") or "null")
        except (UnicodeDecodeError, ValueError):
            raise _Close(shape, destination=destination, receipt=receipt) from None
        user = self.user

        def handle() -> str | None:
            if declared.permission is not None and not permissions.run_check(user, (declared.permission, parts)):
                return f"Not allowed to send to {destination}"
            try:
                with transaction.atomic():
                    declared.handler(user, body, **parts)
            except live.BadBody as refused:
                return refused.message or shape
            except live.Refused as refused:
                return refused.message or f"Not allowed to send to {destination}"
            return None

        problem = await database_sync_to_async(handle)()
        if problem:
            raise _Close(problem, destination=destination, receipt=receipt)
        if receipt:
            await self._send_frame(Frame("RECEIPT", (("receipt-id", receipt),)))

    async def _on_ack(self, frame: Frame) -> None:
        # Every subscription is delivered as ack:auto; an ACK or NACK from a client that asked
        # for client acks is accepted and has nothing to do.
        if frame.get("receipt"):
            await self._send_frame(Frame("RECEIPT", (("receipt-id", frame.get("receipt")),)))

    async def _on_disconnect(self, frame: Frame) -> None:
        if frame.get("receipt"):
            await self._send_frame(Frame("RECEIPT", (("receipt-id", frame.get("receipt")),)))
        await self._teardown()
        await self.close()

    # ------------------------------------------------------------------ snapshots

    async def _send_snapshot(self, sub: ClientSubscription, since: datetime | None = None) -> None:
        """Send what the database says now, then the events that arrived meanwhile (newer only).

        A client resubscribing with a ``since`` header (it was away) gets the destination's
        resync from that time on instead of its snapshot, where the destination has one.
        """
        declared = sub.declared
        read = None
        sub.read_at = time.time()
        if since is not None and declared.resync is not None:
            read, extra = declared.resync, {**sub.parts, "since": since, "pending": []}
        elif declared.snapshot is not None:
            read, extra = declared.snapshot, sub.parts
        if read is not None:
            for data in await database_sync_to_async(self._read)(sub, read, extra):
                self._send_event(sub, data)
            await self._flush_pending_writes()
        sub.primed = True
        early, sub.early = sub.early, []
        for event in early:
            self.mailbox.put((sub, event), self._key(sub, event), self._rank(sub, event))

    def _read(self, sub: ClientSubscription, read, extra: dict[str, Any]) -> list:
        """A snapshot or resync callable's events as a list (in a thread), bounded by SNAPSHOT_LIMIT."""
        result = read(self.user, **extra)
        if result is None:
            return []
        if isinstance(result, dict):
            return [result]
        events = list(itertools.islice(result, SNAPSHOT_LIMIT + 1))
        if len(events) > SNAPSHOT_LIMIT:
            stats.snapshots_truncated += 1
            logger.warning(
                "%s sent its first %d messages to %s and left the rest out (SNAPSHOT_LIMIT)",
                sub.destination, SNAPSHOT_LIMIT, self.user,
            )
            del events[SNAPSHOT_LIMIT:]
        return events

    def hub_reconnected(self) -> None:
        """The hub is back after a broker outage: resend snapshots so browsers catch up."""
        if self.closing or not self.stomp_connected:
            return
        up_until = _supervisor().hub_up_until()
        asyncio.get_running_loop().create_task(self._resync(up_until))

    async def _resync(self, up_until: float | None) -> None:
        for sub in list(self.subs.values()):
            if not (sub.active and sub.primed):
                continue
            declared = sub.declared
            # Missed: what was written after the hub was last seen up, and after this
            # subscription last read the database, whichever is later (both are lower bounds).
            since = datetime.fromtimestamp(max(up_until or 0.0, sub.read_at) - RESYNC_MARGIN, tz=UTC)
            sub.read_at = time.time()
            try:
                if declared.resync is not None:
                    extra = {**sub.parts, "since": since, "pending": list(sub.unfinished)}
                    events = await database_sync_to_async(self._read)(sub, declared.resync, extra)
                elif declared.snapshot is not None:
                    events = await database_sync_to_async(self._read)(sub, declared.snapshot, sub.parts)
                else:
                    continue
            except Exception:
                logger.exception("Resync of %s failed", sub.destination)
                continue
            if sub.active:
                for data in events:
                    self._send_event(sub, data)
        await self._flush_pending_writes()

    # ------------------------------------------------------------------ live events

    @staticmethod
    def _key(sub: ClientSubscription, event: Event) -> Any:
        # Keyed events carry the whole state of their item: a newer one replaces a pending older one.
        if sub.key is None or event.data is None:
            return None
        key = event.data.get(sub.key)
        return (id(sub), key) if key is not None else None

    @staticmethod
    def _rank(sub: ClientSubscription, event: Event) -> int | None:
        if sub.seq is None or event.data is None:
            return None
        seq = event.data.get(sub.seq)
        return seq if isinstance(seq, int) else None

    def hub_event(self, event: Event) -> None:
        """Called by the hub on the event loop for every message of our broker destinations."""
        if self.closing:
            return
        data = event.data
        for sub in self.by_broker.get(event.destination, ()):
            if not sub.active:
                continue
            if sub.filter is not None and (data is None or not sub.filter(self.user, data)):
                continue
            if sub.primed:
                # The hot path (once per delivery): _key and _rank inlined.
                key = rank = None
                if sub.key is not None and data is not None:
                    item = data.get(sub.key)
                    if item is not None:
                        key = (id(sub), item)
                        if sub.seq == "seq":
                            rank = event.seq  # computed once per broker message, not per socket
                        elif sub.seq is not None:
                            rank = data.get(sub.seq)
                            if not isinstance(rank, int):
                                rank = None
                if not self.mailbox.put((sub, event), key, rank):
                    self._schedule_overflow()
                    return
            else:
                # Before the snapshot: keep only the latest event per item (bounded by MAILBOX_SIZE).
                key = self._key(sub, event)
                if key is not None:
                    rank = self._rank(sub, event) or 0
                    if any(self._key(sub, e) == key and (self._rank(sub, e) or 0) > rank for e in sub.early):
                        continue
                    sub.early = [e for e in sub.early if self._key(sub, e) != key]
                if len(sub.early) < MAILBOX_SIZE:
                    sub.early.append(event)

    def _mailbox_ready(self) -> None:
        # One task per event loop drains every ready socket (not a task per socket per event).
        _flusher().add(self)

    def _schedule_overflow(self) -> None:
        if self.closing or self.overflowing:
            return
        self.overflowing = True
        logger.warning(
            "WebSocket of %s cannot keep up (%d messages waiting); closing it so it resyncs",
            self.user, len(self.mailbox),
        )
        asyncio.get_running_loop().create_task(
            self._error_and_close(_Close("Too many messages waiting: reconnect to resynchronise"))
        )

    async def _flush(self) -> None:
        if self.closing:
            return
        for sub, event in self.mailbox.pop_all():
            if sub.active:
                self._send_event(sub, event.data, event)
        await self._flush_pending_writes()

    # The frames of one flush are collected and sent in order by _flush_pending_writes; a list
    # keeps _send_event synchronous so the hub's fan-out path never awaits.
    def _send_event(self, sub: ClientSubscription, data: dict | None, event: Event | None = None) -> None:
        if sub.key is not None and data is not None:
            key = data.get(sub.key)
            if key is not None:
                if sub.seq is not None:
                    seq = data.get(sub.seq)
                    if isinstance(seq, int):
                        last = sub.last_seq.get(key)
                        if last is not None and seq <= last:
                            return  # the browser already has this state or a newer one
                        sub.last_seq[key] = seq
                        if len(sub.last_seq) > SEQ_MEMORY:
                            sub.last_seq.pop(next(iter(sub.last_seq)))
                if sub.final is not None:
                    if data.get(sub.final):
                        sub.unfinished.pop(key, None)
                    elif key not in sub.unfinished:
                        sub.unfinished[key] = None
                        if len(sub.unfinished) > SEQ_MEMORY:
                            forgotten = next(iter(sub.unfinished))
                            del sub.unfinished[forgotten]
                            stats.pending_forgotten += 1
                            logger.warning(
                                "%s shows more than %d unfinished items; %s will not be re-read after a reconnect",
                                sub.destination, SEQ_MEMORY, forgotten,
                            )
        self.message_ids += 1
        if event is None:
            # ASCII JSON: its length in characters is its length in bytes.
            text = json.dumps(data, separators=(",", ":"))
            length, content_type = len(text), "application/json"
        elif event.text is not None:
            text, length = event.text, len(event.body)
            content_type = event.content_type or "application/json"
        else:  # a binary body: a binary WebSocket message, through the codec
            frame = Frame(
                "MESSAGE",
                (
                    ("destination", sub.destination),
                    ("subscription", sub.id),
                    ("message-id", str(self.message_ids)),
                    ("content-type", event.content_type or "application/octet-stream"),
                    ("content-length", str(len(event.body))),
                ),
                event.body,
            )
            self.writes.append(encode_frame(frame, self.version))
            return
        # The hot path (one per delivery): the subscription's escaped header lines are made
        # once at SUBSCRIBE, the body text once per broker message.
        if self.version != "1.0":
            content_type = _ESCAPED.get(content_type) or _escaped(content_type)
        self.writes.append(
            f"{sub.header_prefix}message-id:{self.message_ids}\ncontent-type:{content_type}\n"
            f"content-length:{length}\n\n{text}\x00"
        )

    async def _flush_pending_writes(self) -> None:
        writes = self.writes
        while writes:
            data = writes.pop(0)
            if isinstance(data, str):
                # Text frames that follow are joined into one WebSocket message (bounded).
                size = len(data)
                parts = [data]
                while writes and isinstance(writes[0], str) and size + len(writes[0]) <= BATCH_BYTES:
                    size += len(writes[0])
                    parts.append(writes.pop(0))
                if len(parts) > 1:
                    data = "".join(parts)
            await self._send_bytes(data)

    # ------------------------------------------------------------------ sending

    async def _send_bytes(self, data: bytes | str) -> None:
        """Send one encoded frame: str as a text message, bytes as text if UTF-8, else binary."""
        if isinstance(data, str):
            if self.closing:
                return
            self.last_sent = time.monotonic()
            if self.write_text is not None and self.write_text(data):
                return
            # What AsyncWebsocketConsumer.send does, minus two coroutine layers per delivery.
            await self.base_send({"type": "websocket.send", "text": data})
            return
        if self.closing and not data.startswith(b"ERROR"):
            return
        self.last_sent = time.monotonic()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            await self.send(bytes_data=data)
        else:
            await self.send(text_data=text)

    async def _send_frame(self, frame: Frame) -> None:
        await self._flush_pending_writes()
        await self._send_bytes(encode_frame(frame, self.version))

    async def _error_and_close(self, close: _Close) -> None:
        if self.closing:
            return
        headers = [("message", close.message)]
        if close.destination:
            headers.append(("destination", close.destination))
        if close.receipt:
            headers.append(("receipt-id", close.receipt))
        body = (close.body or close.message).encode("utf-8")
        headers += [("content-type", "text/plain"), ("content-length", str(len(body)))]
        try:
            data = encode_frame(Frame("ERROR", tuple(headers), body), self.version)
        except LocalProtocolError:
            data = encode_frame(Frame("ERROR", (("message", "Protocol error"),)), self.version)
        await self._teardown()
        try:
            await self._send_bytes(data)
            await self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ timers and rechecks

    def _timer_due(self, now: float) -> str | None:
        """What the process supervisor must do for this socket now: "beat", "dead" or None."""
        if self.expect_ms and now - self.last_received > self.expect_ms / 1000 * HEARTBEAT_GRACE:
            return "dead"
        if self.send_ms and now - self.last_sent >= self.send_ms / 1000 * 0.9:
            return "beat"
        return None

    def _tick_wanted(self) -> float:
        intervals = [self.recheck_seconds]
        if self.send_ms:
            intervals.append(self.send_ms / 1000 / 2)
        if self.expect_ms:
            intervals.append(self.expect_ms / 1000 / 2)
        return min(intervals)

    def _recheck_entry(self) -> tuple[tuple, list[ClientSubscription]]:
        """What a session re-check of this socket asks: (session, user, checks) and the
        subscriptions those checks belong to, in order."""
        subs = [s for s in self.subs.values() if s.active and s.check is not None]
        checks = tuple((s.check[0], tuple(sorted(s.parts.items()))) for s in subs)
        return (self.session_key, self.user.pk, checks), subs

    def _apply_recheck(
        self, state: permissions.SessionState, subs: list[ClientSubscription], allowed: list[bool]
    ) -> _Close | None:
        if state.user is None:
            return _Close(f"Session ended ({state.reason}): log in again")
        self.user = state.user
        lost = [sub for sub, ok in zip(subs, allowed) if not ok and sub.active]
        if lost:
            names = ", ".join(sub.destination for sub in lost)
            return _Close(f"Permission withdrawn for {names}", destination=lost[0].destination)
        return None

    async def _recheck(self) -> bool:
        """Re-read session and permissions now (before acting on a SEND). False when it ended."""
        self.last_check = time.monotonic()
        entry, subs = self._recheck_entry()
        [(state, allowed)] = await database_sync_to_async(permissions.session_states)([_unpacked(entry)])
        close = self._apply_recheck(state, subs, allowed)
        if close is not None:
            await self._error_and_close(close)
            return False
        return True

    async def going_away(self) -> None:
        """The server is stopping: end the session and close with 1001 so the client reconnects at once."""
        if self.closing:
            return
        await self._teardown()
        # ASGI's websocket.close reaches autobahn's sendClose, which allows an application only
        # 1000 and 3000-4999; 1001 is the server's own word, sent on daphne's protocol itself
        # (daphne's send callable is a partial of its handle_reply with the protocol).
        send = self.base_send
        protocol = send.args[0] if isinstance(send, functools.partial) and send.args else None
        if hasattr(protocol, "sendCloseFrame"):
            protocol.sendCloseFrame(code=GOING_AWAY, reasonUtf8=b"server stopping", isReply=False)
        else:
            await send({"type": "websocket.close", "code": GOING_AWAY})

    def session_logged_out(self) -> None:
        """user_logged_out for our session in this process: end everything now."""
        if not self.closing:
            asyncio.get_running_loop().create_task(self._error_and_close(_Close("Session ended (logged out): log in again")))

    # ------------------------------------------------------------------ cleanup

    def _drop_subscription(self, sub: ClientSubscription) -> None:
        sub.active = False
        self.subs.pop(sub.id, None)
        for broker_destination in sub.broker_destinations:
            subs = self.by_broker.get(broker_destination, [])
            if sub in subs:
                subs.remove(sub)
            if not subs:
                self.by_broker.pop(broker_destination, None)
                if self.hub is not None:
                    self.hub.unsubscribe(broker_destination, self)

    async def _teardown(self) -> None:
        if not hasattr(self, "subs") or self.closing:
            return  # refused during the handshake, or already torn down
        self.closing = True
        _open.discard(self)
        for sub in list(self.subs.values()):
            self._drop_subscription(sub)
        if self.hub is not None:
            self.hub.unsubscribe_all(self)
        if self.session_key and self.session_key in _by_session:
            group = _by_session[self.session_key]
            group.discard(self)
            if not group:
                _by_session.pop(self.session_key, None)
        supervisor = _supervisors.get(asyncio.get_running_loop())
        if supervisor is not None:
            supervisor.consumers.discard(self)
        flusher = _flushers.get(asyncio.get_running_loop())
        if flusher is not None:
            flusher.ready.pop(self, None)


# Escaped content types (a handful of distinct values), so a delivery does not escape its own.
_ESCAPED: dict[str, str] = {}


def _escaped(content_type: str) -> str:
    value = escape(content_type)
    if len(_ESCAPED) < 64:
        _ESCAPED[content_type] = value
    return value


def _weak_ready(consumer: StompConsumer) -> Callable[[], None]:
    """The consumer's _mailbox_ready, without a strong reference to the consumer."""
    ref = weakref.ref(consumer)

    def ready() -> None:
        target = ref()
        if target is not None:
            target._mailbox_ready()

    return ready


def _forget(result: Any) -> None:
    return None


def _release_protocol_on_close(send: Any) -> None:
    """Under daphne, let a closed WebSocket's protocol be freed at once, not at a full collection.

    autobahn resolves the protocol's ``is_closed`` Deferred with the protocol itself
    (autobahn/websocket/protocol.py, ``txaio.resolve(self.is_closed, self)``): protocol ->
    Deferred -> protocol, a reference cycle that keeps every closed connection (daphne's and
    autobahn's protocol objects and buffers) until the cyclic collector's oldest generation is
    collected. Under connect/disconnect churn that raised daphne's RSS plateau by about 10 MiB
    (bench/RESULTS-reliability.md). A callback that drops the result breaks the cycle once the
    connection closed; nothing in daphne or autobahn reads that result (daphne 4.2, autobahn
    26.10). Anything that is not daphne's autobahn protocol with a Deferred there is left alone.
    """
    protocol = send.args[0] if isinstance(send, functools.partial) and send.args else None
    closed = getattr(protocol, "is_closed", None)
    try:
        from autobahn.websocket.protocol import WebSocketProtocol
        from twisted.internet.defer import Deferred
    except ImportError:
        return
    if isinstance(protocol, WebSocketProtocol) and isinstance(closed, Deferred):
        closed.addCallback(_forget)


def _text_frame(text: str) -> bytes:
    """A server's WebSocket text message in one frame: FIN and opcode 1, no mask, the shortest
    length encoding (RFC 6455 section 5.2), then the UTF-8 payload."""
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def _daphne_text_writer(send: Any) -> Callable[[str], bool] | None:
    """Under daphne on plain TCP, a writer of text messages straight to the socket; else None.

    Each message sent through ASGI goes through daphne's reply handler, autobahn's framing and
    Twisted's write path, which registers the socket with the event loop for writing and removes
    it again once the reactor has sent the bytes: with 500 sockets following one item, about half of
    daphne's CPU per delivery (py-spy, bench/RESULTS-ws.md). A server-to-client text frame is two
    to ten bytes of header and the payload (unmasked, RFC 6455 section 5.2), so this frames it and
    sends it at once when nothing waits in Twisted's or autobahn's buffers, leaving to Twisted only
    what the socket did not take. It returns False (the caller then sends through ASGI) unless the
    WebSocket is open. Anything it does not recognise exactly (another server, TLS, a compressing
    extension, a daphne or Twisted of another shape) gets None: the ASGI path, unchanged.
    """
    protocol = send.args[0] if isinstance(send, functools.partial) and send.args else None
    transport = getattr(protocol, "transport", None)
    try:
        from autobahn.websocket.protocol import WebSocketProtocol
        from twisted.internet import tcp
    except ImportError:
        return None
    if (
        not isinstance(protocol, WebSocketProtocol)
        or type(transport) is not tcp.Server
        or getattr(protocol, "_perMessageCompress", None) is not None
        or not all(hasattr(transport, name) for name in ("dataBuffer", "_tempDataBuffer", "socket", "disconnecting"))
        or not hasattr(protocol, "send_queue")
    ):
        return None
    sock = transport.socket
    open_state = WebSocketProtocol.STATE_OPEN

    def write(text: str) -> bool:
        if protocol.state != open_state or transport.disconnecting or not transport.connected:
            return False
        data = _text_frame(text)
        if not transport.dataBuffer and not transport._tempDataBuffer and not protocol.send_queue:
            try:
                sent = sock.send(data)
            except OSError:  # full (EAGAIN) or broken: Twisted's write path takes it and sees the error
                sent = 0
            if sent == len(data):
                return True
            data = data[sent:]
        transport.write(data)
        return True

    return write


class _Supervisor:
    """The timers of every socket on one event loop, in one task instead of one per socket.

    Each tick: heart-beats go out where due, silent browsers are closed, and sockets due for
    their session re-check are checked together: one query for all their sessions, one for
    their users, and each distinct permission check of their subscriptions once. It also notes
    when the hub was last seen connected, which tells a resync after an outage where to start.
    """

    def __init__(self) -> None:
        self.consumers: set[StompConsumer] = set()
        self.task: asyncio.Task | None = None
        self.recheck_task: asyncio.Task | None = None
        # Wall-clock time the hub was last seen connected, per connection (hub.stats.connects).
        self.hub_seen: dict[int, float] = {}

    def add(self, consumer: StompConsumer) -> None:
        self.consumers.add(consumer)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="stomp-websocket-timers")

    async def _run(self) -> None:
        while self.consumers:
            tick = min((c._tick_wanted() for c in self.consumers), default=1.0)
            await asyncio.sleep(min(1.0, max(0.05, tick)))
            now = time.monotonic()
            self._note_hub()
            due = []
            for consumer in list(self.consumers):
                if consumer.closing:
                    self.consumers.discard(consumer)
                    continue
                try:
                    action = consumer._timer_due(now)
                    if action == "dead":
                        logger.info("WebSocket of %s sent no heart-beat; closing", consumer.user)
                        await consumer._error_and_close(_Close("No heart-beat received"))
                        continue
                    if action == "beat":
                        await consumer._send_bytes(b"\n")
                except Exception:
                    logger.exception("WebSocket timer failed")
                if consumer.subs and now - consumer.last_check >= consumer.recheck_seconds:
                    due.append(consumer)
            if due and (self.recheck_task is None or self.recheck_task.done()):
                for consumer in due:
                    consumer.last_check = now
                # Apart from the tick, so a slow database never delays heart-beats.
                self.recheck_task = asyncio.get_running_loop().create_task(self._recheck(due))

    async def _recheck(self, consumers: list[StompConsumer]) -> None:
        asked = [c._recheck_entry() for c in consumers]
        # Tabs of one browser share a session: each distinct (session, user, checks) is asked
        # once (the check runs in a thread but holds the GIL the event loop needs).
        unique = list(dict.fromkeys(entry for entry, _ in asked))
        try:
            answers = dict(zip(unique, await database_sync_to_async(permissions.session_states)(
                [_unpacked(entry) for entry in unique]
            )))
        except Exception:
            logger.exception("Re-checking %d WebSocket sessions failed", len(consumers))
            return
        for consumer, (entry, subs) in zip(consumers, asked):
            if consumer.closing:
                continue
            state, allowed = answers[entry]
            close = consumer._apply_recheck(state, subs, allowed)
            if close is not None:
                await consumer._error_and_close(close)

    def _note_hub(self) -> None:
        hub = current_hub()
        if hub is not None and hub.connected:
            generation = hub.stats.connects
            self.hub_seen[generation] = time.time()
            if len(self.hub_seen) > 4:
                del self.hub_seen[min(self.hub_seen)]

    def hub_up_until(self) -> float | None:
        """The last wall-clock time a previous connection of the hub was seen up (so nothing
        written before it was missed), or None if none was seen."""
        hub = current_hub()
        if hub is None:
            return None
        earlier = [seen for generation, seen in self.hub_seen.items() if generation < hub.stats.connects]
        return max(earlier) if earlier else None


def _unpacked(entry: tuple) -> tuple:
    session_key, user_id, checks = entry
    return session_key, user_id, [(permission, dict(parts)) for permission, parts in checks]


class _Flusher:
    """Sends what waits in the mailboxes of an event loop's sockets, from one task.

    The hub fills mailboxes synchronously while it reads the broker; sockets whose mailbox went
    from empty to non-empty are queued here and drained in order by a single task, so a message
    fanned out to N sockets costs no task creation per socket.
    """

    def __init__(self) -> None:
        self.ready: dict[StompConsumer, None] = {}  # insertion-ordered set
        self.task: asyncio.Task | None = None

    def add(self, consumer: StompConsumer) -> None:
        self.ready[consumer] = None
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="stomp-websocket-flush")

    async def _run(self) -> None:
        ready = self.ready
        while ready:
            consumer = next(iter(ready))
            del ready[consumer]
            try:
                await consumer._flush()
            except Exception:
                logger.exception("Sending to a WebSocket failed")


_flushers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher] = weakref.WeakKeyDictionary()


def _flusher() -> _Flusher:
    loop = asyncio.get_running_loop()
    flusher = _flushers.get(loop)
    if flusher is None:
        flusher = _flushers[loop] = _Flusher()
    return flusher


_supervisors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Supervisor] = weakref.WeakKeyDictionary()


def _supervisor() -> _Supervisor:
    loop = asyncio.get_running_loop()
    supervisor = _supervisors.get(loop)
    if supervisor is None:
        supervisor = _supervisors[loop] = _Supervisor()
    return supervisor


def _since_header(value: str | None, destination: str, receipt: str | None) -> datetime | None:
    """SUBSCRIBE's ``since`` header (milliseconds since the epoch, in the server's clock as
    CONNECTED's ``server-time`` gives it), less RESYNC_MARGIN; None without one."""
    if value is None:
        return None
    try:
        millis = int(value)
        return datetime.fromtimestamp(millis / 1000 - RESYNC_MARGIN, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise _Close(
            f"The since header must be milliseconds since the epoch, not {value[:40]!r}",
            destination=destination, receipt=receipt,
        ) from None


_stop_hook_installed = False


def _close_on_server_stop() -> None:
    """Under daphne (Twisted's reactor), close every socket with 1001 before the server stops.

    Daphne stops (SIGTERM, SIGINT) by cancelling every application instance and dropping the
    connections: browsers see 1006 with no close frame and wait before reconnecting. A
    "before shutdown" trigger runs while the reactor still writes, so the close frames go out.
    Other servers (uvicorn, hypercorn) close sockets on shutdown themselves.
    """
    global _stop_hook_installed
    if _stop_hook_installed:
        return
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return
    _stop_hook_installed = True
    reactor.addSystemEventTrigger("before", "shutdown", _close_all_going_away)


def _close_all_going_away():
    consumers = [c for c in list(_open) if not c.closing]
    if not consumers:
        return None
    from twisted.internet import defer

    logger.info("Server stopping: closing %d WebSockets with %d (going away)", len(consumers), GOING_AWAY)

    async def close_all() -> None:
        tasks = [asyncio.ensure_future(c.going_away()) for c in consumers]
        done, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_CLOSE_TIMEOUT)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logger.warning("Closing a WebSocket on stop failed: %r", task.exception())
        if pending:
            logger.warning("%d WebSockets were not closed within %.1f s of the stop", len(pending), SHUTDOWN_CLOSE_TIMEOUT)
        await asyncio.sleep(0.05)  # one more turn of the reactor writes the last close frames

    return defer.Deferred.fromFuture(asyncio.ensure_future(close_all()))


@receiver(user_logged_out, dispatch_uid="notifications.consumers.logged_out")
def _on_user_logged_out(sender, request=None, user=None, **kwargs) -> None:
    """A logout handled by this process ends that session's sockets at once (others: on recheck)."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if not session_key:
        return
    for consumer in list(_by_session.get(session_key, ())):
        loop = getattr(getattr(consumer, "hub", None), "loop", None)
        if loop is None or loop.is_closed():
            continue
        loop.call_soon_threadsafe(consumer.session_logged_out)
