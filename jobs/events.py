"""Job events (shared contract 5): the JSON built from a Job row, published after the row is written.

Each event carries the whole visible state of the job, so any later event supersedes an
earlier one: they are published with a per-job coalesce key (latest state wins in the
publisher's outage buffer) and clients drop anything with a ``seq`` lower than what they have.

A job's final event is durable: promise_final() writes it to the notifications outbox, with
the owner's notification, in the transaction that makes the job final, so a worker killed
right after that commit loses neither (any worker's relay publishes what it left). The other
events (READY, RUNNING, progress) and wake-ups go straight to the publisher after commit.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import live as destinations

if TYPE_CHECKING:
    from .models import Job

__all__ = [
    "job_event",
    "result_url",
    "publish_event",
    "publish_job",
    "publish_wakeup",
    "promise_final",
    "outbox_installed",
    "owner_notification",
    "notify_owner_of",
]

logger = logging.getLogger(__name__)

# Events carry only the tail of the log: a page shows the last lines, the row keeps more.
EVENT_LOG_ENTRIES = 20

# The level of what a finished job tells its owner, by final status. The title is the job's name
# and the word every page shows for its state (jobs.vocabulary): "Debug report: Successful".
_NOTIFY_LEVELS = {"SUCCESSFUL": "success", "FAILED": "error", "CANCELLED": "warning"}
# Notification.title's max_length.
TITLE_LENGTH = 200


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def result_url(job: Job) -> str | None:
    """The download link of a SUCCESSFUL job that produced a file, else None."""
    if job.status != "SUCCESSFUL" or not job.result_file:
        return None
    try:
        from django.urls import reverse

        return reverse("jobs:download", args=[job.pk])
    except Exception:  # the jobs URLs are not mounted (a project using only the backend)
        return f"/jobs/{job.pk}/download/"


def job_event(job: Job) -> dict[str, Any]:
    """The event JSON for a job, exactly as contract 5 lists it."""
    from .vocabulary import display

    error = None
    if job.error_type and job.status in {"FAILED", "CANCELLED"}:
        error = {"type": job.error_type, "message": job.error_message}
    return {
        "type": "job",
        "id": str(job.pk),
        "seq": job.seq,
        "task": job.task_path,
        "name": job.display_name,
        "status": str(job.status),
        "final": job.is_final,
        "queue": job.queue,
        "owner_id": job.owner_id,
        "progress": {"done": job.progress_done, "total": job.progress_total, "percent": job.percent},
        "message": job.message,
        "log": list(job.log or [])[-EVENT_LOG_ENTRIES:],
        "error": error,
        "result_url": result_url(job),
        "cancel_requested": job.cancel_requested,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "enqueued_at": _iso(job.enqueued_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        # What pages show (state word, rounded percentage, message line): jobs.vocabulary.
        "display": display(job),
    }


def _publisher_publish():
    """notifications.live.publish (after commit; through a web process's hub when it is connected,
    else the process publisher), or None where the notifications app is not installed."""
    try:
        from notifications.live import publish as publish_event
    except ImportError:
        return None
    return publish_event


def publish_event(event: dict[str, Any]) -> None:
    """Publish one job event to its per-job topic and to the all-jobs topic. Never raises."""
    publish = _publisher_publish()
    if publish is None:
        return
    job_id = event["id"]
    # Only progress of a running attempt is coalesced (latest wins); every other state change
    # keeps its own event. The publisher coalesces by key alone, so each destination needs its
    # own key too.
    phase = f"RUNNING:{event['attempts']}" if event["status"] == "RUNNING" else None
    for destination, key in (
        (destinations.job(job_id), phase and f"job:{job_id}:{phase}"),
        (destinations.JOBS_ALL, phase and f"job:{job_id}:{phase}:all"),
    ):
        try:
            publish(destination, event, coalesce_key=key)
        except Exception:  # publishing must never break a state change that is already committed
            logger.exception("Could not publish the event of job %s to %s", job_id, destination)


def publish_job(job: Job) -> None:
    publish_event(job_event(job))


def publish_wakeup(queue: str) -> None:
    """Tell idle workers that a job is ready on ``queue`` (they poll at once)."""
    publish = _publisher_publish()
    if publish is None:
        return
    try:
        # Wake-ups still waiting in the publisher merge: one tells idle workers as much as ten.
        publish(destinations.JOBS_WAKEUP, queue, coalesce_key=f"wakeup:{queue}")
    except Exception:
        logger.exception("Could not publish a wake-up for queue %s", queue)


def outbox_installed() -> bool:
    """Whether the notifications app (its Notification and OutboxMessage tables) is installed."""
    from django.apps import apps

    return apps.is_installed("notifications")


def owner_notification(job: Job) -> dict[str, str]:
    """What a finished job tells its owner: the fields of notifications.api.notify()."""
    from .vocabulary import label

    level = _NOTIFY_LEVELS[str(job.status)]
    word = label(job.status)
    name = job.display_name
    if len(name) + len(word) + 2 > TITLE_LENGTH:  # a long name is cut, never the state's word
        name = name[:TITLE_LENGTH - len(word) - 3] + "…"
    if job.status == "SUCCESSFUL":
        text = job.message or "Done."
    else:
        text = job.error_message or job.message
    link = result_url(job) or ""
    if not link:
        try:
            from django.urls import reverse

            link = reverse("jobs:detail", args=[job.pk])
        except Exception:
            link = ""
    return {"title": f"{name}: {word}", "text": (text or "")[:1000], "level": level, "link": link}


def promise_final(jobs: list[Job]) -> bool:
    """Call inside the transaction that made ``jobs`` final: writes each one's final event to the
    outbox (its topic and the all-jobs topic) and its owner's notification, published after the
    commit. Jobs that are not final are skipped. False when the notifications app is not
    installed (then nothing is promised: publish the events directly)."""
    finals = [job for job in jobs if job.is_final]
    if not finals:
        return True
    if not outbox_installed():
        return False
    from notifications.api import notify_many
    from notifications.outbox import publish_durable_many

    publish_durable_many(
        [((destinations.job(job.pk), destinations.JOBS_ALL), job_event(job)) for job in finals]
    )
    owned = [job for job in finals if job.owner_id is not None]
    if owned:
        notify_many([(job.owner_id, owner_notification(job)) for job in owned])
    return True


def notify_owner_of(job: Job) -> None:
    """Notify the owner of a finished job (notifications.api.notify, in the caller's transaction)."""
    if job.owner_id is None or not job.is_final or not outbox_installed():
        return
    from notifications.api import notify

    notify(job.owner_id, **owner_notification(job))
