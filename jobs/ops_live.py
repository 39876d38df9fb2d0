"""The operations overview, live: one destination carrying the workers and the job statistics the
admin's Workers page and Overview dashboard show, declared through notifications.live.

    /topic/ops.overview   staff with jobs.view_worker; first message: the overview now

The overview is read from the database (the truth) and published every JOBS["OVERVIEW_INTERVAL"]
seconds by one worker: the alive worker whose id sorts first, so N workers do not publish it N
times; if that one dies, the next takes over once the first is marked LOST. Each overview carries
``generated_at``: a page keeps the newest.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db.models import Avg, Count, DurationField, ExpressionWrapper, F, Max, Min, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone

from notifications import live

from . import conf, workers
from .models import FINAL_STATUSES, Job, JobStatus, Worker, WorkerState

__all__ = ["OVERVIEW", "overview", "publish_overview", "is_publisher", "can_view_overview"]

OVERVIEW = "/topic/ops.overview"
# Minutes of throughput the chart shows, and tasks listed as the slowest.
CHART_MINUTES = 60
SLOWEST = 5
# Workers listed (the most recent first): a page shows the live ones and the last that stopped.
WORKERS_SHOWN = 50


def can_view_overview(user: Any) -> bool:
    return bool(getattr(user, "is_staff", False) and user.has_perm("jobs.view_worker"))


def overview(now=None) -> dict:
    """Jobs per state, succeeded and failed per minute over the last hour, queue depth and oldest
    wait per queue, the slowest tasks of the last hour, and the workers, as one JSON event."""
    now = now or timezone.now()
    since = now - timedelta(minutes=CHART_MINUTES)
    states = dict(Job.objects.values_list("status").annotate(n=Count("id")).order_by())
    per_minute = {
        row["minute"]: row
        for row in Job.objects.filter(status__in=FINAL_STATUSES, finished_at__gte=since)
        .annotate(minute=TruncMinute("finished_at")).values("minute")
        .annotate(succeeded=Count("id", filter=Q(status=JobStatus.SUCCESSFUL)),
                  failed=Count("id", filter=Q(status=JobStatus.FAILED)))
        .order_by("minute")
    }
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=CHART_MINUTES - 1)
    minutes = []
    for n in range(CHART_MINUTES):
        minute = start + timedelta(minutes=n)
        row = per_minute.get(minute, {})
        minutes.append({"minute": minute.isoformat(), "succeeded": row.get("succeeded", 0), "failed": row.get("failed", 0)})
    queues = [
        {"queue": row["queue"], "depth": row["n"], "oldest_seconds": round((now - row["first"]).total_seconds(), 1)}
        for row in Job.objects.filter(status=JobStatus.READY, run_after__lte=now).values("queue")
        .annotate(n=Count("id"), first=Min("run_after")).order_by("queue")
    ]
    took = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    durations = [
        {"task": row["task_path"], "runs": row["runs"], "avg_seconds": round(row["avg"].total_seconds(), 3),
         "max_seconds": round(row["max"].total_seconds(), 3)}
        for row in Job.objects.filter(status=JobStatus.SUCCESSFUL, finished_at__gte=since, started_at__isnull=False)
        .values("task_path").annotate(runs=Count("id"), avg=Avg(took), max=Max(took)).order_by()
    ]
    durations.sort(key=lambda d: -d["avg_seconds"])
    stale = timedelta(seconds=float(conf.get("STALE_AFTER")))
    worker_rows = []
    for w in Worker.objects.order_by("-heartbeat_at")[:WORKERS_SHOWN]:
        state = w.state
        if state in (WorkerState.RUNNING, WorkerState.STOPPING) and now - w.heartbeat_at > stale:
            state = WorkerState.LOST  # not marked yet: say what it is
        worker_rows.append({
            "id": w.id, "state": str(state), "host": w.host, "pid": w.pid, "queues": w.queues,
            "concurrency": w.concurrency, "heartbeat_age": round(max(0.0, (now - w.heartbeat_at).total_seconds()), 1),
            "running": list(w.running or []), "succeeded": w.succeeded, "failed": w.failed,
            "started_at": w.started_at.isoformat(),
        })
    return {
        "type": "jobs.overview",
        "generated_at": now.isoformat(),
        "states": {status: states.get(status, 0) for status in JobStatus.values},
        "per_minute": minutes,
        "queues": queues,
        "slowest": durations[:SLOWEST],
        "workers": worker_rows,
    }


def is_publisher(worker_id: str) -> bool:
    """Whether this worker is the one that publishes the overview (the first alive id)."""
    first = workers.alive().order_by("id").values_list("id", flat=True).first()
    return first == worker_id


def publish_overview(now=None) -> dict:
    event = overview(now)
    live.publish(OVERVIEW, event, coalesce_key="jobs.overview")
    return event


live.subscription(OVERVIEW, permission=can_view_overview, snapshot=lambda user: overview())
