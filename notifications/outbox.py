"""The outbox: an event that must reach the broker is written in the transaction of the change it
announces, published after the commit, and its row deleted only once the broker confirmed it.

DESIGN principle 8. Durable (written to the outbox):
- notifications: notify() and broadcast() in notifications.api, from any process;
- a job's final event (SUCCESSFUL, FAILED, CANCELLED), written with the owner's notification;
- whatever code passes to publish_durable().
Not durable, on purpose: a job's READY and RUNNING events and its progress (coalesced, latest
wins: the row is the truth and every subscription starts from it), worker wake-ups, and
read-state updates. They go straight to the publisher after commit.

How a row travels:
1. publish_durable() writes an OutboxMessage in the caller's transaction, due for relays at
   now + NOTIFICATIONS["OUTBOX_RETRY_AFTER"].
2. After the commit, the process that wrote it hands it over at once (no query): in a web
   process whose subscription hub runs, to the hub, whose connection is then the process's only
   one (DESIGN principle 2; the hub buffers and re-sends while it reconnects); elsewhere (a
   worker, a shell, WSGI), and for a relay given its own publisher, to the stomp.py publisher.
3. When the broker's RECEIPT covers every SEND of the row, the row is deleted: by the loop of a
   worker (which owns its database writes), elsewhere by a small housekeeping thread, and at exit.
4. A row still there once due (its writer was killed, lost the broker, or exited first) is
   claimed by a worker's relay (Relay.recover(), run by every `manage.py jobworker`) in batches
   of OUTBOX_BATCH with one UPDATE ... RETURNING (its subquery SKIP LOCKED on PostgreSQL; one
   statement is atomic on SQLite), so two relays never claim the same row; it is published
   again and deleted on confirmation. Each claim pushes the row on by the bound, doubled per
   attempt (2x, 4x ... at most MAX_BACKOFF_FACTOR x).
5. A row older than OUTBOX_MAX_AGE is deleted unpublished, counted and logged as an ERROR.

Delivery is at least once: a relay may publish a row whose writer had its RECEIPT but died
before deleting the row. Job events carry ``seq`` and notifications their ``id``; clients drop
what they already have.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.checks import Error, register
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, router, transaction
from django.utils import timezone

from . import conf
from .hub import current_hub, publish_threadsafe

__all__ = [
    "Message",
    "Relay",
    "RelayStats",
    "get_relay",
    "publish_durable",
    "publish_durable_many",
    "MAX_BACKOFF_FACTOR",
    "DRAIN_TIMEOUT",
]

logger = logging.getLogger(__name__)

# A relay's claim leases a row for OUTBOX_RETRY_AFTER times 2 ** attempt, at most this factor
# (10 s by default: 20 s, 40 s ... 320 s), so a message the broker keeps refusing costs little.
MAX_BACKOFF_FACTOR = 32
# The housekeeping thread waits this long after a confirmation, so that one DELETE covers a
# burst of them (a loop of notify() calls, a broadcast to many).
DELETE_WINDOW = 0.05
# Ids per DELETE statement: SQLite allows 32,766 parameters, PostgreSQL 65,535; stay far below.
DELETE_CHUNK = 500
# How long drain() waits for the broker's confirmations: at a worker's stop, at a process's exit.
DRAIN_TIMEOUT = 5.0
ATEXIT_DRAIN_TIMEOUT = 2.0
# How often recover() also deletes rows past OUTBOX_MAX_AGE (seconds).
PRUNE_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class Message:
    """A committed outbox row on its way to the broker."""

    id: int
    destinations: tuple[str, ...]
    body: bytes  # as published, to every destination
    content_type: str


def _encoded(payload: Any) -> tuple[bytes, str]:
    """The frame body and content-type of a payload: the bytes the publisher itself would make
    (compact JSON for a dict or list, UTF-8 text for a str), made once for all its destinations."""
    if isinstance(payload, str):
        return payload.encode("utf-8"), "text/plain;charset=utf-8"
    text = json.dumps(payload, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8"), "application/json"


@dataclass(frozen=True)
class RelayStats:
    """A snapshot of one process's relay counters (exported as notifications_outbox_*)."""

    written: int  # rows this process wrote whose transaction committed
    handed_off: int  # messages given to the hub or the publisher (after their commit, or claimed by recover())
    confirmed: int  # messages whose every SEND the broker confirmed with a RECEIPT
    deleted: int  # rows deleted after their confirmation
    recovered: int  # rows claimed by recover() past their bound
    expired: int  # rows deleted unconfirmed past OUTBOX_MAX_AGE
    unconfirmed: int  # handed off, not confirmed yet (or dropped by the hub or publisher: a relay retries them)
    to_delete: int  # confirmed, row not deleted yet


def _model():
    from .models import OutboxMessage

    return OutboxMessage


def _validated(destination: str | Sequence[str], payload: Any) -> tuple[list[str], bytes, str]:
    from .publisher import _check_destination

    destinations = [destination] if isinstance(destination, str) else list(destination)
    if not destinations:
        raise ValueError("publish_durable() needs at least one destination")
    for name in destinations:
        _check_destination(name)
    if not isinstance(payload, (dict, list, str)):
        raise TypeError(f"A durable payload is a dict, list or str (it is stored as JSON), not {type(payload).__name__}")
    try:
        body, content_type = _encoded(payload)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"A durable payload must be JSON-serialisable: {exc}") from exc
    return destinations, body, content_type


def publish_durable(destination: str | Sequence[str], payload: dict | list | str, *, using: str | None = None) -> int:
    """Promise ``payload`` to ``destination`` (a name or several): the outbox row is written now,
    in the current transaction; the message is published after the commit and again until the
    broker confirms it (nothing is written or published if the transaction rolls back).

    Returns the row's id. Raises ValueError for a destination outside /topic/ and /queue/ or a
    payload that is not JSON, before anything is written.
    """
    return publish_durable_many([(destination, payload)], using=using)[0]


def publish_durable_many(
    items: Iterable[tuple[str | Sequence[str], dict | list | str]], *, using: str | None = None
) -> list[int]:
    """publish_durable() for many messages in one INSERT; their ids in order."""
    checked = [_validated(destination, payload) for destination, payload in items]
    if not checked:
        return []
    model = _model()
    db = using or router.db_for_write(model)
    now = timezone.now()
    due = now + timedelta(seconds=float(conf.get("OUTBOX_RETRY_AFTER")))
    ids = _insert_rows(db, [(names, body.decode("utf-8"), content_type, now, due) for names, body, content_type in checked])
    messages = [Message(pk, tuple(names), body, content_type) for pk, (names, body, content_type) in zip(ids, checked)]
    transaction.on_commit(lambda: get_relay().handoff(messages, written=True), using=db)
    return ids


# INSERT ... RETURNING statements by (database alias, rows); the worker writes outbox rows with
# every job it finishes, where the ORM's compiler would cost more than the database's work.
_INSERT_SQL: dict[tuple[str, int], str] = {}
_INSERT_FIELDS = ("destinations", "body", "content_type", "created", "available_at", "attempts")


def _insert_rows(db: str, rows: list[tuple[list[str], str, str, datetime, datetime]]) -> list[int]:
    """Insert (destinations, body, content_type, created, available_at) rows; their new ids, in order."""
    model = _model()
    connection = connections[db]
    if connection.vendor not in {"postgresql", "sqlite"}:  # no INSERT ... RETURNING here: the ORM's way
        objs = [model(destinations=d, body=b, content_type=t, created=c, available_at=a) for d, b, t, c, a in rows]
        if connection.features.can_return_rows_from_bulk_insert:
            model.objects.using(db).bulk_create(objs)
        else:
            for obj in objs:
                obj.save(using=db, force_insert=True)
        return [obj.pk for obj in objs]
    fields = [model._meta.get_field(name) for name in _INSERT_FIELDS]
    batch = 1 if len(rows) == 1 else max(1, connection.ops.bulk_batch_size(fields, rows))
    ids: list[int] = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            sql = _INSERT_SQL.get((db, len(chunk)))
            if sql is None:
                qn = connection.ops.quote_name
                row = f"({', '.join(['%s'] * len(fields))})"
                sql = (f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
                       f"VALUES {', '.join([row] * len(chunk))} RETURNING {qn(model._meta.pk.column)}")
                if len(_INSERT_SQL) > 64:
                    _INSERT_SQL.clear()
                _INSERT_SQL[(db, len(chunk))] = sql
            params = []
            # The rows of one call share their moment: its timestamps are prepared once.
            names_field, body_field, type_field, created_field, due_field, attempts_field = fields
            zero = attempts_field.get_db_prep_save(0, connection)
            stamps: dict[tuple[datetime, datetime], list[Any]] = {}
            for names, body, content_type, created, due in chunk:
                prepared = stamps.get((created, due))
                if prepared is None:
                    prepared = stamps[(created, due)] = [
                        created_field.get_db_prep_save(created, connection), due_field.get_db_prep_save(due, connection), zero,
                    ]
                params += [names_field.get_db_prep_save(names, connection), body_field.get_db_prep_save(body, connection),
                           type_field.get_db_prep_save(content_type, connection), *prepared]
            cursor.execute(sql, params)
            ids.extend(row[0] for row in cursor.fetchall())
    return ids


class Relay:
    """Publishes committed outbox rows and deletes them once the broker confirmed them.

    One per process (get_relay()). handoff() may be called from any thread; delete_confirmed(),
    recover(), prune() and drain() use the database from the calling thread. A process whose
    loop owns its database writes (the job worker) calls attach(): from then on it deletes
    confirmed rows itself (delete_confirmed()), instead of the housekeeping thread.
    """

    def __init__(self, publisher: Any = None) -> None:
        self._publisher = publisher  # None: this process's publisher, looked up at each use
        self._lock = threading.Lock()
        self._confirmed: list[int] = []
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._attached = 0
        self._next_prune = 0.0
        self._pid = os.getpid()
        self._counts = dict.fromkeys(("written", "handed_off", "confirmed", "deleted", "recovered", "expired"), 0)

    # -------------------------------------------------------------- publishing

    def publisher(self) -> Any:
        if self._publisher is not None:
            return self._publisher
        from .publisher import get_publisher

        return get_publisher()

    def handoff(self, messages: Iterable[Message], *, written: bool = False) -> None:
        """Publish committed rows now; each is confirmed when the broker has every SEND of it.
        ``written``: this process has just committed them (counted as written).

        Through this process's hub while one runs (a web process), else through the publisher.
        Never raises: a message neither can take stays in the outbox for a relay."""
        messages = list(messages)
        if not messages:
            return
        if written:
            with self._lock:
                self._counts["written"] += len(messages)
        try:
            publisher = None
            for message in messages:
                confirm = self._confirmation(message.id, len(message.destinations))
                headers = {"content-type": message.content_type}
                for destination in message.destinations:
                    if self._publisher is None and publish_threadsafe(
                        destination, message.body, headers=headers, on_confirmed=confirm, connected=False
                    ):
                        continue
                    publisher = publisher or self.publisher()
                    publisher.publish(destination, message.body, headers=headers, on_confirmed=confirm)
        except Exception:
            logger.exception("Outbox: could not hand %d message(s) over for publishing; a relay will retry them",
                             len(messages))
            return
        with self._lock:
            self._counts["handed_off"] += len(messages)
            if not self._attached:
                self._ensure_housekeeping()

    def _confirmation(self, message_id: int, parts: int):
        remaining = [parts]

        def confirmed() -> None:  # on the publisher's receiver thread or the hub's loop: no database here
            with self._lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
                self._confirmed.append(message_id)
                self._counts["confirmed"] += 1
            self._wake.set()

        return confirmed

    # -------------------------------------------------------------- database side

    def attach(self) -> None:
        """The calling loop deletes confirmed rows from now on (delete_confirmed()); see detach()."""
        with self._lock:
            self._attached += 1

    def detach(self) -> None:
        with self._lock:
            self._attached = max(0, self._attached - 1)
            if not self._attached and self._confirmed:
                self._ensure_housekeeping()
        self._wake.set()

    def pending_deletes(self) -> int:
        with self._lock:
            return len(self._confirmed)

    def delete_confirmed(self) -> int:
        """Delete the rows the broker confirmed since the last call; how many were deleted.
        On a database error the ids are kept for the next call and the error is raised."""
        with self._lock:
            ids, self._confirmed = self._confirmed, []
        if not ids:
            return 0
        try:
            deleted = _delete_rows(ids)
        except Exception:
            with self._lock:
                self._confirmed[:0] = ids
            raise
        with self._lock:
            self._counts["deleted"] += deleted
        return deleted

    def recover(self, *, limit: int | None = None) -> int:
        """Claim up to OUTBOX_BATCH rows past their bound and publish them; how many were claimed.

        Claims nothing while this process's publisher is not connected (another relay that is
        will take them); prunes rows past OUTBOX_MAX_AGE every PRUNE_EVERY seconds."""
        publisher = self.publisher()
        if not publisher.connected:
            publisher.start()
            return 0
        now = timezone.now()
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_EVERY
            self.prune(now)
        # A plain read first: on SQLite the claim takes the write lock, and usually nothing is due.
        if not _model().objects.filter(available_at__lte=now).exists():
            return 0
        batch = max(1, int(limit if limit is not None else conf.get("OUTBOX_BATCH")))
        rows = _claim_due(now, batch, float(conf.get("OUTBOX_RETRY_AFTER")))
        if not rows:
            return 0
        with self._lock:
            self._counts["recovered"] += len(rows)
        logger.warning(
            "Outbox: publishing %d message(s) again that were not confirmed in time (the oldest written %s, "
            "attempt %d)", len(rows), min(row.created for row in rows).isoformat(), max(row.attempts for row in rows),
        )
        self.handoff(Message(row.pk, tuple(row.destinations), row.body.encode("utf-8"), row.content_type) for row in rows)
        return len(rows)

    def prune(self, now: datetime | None = None) -> int:
        """Delete rows unconfirmed for longer than OUTBOX_MAX_AGE (logged as an ERROR); how many."""
        now = now or timezone.now()
        max_age = float(conf.get("OUTBOX_MAX_AGE"))
        model = _model()
        expired = model.objects.filter(created__lt=now - timedelta(seconds=max_age))
        first = expired.order_by("created").values_list("created", flat=True).first()
        if first is None:
            return 0
        count, _ = expired.delete()
        if count:
            with self._lock:
                self._counts["expired"] += count
            logger.error(
                "Outbox: deleted %d message(s) the broker did not confirm within OUTBOX_MAX_AGE (%g s; the oldest "
                "written %s); what they announced is in the database, pages show it on their next load",
                count, max_age, first.isoformat(),
            )
        return count

    def drain(self, timeout: float = DRAIN_TIMEOUT, *, recover: bool = False) -> bool:
        """Wait up to ``timeout`` for the broker to confirm what was handed off, then delete those
        rows; with ``recover``, first publish the rows past their bound (a worker that stops).
        True when nothing handed off is left unconfirmed. Gives up at once during a known outage."""
        deadline = time.monotonic() + max(0.0, timeout)
        if recover:
            publisher = self.publisher()
            publisher.start()
            while not publisher.connected and publisher.stats().outages == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            batch = max(1, int(conf.get("OUTBOX_BATCH")))
            while time.monotonic() < deadline and self.recover(limit=batch) == batch:
                pass
        ok = True
        if self.stats().unconfirmed:
            publisher = self._existing_publisher()  # a web process that used only its hub has none
            if publisher is not None and publisher.connected:
                ok = publisher.flush(max(0.0, deadline - time.monotonic()))
            hub = current_hub() if self._publisher is None else None
            while hub is not None and hub.connected and hub.unconfirmed and time.monotonic() < deadline:
                time.sleep(0.02)  # the hub's loop runs in another thread: its RECEIPTs come meanwhile
        self.delete_confirmed()
        return ok and not self.stats().unconfirmed

    def _existing_publisher(self) -> Any:
        if self._publisher is not None:
            return self._publisher
        from . import publisher as module

        made = module._publisher
        return made if made is not None and made._pid == os.getpid() else None

    def stats(self) -> RelayStats:
        with self._lock:
            counts = dict(self._counts)
            to_delete = len(self._confirmed)
        return RelayStats(
            **counts, unconfirmed=max(0, counts["handed_off"] - counts["confirmed"]), to_delete=to_delete
        )

    # -------------------------------------------------------------- housekeeping thread

    def _ensure_housekeeping(self) -> None:
        # Lock held. Started once per process, on the first handoff outside an attached loop.
        if self._thread is None:
            self._thread = threading.Thread(target=self._housekeep, name="outbox-relay", daemon=True)
            self._thread.start()
            atexit.register(_drain_at_exit, self)
        self._wake.set()

    def _housekeep(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(DELETE_WINDOW)
            self._wake.clear()
            with self._lock:
                if self._attached or not self._confirmed:
                    continue
            try:
                self.delete_confirmed()
            except Exception:
                logger.exception("Outbox: could not delete confirmed rows; retrying in 1 s")
                time.sleep(1.0)
                self._wake.set()
            finally:
                # This thread's connection only: an idle web process keeps none open for it.
                connections.close_all()


def _drain_at_exit(relay: Relay) -> None:
    if relay._pid != os.getpid():
        return
    try:
        if relay.stats().unconfirmed or relay.pending_deletes():
            relay.drain(ATEXIT_DRAIN_TIMEOUT)
    except Exception:
        logger.debug("Outbox: drain at exit failed", exc_info=True)


def _delete_rows(ids: list[int]) -> int:
    model = _model()
    db = router.db_for_write(model)
    connection = connections[db]
    qn = connection.ops.quote_name
    table, pk = qn(model._meta.db_table), qn(model._meta.pk.column)
    deleted = 0
    with connection.cursor() as cursor:
        for start in range(0, len(ids), DELETE_CHUNK):
            chunk = ids[start:start + DELETE_CHUNK]
            cursor.execute(f"DELETE FROM {table} WHERE {pk} IN ({', '.join(['%s'] * len(chunk))})", chunk)
            deleted += max(0, cursor.rowcount)
    return deleted


def _claim_due(now: datetime, limit: int, retry_after: float) -> list[Any]:
    """Lease up to ``limit`` rows due at ``now`` to this relay; the claimed rows (attempts counted)."""
    model = _model()
    db = router.db_for_write(model)
    connection = connections[db]
    field = model._meta.get_field("available_at")
    # Lease after the claim that makes attempt n: retry_after * 2 ** n, at most MAX_BACKOFF_FACTOR x.
    factors = []
    n = 1
    while 2 ** n < MAX_BACKOFF_FACTOR:
        factors.append(2 ** n)
        n += 1
    leases = [field.get_db_prep_value(now + timedelta(seconds=retry_after * f), connection) for f in factors]
    last = field.get_db_prep_value(now + timedelta(seconds=retry_after * MAX_BACKOFF_FACTOR), connection)
    stamp = field.get_db_prep_value(now, connection)
    if connection.vendor in {"postgresql", "sqlite"}:
        qn = connection.ops.quote_name
        table = qn(model._meta.db_table)
        col = {f.name: qn(f.column) for f in model._meta.concrete_fields}
        cast = "::timestamptz" if connection.vendor == "postgresql" else ""
        lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
        cases = " ".join(f"WHEN {a} THEN %s{cast}" for a in range(len(leases)))
        sql = (
            f"UPDATE {table} SET {col['available_at']} = CASE {col['attempts']} {cases} ELSE %s{cast} END, "
            f"{col['attempts']} = {col['attempts']} + 1 "
            f"WHERE {col['id']} IN (SELECT {col['id']} FROM {table} WHERE {col['available_at']} <= %s{cast} "
            f"ORDER BY {col['id']} LIMIT %s{lock}) AND {col['available_at']} <= %s{cast} "
            f"RETURNING {', '.join(col[f.name] for f in model._meta.concrete_fields)}"
        )
        with transaction.atomic(using=db):
            rows = list(model.objects.using(db).raw(sql, [*leases, last, stamp, limit, stamp]))
        rows.sort(key=lambda row: row.pk)
        return rows
    # Other databases: lock the rows (SKIP LOCKED where supported) and lease them one by one.
    with transaction.atomic(using=db):
        query = model.objects.using(db).filter(available_at__lte=now).order_by("id")
        if connection.features.has_select_for_update:
            query = query.select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)
        rows = list(query[:limit])
        for row in rows:
            factor = 2 ** (row.attempts + 1)
            row.available_at = now + timedelta(seconds=retry_after * min(factor, MAX_BACKOFF_FACTOR))
            row.attempts += 1
            row.save(update_fields=["available_at", "attempts"])
    return rows


# --------------------------------------------------------------------- process singleton

_relay: Relay | None = None
_relay_lock = threading.Lock()


def get_relay() -> Relay:
    """This process's relay (a forked child gets its own)."""
    global _relay
    relay = _relay
    if relay is not None and relay._pid == os.getpid():
        return relay
    with _relay_lock:
        if _relay is None or _relay._pid != os.getpid():
            _relay = Relay()
        return _relay


@register()
def check_outbox(app_configs=None, **kwargs) -> list[Error]:
    """The OUTBOX_* settings are positive numbers (notifications.E050)."""
    errors = []
    for key, whole in (("OUTBOX_RETRY_AFTER", False), ("OUTBOX_BATCH", True), ("OUTBOX_MAX_AGE", False)):
        value = conf.get(key)
        kind = int if whole else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            need = "a whole number of at least 1" if whole else "a number of seconds greater than 0"
            errors.append(Error(f"NOTIFICATIONS['{key}'] is {value!r}; it must be {need}.", id="notifications.E050"))
    retry, max_age = conf.get("OUTBOX_RETRY_AFTER"), conf.get("OUTBOX_MAX_AGE")
    if not errors and max_age <= retry:
        errors.append(Error(
            f"NOTIFICATIONS['OUTBOX_MAX_AGE'] ({max_age}) must be longer than OUTBOX_RETRY_AFTER ({retry}): "
            "rows would expire before any relay retried them.", id="notifications.E050",
        ))
    return errors
