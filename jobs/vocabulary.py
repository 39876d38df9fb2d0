"""What a person reads about a job, defined once: the word for each state, the sentence shown
when a job has no message of its own, and how a percentage is rounded.

The pages, the admin, the notifications and the JavaScript all show these: the server renders
them, and every job event carries them as ``display`` (see display()), so the browser never
words or rounds anything itself. The state words are the model's choice labels
(``Job.get_status_display()``, which the admin's filters show too), plus "Cancelling" for a
running job asked to stop.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .models import JobStatus

if TYPE_CHECKING:
    from .models import Job

__all__ = [
    "CANCELLING",
    "SUMMARIES",
    "state",
    "label",
    "shown_percent",
    "percent_text",
    "message",
    "display",
]

# The word for a running job whose cancel was requested but that has not stopped yet.
CANCELLING = "Cancelling"

# What a job says when it has no message of its own (READY and finished jobs).
SUMMARIES = {
    JobStatus.READY: "Waiting for a worker to start it.",
    JobStatus.RUNNING: "Started.",
    JobStatus.SUCCESSFUL: "Finished.",
    JobStatus.FAILED: "Failed.",
    JobStatus.CANCELLED: "Cancelled.",
}


def state(status: str, cancel_requested: bool = False) -> str:
    """The state as the CSS and data attributes name it: a status in lower case, or "cancelling"."""
    if cancel_requested and status == JobStatus.RUNNING:
        return "cancelling"
    return str(status).lower()


def label(status: str, cancel_requested: bool = False) -> str:
    """The word for a state: "Ready", "Running", "Cancelling", "Successful", "Failed", "Cancelled"."""
    if cancel_requested and status == JobStatus.RUNNING:
        return CANCELLING
    try:
        return str(JobStatus(status).label)
    except ValueError:  # a status this version does not know: show it as it is
        return str(status)


def shown_percent(percent: float | None, status: str) -> int | None:
    """The percentage a person sees: rounded down (a bar never claims work that is not done),
    100 once the job succeeded whatever its counts said, None when the total is unknown."""
    if status == JobStatus.SUCCESSFUL:
        return 100
    if percent is None:
        return None
    return max(0, min(100, math.floor(percent)))


def percent_text(percent: float | None, status: str) -> str:
    """"37%", or "" when there is no percentage to show."""
    shown = shown_percent(percent, status)
    return "" if shown is None else f"{shown}%"


def message(job: Job) -> str:
    """The line under the bar. A job that failed or was cancelled no longer shows the step it
    was busy with as if it still were: it says where it stopped."""
    text = (job.message or "").strip()
    status = str(job.status)
    if status in {JobStatus.FAILED, JobStatus.CANCELLED}:
        if job.started_at is None:
            return "Stopped before it started."
        if text:
            return f"Stopped during: {text.rstrip('.…')}."
        return SUMMARIES[JobStatus(status)]
    if text:
        return text
    try:
        return SUMMARIES[JobStatus(status)]
    except ValueError:
        return ""


def display(job: Job) -> dict[str, Any]:
    """Everything a page shows about a job's state, as one JSON-ready dict (events carry it)."""
    status = str(job.status)
    return {
        "state": state(status, job.cancel_requested),
        "label": label(status, job.cancel_requested),
        "percent": shown_percent(job.percent, status),
        "percent_text": percent_text(job.percent, status),
        "message": message(job),
    }
