"""The Worker rows: one per `manage.py jobworker` process, kept by its own heartbeat.

A worker writes its row when it starts (host, pid, queues, concurrency), refreshes it with every
heartbeat it already writes for its jobs (JOBS["HEARTBEAT_INTERVAL"]: counters and the jobs it
holds), marks it STOPPED when it exits cleanly, and any worker marks a row LOST once its
heartbeat is older than JOBS["STALE_AFTER"] (the same limit that re-queues its jobs). A LOST
worker that was only frozen sets itself RUNNING again at its next heartbeat.
"""
from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import TYPE_CHECKING

from django.utils import timezone

from . import conf
from .models import Worker as WorkerRow
from .models import WorkerState

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["register", "beat", "stopped", "mark_lost", "alive"]

logger = logging.getLogger(__name__)

_COUNTERS = ("succeeded", "failed", "cancelled", "retried")


def _activity(worker: Worker) -> dict:
    counts, running = worker.activity()
    return {**{name: counts.get(name, 0) for name in _COUNTERS}, "running": running}


def register(worker: Worker) -> None:
    """Write (or rewrite, for a reused --worker-id) the row of a starting worker."""
    now = timezone.now()
    WorkerRow.objects.update_or_create(
        id=worker.worker_id,
        defaults={
            "host": socket.gethostname()[:255], "pid": os.getpid(), "backend": worker.backend.alias,
            "queues": list(worker.queues), "concurrency": worker.concurrency, "state": WorkerState.RUNNING,
            "started_at": now, "heartbeat_at": now, "stopped_at": None, "running": [],
            **dict.fromkeys(_COUNTERS, 0),
        },
    )


def beat(worker: Worker) -> None:
    """The heartbeat: counters, held jobs, RUNNING or STOPPING (a pruned row is written again)."""
    state = WorkerState.STOPPING if worker.stopping else WorkerState.RUNNING
    updated = WorkerRow.objects.filter(id=worker.worker_id).update(
        heartbeat_at=timezone.now(), state=state, **_activity(worker)
    )
    if not updated:
        logger.warning("Worker %s: its row was gone; written again", worker.worker_id)
        register(worker)


def stopped(worker: Worker) -> None:
    """A clean exit: STOPPED, with the final counters."""
    now = timezone.now()
    WorkerRow.objects.filter(id=worker.worker_id).update(
        state=WorkerState.STOPPED, stopped_at=now, heartbeat_at=now, **{**_activity(worker), "running": []}
    )


def mark_lost(now=None) -> int:
    """Mark LOST every RUNNING or STOPPING worker silent for more than STALE_AFTER; how many."""
    now = now or timezone.now()
    limit = now - timedelta(seconds=float(conf.get("STALE_AFTER")))
    lost = list(
        WorkerRow.objects.filter(state__in=[WorkerState.RUNNING, WorkerState.STOPPING], heartbeat_at__lt=limit)
        .values_list("id", flat=True)
    )
    if not lost:
        return 0
    count = WorkerRow.objects.filter(id__in=lost, heartbeat_at__lt=limit).update(state=WorkerState.LOST)
    for worker_id in lost:
        logger.warning("Worker %s stopped heartbeating (over %s s): marked lost", worker_id, conf.get("STALE_AFTER"))
    return count


def alive(now=None):
    """The workers that heartbeated within STALE_AFTER (RUNNING or STOPPING)."""
    now = now or timezone.now()
    limit = now - timedelta(seconds=float(conf.get("STALE_AFTER")))
    return WorkerRow.objects.filter(state__in=[WorkerState.RUNNING, WorkerState.STOPPING], heartbeat_at__gte=limit)
