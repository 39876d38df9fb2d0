"""STOMP 1.2 over WebSocket for browsers: a Channels consumer that relays the hub and guards access.

One consumer per WebSocket. Frames are parsed with the project codec; what a user may subscribe
to is decided here from the Django session (see notifications.permissions), and every broker
message reaches the browser through the process hub (notifications.hub), never through a
connection of its own.

Browser-visible destinations:
  /user/queue/notifications  the user's own notifications and broadcasts
  /topic/notifications.broadcast  broadcasts alone (any logged-in user)
  /user/queue/jobs           events of the jobs the user owns
  /topic/jobs.<uuid>         one job (its owner, or jobs.view_job)
  /topic/jobs.all            every job (jobs.view_job)
SEND destinations: /app/jobs.cancel {"job": "<uuid>"} (owner or jobs.change_job; cancelling a
finished job is a no-op), /app/notifications.read {"id": 12} | {"ids": [..]} | {"all": true}.

Snapshots: a job subscription first gets the job's event JSON from the database; a list
(/topic/jobs.all, /user/queue/jobs) the READY and RUNNING jobs (at most 50); notifications
{"type": "notifications.sync", "unread": n, "notifications": [unread ones, newest first]}.
The same snapshots are sent again after the hub reconnects to the broker. Job events carry
``seq``: anything not newer than what a subscription already sent is dropped here.

Refusals are ERROR frames (with ``message`` and, when a destination is at fault, a
``destination`` header), after which the socket closes, as STOMP requires. Anonymous sockets
are refused at CONNECT. The session and permissions are read again on every SEND, every
NOTIFICATIONS["SESSION_RECHECK_SECONDS"] for sockets with subscriptions (batched for all the
sockets of the process), and at once on user_logged_out in this process: a session that ended
or a withdrawn jobs.view_job ends the socket with an ERROR.

Backpressure: job events coalesce per subscription (the newest seq wins) while a socket's
outbox waits; past MAILBOX_SIZE pending messages the socket gets an ERROR and is closed, and
its client reconnects and resyncs from snapshots. (Daphne gives an ASGI app no view of a
socket's write buffer, so a browser that reads slowly is buffered by daphne, not here.)
"""
from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.consumer import get_handler_name
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

from . import conf, destinations, permissions
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
from .hub import Event, Mailbox, get_hub

__all__ = [
    "StompConsumer",
    "SUBPROTOCOLS",
    "USER_JOBS",
    "BROWSER_LIMITS",
    "MAX_SUBSCRIPTIONS",
    "MAILBOX_SIZE",
    "COALESCE_AFTER",
    "BATCH_BYTES",
    "SERVER_NAME",
]

logger = logging.getLogger(__name__)

# WebSocket subprotocol -> STOMP version, best first (what @stomp/stompjs offers, in its order).
SUBPROTOCOLS = {"v12.stomp": "1.2", "v11.stomp": "1.1", "v10.stomp": "1.0"}
USER_JOBS = "/user/queue/jobs"  # the jobs the user owns (a filtered view of JOBS_ALL)
SERVER_NAME = "django-live-jobs/1.0"
# Browsers only send small control frames (SUBSCRIBE, SEND of a tiny JSON body): a few KiB
# would do; 64 KiB keeps room for long destination names without letting a tab buffer megabytes.
BROWSER_LIMITS = Limits(max_frame_size=64 * 1024, max_body_size=16 * 1024, max_headers=64, max_header_line=4 * 1024)
# A page needs a handful (notifications, one or two jobs, a list); this bounds what one socket costs.
MAX_SUBSCRIPTIONS = 64
# Messages waiting for one browser after coalescing (job events of one subscription share a slot).
MAILBOX_SIZE = 512
# A socket with fewer messages waiting than this gets every job state; from there on, a job's
# newer event replaces its pending one. Several events read from the broker in one go are so
# all delivered (in one WebSocket message), and coalescing starts only when the socket is
# really behind (a burst, a loaded process).
COALESCE_AFTER = 16
# Pending frames of one socket are joined into WebSocket messages of at most this size
# (STOMP allows several frames in one message; stompjs and our client parse them as a stream).
# One message instead of several is what saves daphne's per-message cost under load.
BATCH_BYTES = 64 * 1024
# A browser silent for this many times its negotiated heart-beat is gone.
HEARTBEAT_GRACE = 2.0
# Jobs sent as the snapshot of a list subscription (/topic/jobs.all, /user/queue/jobs).
LIST_SNAPSHOT_LIMIT = 50
# Per-subscription memory of the last seq sent per job (list subscriptions see many jobs).
SEQ_MEMORY = 2000
# Unread notifications carried by the notifications.sync message.
SYNC_NOTIFICATIONS = 20

# Sockets of this process by session key, for user_logged_out.
_by_session: dict[str, weakref.WeakSet] = {}


class Kind(enum.Enum):
    """What a browser subscription is, and so which rule guards it."""

    NOTIFICATIONS = "notifications"  # own notifications and broadcasts; needs a login
    JOB = "job"  # one job; its owner or jobs.view_job
    ALL_JOBS = "all_jobs"  # every job; jobs.view_job
    MY_JOBS = "my_jobs"  # jobs the user owns; needs a login


@dataclass(eq=False)
class ClientSubscription:
    id: str
    destination: str  # as the browser named it
    kind: Kind
    broker_destinations: tuple[str, ...]
    job_id: str | None = None
    needs_permission: bool = False  # kept only through jobs.view_job (not ownership)
    active: bool = True
    primed: bool = False  # the snapshot went out; live events may follow
    early: list = field(default_factory=list)  # events that arrived before the snapshot
    last_seq: dict[str, int] = field(default_factory=dict)
    header_prefix: str = ""  # "MESSAGE\ndestination:...\nsubscription:...\n", escaped for the version


class _Close(Exception):
    """End the STOMP session: send an ERROR frame with this message, then close the socket."""

    def __init__(self, message: str, *, destination: str | None = None, receipt: str | None = None, body: str = ""):
        super().__init__(message)
        self.message = message
        self.destination = destination
        self.receipt = receipt
        self.body = body


def _json_body(frame: Frame) -> Any:
    try:
        return json.loads(frame.body.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError):
        return None


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
        self.mailbox = Mailbox(MAILBOX_SIZE, self._mailbox_ready, coalesce_after=COALESCE_AFTER)
        self.message_ids = 0
        self.send_ms = 0
        self.expect_ms = 0
        self.last_sent = self.last_received = self.last_check = time.monotonic()
        self.hub = None
        self.writes: list[bytes | str] = []  # encoded frames, sent in order by _flush_pending_writes
        self.overflowing = False
        await self.accept(subprotocol)

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
            ("session", f"ws-{id(self):x}"),
            ("user-name", user.get_username()),
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
        await self._send_snapshot(sub)
        if frame.get("receipt"):
            await self._send_frame(Frame("RECEIPT", (("receipt-id", frame.get("receipt")),)))

    async def _authorize(self, sub_id: str, destination: str, receipt: str | None) -> ClientSubscription:
        user = self.user
        if destination == destinations.USER_NOTIFICATIONS:
            return ClientSubscription(
                sub_id, destination, Kind.NOTIFICATIONS,
                (destinations.user_notifications(user.pk), destinations.NOTIFICATIONS_BROADCAST),
            )
        if destination == destinations.NOTIFICATIONS_BROADCAST:
            # Broadcasts are for every logged-in user (also part of /user/queue/notifications).
            return ClientSubscription(sub_id, destination, Kind.NOTIFICATIONS, (destination,))
        if destination == USER_JOBS:
            return ClientSubscription(sub_id, destination, Kind.MY_JOBS, (destinations.JOBS_ALL,))
        if destination == destinations.JOBS_ALL:
            if not await database_sync_to_async(permissions.can_view_all_jobs)(user):
                raise _Close(f"Not allowed to subscribe to {destination}", destination=destination, receipt=receipt)
            return ClientSubscription(
                sub_id, destination, Kind.ALL_JOBS, (destinations.JOBS_ALL,), needs_permission=True
            )
        job_id = destinations.parse_job(destination)
        if job_id is not None:
            access, _job = await database_sync_to_async(permissions.job_access)(user, job_id)
            if access is permissions.JobAccess.UNKNOWN:
                raise _Close(f"No such job: {destination}", destination=destination, receipt=receipt)
            if not access.allowed:
                raise _Close(f"Not allowed to subscribe to {destination}", destination=destination, receipt=receipt)
            return ClientSubscription(
                sub_id, destination, Kind.JOB, (destination,), job_id=str(_job.pk),
                needs_permission=access is permissions.JobAccess.PERMISSION,
            )
        raise _Close(f"Not allowed to subscribe to {destination}", destination=destination, receipt=receipt)

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
        if destination == destinations.APP_JOB_CANCEL:
            await self._cancel_job(frame, destination, receipt)
        elif destination == destinations.APP_NOTIFICATION_READ:
            await self._mark_read(frame, destination, receipt)
        else:
            raise _Close(f"Not allowed to send to {destination}", destination=destination, receipt=receipt)
        if receipt:
            await self._send_frame(Frame("RECEIPT", (("receipt-id", receipt),)))

    async def _cancel_job(self, frame: Frame, destination: str, receipt: str | None) -> None:
        body = _json_body(frame)
        job_id = body.get("job") if isinstance(body, dict) else None
        if not isinstance(job_id, str):
            raise _Close(f'{destination} needs a JSON body {{"job": "<uuid>"}}', destination=destination, receipt=receipt)

        def cancel() -> str | None:
            access, job = permissions.job_access(self.user, job_id)
            if job is None:
                return f"No such job: {job_id}"
            if not permissions.can_cancel_job(self.user, job):
                return f"Not allowed to cancel job {job_id}"
            from jobs.exceptions import JobStateError

            try:
                job.cancel()
            except JobStateError:
                # Already finished: cancelling is idempotent, and the final state reaches the
                # page through its job subscription anyway.
                pass
            return None

        problem = await database_sync_to_async(cancel)()
        if problem:
            raise _Close(problem, destination=destination, receipt=receipt)

    async def _mark_read(self, frame: Frame, destination: str, receipt: str | None) -> None:
        body = _json_body(frame)
        ids: list | None
        if isinstance(body, dict) and body.get("all") is True:
            ids = None
        elif isinstance(body, dict) and isinstance(body.get("id"), int):
            ids = [body["id"]]
        elif isinstance(body, dict) and isinstance(body.get("ids"), list) and all(isinstance(i, int) for i in body["ids"]):
            ids = body["ids"]
        else:
            raise _Close(
                f'{destination} needs a JSON body {{"id": 12}}, {{"ids": [12, 13]}} or {{"all": true}}',
                destination=destination, receipt=receipt,
            )
        from . import api

        await database_sync_to_async(api.mark_read)(self.user, ids)

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

    async def _send_snapshot(self, sub: ClientSubscription) -> None:
        """Send what the database says now, then the events that arrived meanwhile (newer only)."""
        for data in await database_sync_to_async(self._snapshot_data)(sub, list(sub.last_seq)):
            self._send_event(sub, data)
        await self._flush_pending_writes()
        sub.primed = True
        early, sub.early = sub.early, []
        for event in early:
            self.mailbox.put((sub, event), self._key(sub, event), event.seq)

    def _snapshot_data(self, sub: ClientSubscription, seen: list[str]) -> list[dict]:
        """The database's view for ``sub`` (runs in a thread: ``seen`` is a copy of sub.last_seq)."""
        from . import api

        if sub.kind is Kind.NOTIFICATIONS:
            if sub.destination != destinations.USER_NOTIFICATIONS:
                return []  # the broadcast topic alone: nothing per user to resync
            unread = api.recent(self.user, limit=SYNC_NOTIFICATIONS, unread_only=True)
            return [
                {
                    "type": "notifications.sync",
                    "unread": api.unread_count(self.user),
                    "notifications": [n.to_event() for n in unread],
                }
            ]
        from jobs.events import job_event
        from jobs.models import Job

        if sub.kind is Kind.JOB:
            job = Job.objects.filter(pk=sub.job_id).first()
            return [job_event(job)] if job is not None else []
        active = Job.objects.filter(status__in=("READY", "RUNNING"))
        if sub.kind is Kind.MY_JOBS:
            active = active.filter(owner=self.user)
        # Besides the running ones, jobs this subscription saw unfinished (a resync after an
        # outage must show how they ended).
        jobs = list(active.order_by("-enqueued_at")[:LIST_SNAPSHOT_LIMIT])
        if seen:
            known = {str(j.pk) for j in jobs}
            extra = Job.objects.filter(pk__in=[j for j in seen if j not in known][-LIST_SNAPSHOT_LIMIT:])
            if sub.kind is Kind.MY_JOBS:
                extra = extra.filter(owner=self.user)
            jobs.extend(extra)
        return [job_event(job) for job in reversed(jobs)]

    def hub_reconnected(self) -> None:
        """The hub is back after a broker outage: resend snapshots so browsers catch up."""
        if self.closing or not self.stomp_connected:
            return
        asyncio.get_running_loop().create_task(self._resync())

    async def _resync(self) -> None:
        for sub in list(self.subs.values()):
            if sub.active and sub.primed:
                try:
                    for data in await database_sync_to_async(self._snapshot_data)(sub, list(sub.last_seq)):
                        if sub.active:
                            self._send_event(sub, data)
                except Exception:
                    logger.exception("Resync of %s failed", sub.destination)
        await self._flush_pending_writes()

    # ------------------------------------------------------------------ live events

    @staticmethod
    def _key(sub: ClientSubscription, event: Event) -> Any:
        job_id = event.job_id
        # Job events carry the whole state: a newer one replaces a pending older one.
        return (id(sub), job_id) if job_id is not None else None

    def hub_event(self, event: Event) -> None:
        """Called by the hub on the event loop for every message of our broker destinations."""
        if self.closing:
            return
        for sub in self.by_broker.get(event.destination, ()):
            if not sub.active:
                continue
            if sub.kind is Kind.MY_JOBS and (event.data is None or event.data.get("owner_id") != self.user.pk):
                continue
            if not sub.primed:
                # Before the snapshot: keep only the latest event per job (bounded by MAX).
                job_id = event.job_id
                if job_id is not None:
                    newer = [e for e in sub.early if e.job_id == job_id and (e.seq or 0) > (event.seq or 0)]
                    if newer:
                        continue
                    sub.early = [e for e in sub.early if e.job_id != job_id]
                if len(sub.early) < MAILBOX_SIZE:
                    sub.early.append(event)
                continue
            if not self.mailbox.put((sub, event), self._key(sub, event), event.seq):
                self._schedule_overflow()
                return

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
        if data is not None and data.get("type") == "job":
            job_id = str(data.get("id"))
            seq = data.get("seq")
            if isinstance(seq, int):
                last = sub.last_seq.get(job_id)
                if last is not None and seq <= last:
                    return  # the browser already has this state or a newer one
                sub.last_seq[job_id] = seq
                if len(sub.last_seq) > SEQ_MEMORY:
                    sub.last_seq.pop(next(iter(sub.last_seq)))
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
            content_type = escape(content_type)
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

    def _apply_recheck(self, state: permissions.SessionState, allowed: bool) -> _Close | None:
        if state.user is None:
            return _Close(f"Session ended ({state.reason}): log in again")
        self.user = state.user
        permission_subs = [s for s in self.subs.values() if s.needs_permission and s.active]
        if permission_subs and not allowed:
            lost = ", ".join(s.destination for s in permission_subs)
            return _Close(f"Permission withdrawn for {lost}", destination=permission_subs[0].destination)
        return None

    async def _recheck(self) -> bool:
        """Re-read session and permissions now (before acting on a SEND). False when it ended."""
        self.last_check = time.monotonic()
        needs = any(s.needs_permission and s.active for s in self.subs.values())
        [(state, allowed)] = await database_sync_to_async(permissions.session_states)(
            [(self.session_key, self.user.pk, needs)]
        )
        close = self._apply_recheck(state, allowed)
        if close is not None:
            await self._error_and_close(close)
            return False
        return True

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


class _Supervisor:
    """The timers of every socket on one event loop, in one task instead of one per socket.

    Each tick: heart-beats go out where due, silent browsers are closed, and sockets due for
    their session re-check are checked together: one query for all their sessions, one for
    their users (permissions only for users whose subscriptions depend on one).
    """

    def __init__(self) -> None:
        self.consumers: set[StompConsumer] = set()
        self.task: asyncio.Task | None = None
        self.recheck_task: asyncio.Task | None = None

    def add(self, consumer: StompConsumer) -> None:
        self.consumers.add(consumer)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name="stomp-websocket-timers")

    async def _run(self) -> None:
        while self.consumers:
            tick = min((c._tick_wanted() for c in self.consumers), default=1.0)
            await asyncio.sleep(min(1.0, max(0.05, tick)))
            now = time.monotonic()
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
        entries = [
            (c.session_key, c.user.pk, any(s.needs_permission and s.active for s in c.subs.values()))
            for c in consumers
        ]
        # Tabs of one browser share a session: each distinct (session, user, need) is checked
        # once (the check runs in a thread but holds the GIL the event loop needs).
        unique = list(dict.fromkeys(entries))
        try:
            answers = dict(zip(unique, await database_sync_to_async(permissions.session_states)(unique)))
        except Exception:
            logger.exception("Re-checking %d WebSocket sessions failed", len(consumers))
            return
        results = [answers[entry] for entry in entries]
        for consumer, (state, allowed) in zip(consumers, results):
            if consumer.closing:
                continue
            close = consumer._apply_recheck(state, allowed)
            if close is not None:
                await consumer._error_and_close(close)


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
