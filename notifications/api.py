"""notify(), broadcast(), unread_count(), mark_read(): the notifications API, callable from any process.

A notification is durable (DESIGN principle 8): its row and an outbox row for its event are
written in the caller's transaction; the event is published after the commit and again until
the broker confirms it (notifications.outbox), so a process killed after the commit loses
nothing. Read-state updates (mark_read) are not durable: the next page load or sync has them.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import models, router, transaction
from django.utils import timezone

from . import destinations
from .models import Level, Notification
from .live import publish as publish_event  # re-exported: callable from any Django code
from .outbox import publish_durable_many

__all__ = ["notify", "notify_many", "broadcast", "unread_count", "mark_read", "recent", "publish_event"]

logger = logging.getLogger(__name__)

_MAX_TITLE = 200
_MAX_LINK = 500


def _user_id(user) -> int:
    if user is None:
        raise ValueError("notify() needs a user; use broadcast() to reach everyone")
    if isinstance(user, int):
        return user
    pk = getattr(user, "pk", None)
    if pk is None:
        raise ValueError(f"notify() needs a saved user or a user id, not {user!r}")
    return pk


def _validated(title: str, text: str, level: str, link: str) -> tuple[str, str, str, str]:
    if not isinstance(title, str) or not title.strip():
        raise ValueError("A notification needs a non-empty title")
    if len(title) > _MAX_TITLE:
        raise ValueError(f"A notification title is at most {_MAX_TITLE} characters, got {len(title)}")
    if len(link) > _MAX_LINK:
        raise ValueError(f"A notification link is at most {_MAX_LINK} characters, got {len(link)}")
    level = str(level)
    if level not in Level.values:
        raise ValueError(f"Unknown notification level {level!r}; use one of {', '.join(Level.values)}")
    return title, text or "", level, link or ""


def _save_and_promise(rows: list[Notification]) -> list[Notification]:
    """Insert the rows and their events' outbox rows, in one transaction (the caller's if any)."""
    db = router.db_for_write(Notification)
    with transaction.atomic(using=db):
        if len(rows) == 1:
            rows[0].save(using=db, force_insert=True)
        else:
            Notification.objects.using(db).bulk_create(rows)
            if any(row.pk is None for row in rows):  # a database that cannot return the new ids
                raise RuntimeError("notify_many() needs a database that returns ids from a bulk INSERT")
        recipients = {row.recipient_id for row in rows if row.recipient_id is not None}
        unread = dict(
            Notification.objects.using(db)
            .filter(recipient_id__in=recipients, read=False)
            .values_list("recipient_id")
            .annotate(n=models.Count("id"))
            .order_by()
        ) if recipients else {}
        publish_durable_many(
            [
                (destinations.NOTIFICATIONS_BROADCAST, row.to_event())
                if row.recipient_id is None
                else (destinations.user_notifications(row.recipient_id), row.to_event(unread=unread.get(row.recipient_id, 0)))
                for row in rows
            ],
            using=db,
        )
    return rows


def notify(user, *, title: str, text: str = "", level: str = "info", link: str = "") -> Notification:
    """Save a notification for one user and promise its event to their topic (published after commit).

    `user` is a user instance or a user id. Raises ValueError for an empty title, an unknown level,
    or a title or link that does not fit; nothing is written then.
    """
    user_id = _user_id(user)
    title, text, level, link = _validated(title, text, level, link)
    return _save_and_promise([Notification(recipient_id=user_id, title=title, text=text, level=level, link=link)])[0]


def notify_many(items: Iterable[tuple[Any, dict[str, str]]]) -> list[Notification]:
    """notify() for many (user, {"title": ..., "text": ..., "level": ..., "link": ...}) pairs at once:
    one INSERT for the notifications, one for their events. Every item is validated first."""
    rows = []
    for user, fields in items:
        user_id = _user_id(user)
        unknown = set(fields) - {"title", "text", "level", "link"}
        if unknown:
            raise ValueError(f"notify_many() got unknown field(s): {', '.join(sorted(unknown))}")
        title, text, level, link = _validated(
            fields.get("title", ""), fields.get("text", ""), fields.get("level", "info"), fields.get("link", "")
        )
        rows.append(Notification(recipient_id=user_id, title=title, text=text, level=level, link=link))
    if not rows:
        return []
    return _save_and_promise(rows)


def broadcast(*, title: str, text: str = "", level: str = "info", link: str = "") -> Notification:
    """Save a notification for every user (no recipient) and promise its event to the broadcast topic."""
    title, text, level, link = _validated(title, text, level, link)
    return _save_and_promise([Notification(recipient=None, title=title, text=text, level=level, link=link)])[0]


def unread_count(user) -> int:
    """How many of the user's own notifications are unread (broadcasts are not counted)."""
    if user is None or not getattr(user, "is_authenticated", True):
        return 0
    return Notification.objects.unread_for(_user_id(user)).count()


def recent(user, *, limit: int = 20, unread_only: bool = False) -> list[Notification]:
    """The user's newest notifications, broadcasts included unless unread_only."""
    if user is None or not getattr(user, "is_authenticated", True):
        return []
    user_id = _user_id(user)
    qs = (
        Notification.objects.unread_for(user_id)
        if unread_only
        else Notification.objects.for_user(user_id)
    )
    return list(qs[: max(0, min(int(limit), 200))])


def mark_read(user, ids: Iterable[int] | None = None) -> int:
    """Mark the user's own notifications read: the given ids, or all of them when ids is None.

    Ids of other users' notifications and of broadcasts are ignored. Returns how many changed.
    Publishes {"type": "notifications.read", "ids": [...] | null, "unread": n} to the user's
    topic so their other tabs update the counter.
    """
    user_id = _user_id(user)
    qs = Notification.objects.unread_for(user_id)
    id_list: list[int] | None = None
    if ids is not None:
        try:
            id_list = sorted({int(i) for i in ids})
        except (TypeError, ValueError) as exc:
            raise ValueError("mark_read() ids must be integers") from exc
        qs = qs.filter(pk__in=id_list)
    changed = qs.update(read=True, read_at=timezone.now())

    def announce() -> None:
        unread = Notification.objects.unread_for(user_id).count()
        publish_event(
            destinations.user_notifications(user_id),
            {"type": "notifications.read", "ids": id_list, "unread": unread},
        )

    if changed:
        transaction.on_commit(announce)
    return changed
