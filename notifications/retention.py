"""Deleting old notifications in small batches: read ones and broadcasts older than a limit.

Unread notifications of a user are never deleted (they are still news to someone). Each batch
is one short transaction, so a prune never holds a long lock; `manage.py prunenotifications`
and every jobworker's housekeeping call prune_notifications().
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, models, transaction
from django.db.models import Q, signals
from django.utils import timezone

from . import conf
from .models import Notification

__all__ = ["PruneCount", "prune_notifications", "parse_age", "delete_rows", "checkpoint_sqlite_wal", "DEFAULT_BATCH"]

logger = logging.getLogger(__name__)

# Rows deleted per transaction: a few milliseconds of lock on SQLite (see bench/prune_bench.py).
DEFAULT_BATCH = 100
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '90m', '45s', '2w' or plain seconds as a timedelta; ValueError otherwise."""
    match = _AGE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not an age: use a number with s, m, h, d or w (for example 30d or 12h).")
    return timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2)])


def _set_null_relations(model: type[models.Model]) -> list | None:
    """The reverse relations to ``model`` that a delete must clear (SET_NULL), when every one is
    SET_NULL or DO_NOTHING and no delete signal listens; None when Django's collector is needed."""
    if any(signal.has_listeners(model) for signal in (signals.pre_delete, signals.post_delete)):
        return None
    relations = []
    # What Django's collector looks at (deletion.get_candidate_relations_to_delete), hidden ones included.
    candidates = [f for f in model._meta.get_fields(include_hidden=True)
                  if f.auto_created and not f.concrete and (f.one_to_one or f.one_to_many or f.many_to_many)]
    for relation in candidates:
        if relation.many_to_many or relation.on_delete not in (models.SET_NULL, models.DO_NOTHING):
            return None
        if relation.on_delete is models.SET_NULL:
            relations.append(relation)
    return relations


def delete_rows(model: type[models.Model], ids: list, **still: object) -> int:
    """Delete the rows of ``model`` with these primary keys that still match ``still`` (field
    lookups re-checked in the deleting transaction); how many were deleted. Call inside a transaction.

    When nothing points at the rows but SET_NULL foreign keys (and no delete signal listens), it is
    one UPDATE per such relation and one DELETE: what Django's collector would do, without loading
    the rows into Python, so the transaction (and SQLite's write lock) lasts milliseconds. Otherwise
    it is QuerySet.delete(), so every on_delete of every app is honoured.
    """
    rows = model._base_manager.filter(pk__in=ids, **still)
    relations = _set_null_relations(model)
    if relations is None:
        _, per_model = rows.delete()
        return per_model.get(model._meta.label, 0)
    if still:
        ids = list(rows.values_list("pk", flat=True))
    if not ids:
        return 0
    for relation in relations:
        field = relation.field
        relation.related_model._base_manager.filter(**{f"{field.name}__in": ids}).update(**{field.name: None})
    return model._base_manager.filter(pk__in=ids)._raw_delete(rows.db)  # what the collector's fast path calls


@dataclass(frozen=True)
class PruneCount:
    """What one prune deleted (or, in a dry run, would delete)."""

    deleted: int
    batches: int
    dry_run: bool = False


def checkpoint_sqlite_wal() -> None:
    """On SQLite in WAL mode, copy what a prune's batch wrote back into the database file now.

    Otherwise the write-ahead log grows by every deleted row and index page, and the next
    transaction to cross SQLite's auto-checkpoint threshold (1,000 pages) does the copy inside
    its commit: often a worker's claim, which then takes hundreds of milliseconds
    (bench/prune_bench.py). PASSIVE never waits for readers or writers; what it cannot copy now
    is copied later. Called between batches, outside any transaction; nothing on other databases.
    """
    if connection.vendor == "sqlite" and not connection.in_atomic_block:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")


def prune_notifications(
    *,
    older_than: timedelta | None = None,
    batch_size: int = DEFAULT_BATCH,
    dry_run: bool = False,
    now: datetime | None = None,
    pause: float = 0.0,
    should_stop: Callable[[], bool] | None = None,
) -> PruneCount:
    """Delete read notifications and broadcasts created before now - older_than
    (default NOTIFICATIONS["PRUNE_READ_AFTER"]; None there means keep all)."""
    if older_than is None:
        seconds = conf.get("PRUNE_READ_AFTER")
        if seconds is None:
            return PruneCount(0, 0, dry_run)
        older_than = timedelta(seconds=float(seconds))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size!r}.")
    cutoff = (now or timezone.now()) - older_than
    old = Notification.objects.filter(Q(read=True) | Q(recipient__isnull=True), created__lt=cutoff)
    if dry_run:
        return PruneCount(old.count(), 0, True)
    deleted = batches = 0
    while not (should_stop and should_stop()):
        # Read outside the transaction (no lock), delete inside a short one.
        ids = list(old.order_by("created").values_list("pk", flat=True)[:batch_size])
        if not ids:
            break
        with transaction.atomic():
            deleted += delete_rows(Notification, ids, created__lt=cutoff)
        batches += 1
        checkpoint_sqlite_wal()
        if pause:
            time.sleep(pause)
    if deleted:
        logger.info("Pruned %d notification(s) read or broadcast before %s", deleted, cutoff.isoformat())
    return PruneCount(deleted, batches)
