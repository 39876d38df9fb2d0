"""Deleting what operations no longer need, in small batches: finished jobs (and their result
files), old schedule runs, workers long gone, and read notifications.

Each batch is one short transaction (JOBS["PRUNE_BATCH"] rows, then a JOBS["PRUNE_BATCH_PAUSE"]
pause), so claims never wait long behind a prune, even on SQLite's single write lock;
bench/prune_bench.py measures the longest claim during a 100,000-job prune. Only SUCCESSFUL,
FAILED and CANCELLED jobs are deleted, re-checked in the deleting statement (a job retried in
between stays); result files are deleted from storage after their rows are committed gone.
Every jobworker prunes every JOBS["PRUNE_INTERVAL"] seconds; `manage.py prunejobs` and
`manage.py prunenotifications` do the same by hand, with --dry-run.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from notifications.retention import checkpoint_sqlite_wal, delete_rows

from . import conf
from .models import FINAL_STATUSES, Job, ScheduleRun, WorkerState
from .models import Worker as WorkerRow

__all__ = ["Pruned", "prune", "prune_jobs", "prune_schedule_runs", "prune_workers", "age_setting"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pruned:
    """What a prune deleted (or, in a dry run, would delete)."""

    jobs: int = 0
    files: int = 0  # result files deleted from storage
    file_errors: int = 0  # result files that could not be deleted (logged; the row is gone anyway)
    schedule_runs: int = 0
    workers: int = 0
    notifications: int = 0
    batches: int = 0
    dry_run: bool = False

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(**{name: getattr(self, name) + getattr(other, name) for name in
                         ("jobs", "files", "file_errors", "schedule_runs", "workers", "notifications", "batches")},
                      dry_run=self.dry_run or other.dry_run)


def age_setting(key: str) -> timedelta | None:
    seconds = conf.get(key)
    return None if seconds is None else timedelta(seconds=float(seconds))


def _options(batch_size: int | None, pause: float | None) -> tuple[int, float]:
    batch_size = int(conf.get("PRUNE_BATCH")) if batch_size is None else batch_size
    if isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size!r}.")
    return batch_size, float(conf.get("PRUNE_BATCH_PAUSE")) if pause is None else pause


def _in_batches(select: Callable[[int], list], delete: Callable[[list], int], batch_size: int, pause: float,
                should_stop: Callable[[], bool] | None) -> tuple[int, int, list]:
    """Select up to batch_size rows (outside any transaction: a read takes no lock) and delete them
    in one short transaction, until select() returns nothing.
    Returns (rows deleted, batches, what select() returned for the deleted batches)."""
    deleted = batches = 0
    selected: list = []
    while not (should_stop and should_stop()):
        rows = select(batch_size)
        if not rows:
            break
        with transaction.atomic():
            deleted += delete(rows)
        batches += 1
        checkpoint_sqlite_wal()
        selected.extend(rows)
        if pause:
            time.sleep(pause)
    return deleted, batches, selected


def prune_jobs(*, older_than: timedelta | None = None, batch_size: int | None = None, dry_run: bool = False,
               now: datetime | None = None, pause: float | None = None,
               should_stop: Callable[[], bool] | None = None) -> Pruned:
    """Delete jobs that finished before now - older_than (default JOBS["PRUNE_JOBS_AFTER"]), with
    their result files."""
    older_than = age_setting("PRUNE_JOBS_AFTER") if older_than is None else older_than
    if older_than is None:
        return Pruned(dry_run=dry_run)
    batch_size, pause = _options(batch_size, pause)
    cutoff = (now or timezone.now()) - older_than
    old = Job.objects.filter(status__in=FINAL_STATUSES, finished_at__lt=cutoff)
    if dry_run:
        return Pruned(jobs=old.count(), files=old.exclude(result_file="").count(), dry_run=True)

    # Walk the finished_at index (every finished job has finished_at; a retried one loses it). A
    # row found not final when deleting (retried in between) is skipped from then on.
    skipped: set = set()

    def select(limit: int) -> list:
        rows = Job.objects.filter(finished_at__lt=cutoff).exclude(pk__in=skipped)
        return list(rows.order_by("finished_at").values_list("pk", "result_file")[:limit])

    def delete(rows: list) -> int:
        # Whatever points at a job (schedule runs, an app's own models) is handled as its
        # on_delete says; the status is checked again in the deleting transaction.
        ids = [pk for pk, _ in rows]
        # Locked on PostgreSQL (a retry of one of them waits, then finds it gone); SQLite's
        # transaction holds the write lock already.
        # (The status is compared here, not in SQL: "status IN" would lead SQLite to the claim index.)
        finished = {pk for pk, status in Job.objects.select_for_update().filter(pk__in=ids).values_list("pk", "status")
                    if status in FINAL_STATUSES}
        skipped.update(pk for pk in ids if pk not in finished)
        return delete_rows(Job, list(finished))

    deleted, batches, rows = _in_batches(select, delete, batch_size, pause, should_stop)
    files = errors = 0
    names = [name for _, name in rows if name]
    if names:
        gone = set(Job.objects.filter(pk__in=[pk for pk, name in rows if name]).values_list("pk", flat=True))
        storage = Job._meta.get_field("result_file").storage
        for pk, name in rows:
            if not name or pk in gone:
                continue
            try:
                storage.delete(name)
                files += 1
            except Exception:
                errors += 1
                logger.exception("Could not delete the result file %s of pruned job %s", name, pk)
    if deleted:
        logger.info("Pruned %d job(s) finished before %s (%d result file(s), %d could not be deleted)",
                    deleted, cutoff.isoformat(), files, errors)
    return Pruned(jobs=deleted, files=files, file_errors=errors, batches=batches)


def prune_schedule_runs(*, older_than: timedelta | None = None, batch_size: int | None = None, dry_run: bool = False,
                        now: datetime | None = None, pause: float | None = None,
                        should_stop: Callable[[], bool] | None = None) -> Pruned:
    """Delete schedule runs recorded before now - older_than (default JOBS["PRUNE_JOBS_AFTER"]).
    A due time that old is long behind its schedule's next due time, so no claim needs it."""
    older_than = age_setting("PRUNE_JOBS_AFTER") if older_than is None else older_than
    if older_than is None:
        return Pruned(dry_run=dry_run)
    batch_size, pause = _options(batch_size, pause)
    old = ScheduleRun.objects.filter(created_at__lt=(now or timezone.now()) - older_than)
    if dry_run:
        return Pruned(schedule_runs=old.count(), dry_run=True)
    deleted, batches, _ = _in_batches(
        lambda limit: list(old.order_by("created_at").values_list("pk", flat=True)[:limit]),
        lambda ids: delete_rows(ScheduleRun, ids), batch_size, pause, should_stop)
    if deleted:
        logger.info("Pruned %d schedule run(s)", deleted)
    return Pruned(schedule_runs=deleted, batches=batches)


def prune_workers(*, older_than: timedelta | None = None, dry_run: bool = False, now: datetime | None = None) -> Pruned:
    """Delete STOPPED and LOST Worker rows silent since before now - older_than
    (default JOBS["PRUNE_WORKERS_AFTER"]); a handful of rows, one statement."""
    older_than = age_setting("PRUNE_WORKERS_AFTER") if older_than is None else older_than
    if older_than is None:
        return Pruned(dry_run=dry_run)
    old = WorkerRow.objects.filter(state__in=[WorkerState.STOPPED, WorkerState.LOST],
                                   heartbeat_at__lt=(now or timezone.now()) - older_than)
    if dry_run:
        return Pruned(workers=old.count(), dry_run=True)
    deleted = old.delete()[0]
    if deleted:
        logger.info("Pruned %d worker row(s) stopped or lost over %s ago", deleted, older_than)
    return Pruned(workers=deleted, batches=1 if deleted else 0)


def prune(*, older_than: timedelta | None = None, batch_size: int | None = None, dry_run: bool = False,
          notifications: bool = True, now: datetime | None = None, pause: float | None = None,
          should_stop: Callable[[], bool] | None = None) -> Pruned:
    """Everything at once (what a worker's housekeeping runs): jobs, schedule runs, workers, and
    read notifications when the notifications app is installed. ``older_than`` overrides the
    jobs' and schedule runs' age only."""
    options = dict(batch_size=batch_size, dry_run=dry_run, now=now, pause=pause, should_stop=should_stop)
    total = prune_jobs(older_than=older_than, **options)
    total += prune_schedule_runs(older_than=older_than, **options)
    total += prune_workers(dry_run=dry_run, now=now)
    if notifications:
        from django.apps import apps

        if apps.is_installed("notifications"):
            from notifications.retention import prune_notifications

            batch, pause_s = _options(batch_size, pause)
            counted = prune_notifications(batch_size=batch, dry_run=dry_run, now=now, pause=pause_s,
                                          should_stop=should_stop)
            total += Pruned(notifications=counted.deleted, batches=counted.batches, dry_run=counted.dry_run)
    return total
