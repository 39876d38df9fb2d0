"""STOMP destination names shared by the worker, the publisher, the hub and the WebSocket consumer.

Only what RabbitMQ, ActiveMQ and the embedded broker all share: /topic/ (publish-subscribe)
and /queue/ (point to point), with dot-separated names (RabbitMQ routes /topic/ by routing key).
Browsers see the same /topic/ names, guarded by the consumer, plus /user/queue/notifications
(mapped to the logged-in user's topic) and /app/... (handled by the server, never relayed).
"""
from __future__ import annotations

__all__ = [
    "JOBS_ALL",
    "JOBS_WAKEUP",
    "NOTIFICATIONS_BROADCAST",
    "USER_NOTIFICATIONS",
    "APP_JOB_CANCEL",
    "APP_NOTIFICATION_READ",
    "job",
    "user_notifications",
    "parse_job",
]

JOBS_ALL = "/topic/jobs.all"  # every job event, for users with jobs.view_job
JOBS_WAKEUP = "/topic/jobs.wakeup"  # a job was enqueued: workers poll now (body: queue name)
NOTIFICATIONS_BROADCAST = "/topic/notifications.broadcast"  # every logged-in user
USER_NOTIFICATIONS = "/user/queue/notifications"  # what a browser subscribes to for its own
APP_JOB_CANCEL = "/app/jobs.cancel"  # browser SEND, body {"job": "<uuid>"}
APP_NOTIFICATION_READ = "/app/notifications.read"  # browser SEND, body {"id": 12} or {"all": true}

_JOB_PREFIX = "/topic/jobs."


def job(job_id: object) -> str:
    """The per-job topic, e.g. /topic/jobs.6f1c...-...."""
    return f"{_JOB_PREFIX}{job_id}"


def user_notifications(user_id: object) -> str:
    """The broker-side topic behind one user's /user/queue/notifications."""
    return f"/topic/notifications.user.{user_id}"


def parse_job(destination: str) -> str | None:
    """The job id in a per-job destination, or None if it is not one."""
    if not destination.startswith(_JOB_PREFIX):
        return None
    rest = destination[len(_JOB_PREFIX):]
    if rest in {"all", "wakeup"} or not rest:
        return None
    return rest
