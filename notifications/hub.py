"""The subscription hub: one asyncio STOMP connection per web process, shared by every WebSocket.

Broker subscriptions are reference-counted (the first local listener of a destination makes the
broker SUBSCRIBE, the last one to leave the UNSUBSCRIBE); each broker MESSAGE is parsed once and
handed to every local listener without awaiting anything, so a slow listener never stalls the
others (each keeps its own bounded Mailbox). The connection heart-beats, reconnects with backoff
and resubscribes after a broker restart, then tells every listener so it can resync from the
database. Everything runs on the event loop: no thread, no blocking call.
"""
from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from . import conf, connection
from .codec import HEARTBEAT, Frame, FrameParser, Limits, StompError, encode_frame, negotiate_heartbeat, parse_heartbeat
from .connection import BrokerState

__all__ = [
    "Event",
    "Listener",
    "Mailbox",
    "Hub",
    "HubStats",
    "get_hub",
    "current_hub",
    "shutdown",
    "publish_threadsafe",
    "encode_payload",
]

logger = logging.getLogger(__name__)

# How long a subscriber waits for the broker's RECEIPT of its SUBSCRIBE before reading the
# snapshot anyway (a reconnect resends snapshots, so a late subscription only delays events).
# A receipt later than NOTIFICATIONS["RECEIPT_TIMEOUT"] ends the connection.
SUBSCRIBE_RECEIPT_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
# How long the first subscriber of a new hub waits for its first connection.
FIRST_CONNECT_WAIT = 3.0
# Messages published through the hub while the broker is away; the oldest go first past this
# (every event also lives in the database, which is what clients resync from).
PUBLISH_BUFFER = 1000
# Messages published through the hub per RECEIPT asked (as the publisher's BATCH_SIZE).
PUBLISH_BATCH = 200
# Bytes waiting in the socket buffer beyond which the broker is considered stuck: the
# connection is dropped and remade rather than growing memory without bound.
MAX_WRITE_BUFFER = 4 * 1024 * 1024
# Incoming heart-beats may be this much later than negotiated before the connection is
# declared dead (the spec leaves the margin to implementations; stomp.py uses 1.5x as well).
HEARTBEAT_GRACE = 1.5
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Event:
    """One broker MESSAGE, parsed once and shared by every local listener of its destination."""

    destination: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    data: dict[str, Any] | None = None  # the JSON object body, if it was one

    @cached_property
    def job_id(self) -> str | None:
        if self.data is not None and self.data.get("type") == "job":
            value = self.data.get("id")
            return str(value) if value is not None else None
        return None

    @cached_property
    def seq(self) -> int | None:
        if self.data is None:
            return None
        value = self.data.get("seq")
        return value if isinstance(value, int) else None

    @property
    def final(self) -> bool:
        return bool(self.data is not None and self.data.get("final"))

    # Computed once per broker message, however many sockets it goes to (cached_property
    # writes the instance __dict__ directly, which a frozen dataclass allows).
    @cached_property
    def content_type(self) -> str | None:
        for name, value in self.headers:
            if name == "content-type":
                return value
        return None

    @cached_property
    def text(self) -> str | None:
        """The body as text for WebSocket text frames, or None if it is not UTF-8."""
        try:
            return self.body.decode("utf-8")
        except UnicodeDecodeError:
            return None


class Listener(Protocol):
    """What the hub calls, on the event loop; neither call may block or await."""

    def hub_event(self, event: Event) -> None: ...

    def hub_reconnected(self) -> None: ...


class Mailbox:
    """A listener's bounded outbox: latest state wins per key, overflow is flagged, never grown.

    put(item, key): an item with the key of one still pending replaces it in place (job events
    carry the whole state, so the newer one supersedes; position is kept so order across jobs
    holds). With ``coalesce_after=n``, keyed items are only merged once ``n`` items are
    pending: a listener that keeps up gets every state (several events read from the broker in
    one go are all delivered), one that falls behind gets the latest. Past ``maxsize`` pending
    items the mailbox refuses the item and sets ``overflowed``: its owner must then resync its
    client (the consumer sends an ERROR and closes; the client reconnects and gets fresh
    snapshots), so nothing is dropped silently. ``on_ready`` is called (synchronously) when the
    mailbox goes from empty to non-empty.
    """

    __slots__ = ("maxsize", "coalesce_after", "_items", "_latest", "_counter", "_on_ready", "overflowed", "coalesced")

    def __init__(self, maxsize: int, on_ready: Callable[[], None], *, coalesce_after: int = 0):
        self.maxsize = maxsize
        self.coalesce_after = coalesce_after
        self._items: dict[int, Any] = {}  # slot number -> (rank, item), in arrival order
        self._latest: dict[Any, int] = {}  # key -> slot of its newest pending item
        self._counter = 0
        self._on_ready = on_ready
        self.overflowed = False
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any, key: Any = None, rank: int | None = None) -> bool:
        """Queue ``item``; with a key, it replaces a pending item of that key unless that one
        has a higher ``rank`` (a job's seq: an older event arriving late never hides a newer one)."""
        if self.overflowed:
            return False
        items = self._items
        was_empty = not items
        if key is not None:
            slot = self._latest.get(key)
            if slot is not None and len(items) >= self.coalesce_after:
                pending_rank, _ = items[slot]
                if rank is None or pending_rank is None or rank >= pending_rank:
                    items[slot] = (rank, item)
                self.coalesced += 1
                return True
        if len(items) >= self.maxsize:
            self.overflowed = True
            return False
        self._counter += 1
        items[self._counter] = (rank, item)
        if key is not None:
            self._latest[key] = self._counter
        if was_empty:
            self._on_ready()
        return True

    def pop_all(self) -> list[Any]:
        items = [item for _, item in self._items.values()]
        self._items.clear()
        self._latest.clear()
        return items


@dataclass
class HubStats:
    """Counters for tests, logs and the benchmark."""

    connects: int = 0
    outages: int = 0
    subscribes_sent: int = 0
    unsubscribes_sent: int = 0
    messages_received: int = 0
    deliveries: int = 0
    published: int = 0  # SEND frames written (re-sends included)
    publish_confirmed: int = 0  # messages a broker RECEIPT confirmed
    publish_resent: int = 0  # messages written again after a connection ended before confirming them
    publish_dropped: int = 0
    receipt_timeouts: int = 0  # connections ended because a RECEIPT did not come in time
    connections_opened: int = 0  # TCP connections opened (connects plus refused or remade ones)


# A message published through the hub: (seq, destination, body, frame headers, on_confirmed).
_Published = tuple[int, str, bytes, list[tuple[str, str]], Callable[[], None] | None]


@dataclass
class _BrokerSubscription:
    sub_id: str
    destination: str
    listeners: dict[int, Listener] = field(default_factory=dict)
    ready: asyncio.Future | None = None  # resolved when the broker confirmed the SUBSCRIBE
    session: int = 0  # the connection (Hub._session_id) it was last subscribed on


def encode_payload(payload: dict | list | str | bytes, headers: dict | None = None) -> tuple[bytes, list[tuple[str, str]]]:
    """Body bytes and headers as the publisher makes them: dict/list -> JSON, str -> text, bytes as is."""
    if isinstance(payload, (dict, list)):
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        content_type = "application/json"
    elif isinstance(payload, str):
        body = payload.encode("utf-8")
        content_type = "text/plain;charset=utf-8"
    elif isinstance(payload, (bytes, bytearray)):
        body = bytes(payload)
        content_type = "application/octet-stream"
    else:
        raise TypeError(f"Cannot publish a {type(payload).__name__}; use a dict, a str or bytes")
    merged = {"content-type": content_type}
    if headers:
        merged.update({str(k): str(v) for k, v in headers.items()})
    return body, list(merged.items())


def _parse_json(headers: tuple[tuple[str, str], ...], body: bytes) -> dict | None:
    if not body.startswith(b"{"):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class _Refused(ConnectionError):
    """The broker answered CONNECT with an ERROR frame."""


class _Remake(Exception):
    """The connection must be made again at once with a workaround (not an outage)."""


@dataclass
class _Awaited:
    """A RECEIPT the hub waits for: a SUBSCRIBE's (``future``) or a batch of SENDs' (``seq``)."""

    what: str
    sent_at: float
    future: asyncio.Future | None = None
    seq: int = 0


class Hub:
    """One STOMP connection for a whole process, shared by its WebSocket consumers.

    Calling contract: create and use it on one event loop. ``start()`` (idempotent) launches the
    connection task; ``await subscribe(destination, listener)`` adds a listener (and waits for
    the broker's receipt of the first SUBSCRIBE, so a snapshot read afterwards misses nothing);
    ``unsubscribe()`` / ``unsubscribe_all()`` remove it; ``publish()`` sends (buffered while the
    broker is away, re-sent until the broker confirmed it); ``await close()`` ends it (idempotent).

    With several broker URLs the hub connects to the first that answers and moves to the next
    when the one in use dies (then backs off once every one was tried). A RECEIPT that does not
    come within ``receipt_timeout`` seconds ends the connection like a lost one.
    """

    def __init__(
        self,
        url: conf.BrokerURL | str | list | tuple | None = None,
        *,
        heartbeat_ms: int | None = None,
        reconnect_min: float | None = None,
        reconnect_max: float | None = None,
        receipt_timeout: float | None = None,
        publish_buffer: int = PUBLISH_BUFFER,
        limits: Limits | None = None,
    ):
        urls = conf.as_broker_urls(url)
        self.urls: tuple[conf.BrokerURL, ...] = urls
        self.heartbeat_ms = conf.get("HEARTBEAT_MS") if heartbeat_ms is None else heartbeat_ms
        self.reconnect_min = conf.get("RECONNECT_MIN") if reconnect_min is None else reconnect_min
        self.reconnect_max = conf.get("RECONNECT_MAX") if reconnect_max is None else reconnect_max
        self.receipt_timeout = float(conf.get("RECEIPT_TIMEOUT") if receipt_timeout is None else receipt_timeout)
        self.limits = limits or Limits()
        self.stats = HubStats()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._states = [BrokerState(u, self.heartbeat_ms) for u in urls]
        self._index = 0  # the broker in use, or the next one to try
        self._subs: dict[str, _BrokerSubscription] = {}
        self._by_sub_id: dict[str, _BrokerSubscription] = {}
        self._ids = itertools.count(1)
        self._awaited: dict[str, _Awaited] = {}  # receipt id -> what waits for it, in sending order
        # Publishing: _outbox is not written yet (the broker is away, or the batch is being
        # gathered), _unconfirmed was written and waits for its batch's RECEIPT; both hold
        # (seq, destination, body, headers, on_confirmed) and together at most publish_buffer
        # messages.
        self._outbox: deque[_Published] = deque()
        self._unconfirmed: deque[_Published] = deque()
        self._publish_seq = itertools.count(1)
        self._flush_scheduled = False
        self._publish_buffer = publish_buffer
        self._drop_logged = False
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._first_attempt = asyncio.Event()  # set once the first connection succeeded or every broker failed
        self._task: asyncio.Task | None = None
        self._closed = False
        self._last_write = 0.0
        self._session_error: str | None = None
        self._established = False  # the current session got past CONNECTED (and workarounds)
        self._version = "1.2"
        self._routing_noted = False
        self._window: int | None = None  # bytes per RECEIPT for a broker with a known defect
        self._session_id = 0  # counts connections, so a subscription knows which one it is on

    # ----------------------------------------------------------------- lifecycle

    @property
    def url(self) -> conf.BrokerURL:
        """The broker in use (or the next one to try)."""
        return self.urls[self._index]

    @property
    def connected(self) -> bool:
        return self._writer is not None and self._connected.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def unconfirmed(self) -> int:
        """Messages published through the hub and not yet confirmed by a broker RECEIPT."""
        return len(self._outbox) + len(self._unconfirmed)

    def start(self) -> None:
        """Start the connection task on the running loop (idempotent)."""
        if self._closed:
            raise RuntimeError("This hub was closed; create a new one")
        if self._task is not None:
            return
        self.loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        # A context of its own, not the caller's: the hub outlives the request or socket that
        # started it, and what it calls back (a consumer's resync after an outage, which reads
        # the database) must not find that caller's finished thread-sensitive executor there.
        self._task = self.loop.create_task(self._run(), name=f"stomp-hub {self.url}", context=contextvars.Context())

    async def wait_connected(self, timeout: float) -> bool:
        """True once connected (and resubscribed), False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Disconnect and stop reconnecting (idempotent)."""
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None:
            try:
                writer.write(encode_frame(Frame("DISCONNECT")))
            except Exception:
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._connection_ended()

    # ----------------------------------------------------------------- subscriptions

    async def subscribe(self, destination: str, listener: Listener) -> None:
        """Deliver the broker's messages for ``destination`` to ``listener`` from now on.

        Returns once the broker confirmed the subscription (or after SUBSCRIBE_RECEIPT_TIMEOUT,
        or at once while the broker is away: the listener is told when it is back).
        """
        self.start()
        if not self._first_attempt.is_set():
            # The first connection is being made (a new process or loop): wait for it, so the
            # first subscriber does not read its snapshot before the broker delivers anything.
            # During an outage return at once instead: the reconnect resync covers the gap.
            try:
                await asyncio.wait_for(self._first_attempt.wait(), FIRST_CONNECT_WAIT)
            except TimeoutError:
                pass
        sub = self._subs.get(destination)
        if sub is None:
            sub = _BrokerSubscription(sub_id=f"hub-{next(self._ids)}", destination=destination)
            self._subs[destination] = sub
            self._by_sub_id[sub.sub_id] = sub
            sub.listeners[id(listener)] = listener
            if self.connected:
                sub.ready = self._send_subscribe(sub)
        else:
            sub.listeners[id(listener)] = listener
        ready = sub.ready
        if ready is not None and not ready.done():
            try:
                await asyncio.wait_for(asyncio.shield(ready), min(SUBSCRIBE_RECEIPT_TIMEOUT, self.receipt_timeout))
            except TimeoutError:
                # The receipt deadline ends the connection if it never comes (logged there);
                # the listener resyncs after the reconnect.
                logger.debug("No receipt for SUBSCRIBE %s yet; returning", destination)

    def unsubscribe(self, destination: str, listener: Listener) -> None:
        """Stop delivering ``destination`` to ``listener``; the last one out unsubscribes the broker."""
        sub = self._subs.get(destination)
        if sub is None or sub.listeners.pop(id(listener), None) is None:
            return
        if sub.listeners:
            return
        del self._subs[destination]
        self._by_sub_id.pop(sub.sub_id, None)
        if self.connected and sub.session == self._session_id:  # else not subscribed on this connection
            # The destination too: STOMP 1.1 and 1.2 need only the id, but StompServer (1.0)
            # ignores an UNSUBSCRIBE without it and CoilMQ refuses one with an ERROR.
            self._write(Frame("UNSUBSCRIBE", (("id", sub.sub_id), ("destination", destination))))
            self.stats.unsubscribes_sent += 1

    def unsubscribe_all(self, listener: Listener) -> None:
        for destination in [d for d, s in self._subs.items() if id(listener) in s.listeners]:
            self.unsubscribe(destination, listener)

    def listener_count(self, destination: str) -> int:
        sub = self._subs.get(destination)
        return len(sub.listeners) if sub else 0

    @property
    def destinations(self) -> list[str]:
        """Destinations with at least one local listener (hence one broker subscription)."""
        return list(self._subs)

    def _send_subscribe(self, sub: _BrokerSubscription) -> asyncio.Future:
        receipt = f"hub-sub-{next(self._ids)}"
        future = self.loop.create_future()
        sub.ready = future
        sub.session = self._session_id
        self._awaited[receipt] = _Awaited(f"SUBSCRIBE {sub.destination}", time.monotonic(), future=future)
        self._write(
            Frame(
                "SUBSCRIBE",
                (("id", sub.sub_id), ("destination", sub.destination), ("ack", "auto"), ("receipt", receipt)),
            )
        )
        self.stats.subscribes_sent += 1
        return future

    # ----------------------------------------------------------------- publishing

    def publish(
        self,
        destination: str,
        payload: dict | list | str | bytes,
        *,
        headers: dict | None = None,
        on_confirmed: Callable[[], None] | None = None,
    ) -> None:
        """Send a message through this connection; buffered (bounded) while the broker is away,
        and kept until the broker's RECEIPT confirms it (re-sent after a reconnect otherwise).

        ``on_confirmed`` is called once, on the loop, when a broker RECEIPT covers this message
        (it must not block); never for a message the bounded buffer dropped or that was still
        unconfirmed when the hub closed (the notifications outbox keeps its row until then).

        Call on the hub's loop (use publish_threadsafe() from other threads). Never raises for
        a broker problem; raises TypeError for a payload that cannot be sent.
        """
        body, frame_headers = encode_payload(payload, headers)
        frame_headers = [("destination", destination), *frame_headers, ("content-length", str(len(body)))]
        self._outbox.append((next(self._publish_seq), destination, body, frame_headers, on_confirmed))
        self._bound_publish_buffer()
        if self.connected and not self._flush_scheduled:
            # Written on the next turn of the loop, with everything else published in this one,
            # so one RECEIPT confirms the whole batch.
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_outbox)

    def _bound_publish_buffer(self) -> None:
        dropped = 0
        while len(self._outbox) + len(self._unconfirmed) > self._publish_buffer:
            # The oldest goes first: an unconfirmed one was sent once already, a pending one is
            # superseded by newer events (every event also lives in the database).
            (self._unconfirmed or self._outbox).popleft()
            dropped += 1
        if dropped:
            self.stats.publish_dropped += dropped
            if not self._drop_logged:
                self._drop_logged = True
                logger.warning(
                    "STOMP hub: more than %d published messages wait for broker %s; dropping the oldest "
                    "(counted in stats.publish_dropped; clients resync from the database)",
                    self._publish_buffer, self.url,
                )

    def _flush_outbox(self) -> None:
        """Write every pending SEND, asking a RECEIPT for each batch of PUBLISH_BATCH (for a
        broker with a byte window, one window's worth once nothing else awaits a RECEIPT)."""
        self._flush_scheduled = False
        if not self.connected:
            return
        window = self._window
        while self._outbox:
            if window is None:
                batch = [self._outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(self._outbox)))]
            else:
                if self._awaited:
                    return  # sent again once the RECEIPTs are in (see _dispatch)
                batch, size = [], 0
                while self._outbox and len(batch) < PUBLISH_BATCH:
                    size += 64 + len(self._outbox[0][2]) + sum(len(k) + len(v) + 2 for k, v in self._outbox[0][3])
                    if batch and size > window:
                        break
                    batch.append(self._outbox.popleft())
            last_seq = batch[-1][0]
            receipt = f"hub-pub-{last_seq}"
            for i, entry in enumerate(batch):
                headers = entry[3]
                written = [*headers, ("receipt", receipt)] if i == len(batch) - 1 else headers
                self._write(Frame("SEND", tuple(written), entry[2]))
                self._unconfirmed.append(entry)
                self.stats.published += 1
            self._awaited[receipt] = _Awaited(f"{len(batch)} SEND frames", time.monotonic(), seq=last_seq)

    def _confirm_published(self, seq: int) -> None:
        unconfirmed = self._unconfirmed
        while unconfirmed and unconfirmed[0][0] <= seq:
            confirm = unconfirmed.popleft()[4]
            self.stats.publish_confirmed += 1
            if confirm is not None:
                try:
                    confirm()
                except Exception:
                    logger.exception("A publish confirmation callback failed")

    # ----------------------------------------------------------------- connection

    def _write(self, frame: Frame | None) -> None:
        writer = self._writer
        if writer is None:
            return
        data = b"\n" if frame is None else encode_frame(frame)
        writer.write(data)
        self._last_write = time.monotonic()
        transport = writer.transport
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            logger.warning("STOMP broker %s is not reading; dropping the connection", self.url)
            transport.abort()

    def _connection_ended(self) -> None:
        """Forget the connection: fail what waited for its receipts, queue the unconfirmed again."""
        writer, self._writer = self._writer, None
        self._connected.clear()
        if writer is not None:
            try:
                writer.transport.abort()
            except Exception:
                pass
        for awaited in self._awaited.values():
            if awaited.future is not None and not awaited.future.done():
                awaited.future.set_result(False)
        self._awaited.clear()
        if self._unconfirmed:
            self.stats.publish_resent += len(self._unconfirmed)
            self._outbox.extendleft(reversed(self._unconfirmed))
            self._unconfirmed.clear()

    async def _run(self) -> None:
        delay = self.reconnect_min
        outage_logged = False
        tried = 0  # brokers tried since the last connection was lost (or since the start)
        while not self._closed:
            state = self._states[self._index]
            started = time.monotonic()
            error = None
            self._established = False
            again_now = False
            try:
                await self._session(state)
            except asyncio.CancelledError:
                raise
            except _Remake:
                again_now = True
            except _Refused as exc:
                error = str(exc)
                # Another host header to try at once? (may resolve a name: not on the loop)
                again_now = await asyncio.to_thread(state.host_refused, str(exc))
            except (OSError, TimeoutError, StompError, ConnectionError) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except Exception as exc:  # a bug must not end live delivery for the whole process
                logger.exception("STOMP hub session failed")
                error = type(exc).__name__
            finally:
                self._connection_ended()
            if self._closed:
                break
            if again_now:
                continue
            established = self._established
            error = self._session_error or error or "connection closed"
            self._session_error = None
            lost = self.url
            if len(self.urls) > 1:
                self._index = (self._index + 1) % len(self.urls)
            if established:
                tried = 1
                if time.monotonic() - started > 2 * self.reconnect_max:
                    delay = self.reconnect_min  # it was up for a while: this is a new outage
                    outage_logged = False
            else:
                tried += 1
            if not outage_logged and (established or tried >= len(self.urls)):
                then = f"; trying {self.url}" if len(self.urls) > 1 else "; reconnecting"
                logger.warning("STOMP hub lost the broker %s (%s)%s", lost, error, then)
                self.stats.outages += 1
                outage_logged = True
            if tried < len(self.urls):
                continue  # the next broker at once
            tried = 0
            self._first_attempt.set()
            await asyncio.sleep(delay)
            delay = min(self.reconnect_max, max(delay * 2, self.reconnect_min))

    async def _open(self, url: conf.BrokerURL) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = connection.ssl_context(url)
        self.stats.connections_opened += 1
        try:
            return await asyncio.wait_for(
                asyncio.open_connection(
                    url.host, url.port, ssl=context, server_hostname=url.host if context else None,
                    ssl_handshake_timeout=CONNECT_TIMEOUT if context else None,
                ),
                CONNECT_TIMEOUT,
            )
        except ssl.SSLError as exc:
            raise ConnectionError(connection.tls_error_text(url, exc)) from None

    async def _session(self, state: BrokerState) -> None:
        url = state.url
        reader, writer = await self._open(url)
        self._writer = writer
        parser = FrameParser(self.limits)
        host = state.host
        offer = state.heartbeats
        connect_headers = [("accept-version", "1.2"), ("host", host)]
        if url.login is not None:
            connect_headers.append(("login", url.login))
        if url.passcode is not None:
            connect_headers.append(("passcode", url.passcode))
        connect_headers.append(("heart-beat", f"{offer[0]},{offer[1]}"))
        self._write(Frame("CONNECT", tuple(connect_headers)))

        connected = await asyncio.wait_for(self._read_connected(reader, parser), CONNECT_TIMEOUT)
        if state.check_defect(connected.get("server"), "STOMP hub"):
            self._write(Frame("DISCONNECT"))
            raise _Remake()
        try:
            broker_hb = parse_heartbeat(connected.get("heart-beat", "0,0"))
        except ValueError:
            broker_hb = (0, 0)  # a broker that cannot say it beats is not held to it
        send_ms, expect_ms = negotiate_heartbeat(offer, broker_hb)
        self._version = connected.get("version") or "1.0"
        self._routing_noted = False
        self._window = state.window
        self.stats.connects += 1
        self._established = True
        tls = None
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            tls = f"TLS {ssl_object.version()}"
        logger.info(
            "STOMP hub connected to %s: %s", url,
            connection.session_summary(
                dict(connected.headers), host=state.host_accepted(), send_ms=send_ms, expect_ms=expect_ms, tls=tls
            ),
        )

        # Renew every subscription before anything else is sent (a broker with a byte window
        # gets them a window at a time, from _resubscribe).
        self._session_id += 1
        subs = list(self._subs.values())
        futures = [] if self._window is not None else [self._send_subscribe(sub) for sub in subs]
        self._connected.set()
        self._first_attempt.set()
        self._drop_logged = False
        self._flush_outbox()
        resync_task = asyncio.create_task(self._resubscribe(futures, subs))
        tasks = [
            asyncio.create_task(self._read_loop(reader, parser, expect_ms)),
            asyncio.create_task(self._receipt_deadline()),
        ]
        if send_ms:
            tasks.append(asyncio.create_task(self._heartbeat(send_ms)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended the connection
        finally:
            for task in (*tasks, resync_task):
                task.cancel()
            await asyncio.gather(*tasks, resync_task, return_exceptions=True)

    async def _read_connected(self, reader: asyncio.StreamReader, parser: FrameParser) -> Frame:
        while True:
            data = await reader.read(READ_CHUNK)
            if not data:
                raise ConnectionError("broker closed the connection before CONNECTED")
            parser.receive_data(data)
            for event in parser.events_received():
                if event is HEARTBEAT:
                    continue
                if event.command == "CONNECTED":
                    return event
                if event.command == "ERROR":
                    message = event.get("message", "") or event.body.decode("utf-8", "replace")[:200]
                    raise _Refused(f"broker refused the connection: {message.strip()}")
                raise ConnectionError(f"unexpected {event.command} frame before CONNECTED")

    async def _heartbeat(self, send_ms: int) -> None:
        interval = send_ms / 1000
        while True:
            await asyncio.sleep(interval / 2)
            if time.monotonic() - self._last_write >= interval / 2:
                self._write(None)

    async def _receipt_deadline(self) -> None:
        """End the connection when a RECEIPT is late: a broker that stopped processing (CoilMQ
        after a heart-beat, a stuck node) must not hold subscriptions and events forever."""
        timeout = self.receipt_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            if not self._awaited:
                continue
            oldest = next(iter(self._awaited.values()))
            late = time.monotonic() - oldest.sent_at
            if late > timeout:
                self.stats.receipt_timeouts += 1
                raise ConnectionError(f"no RECEIPT for {oldest.what} within {timeout:g} s")

    async def _resubscribe(self, futures: list[asyncio.Future], subs: list[_BrokerSubscription]) -> None:
        """Renew ``subs`` a window at a time for a broker with a byte window (the others were
        sent at connect, ``futures``), then wait for every receipt so their listeners resync
        (read the database) only once the broker delivers again."""
        group: list[asyncio.Future] = []
        size = 0
        for sub in subs if self._window is not None else ():
            if self._subs.get(sub.destination) is not sub:
                continue  # unsubscribed while an earlier group was confirmed
            futures.append(self._send_subscribe(sub))
            group.append(futures[-1])
            size += 96 + len(sub.destination)
            if size > self._window // 2:
                if not all(await asyncio.gather(*group)):
                    return
                group, size = [], 0
        self._flush_outbox()
        if futures and not all(await asyncio.gather(*futures)):
            return  # the connection ended first: the next one resyncs
        listeners: dict[int, Listener] = {}
        for sub in subs:  # a subscription made on this connection has nothing to catch up
            listeners.update(sub.listeners)
        for listener in listeners.values():
            try:
                listener.hub_reconnected()
            except Exception:
                logger.exception("A hub listener failed on reconnect")

    async def _read_loop(self, reader: asyncio.StreamReader, parser: FrameParser, expect_ms: int) -> None:
        timeout = expect_ms / 1000 * HEARTBEAT_GRACE if expect_ms else None
        while True:
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
            except TimeoutError:
                raise ConnectionError(f"no heart-beat from the broker for {timeout:.1f} s") from None
            if not data:
                raise ConnectionError("broker closed the connection")
            parser.receive_data(data)
            for event in parser.events_received():
                if event is HEARTBEAT:
                    continue
                self._dispatch(event)

    def _dispatch(self, frame: Frame) -> None:
        command = frame.command
        if command == "MESSAGE":
            self.stats.messages_received += 1
            # A `receipt` header on a MESSAGE (StompServer and CoilMQ copy the sender's) is not
            # ours to act on: only RECEIPT frames confirm anything.
            sub_id = frame.get("subscription")
            if sub_id is not None:
                sub = self._by_sub_id.get(sub_id)
            else:
                # STOMP 1.0 does not require the header: one broker subscription per destination
                # makes the destination as good a key.
                sub = self._subs.get(frame.get("destination", ""))
                if not self._routing_noted:
                    self._routing_noted = True
                    if self._version != "1.0":
                        logger.info(
                            "STOMP broker %s sends MESSAGE frames without a subscription header; routing them by destination",
                            self.url,
                        )
            if sub is None:
                return  # unsubscribed meanwhile
            event = Event(
                destination=sub.destination,
                headers=frame.headers,
                body=frame.body,
                data=_parse_json(frame.headers, frame.body),
            )
            for listener in list(sub.listeners.values()):
                try:
                    listener.hub_event(event)
                    self.stats.deliveries += 1
                except Exception:
                    logger.exception("A hub listener failed on a message for %s", sub.destination)
        elif command == "RECEIPT":
            awaited = self._awaited.pop(frame.get("receipt-id", ""), None)
            if awaited is None:
                return
            if awaited.future is not None and not awaited.future.done():
                awaited.future.set_result(True)
            if awaited.seq:
                self._confirm_published(awaited.seq)
            if self._window is not None and not self._awaited and self._outbox:
                self._flush_outbox()
        elif command == "ERROR":
            message = frame.get("message", "") or frame.body.decode("utf-8", "replace")[:200]
            raise ConnectionError(f"broker sent ERROR: {message}")


# --------------------------------------------------------------------- the process hub

_hub: Hub | None = None


def current_hub() -> Hub | None:
    """The process hub if one is running on a loop that is still open, else None."""
    hub = _hub
    if hub is None or hub.closed or hub.loop is None or hub.loop.is_closed():
        return None
    return hub


def get_hub() -> Hub:
    """The process hub, created and started on the running loop at first use.

    A hub belongs to one event loop: when called on a different loop (tests run one loop per
    test), the old one is dropped and a new one made, reading NOTIFICATIONS settings again.
    """
    global _hub
    loop = asyncio.get_running_loop()
    hub = _hub
    if hub is not None and not hub.closed and hub.loop is loop:
        return hub
    hub = Hub()
    hub.start()
    _hub = hub
    return hub


async def shutdown() -> None:
    """Close the process hub (tests, server shutdown)."""
    global _hub
    hub, _hub = _hub, None
    if hub is not None and hub.loop is asyncio.get_running_loop():
        await hub.close()


def publish_threadsafe(
    destination: str,
    payload: dict | list | str | bytes,
    *,
    headers: dict | None = None,
    on_confirmed: Callable[[], None] | None = None,
    connected: bool = True,
) -> bool:
    """Publish through the process hub from any thread; False when there is no running hub, or
    (``connected=True``, the default) none connected now.

    Used by notifications.publisher.publish_event (job events, wake-ups) and by the outbox relay
    (notify(), durable events: with ``on_confirmed``, called on the hub's loop once a RECEIPT
    covers the message, and ``connected=False``, since the hub buffers and re-sends while it
    reconnects) so that a web process does not open a second broker connection; on False the
    caller falls back to the publisher.
    """
    hub = current_hub()
    if hub is None or (connected and not hub.connected):
        return False
    if threading.get_ident() == hub._thread_id:
        hub.publish(destination, payload, headers=headers, on_confirmed=on_confirmed)
        return True
    encode_payload(payload, headers)  # raise TypeError in the caller's thread, not on the loop
    try:
        hub.loop.call_soon_threadsafe(
            lambda: hub.publish(destination, payload, headers=headers, on_confirmed=on_confirmed)
        )
    except RuntimeError:  # the loop closed in between
        return False
    return True
