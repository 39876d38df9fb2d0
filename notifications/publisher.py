"""Sync publishing to STOMP from Django code and the worker: one connection per process.

`publish()` only appends to a bounded in-memory buffer and wakes a background thread; that
thread owns the only broker connection (stomp.py), sends in order, asks for a RECEIPT after
each batch, and keeps sent-but-unacknowledged messages so a connection lost mid-stream
re-sends them after reconnecting (at-least-once: job events carry a sequence number, so a
duplicate is harmless to a client, a loss is not).

Confirmations: ``publish(..., on_confirmed=callback)`` calls ``callback()`` once the broker's
RECEIPT covers that message (on the client's receiver thread: keep it short, it must not
block). A message that is dropped (buffer full, refused by the broker, publisher closed) or
replaced by a newer one with the same coalesce_key never calls it: the notifications outbox
relies on that, keeping its row until the callback says the broker has the message.

Buffer policy: at most NOTIFICATIONS["PUBLISHER_BUFFER"] messages are held (pending plus
unacknowledged). When full, the *oldest* message is dropped and counted: the newest state is
the one a late subscriber needs, and the database keeps every job's truth anyway. A pending
message with the same coalesce_key as a new one is replaced in place (latest state wins,
position kept), so a job's stream of progress events takes one slot while the broker is away.

Logging: one WARNING when an outage starts and one INFO when the broker is back (with the
number of messages buffered and dropped); nothing per message or per retry. stomp.py's own
per-attempt log lines are filtered out (set the "stomp.py" logger to DEBUG to see them).
"""
from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import stomp

from notifications import conf
from notifications.codec import negotiate_heartbeat, parse_heartbeat
from notifications.connection import BrokerState, session_summary, ssl_context, tls_error_text

__all__ = [
    "publish",
    "get_publisher",
    "Publisher",
    "PublisherStats",
    "Callback",
]

logger = logging.getLogger(__name__)

Callback = Callable[[dict, bytes], None]

# Messages sent per batch before asking for a RECEIPT: one receipt per batch keeps the broker's
# extra work small while bounding what a lost connection forces us to re-send.
BATCH_SIZE = 200
# Sent but not yet acknowledged messages allowed before the thread waits for receipts; keeps a
# slow broker from making us hold an unbounded amount of in-flight data on the socket.
MAX_IN_FLIGHT = 2_000
# After this many connections in a row ended by an ERROR frame with no RECEIPT in between, the
# message at the head of the queue is taken to be what the broker refuses and is dropped (logged):
# one poison message must not stop every later one. Until a RECEIPT arrives again, messages go
# one per RECEIPT, so the head really is the message the broker answered with ERROR.
POISON_AFTER_ERRORS = 3
# Destination prefixes every supported broker shares (DESIGN.md, principle 4).
DESTINATION_PREFIXES = ("/topic/", "/queue/")
# How long one connection attempt (TCP connect, TLS handshake, the CONNECTED frame) may take.
CONNECT_TIMEOUT = 3.0
# At interpreter exit, wait this long for buffered messages to reach the broker.
ATEXIT_FLUSH_TIMEOUT = 2.0
# How long close() waits for the background thread.
CLOSE_JOIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class PublisherStats:
    """A snapshot of a publisher's counters, for tests, the debug report and the admin."""

    connected: bool
    pending: int  # queued, not yet sent
    in_flight: int  # sent, waiting for the broker's RECEIPT
    published: int  # publish() calls accepted
    sent: int  # SEND frames written (re-sends after a reconnect included)
    acknowledged: int  # messages confirmed by a RECEIPT
    coalesced: int  # pending messages replaced by a newer one with the same coalesce_key
    dropped: int  # oldest messages dropped because the buffer was full
    rejected: int  # publish() calls refused (payload not serialisable, publisher closed)
    outages: int  # times the broker became unreachable
    connects: int  # successful connections
    receipt_timeouts: int = 0  # connections ended because a RECEIPT did not come within RECEIPT_TIMEOUT


class _Entry:
    """One queued message. Mutable on purpose: coalescing swaps the body in place so the
    message keeps its position (and its sequence number) in the buffer."""

    __slots__ = ("seq", "destination", "body", "headers", "key", "confirm")

    def __init__(
        self,
        seq: int,
        destination: str,
        body: bytes,
        headers: dict,
        key: str | None,
        confirm: Callable[[], None] | None = None,
    ):
        self.seq = seq
        self.destination = destination
        self.body = body
        self.headers = headers
        self.key = key
        self.confirm = confirm  # called once a RECEIPT covers this message


_attempt = threading.local()  # .error: why stomp.py's last connection attempt in this thread failed


class _QuietStompLogs(logging.Filter):
    """Drop stomp.py's per-attempt INFO/WARNING/ERROR lines: the publisher reports each outage
    once itself. Lines pass when someone set the "stomp.py" logger to DEBUG to investigate.

    stomp.py raises a bare ConnectFailedException and only logs why (refused, TLS certificate
    not trusted...): the reason is kept here, per thread, for the publisher's own message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "could not connect to host %s, port %s: %s" and len(record.args or ()) == 3:
            _attempt.error = record.args[2]
        elif record.msg == "Could not find file %s" and record.args:
            _attempt.error = FileNotFoundError(f"file not found: {record.args[0]}")
        if record.levelno < logging.INFO:
            return True
        return logging.getLogger("stomp.py").level == logging.DEBUG


_stomp_filter_installed = False


def _install_stomp_log_filter() -> None:
    global _stomp_filter_installed
    if not _stomp_filter_installed:
        logging.getLogger("stomp.py").addFilter(_QuietStompLogs())
        _stomp_filter_installed = True


class _Listener(stomp.ConnectionListener):
    """Forwards stomp.py's callbacks (on its receiver thread) to the publisher, tagged with
    the connection generation so late callbacks of an old connection are ignored."""

    def __init__(self, publisher: Publisher, generation: int):
        self._publisher = publisher
        self._generation = generation

    def on_connected(self, frame) -> None:
        self._publisher._on_connected(self._generation, frame)

    def on_error(self, frame) -> None:
        self._publisher._on_error(self._generation, frame)

    def on_receipt(self, frame) -> None:
        self._publisher._on_receipt(self._generation, frame.headers.get("receipt-id", ""))

    def on_message(self, frame) -> None:
        self._publisher._on_message(frame)

    def on_disconnected(self) -> None:
        self._publisher._on_lost(self._generation, "connection closed")

    def on_heartbeat_timeout(self) -> None:
        self._publisher._on_lost(self._generation, "heart-beat timeout")


class Publisher:
    """Owns one STOMP connection on a background thread; see the module docstring.

    Every argument defaults to the NOTIFICATIONS setting of the same name (``url``: BROKER_URL,
    one broker or several). With several brokers it connects to the first that answers and
    moves to the next when the one in use dies (backing off once every one was tried). A
    RECEIPT that does not come within ``receipt_timeout`` seconds ends the connection like a
    lost one. The thread starts on first use (publish, subscribe or flush).
    """

    def __init__(
        self,
        url: str | list | tuple | conf.BrokerURL | None = None,
        *,
        buffer_size: int | None = None,
        reconnect_min: float | None = None,
        reconnect_max: float | None = None,
        heartbeat_ms: int | None = None,
        receipt_timeout: float | None = None,
    ) -> None:
        urls = conf.as_broker_urls(url)
        self.urls: tuple[conf.BrokerURL, ...] = urls
        self._index = 0  # the broker in use, or the next one to try
        self.buffer_size = int(buffer_size if buffer_size is not None else conf.get("PUBLISHER_BUFFER"))
        if self.buffer_size < 1:
            raise ValueError(f"PUBLISHER_BUFFER must be at least 1, not {self.buffer_size}")
        self.reconnect_min = float(reconnect_min if reconnect_min is not None else conf.get("RECONNECT_MIN"))
        self.reconnect_max = float(reconnect_max if reconnect_max is not None else conf.get("RECONNECT_MAX"))
        if not 0 < self.reconnect_min <= self.reconnect_max:
            raise ValueError(
                f"RECONNECT_MIN ({self.reconnect_min}) must be positive and at most RECONNECT_MAX ({self.reconnect_max})"
            )
        self.heartbeat_ms = int(heartbeat_ms if heartbeat_ms is not None else conf.get("HEARTBEAT_MS"))
        self.receipt_timeout = float(receipt_timeout if receipt_timeout is not None else conf.get("RECEIPT_TIMEOUT"))
        self._states = [BrokerState(u, self.heartbeat_ms) for u in urls]
        self._pid = os.getpid()

        self._cond = threading.Condition()
        self._pending: deque[_Entry] = deque()
        self._by_key: dict[str, _Entry] = {}
        self._in_flight: deque[_Entry] = deque()
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._subscriptions: dict[str, tuple[str, Callback]] = {}
        self._new_subscriptions: list[str] = []
        self._sub_ids = itertools.count(1)

        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._conn: stomp.Connection12 | None = None
        self._generation = 0
        self._connected = False
        self._connect_event = threading.Event()
        self._connect_error: str | None = None
        self._connect_refused = False  # the broker answered CONNECT with an ERROR frame
        self._connected_headers: dict[str, str] = {}
        self._lost_reason: str | None = None
        # Since when a RECEIPT (for SENDs or a SUBSCRIBE) is awaited with none arriving; None
        # when nothing is awaited. Past receipt_timeout the connection is taken for dead.
        self._receipt_clock: float | None = None
        self._sub_receipts: set[str] = set()
        self._routing_noted = False
        self._lost_url: conf.BrokerURL | None = None
        self._session = ""  # what the broker negotiated, for the connect log line
        self._window: int | None = None  # bytes per RECEIPT for a broker with a known defect
        self._error_streak = 0  # connections ended by an ERROR frame since the last RECEIPT
        self._confirming = 0  # RECEIPTs whose on_confirmed callbacks are running (flush waits for them)

        self._outage_since: float | None = None
        self._outage_dropped = 0
        self._overflow_logged = False
        self._counts = dict.fromkeys(
            ("published", "sent", "acknowledged", "coalesced", "dropped", "rejected", "outages", "connects",
             "receipt_timeouts"), 0
        )

    @property
    def url(self) -> conf.BrokerURL:
        """The broker in use (or the next one to try)."""
        return self.urls[self._index]

    @property
    def _where(self) -> str:
        # Logs get this text (password masked), never the BrokerURL whose repr shows the passcode.
        return str(self.url)

    # ----------------------------------------------------------------- caller side

    def publish(
        self,
        destination: str,
        payload: dict | list | str | bytes,
        *,
        headers: dict | None = None,
        coalesce_key: str | None = None,
        on_confirmed: Callable[[], None] | None = None,
    ) -> None:
        """Queue one message; never blocks on the network and never raises.

        dict/list payloads become JSON (content-type application/json), str becomes UTF-8
        text/plain, bytes are sent as they are (application/octet-stream unless headers say).
        ``on_confirmed`` is called once the broker's RECEIPT covers this message (see the
        module docstring); never for a message that is dropped, refused or coalesced away.
        """
        try:
            body, content_type = _encode(payload)
            frame_headers = {"content-type": content_type}
            if headers:
                frame_headers.update({str(k): str(v) for k, v in headers.items()})
            _check_destination(destination)
        except Exception as exc:
            with self._cond:
                self._counts["rejected"] += 1
            logger.error("Not publishing to %r: %s", destination, exc)
            return
        try:
            self._enqueue(destination, body, frame_headers, coalesce_key, on_confirmed)
        except Exception:  # never let a publishing problem fail the caller's work
            logger.exception("Publisher failed to queue a message for %s", destination)

    def _enqueue(
        self,
        destination: str,
        body: bytes,
        headers: dict,
        key: str | None,
        confirm: Callable[[], None] | None = None,
    ) -> None:
        with self._cond:
            if self._closing:
                self._counts["rejected"] += 1
                logger.debug("Publisher closed; dropping a message for %s", destination)
                return
            self._counts["published"] += 1
            if key is not None:
                existing = self._by_key.get(key)
                if existing is not None:
                    existing.destination = destination
                    existing.body = body
                    existing.headers = headers
                    existing.confirm = confirm  # the replaced message is never sent: nothing to confirm
                    self._counts["coalesced"] += 1
                    self._ensure_thread()
                    return
            seq = next(self._seq)
            self._last_seq = seq
            entry = _Entry(seq, destination, body, headers, key, confirm)
            self._pending.append(entry)
            if key is not None:
                self._by_key[key] = entry
            while len(self._pending) + len(self._in_flight) > self.buffer_size and self._pending:
                self._drop_oldest()
            self._ensure_thread()
            self._cond.notify_all()

    def _drop_oldest(self) -> None:
        # Called with the lock held. In-flight messages are already on the wire, so the
        # oldest *pending* one goes; the bound still holds because in-flight is capped too.
        victim = self._pending.popleft()
        if victim.key is not None and self._by_key.get(victim.key) is victim:
            del self._by_key[victim.key]
        self._counts["dropped"] += 1
        if self._outage_since is not None:
            self._outage_dropped += 1
        elif not self._overflow_logged:
            self._overflow_logged = True
            logger.warning(
                "STOMP publisher buffer full (%d messages) while connected to %s: dropping the oldest",
                self.buffer_size,
                self._where,
            )

    def flush(self, timeout: float) -> bool:
        """Wait until every message queued before this call was acknowledged by the broker
        (a RECEIPT) and its on_confirmed callback returned. True if so within `timeout` seconds;
        False on timeout or if some of those messages had to be dropped."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            target = self._last_seq
            dropped_before = self._counts["dropped"]
            if target and not self._closing:
                self._ensure_thread()
            while True:
                oldest = self._oldest_unacked()
                if (oldest is None or oldest > target) and not self._confirming:
                    return self._counts["dropped"] == dropped_before
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return False
                self._cond.wait(remaining)

    def start(self) -> None:
        """Start connecting now rather than at the first publish (returns at once)."""
        with self._cond:
            if not self._closing:
                self._ensure_thread()

    def _oldest_unacked(self) -> int | None:
        # Both deques are in sequence order: coalescing keeps positions, re-sends go in front.
        if self._in_flight:
            return self._in_flight[0].seq
        if self._pending:
            return self._pending[0].seq
        return None

    def subscribe(self, destination: str, callback: Callback) -> None:
        """Receive messages sent to `destination`: callback(headers: dict, body: bytes) runs on
        the client's receiver thread (keep it short). The subscription is renewed after every
        reconnect. A message published after this call on the same publisher is received."""
        _check_destination(destination)
        with self._cond:
            if self._closing:
                raise RuntimeError("Publisher is closed")
            sub_id = f"sub-{next(self._sub_ids)}"
            self._subscriptions[sub_id] = (destination, callback)
            self._new_subscriptions.append(sub_id)
            self._ensure_thread()
            self._cond.notify_all()

    def stats(self) -> PublisherStats:
        with self._cond:
            return PublisherStats(
                connected=self._connected,
                pending=len(self._pending),
                in_flight=len(self._in_flight),
                **self._counts,
            )

    @property
    def connected(self) -> bool:
        return self._connected

    def close(self, timeout: float = CLOSE_JOIN_TIMEOUT) -> None:
        """Stop the thread and disconnect. Unsent messages are discarded (call flush() first to
        deliver them). Idempotent; later publish() calls are counted as rejected."""
        with self._cond:
            if self._closing:
                thread = None
            else:
                self._closing = True
                thread = self._thread
                self._cond.notify_all()
        self._connect_event.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # ----------------------------------------------------------------- the thread

    def _ensure_thread(self) -> None:
        # Lock held by the caller. Starting a thread is not socket I/O and happens once.
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._run, name="stomp-publisher", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        backoff = self.reconnect_min
        tried = 0  # brokers tried since the last connection was lost (or since the start)
        try:
            while not self._closing:
                if not self._connected:
                    error = self._connect(self._states[self._index])
                    if error is not None:
                        tried += 1
                        self._next_broker()
                        if tried < len(self.urls):
                            continue  # the next broker at once
                        tried = 0
                        self._note_outage(error)
                        with self._cond:
                            if not self._closing:
                                self._cond.wait(backoff)
                        backoff = min(backoff * 2, self.reconnect_max)
                        continue
                    tried = 0
                    backoff = self.reconnect_min
                    self._note_back()
                self._pump()
                if self._closing:
                    break
                # The connection was lost: the next broker first (the same one if it is alone).
                self._lost_url = self.url
                tried = 1
                self._next_broker()
        except Exception:
            logger.exception("STOMP publisher thread crashed; messages are no longer sent")
        finally:
            self._teardown(graceful=True)

    def _next_broker(self) -> None:
        self._index = (self._index + 1) % len(self.urls)

    def _pump(self) -> None:
        """Send what is pending until the connection is lost or the publisher closes."""
        while True:
            with self._cond:
                while (
                    not self._closing
                    and self._lost_reason is None
                    and not self._new_subscriptions
                    and (not self._pending or self._room() <= 0)
                ):
                    self._cond.wait(self._receipt_wait())
                    self._check_receipt_deadline()
                if self._closing:
                    return
                if self._lost_reason is not None:
                    reason = self._lost_reason
                    self._requeue_in_flight()
                    self._note_error_loss(reason)
                    break
                new_subs = [(i, self._subscriptions[i][0]) for i in self._new_subscriptions]
                self._new_subscriptions.clear()
                batch: list[_Entry] = []
                room = self._room()
                size = 0
                while self._pending and len(batch) < room:
                    if self._window is not None:
                        size += _frame_size(self._pending[0])
                        if batch and size > self._window:
                            break
                    entry = self._pending.popleft()
                    if entry.key is not None and self._by_key.get(entry.key) is entry:
                        del self._by_key[entry.key]
                    batch.append(entry)
                    self._in_flight.append(entry)
                generation = self._generation
                conn = self._conn
                if (new_subs or batch) and self._receipt_clock is None:
                    self._receipt_clock = time.monotonic()
            try:
                for sub_id, destination in new_subs:
                    receipt = f"pub-{generation}-{sub_id}"
                    with self._cond:
                        self._sub_receipts.add(receipt)
                    conn.subscribe(destination, id=sub_id, ack="auto", headers={"receipt": receipt})
                for i, entry in enumerate(batch):
                    headers = entry.headers
                    if i == len(batch) - 1:
                        headers = {**headers, "receipt": f"pub-{generation}-{entry.seq}"}
                    conn.send(entry.destination, entry.body, headers=headers)
                    with self._cond:
                        self._counts["sent"] += 1
            except Exception as exc:
                with self._cond:
                    if self._lost_reason is None:
                        self._lost_reason = f"send failed: {exc or type(exc).__name__}"
                    reason = self._lost_reason
                    self._requeue_in_flight()
                    self._note_error_loss(reason)
                break
        self._teardown(graceful=False)
        self._note_outage(reason)

    def _receipt_wait(self) -> float | None:
        # Lock held. How long the pump may sleep before the receipt deadline needs a look.
        if self._receipt_clock is None:
            return None
        return max(0.0, self._receipt_clock + self.receipt_timeout - time.monotonic()) + 0.01

    def _check_receipt_deadline(self) -> None:
        # Lock held. A broker that accepts frames but stops confirming them (CoilMQ after a
        # heart-beat, a stuck node) must not hold messages forever: treat it as lost.
        clock = self._receipt_clock
        if clock is None or self._lost_reason is not None or time.monotonic() - clock <= self.receipt_timeout:
            return
        self._counts["receipt_timeouts"] += 1
        waiting = f"{len(self._in_flight)} messages" if self._in_flight else "a SUBSCRIBE"
        self._lost_reason = f"no RECEIPT for {waiting} within {self.receipt_timeout:g} s"
        logger.warning(
            "STOMP broker %s sent no RECEIPT for %s within %g s; reconnecting (they will be re-sent)",
            self._where, waiting, self.receipt_timeout,
        )

    def _room(self) -> int:
        # Lock held. How many pending messages may be sent now (0: wait for a RECEIPT).
        if self._error_streak:
            # One message at a time while the broker has been answering with ERROR frames.
            return 1 - len(self._in_flight)
        if self._window is not None:
            # A broker that takes only so many bytes at once: one window per RECEIPT.
            return 0 if self._in_flight else BATCH_SIZE
        return min(BATCH_SIZE, MAX_IN_FLIGHT - len(self._in_flight))

    def _note_error_loss(self, reason: str) -> None:
        # Lock held, in-flight already re-queued.
        if not reason.startswith("ERROR frame"):
            return
        self._error_streak += 1
        if self._error_streak >= POISON_AFTER_ERRORS and self._pending:
            victim = self._pending.popleft()
            if victim.key is not None and self._by_key.get(victim.key) is victim:
                del self._by_key[victim.key]
            self._counts["dropped"] += 1
            self._error_streak = 1  # stay careful until a RECEIPT proves the rest is accepted
            logger.error(
                "Dropped a message to %s that broker %s refused %d times in a row (%s)",
                victim.destination, self._where, POISON_AFTER_ERRORS, reason,
            )

    def _requeue_in_flight(self) -> None:
        # Lock held. Unacknowledged messages go back in front, in order; one superseded by a
        # newer pending message with the same coalesce_key is dropped instead (latest wins).
        while self._in_flight:
            entry = self._in_flight.pop()
            if entry.key is not None and entry.key in self._by_key:
                continue
            self._pending.appendleft(entry)
            if entry.key is not None:
                self._by_key[entry.key] = entry

    def _connect(self, state: BrokerState) -> str | None:
        """Connect to one broker, trying the host headers it may need and remaking the connection
        once for a known defect's workaround; None on success, else the reason."""
        while True:
            error = self._connect_once(state)
            if error is _REMAKE:
                continue
            if error is not None and self._connect_refused and state.host_refused(error):
                continue  # another host header to try at once
            return error

    def _connect_once(self, state: BrokerState) -> str | object | None:
        """One connection attempt; None on success, _REMAKE, or the reason it failed."""
        _install_stomp_log_filter()
        with self._cond:
            self._generation += 1
            generation = self._generation
            self._connect_event.clear()
            self._connect_error = None
            self._connect_refused = False
            self._connected_headers = {}
            self._lost_reason = None
            self._receipt_clock = None
            self._sub_receipts.clear()
        url = state.url
        host = state.host
        heartbeats = state.heartbeats
        conn = stomp.Connection12(
            [(url.host, url.port)],
            prefer_localhost=False,
            try_loopback_connect=False,
            reconnect_sleep_initial=0.0,
            reconnect_sleep_increase=0.0,
            reconnect_sleep_jitter=0.0,
            reconnect_attempts_max=1,
            timeout=CONNECT_TIMEOUT,
            heartbeats=heartbeats,
            # The STOMP host header names the virtual host (see connection.host_candidates).
            vhost=host,
            auto_decode=False,
        )
        if url.tls:
            try:
                ssl_context(url)  # stomp.py retries forever on a file it cannot find: check first
            except OSError as exc:
                return str(exc)
            # stomp.py verifies the certificate and the host name (a TLS client context), with
            # the system's CAs unless ca_file names others.
            conn.set_ssl(
                for_hosts=[(url.host, url.port)], ca_certs=url.ca_file, cert_file=url.cert_file, key_file=url.key_file
            )
        conn.set_listener("publisher", _Listener(self, generation))
        _attempt.error = None
        try:
            conn.connect(url.login, url.passcode, wait=False, with_connect_command=True)
        except Exception as exc:
            _stop_quietly(conn)
            cause = _attempt.error
            if isinstance(cause, ssl.SSLError):
                return tls_error_text(url, cause)
            return _describe(cause) if isinstance(cause, BaseException) else _describe(exc)
        _set_nodelay(conn)
        if not self._connect_event.wait(CONNECT_TIMEOUT) or self._closing:
            _stop_quietly(conn)
            return "no CONNECTED frame within %.0f s" % CONNECT_TIMEOUT
        if self._connect_error is not None:
            _stop_quietly(conn)
            return self._connect_error
        headers = self._connected_headers
        if state.check_defect(headers.get("server"), "STOMP publisher"):
            _stop_quietly(conn)
            return _REMAKE
        with self._cond:
            lost = self._lost_reason
            if lost is None:
                self._conn = conn
                self._connected = True
                self._window = state.window
                self._counts["connects"] += 1
                self._routing_noted = False
                # Renew every subscription on the new connection before anything else is sent.
                self._new_subscriptions = list(self._subscriptions)
                self._cond.notify_all()
        if lost is not None:
            _stop_quietly(conn)
            return lost
        send_ms, expect_ms = _negotiated(heartbeats, headers.get("heart-beat"))
        sock = getattr(conn.transport, "socket", None)
        tls = f"TLS {sock.version()}" if isinstance(sock, ssl.SSLSocket) else None
        self._session = session_summary(headers, host=state.host_accepted(), send_ms=send_ms, expect_ms=expect_ms, tls=tls)
        return None

    def _teardown(self, *, graceful: bool) -> None:
        with self._cond:
            conn, self._conn = self._conn, None
            self._connected = False
            self._cond.notify_all()
        if conn is None:
            return
        if graceful:
            try:
                conn.disconnect()
            except Exception:
                pass
        _stop_quietly(conn)

    def _note_outage(self, reason: str) -> None:
        with self._cond:
            if self._outage_since is not None or self._closing:
                logger.debug("STOMP broker %s still unreachable: %s", self._where, reason)
                return
            self._outage_since = time.monotonic()
            self._outage_dropped = 0
            self._counts["outages"] += 1
            waiting = len(self._pending) + len(self._in_flight)
        logger.warning(
            "STOMP broker %s unreachable (%s); buffering up to %d messages (%d waiting), "
            "retrying every %g-%g s",
            self._where,
            reason,
            self.buffer_size,
            waiting,
            self.reconnect_min,
            self.reconnect_max,
        )

    def _note_back(self) -> None:
        with self._cond:
            since, self._outage_since = self._outage_since, None
            dropped, self._outage_dropped = self._outage_dropped, 0
            waiting = len(self._pending) + len(self._in_flight)
            self._overflow_logged = False
        lost, self._lost_url = self._lost_url, None
        if since is None:
            logger.info("STOMP publisher connected to %s: %s", self._where, self._session)
            return
        back = "back" if lost is None or lost == self.url else f"in use instead of {lost}"
        logger.info(
            "STOMP broker %s %s after %.1f s; sending %d buffered messages (%d dropped while it was away); %s",
            self._where,
            back,
            time.monotonic() - since,
            waiting,
            dropped,
            self._session,
        )

    # ------------------------------------------------- stomp.py receiver-thread callbacks

    def _on_connected(self, generation: int, frame) -> None:
        if generation == self._generation:
            self._connected_headers = dict(frame.headers)
            self._connect_event.set()

    def _on_error(self, generation: int, frame) -> None:
        message = frame.headers.get("message", "") or (frame.body or b"")[:200].decode("utf-8", "replace")
        if generation != self._generation:
            return
        if not self._connect_event.is_set():
            self._connect_error = f"broker refused the connection: {message.strip()}"
            self._connect_refused = True
            self._connect_event.set()
        else:
            # After an ERROR frame the broker closes the connection (STOMP 1.2); the resulting
            # disconnect re-sends whatever was not acknowledged.
            # Once per run of ERROR frames: a refused message is retried a few times before it is dropped.
            log = logger.error if self._error_streak == 0 else logger.debug
            log("STOMP broker %s sent an ERROR frame: %s", self._where, message.strip())
            self._on_lost(generation, f"ERROR frame: {message.strip()}")

    def _on_receipt(self, generation: int, receipt_id: str) -> None:
        prefix = f"pub-{generation}-"
        if not receipt_id.startswith(prefix):
            return
        with self._cond:
            if receipt_id in self._sub_receipts:  # a SUBSCRIBE's
                self._sub_receipts.discard(receipt_id)
                self._receipt_clock = time.monotonic() if self._in_flight or self._sub_receipts else None
                return
        try:
            seq = int(receipt_id[len(prefix):])
        except ValueError:
            return
        confirmed: list[Callable[[], None]] = []
        with self._cond:
            if generation != self._generation:
                return
            # A RECEIPT covers every frame sent before it on this connection.
            while self._in_flight and self._in_flight[0].seq <= seq:
                entry = self._in_flight.popleft()
                self._counts["acknowledged"] += 1
                if entry.confirm is not None:
                    confirmed.append(entry.confirm)
            self._error_streak = 0
            self._receipt_clock = time.monotonic() if self._in_flight or self._sub_receipts else None
            if not self._pending and not self._in_flight:
                self._overflow_logged = False
            if confirmed:
                self._confirming += 1
            else:
                self._cond.notify_all()
        if not confirmed:
            return
        try:
            for confirm in confirmed:  # outside the lock: a callback may publish again
                try:
                    confirm()
                except Exception:
                    logger.exception("A publish confirmation callback failed")
        finally:
            with self._cond:
                self._confirming -= 1
                self._cond.notify_all()

    def _on_lost(self, generation: int, reason: str) -> None:
        with self._cond:
            if generation != self._generation:
                return
            if not self._connect_event.is_set():
                self._connect_error = reason
                self._connect_event.set()
            if self._lost_reason is None:
                self._lost_reason = reason
            self._cond.notify_all()

    def _on_message(self, frame) -> None:
        # A `receipt` header on a MESSAGE (StompServer and CoilMQ copy the sender's) is not ours
        # to act on: stomp.py and _on_receipt look at RECEIPT frames only.
        headers = dict(frame.headers)
        if "subscription" in headers:
            entry = self._subscriptions.get(headers["subscription"])
            entries = [entry] if entry is not None else []
        else:
            # STOMP 1.0 does not require the header: route by destination instead.
            destination = headers.get("destination")
            entries = [e for e in list(self._subscriptions.values()) if e[0] == destination]
            if not self._routing_noted:
                self._routing_noted = True
                if (self._connected_headers.get("version") or "1.0") != "1.0":
                    logger.info(
                        "STOMP broker %s sends MESSAGE frames without a subscription header; routing them by destination",
                        self._where,
                    )
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body).encode()
        for destination, callback in entries:
            try:
                callback(headers, body)
            except Exception:
                logger.exception("Subscriber callback for %s failed", destination)


def _encode(payload: Any) -> tuple[bytes, str]:
    if isinstance(payload, bytes):
        return payload, "application/octet-stream"
    if isinstance(payload, str):
        return payload.encode("utf-8"), "text/plain;charset=utf-8"
    if isinstance(payload, (dict, list)):
        from django.core.serializers.json import DjangoJSONEncoder

        text = json.dumps(payload, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8"), "application/json"
    raise TypeError(f"payload must be a dict, list, str or bytes, not {type(payload).__name__}")


def _check_destination(destination: Any) -> None:
    if not isinstance(destination, str) or not destination.startswith(DESTINATION_PREFIXES):
        raise ValueError(f"destination must start with /topic/ or /queue/, not {destination!r}")
    name = destination.split("/", 2)[2]
    if not name or any(c in name for c in "\r\n\0"):
        raise ValueError(f"destination {destination!r} needs a name without line breaks after the prefix")


_REMAKE = object()  # _connect_once: connect again at once (a known defect's workaround)


def _frame_size(entry: _Entry) -> int:
    """About the bytes of the SEND frame for ``entry`` (command, headers, body, NUL)."""
    headers = sum(len(k) + len(v) + 2 for k, v in entry.headers.items())
    return 64 + len(entry.destination) + headers + len(entry.body)


def _negotiated(offered: tuple[int, int], header: str | None) -> tuple[int, int]:
    """(send, expect) milliseconds after the broker's CONNECTED heart-beat header, as stomp.py computes them."""
    try:
        return negotiate_heartbeat(offered, parse_heartbeat(header or "0,0"))
    except ValueError:
        return 0, 0


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _set_nodelay(conn: stomp.Connection12) -> None:
    """Turn off Nagle's algorithm on the connection's socket (stomp.py leaves it on).

    stomp.py writes each frame whole, and a job event is two frames (its job's topic, then
    jobs.all): with Nagle the second waited for the broker's delayed ACK of the first, up to
    40 ms on Linux (measured here: p99 26 ms from publish() to a subscriber, 1.4 ms without).
    """
    sock = getattr(conn.transport, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket: nothing to turn off


def _stop_quietly(conn: stomp.Connection12) -> None:
    try:
        conn.transport.disconnect_socket()
    except Exception:
        pass


# --------------------------------------------------------------------- process singleton

_publisher: Publisher | None = None
_singleton_lock = threading.Lock()
_atexit_registered = False


def get_publisher() -> Publisher:
    """This process's publisher (created on first use from the NOTIFICATIONS settings).

    A forked child gets a fresh one: the parent's thread and socket do not exist there."""
    global _publisher, _atexit_registered
    publisher = _publisher
    if publisher is not None and publisher._pid == os.getpid():
        return publisher
    with _singleton_lock:
        if _publisher is None or _publisher._pid != os.getpid():
            _publisher = Publisher()
            if not _atexit_registered:
                atexit.register(_flush_at_exit)
                _atexit_registered = True
        return _publisher


def publish(
    destination: str,
    payload: dict | list | str | bytes,
    *,
    headers: dict | None = None,
    coalesce_key: str | None = None,
    on_confirmed: Callable[[], None] | None = None,
) -> None:
    """Publish through this process's publisher; never blocks on the network, never raises.

    ``on_confirmed`` is called once the broker's RECEIPT covers the message (Publisher.publish)."""
    try:
        publisher = get_publisher()
    except Exception:
        logger.exception("No STOMP publisher (check NOTIFICATIONS['BROKER_URL']); message for %s dropped", destination)
        return
    publisher.publish(destination, payload, headers=headers, coalesce_key=coalesce_key, on_confirmed=on_confirmed)


def publish_event(
    destination: str,
    payload: dict | list | str | bytes,
    *,
    coalesce_key: str | None = None,
) -> None:
    """Publish an event from any code in any process; never raises (the database row is the real copy).

    In a web process whose hub is connected, the hub's connection carries it, so the process
    keeps one broker connection (DESIGN principle 2); elsewhere (worker, shell, WSGI, a web
    process whose hub is reconnecting) publish() does, with ``coalesce_key`` for its buffer.
    """
    from . import hub

    try:
        if hub.publish_threadsafe(destination, payload):
            return
    except Exception:
        logger.exception("Could not hand an event for %s to the hub; using the publisher", destination)
    try:
        publish(destination, payload, coalesce_key=coalesce_key)
    except Exception:  # publish() promises not to raise; a bug there must not lose the row
        logger.exception("Publishing an event to %s failed", destination)


def _flush_at_exit() -> None:
    publisher = _publisher
    if publisher is None or publisher._pid != os.getpid():
        return
    try:
        # A short-lived process (`manage.py shell -c "notify(...)"`) may exit before its first
        # connection is up: wait for that first attempt too. In a known outage (already logged
        # once) exit at once.
        deadline = time.monotonic() + ATEXIT_FLUSH_TIMEOUT
        with publisher._cond:
            while (
                not publisher._connected
                and publisher._counts["outages"] == 0
                and (publisher._pending or publisher._in_flight)
                and not publisher._closing
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                publisher._cond.wait(min(remaining, 0.05))
        remaining = max(0.0, deadline - time.monotonic())
        if publisher.connected and not publisher.flush(remaining):
            stats = publisher.stats()
            logger.warning(
                "Exiting with %d STOMP messages not confirmed by the broker %s",
                stats.pending + stats.in_flight,
                publisher._where,
            )
        publisher.close(timeout=1.0)
    except Exception:
        pass


def _on_setting_changed(*, setting: str, **kwargs) -> None:
    # Tests (and anything else overriding settings) get a publisher for the new broker URL.
    global _publisher
    if setting != "NOTIFICATIONS":
        return
    with _singleton_lock:
        old, _publisher = _publisher, None
    if old is not None and old._pid == os.getpid():
        old.close(timeout=1.0)


def _connect_setting_changed() -> None:
    try:
        from django.core.signals import setting_changed
    except ImportError:
        return
    setting_changed.connect(_on_setting_changed, dispatch_uid="notifications.publisher.setting_changed")


_connect_setting_changed()


def _after_fork_in_child() -> None:
    # The parent's publisher has no thread here and shares the parent's socket: never use it,
    # never close it (that would disturb the parent's connection). The next call makes a new one.
    global _publisher, _singleton_lock
    _publisher = None
    _singleton_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
