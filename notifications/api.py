"""notify(), broadcast(), unread_count(), mark_read(): the notifications API, callable from any process.

The row is written first; the STOMP event goes out after the transaction commits (principle 1:
the database is the source of truth, a lost event only delays a toast until the next load).
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from . import destinations
from .models import Level, Notification
from .live import publish as publish_event  # re-exported: callable from any Django code

__all__ = ["notify", "broadcast", "unread_count", "mark_read", "recent", "publish_event"]

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


def _publish_notification(notification_id: int) -> None:
    try:
        notification = Notification.objects.get(pk=notification_id)
    except Notification.DoesNotExist:
        return  # deleted before the commit hook ran: nothing to announce
    if notification.recipient_id is None:
        publish_event(destinations.NOTIFICATIONS_BROADCAST, notification.to_event())
        return
    unread = Notification.objects.unread_for(notification.recipient_id).count()
    publish_event(
        destinations.user_notifications(notification.recipient_id), notification.to_event(unread=unread)
    )


def notify(user, *, title: str, text: str = "", level: str = "info", link: str = "") -> Notification:
    """Save a notification for one user, then publish it to their topic once the transaction commits.

    `user` is a user instance or a user id. Raises ValueError for an empty title, an unknown level,
    or a title or link that does not fit.
    """
    user_id = _user_id(user)
    title, text, level, link = _validated(title, text, level, link)
    notification = Notification.objects.create(
        recipient_id=user_id, title=title, text=text, level=level, link=link
    )
    transaction.on_commit(lambda: _publish_notification(notification.pk))
    return notification


def broadcast(*, title: str, text: str = "", level: str = "info", link: str = "") -> Notification:
    """Save a notification for every user (no recipient), then publish it to the broadcast topic."""
    title, text, level, link = _validated(title, text, level, link)
    notification = Notification.objects.create(recipient=None, title=title, text=text, level=level, link=link)
    transaction.on_commit(lambda: _publish_notification(notification.pk))
    return notification


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
