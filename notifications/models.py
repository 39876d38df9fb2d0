"""The Notification model: the database copy of every notification (the STOMP event is only a
wake-up); and OutboxMessage, an event promised to the broker (see notifications.outbox)."""
from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

__all__ = ["Level", "Notification", "OutboxMessage"]


class Level(models.TextChoices):
    """How a notification is shown (toast colour, icon)."""

    INFO = "info", "Info"  # neutral news
    SUCCESS = "success", "Success"  # something the user started went well
    WARNING = "warning", "Warning"  # worth a look, nothing failed
    ERROR = "error", "Error"  # something the user started failed


class NotificationQuerySet(models.QuerySet):
    def for_user(self, user) -> NotificationQuerySet:
        """What a user may see: their own notifications and every broadcast."""
        return self.filter(models.Q(recipient=user) | models.Q(recipient__isnull=True))

    def unread_for(self, user) -> NotificationQuerySet:
        """A user's own unread notifications (broadcasts have no per-user read state)."""
        return self.filter(recipient=user, read=False)


class Notification(models.Model):
    # No recipient means a broadcast to every logged-in user.
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="notifications",
    )
    level = models.CharField(max_length=16, choices=Level.choices, default=Level.INFO)
    title = models.CharField(max_length=200)
    text = models.TextField(blank=True)
    link = models.CharField(max_length=500, blank=True)
    created = models.DateTimeField(default=timezone.now, db_index=True)
    read = models.BooleanField(default=False)
    read_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        indexes = [models.Index(fields=["recipient", "read"], name="notif_recipient_read")]

    def __str__(self) -> str:
        who = self.recipient if self.recipient_id else "everyone"
        return f"{self.title} ({self.level}, to {who})"

    @property
    def is_broadcast(self) -> bool:
        return self.recipient_id is None

    def to_event(self, unread: int | None = None) -> dict:
        """The notification event JSON (shared contract 6); `unread` is left out for broadcasts."""
        event = {
            "type": "notification",
            "id": self.pk,
            "level": self.level,
            "title": self.title,
            "text": self.text,
            "link": self.link,
            "created": self.created.isoformat(),
            "read": self.read,
        }
        if unread is not None:
            event["unread"] = unread
        return event


class OutboxMessage(models.Model):
    """An event that must reach the broker, written in the same transaction as the change it
    announces (DESIGN principle 8). Deleted once the broker's RECEIPT covers every SEND of it;
    see notifications.outbox for who publishes it and when."""

    # Every destination gets the same body (a job's final event goes to its own topic and to
    # the all-jobs topic); the row is confirmed when the broker has all of them.
    destinations = models.JSONField()
    # The message body exactly as it is published (compact JSON for a dict or list, the text of a
    # str), encoded once when the row is written: a relay sends these bytes as they are.
    body = models.TextField()
    content_type = models.CharField(max_length=100, default="application/json")
    created = models.DateTimeField(default=timezone.now)
    # No relay claims the row before this time: its writer publishes it right after the commit
    # and has until then to see it confirmed. A relay's claim pushes it on by the retry bound.
    available_at = models.DateTimeField()
    # Claims by a relay (the writer's own publish is not counted).
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["available_at", "id"], name="notif_outbox_due")]

    def __str__(self) -> str:
        return f"outbox #{self.pk} to {', '.join(self.destinations or [])}"

    @property
    def payload(self) -> Any:
        """The body as the caller gave it: a dict or list for JSON, else the text."""
        return json.loads(self.body) if self.content_type == "application/json" else self.body
