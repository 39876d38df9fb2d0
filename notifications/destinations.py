"""The notifications app's own live destinations, declared through notifications.live like any app's.

Broker side: /topic/notifications.user.<id> (one user's) and /topic/notifications.broadcast
(everyone's). Browsers subscribe to /user/queue/notifications (both, for the logged-in user; the
first message is the unread state, and after a reconnect the same with the notifications created
while away) or to the broadcast topic alone, and SEND to /app/notifications.read. Registered by
NotificationsConfig.ready().
"""
from __future__ import annotations

from typing import Any

from . import live

__all__ = [
    "NOTIFICATIONS_BROADCAST",
    "USER_NOTIFICATIONS",
    "APP_NOTIFICATION_READ",
    "SYNC_NOTIFICATIONS",
    "user_notifications",
]

NOTIFICATIONS_BROADCAST = "/topic/notifications.broadcast"  # every logged-in user
USER_NOTIFICATIONS = "/user/queue/notifications"  # what a browser subscribes to for its own
APP_NOTIFICATION_READ = "/app/notifications.read"  # browser SEND, body {"id": 12} or {"all": true}
# Unread notifications carried by the notifications.sync message.
SYNC_NOTIFICATIONS = 20
# Notifications a resync carries that were created while the page was away (oldest first);
# past this the sync says "more" and the page fetches the rest over HTTP (?after=<id>).
SYNC_MISSED = 200


def user_notifications(user_id: object) -> str:
    """The broker-side topic behind one user's /user/queue/notifications."""
    return f"/topic/notifications.user.{user_id}"


def _sync(user: Any) -> dict:
    """{"type": "notifications.sync", "unread": n, "notifications": [unread ones, newest first]}."""
    from . import api

    unread = api.recent(user, limit=SYNC_NOTIFICATIONS, unread_only=True)
    return {
        "type": "notifications.sync",
        "unread": api.unread_count(user),
        "notifications": [n.to_event() for n in unread],
    }


def _resync(user: Any, since, pending) -> dict:
    """After a reconnect: the sync, plus every notification (own and broadcasts) created from
    ``since`` on, oldest first: {"missed": [...], "more": bool}."""
    from .models import Notification

    sync = _sync(user)
    if since is not None:
        missed = list(Notification.objects.for_user(user).filter(created__gte=since).order_by("created", "id")[: SYNC_MISSED + 1])
        sync["missed"] = [n.to_event() for n in missed[:SYNC_MISSED]]
        sync["more"] = len(missed) > SYNC_MISSED
    return sync


live.subscription(
    USER_NOTIFICATIONS,
    topics=(user_notifications("{user_id}"), NOTIFICATIONS_BROADCAST),
    snapshot=_sync,
    resync=_resync,
)
# Broadcasts alone (also part of /user/queue/notifications): any logged-in user, nothing to resync.
live.subscription(NOTIFICATIONS_BROADCAST)


@live.handler(APP_NOTIFICATION_READ, body='{"id": 12}, {"ids": [12, 13]} or {"all": true}')
def _mark_read(user: Any, body: Any) -> None:
    ids: list | None
    if isinstance(body, dict) and body.get("all") is True:
        ids = None
    elif isinstance(body, dict) and isinstance(body.get("id"), int):
        ids = [body["id"]]
    elif isinstance(body, dict) and isinstance(body.get("ids"), list) and all(isinstance(i, int) for i in body["ids"]):
        ids = body["ids"]
    else:
        raise live.BadBody()
    from . import api

    api.mark_read(user, ids)
