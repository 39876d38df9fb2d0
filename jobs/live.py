"""The jobs app's live destinations, declared through notifications.live like any other app's.

Broker side, written by the worker (jobs.events): /topic/jobs.<uuid> (one job) and
/topic/jobs.all (every job), and /topic/jobs.wakeup between workers. What browsers may use:

  /topic/jobs.<uuid>   one job: its owner, or jobs.view_job; first message: its state
  /topic/jobs.all      every job: jobs.view_job; first: the READY and RUNNING jobs
  /user/queue/jobs     the jobs the user owns (their view of /topic/jobs.all); first: own active jobs
  SEND /app/jobs.cancel {"job": "<uuid>"}: the owner, or jobs.change_job

After a broker reconnect a list subscription gets, instead of the snapshot, every job it showed
unfinished and every job written since shortly before the outage (bounded, read in pages).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from django.db.models import Q

from notifications import live

logger = logging.getLogger(__name__)

__all__ = [
    "JOBS_ALL",
    "JOBS_WAKEUP",
    "USER_JOBS",
    "APP_JOB_CANCEL",
    "VIEW_JOB",
    "CHANGE_JOB",
    "LIST_SNAPSHOT_LIMIT",
    "RESYNC_LIMIT",
    "job",
    "can_watch_job",
    "can_view_all_jobs",
    "can_cancel_job",
]

JOBS_ALL = "/topic/jobs.all"  # every job event, for users with jobs.view_job
JOBS_WAKEUP = "/topic/jobs.wakeup"  # a job was enqueued: workers poll now (body: queue name)
USER_JOBS = "/user/queue/jobs"  # the jobs the user owns (a filtered view of JOBS_ALL)
APP_JOB_CANCEL = "/app/jobs.cancel"  # browser SEND, body {"job": "<uuid>"}
VIEW_JOB = "jobs.view_job"
CHANGE_JOB = "jobs.change_job"

# Jobs sent as the snapshot of a list subscription: the newest READY and RUNNING ones.
LIST_SNAPSHOT_LIMIT = 50
# Jobs sent by one resync of a list subscription after a reconnect, read RESYNC_PAGE at a time.
RESYNC_LIMIT = 2000
RESYNC_PAGE = 200

_ACTIVE = ("READY", "RUNNING")


def job(job_id: object) -> str:
    """The per-job topic, e.g. /topic/jobs.6f1c...-...."""
    return f"/topic/jobs.{job_id}"


def _job_model():
    from .models import Job

    return Job


def _event(job_row) -> dict:
    from .events import job_event

    return job_event(job_row)


def can_view_all_jobs(user: Any) -> bool:
    return user.has_perm(VIEW_JOB)


def can_watch_job(user: Any, id: uuid.UUID) -> bool:  # noqa: A002  (the pattern's part)
    """The owner, or a user with jobs.view_job; an unknown job is refused with its own message."""
    row = _job_model().objects.filter(pk=id).only("owner_id").first()
    if row is None:
        raise live.Refused(f"No such job: {job(id)}")
    return (row.owner_id is not None and row.owner_id == user.pk) or user.has_perm(VIEW_JOB)


def can_cancel_job(user: Any, job_row) -> bool:
    return (job_row.owner_id is not None and job_row.owner_id == user.pk) or user.has_perm(CHANGE_JOB)


def _one(user: Any, id: uuid.UUID) -> list[dict]:  # noqa: A002
    row = _job_model().objects.filter(pk=id).first()
    return [_event(row)] if row is not None else []


def _active(owner: Any = None) -> list[dict]:
    jobs = _job_model().objects.filter(status__in=_ACTIVE)
    if owner is not None:
        jobs = jobs.filter(owner=owner)
    newest = list(jobs.order_by("-enqueued_at")[:LIST_SNAPSHOT_LIMIT])
    return [_event(row) for row in reversed(newest)]


def _resync(user: Any, since: datetime | None, pending: list, owner: Any = None) -> Iterator[dict]:
    """After a reconnect: the jobs shown unfinished, then the READY and RUNNING jobs and every job
    enqueued, started or finished from ``since`` on, in pages by enqueue time; at most
    RESYNC_LIMIT jobs (past it the rest is left out and logged: a page that far behind reloads)."""
    sent = 0
    for event in _changed(since, pending, owner):
        if sent == RESYNC_LIMIT:
            logger.warning("A jobs list resync stopped at %d jobs (RESYNC_LIMIT); the rest was left out", RESYNC_LIMIT)
            return
        sent += 1
        yield event


def _changed(since: datetime | None, pending: list, owner: Any) -> Iterator[dict]:
    Job = _job_model()
    jobs = Job.objects.all() if owner is None else Job.objects.filter(owner=owner)
    sent: set = set()
    ids = []
    for value in pending:
        try:
            ids.append(uuid.UUID(str(value)))
        except ValueError:
            continue
    for start in range(0, len(ids), RESYNC_PAGE):
        for row in jobs.filter(pk__in=ids[start:start + RESYNC_PAGE]):
            sent.add(row.pk)
            yield _event(row)
    changed = Q(status__in=_ACTIVE)
    if since is not None:
        changed |= Q(enqueued_at__gte=since) | Q(started_at__gte=since) | Q(finished_at__gte=since)
    # Keyset pagination on (enqueued_at, id): stable while rows change under it.
    query = jobs.filter(changed).order_by("enqueued_at", "id")
    last = None
    while True:
        page = query
        if last is not None:
            page = page.filter(Q(enqueued_at__gt=last[0]) | Q(enqueued_at=last[0], id__gt=last[1]))
        rows = list(page[:RESYNC_PAGE])
        for row in rows:
            if row.pk not in sent:
                sent.add(row.pk)
                yield _event(row)
        if len(rows) < RESYNC_PAGE:
            return
        last = (rows[-1].enqueued_at, rows[-1].pk)


def _own(user: Any, event: dict) -> bool:
    return event.get("owner_id") == user.pk


live.subscription(
    "/topic/jobs.{id:uuid}",
    permission=can_watch_job,
    snapshot=_one,
    key="id", seq="seq", final="final",
)
live.subscription(
    JOBS_ALL,
    permission=can_view_all_jobs,
    snapshot=lambda user: _active(),
    resync=lambda user, since, pending: _resync(user, since, pending),
    key="id", seq="seq", final="final",
)
live.subscription(
    USER_JOBS,
    topics=JOBS_ALL,
    filter=_own,
    snapshot=lambda user: _active(owner=user),
    resync=lambda user, since, pending: _resync(user, since, pending, owner=user),
    key="id", seq="seq", final="final",
)


@live.handler(APP_JOB_CANCEL, body='{"job": "<uuid>"}')
def _cancel(user: Any, body: Any) -> None:
    """Cancel a job (owner or jobs.change_job); cancelling a finished job changes nothing."""
    job_id = body.get("job") if isinstance(body, dict) else None
    if not isinstance(job_id, str):
        raise live.BadBody()
    from .exceptions import JobStateError

    try:
        row = _job_model().objects.filter(pk=uuid.UUID(job_id)).first()
    except ValueError:
        row = None
    if row is None:
        raise live.Refused(f"No such job: {job_id}")
    if not can_cancel_job(user, row):
        raise live.Refused(f"Not allowed to cancel job {job_id}")
    try:
        row.cancel()
    except JobStateError:
        # Already finished: cancelling is idempotent, and the final state reaches the page
        # through its job subscription anyway.
        pass
