"""The Job model: one row per enqueued task, the single source of truth for its state.

Every change a person or a worker makes goes through a compare-and-swap on ``seq`` (the per-job
event sequence number): ``UPDATE ... SET seq = seq + 1, ... WHERE id = %s AND seq = <known>``, so
two writers never both win and every published event carries a distinct, increasing ``seq``.
"""
from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.db import connections, models, router, transaction
from django.db.models import Q
from django.utils import timezone

from .exceptions import JobStateError

__all__ = ["Job", "JobStatus", "JobQuerySet", "Worker", "WorkerState", "Schedule", "ScheduleRun", "MissedRuns"]

# A compare-and-swap loses only to a concurrent writer; a few rounds always suffice in practice.
_CAS_ROUNDS = 20


_CAS_SQL: dict[tuple[str, str, tuple[str, ...]], tuple[str, list]] = {}


def _cas_statement(model: type[models.Model], connection: Any, db: str, columns: tuple[str, ...]) -> tuple[str, list]:
    key = (db, model._meta.db_table, columns)
    cached = _CAS_SQL.get(key)
    if cached is None:
        qn = connection.ops.quote_name
        fields = [model._meta.get_field(name) for name in columns]
        assignments = ", ".join(f"{qn(f.column)} = %s" for f in fields)
        seq_col = qn(model._meta.get_field("seq").column)
        sql = (
            f"UPDATE {qn(model._meta.db_table)} SET {assignments}, {seq_col} = %s "
            f"WHERE {qn(model._meta.pk.column)} = %s AND {seq_col} = %s"
        )
        cached = _CAS_SQL[key] = (sql, fields)
    return cached


def _cas_execute(model: type[models.Model], pk: Any, seq: int, changes: dict[str, Any]) -> int:
    """UPDATE ... SET <changes>, seq = seq + 1 WHERE id = pk AND seq = seq; the row count.

    The worker writes every job several times, so the statement is built once per column set
    and values are prepared by their fields (what QuerySet.update() does, minus its compiler).
    """
    db = router.db_for_write(model)
    connection = connections[db]
    sql, fields = _cas_statement(model, connection, db, tuple(changes))
    params = [f.get_db_prep_save(changes[f.name], connection) for f in fields]
    params += [seq + 1, model._meta.pk.get_db_prep_value(pk, connection), seq]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _cas_execute_many(model: type[models.Model], items: list[tuple[Any, int, dict[str, Any]]], columns: tuple[str, ...]) -> int:
    """Many _cas_execute() with the same columns in one executemany; the total row count."""
    db = router.db_for_write(model)
    connection = connections[db]
    sql, fields = _cas_statement(model, connection, db, columns)
    pk_field = model._meta.pk
    params = [
        [f.get_db_prep_save(changes[f.name], connection) for f in fields]
        + [seq + 1, pk_field.get_db_prep_value(pk, connection), seq]
        for pk, seq, changes in items
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)
        return cursor.rowcount


class JobStatus(models.TextChoices):
    """Django's four TaskResultStatus values, plus CANCELLED kept apart from FAILED."""

    READY = "READY", "Ready"  # waiting to be claimed (new, retried, released or re-queued)
    RUNNING = "RUNNING", "Running"  # claimed by a worker, heartbeating
    SUCCESSFUL = "SUCCESSFUL", "Successful"  # the task returned; result holds its value
    FAILED = "FAILED", "Failed"  # the task raised, timed out, could not start, or its worker was lost
    CANCELLED = "CANCELLED", "Cancelled"  # cancelled before it ran, or stopped by a cancel request


FINAL_STATUSES = frozenset({JobStatus.SUCCESSFUL, JobStatus.FAILED, JobStatus.CANCELLED})


class JobQuerySet(models.QuerySet):
    def ready(self) -> JobQuerySet:
        return self.filter(status=JobStatus.READY)

    def running(self) -> JobQuerySet:
        return self.filter(status=JobStatus.RUNNING)

    def finished(self) -> JobQuerySet:
        return self.filter(status__in=FINAL_STATUSES)

    def visible_to(self, user: Any) -> JobQuerySet:
        """Jobs a user may see: all with jobs.view_job (staff with the permission), else their own."""
        if user is None or not getattr(user, "is_authenticated", False):
            return self.none()
        if user.has_perm("jobs.view_job"):
            return self
        return self.filter(owner=user)


class Job(models.Model):
    """One task run by `manage.py jobworker`: what it is, where it stands, what came out."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # What to run: the dotted path of a django.tasks Task, and its JSON arguments.
    task_path = models.CharField(max_length=255)
    name = models.CharField(max_length=200, blank=True, help_text="Human name shown in pages and events.")
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=100, default="default")
    priority = models.SmallIntegerField(default=0, help_text="-100..100; higher runs first.")
    run_after = models.DateTimeField(default=timezone.now, help_text="Not claimed before this time.")
    backend = models.CharField(max_length=100, default="default", help_text="The TASKS alias.")

    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.READY)
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(null=True, blank=True)
    message = models.CharField(max_length=500, blank=True, help_text="The latest status message.")
    # The last JOBS["LOG_LIMIT"] entries [{"n": 1, "at": iso, "text": str}]; log_count keeps counting.
    log = models.JSONField(default=list, blank=True)
    log_count = models.PositiveIntegerField(default=0)

    result = models.JSONField(null=True, blank=True, help_text="The task's return value (JSON).")
    result_file = models.FileField(upload_to="jobs/", max_length=500, blank=True)
    error_type = models.CharField(max_length=255, blank=True, help_text="Dotted exception class path.")
    error_message = models.TextField(blank=True)
    error_traceback = models.TextField(blank=True)

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    enqueued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker_id = models.CharField(max_length=100, blank=True, help_text="The worker running it now, or last.")
    worker_ids = models.JSONField(default=list, blank=True, help_text="One entry per attempt.")
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=1)
    time_limit = models.FloatField(null=True, blank=True, help_text="Seconds; empty means unlimited.")
    cancel_requested = models.BooleanField(default=False)
    seq = models.PositiveBigIntegerField(default=0, help_text="Per-job event sequence number.")

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-enqueued_at"]
        indexes = [
            # The claim query walks READY jobs in claim order (best priority, earliest run_after) and
            # stops at its LIMIT; queue and backend are filtered on the way (a worker usually serves all).
            models.Index(fields=["status", "-priority", "run_after"], name="jobs_job_claim_order"),
            # The stale-heartbeat sweep over RUNNING jobs.
            models.Index(fields=["status", "heartbeat_at"], name="jobs_job_stale"),
            models.Index(fields=["-enqueued_at"], name="jobs_job_enqueued"),
            # Retention: finished jobs by age (jobs.retention).
            models.Index(fields=["finished_at"], name="jobs_job_finished"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(priority__gte=-100) & Q(priority__lte=100), name="jobs_job_priority_range"
            ),
            models.CheckConstraint(condition=Q(max_attempts__gte=1), name="jobs_job_max_attempts_min"),
        ]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.status}) {self.id}"

    # Derived values -----------------------------------------------------------------------

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        func = self.task_path.rsplit(".", 1)[-1]
        return func.replace("_", " ").strip().capitalize() or self.task_path

    @property
    def percent(self) -> float | None:
        """Progress in percent (0..100, one decimal), or None when the total is unknown."""
        if not self.progress_total or self.progress_total <= 0:
            return None
        return round(min(100.0, max(0.0, 100.0 * self.progress_done / self.progress_total)), 1)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def duration(self):
        """Run time (a timedelta) once started: until finished, or until now while running."""
        if self.started_at is None:
            return None
        return (self.finished_at or timezone.now()) - self.started_at

    # Guarded state changes --------------------------------------------------------------------

    def cas_update(self, **changes: Any) -> bool:
        """Write ``changes`` and ``seq + 1`` if the row still has this instance's ``seq``.

        On success the instance holds the new values; on failure nothing was written and the
        caller should ``refresh_from_db()`` and decide again.
        """
        updated = _cas_execute(type(self), self.pk, self.seq, changes)
        if updated:
            for field, value in changes.items():
                setattr(self, field, value)
            self.seq += 1
        return bool(updated)

    @classmethod
    def cas_many(cls, items: list[tuple[Job, dict[str, Any]]]) -> list[bool]:
        """cas_update() for many jobs whose changes share one column set, in one executemany.

        Returns, per job, whether its change was written (and applied to the instance).
        """
        if not items:
            return []
        columns = tuple(items[0][1])
        db = router.db_for_write(cls)
        if len(items) == 1:  # executemany's pipeline costs round trips of its own on PostgreSQL
            rows = _cas_execute(cls, items[0][0].pk, items[0][0].seq, items[0][1])
        else:
            rows = _cas_execute_many(cls, [(job.pk, job.seq, changes) for job, changes in items], columns)
        if rows == len(items):
            applied = [True] * len(items)
        else:  # some lost to a concurrent writer: read back which rows carry exactly our write
            current = {
                row[0]: row[1:]
                for row in cls.objects.using(db)
                .filter(pk__in=[job.pk for job, _ in items])
                .values_list("pk", "seq", *columns)
            }
            applied = []
            for job, changes in items:
                row = current.get(job.pk)
                applied.append(
                    row is not None
                    and row[0] == job.seq + 1
                    and all(value == changes[name] for name, value in zip(columns, row[1:]))
                )
        for (job, changes), ok in zip(items, applied):
            if ok:
                for field, value in changes.items():
                    setattr(job, field, value)
                job.seq += 1
        return applied

    def cancel(self) -> bool:
        """Cancel: a READY job ends CANCELLED at once; a RUNNING one gets ``cancel_requested``.

        Returns True when the job ended now, False when the running task was asked to stop.
        Raises JobStateError for a job that already finished. The event is published after commit.
        """
        from . import events

        for _ in range(_CAS_ROUNDS):
            self.refresh_from_db()
            if self.status == JobStatus.READY:
                now = timezone.now()
                # The final state, its event and the owner's notification in one transaction.
                with transaction.atomic(using=router.db_for_write(type(self))):
                    done = self.cas_update(
                        status=JobStatus.CANCELLED,
                        cancel_requested=True,
                        finished_at=now,
                        error_type="jobs.exceptions.JobCancelled",
                        error_message="Cancelled before it started.",
                        error_traceback="",
                    )
                    durable = done and events.promise_final([self])
                if done and durable:
                    return True
                ended = True
            elif self.status == JobStatus.RUNNING:
                if self.cancel_requested:
                    return False
                done = self.cas_update(cancel_requested=True)
                ended = False
            else:
                raise JobStateError(
                    f"Job {self.pk} already finished ({self.status}); only READY or RUNNING jobs can be cancelled."
                )
            if done:
                self._publish_on_commit()
                return ended
        raise JobStateError(f"Job {self.pk} kept changing while being cancelled; try again.")

    def retry(self) -> None:
        """Run a FAILED or CANCELLED job again (same row, one more attempt allowed).

        Raises JobStateError for READY, RUNNING or SUCCESSFUL jobs. Progress, result and error are
        cleared; the log is kept, with a line saying the job was retried.
        """
        for _ in range(_CAS_ROUNDS):
            self.refresh_from_db()
            if self.status not in {JobStatus.FAILED, JobStatus.CANCELLED}:
                raise JobStateError(
                    f"Job {self.pk} is {self.status}; only FAILED or CANCELLED jobs can be retried."
                )
            now = timezone.now()
            log, log_count = self.appended_log([(now, f"Retried after {self.status.lower()}.")])
            if self.cas_update(
                status=JobStatus.READY,
                run_after=now,
                max_attempts=max(self.max_attempts, self.attempts + 1),
                cancel_requested=False,
                progress_done=0,
                progress_total=None,
                message="",
                result=None,
                error_type="",
                error_message="",
                error_traceback="",
                started_at=None,
                finished_at=None,
                heartbeat_at=None,
                log=log,
                log_count=log_count,
            ):
                self._publish_on_commit(wakeup=True)
                return
        raise JobStateError(f"Job {self.pk} kept changing while being retried; try again.")

    def appended_log(self, entries: list[tuple[Any, str]]) -> tuple[list[dict], int]:
        """The log with ``entries`` ((datetime, text) pairs) appended and capped; and the new count."""
        from . import conf

        limit = max(1, int(conf.get("LOG_LIMIT")))
        log = list(self.log or [])
        count = self.log_count
        for at, text in entries:
            count += 1
            log.append({"n": count, "at": at.isoformat(), "text": str(text)[:2000]})
        return log[-limit:], count

    def _publish_on_commit(self, *, wakeup: bool = False) -> None:
        """Publish this state after commit (not durable: see jobs.events.promise_final for final states)."""
        from . import events

        snapshot = events.job_event(self)
        queue = self.queue

        def send() -> None:
            events.publish_event(snapshot)
            if wakeup:
                events.publish_wakeup(queue)

        transaction.on_commit(send)


# Operations: the workers that run jobs, and the schedules that enqueue them ---------------------


class WorkerState(models.TextChoices):
    """Where a `manage.py jobworker` process stands, as its own heartbeat (or its absence) says."""

    RUNNING = "RUNNING", "Running"  # heartbeating, claiming jobs
    STOPPING = "STOPPING", "Stopping"  # got a stop signal: no new claims, running jobs finishing
    STOPPED = "STOPPED", "Stopped"  # exited cleanly
    LOST = "LOST", "Lost"  # stopped heartbeating for JOBS["STALE_AFTER"] seconds without saying goodbye


class Worker(models.Model):
    """One `manage.py jobworker` process: written at start, by every heartbeat, and at exit."""

    id = models.CharField(primary_key=True, max_length=100, help_text="The worker id (--worker-id).")
    host = models.CharField(max_length=255, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    backend = models.CharField(max_length=100, default="default")
    queues = models.JSONField(default=list, blank=True)
    concurrency = models.PositiveIntegerField(default=1)
    state = models.CharField(max_length=10, choices=WorkerState.choices, default=WorkerState.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    succeeded = models.PositiveBigIntegerField(default=0, help_text="Jobs it finished SUCCESSFUL.")
    failed = models.PositiveBigIntegerField(default=0, help_text="Jobs it finished FAILED (timeouts included).")
    cancelled = models.PositiveBigIntegerField(default=0)
    retried = models.PositiveBigIntegerField(default=0)
    running = models.JSONField(default=list, blank=True, help_text="Ids of the jobs it holds now.")

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["state", "heartbeat_at"], name="jobs_worker_state_beat")]

    def __str__(self) -> str:
        return f"{self.id} ({self.state})"


class MissedRuns(models.TextChoices):
    """What a schedule does with due times that passed while no worker was running."""

    ONCE = "once", "Run once"  # one run for all missed due times (the latest), like anacron
    ALL = "all", "Run each"  # one run per missed due time, oldest first
    SKIP = "skip", "Skip"  # none: due times older than JOBS["SCHEDULE_MISSED_AFTER"] are dropped


class Schedule(models.Model):
    """A periodic task declared in code (jobs.schedules) and synchronised here by the workers.

    ``next_run_at`` is the next due time; enqueueing advances it with a compare-and-swap, and
    each enqueued due time is a ScheduleRun row unique on (schedule, due_at), so any number of
    workers enqueue each due time exactly once.
    """

    name = models.SlugField(max_length=100, unique=True)
    task_path = models.CharField(max_length=255)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    cron = models.CharField(max_length=200, help_text="A cron expression (5 fields, or 6 with seconds first).")
    time_zone = models.CharField(max_length=64, blank=True, help_text="Empty: settings.TIME_ZONE.")
    missed = models.CharField(max_length=4, choices=MissedRuns.choices, default=MissedRuns.ONCE)
    queue = models.CharField(max_length=100, blank=True, help_text="Empty: the task's own queue.")
    priority = models.SmallIntegerField(null=True, blank=True, help_text="Empty: the task's own priority.")
    paused = models.BooleanField(default=False)
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True, help_text="The last due time enqueued.")
    last_job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    last_error = models.TextField(blank=True)
    synced_at = models.DateTimeField(default=timezone.now, help_text="Last seen declared by a worker.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ScheduleRun(models.Model):
    """One due time of a schedule, enqueued once: the unique constraint is the claim."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="runs")
    due_at = models.DateTimeField()
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    worker_id = models.CharField(max_length=100, blank=True, help_text="The process that enqueued it.")
    created_at = models.DateTimeField(default=timezone.now)
    error = models.TextField(blank=True, help_text="Why no job could be enqueued for it.")

    class Meta:
        ordering = ["-due_at"]
        constraints = [models.UniqueConstraint(fields=["schedule", "due_at"], name="jobs_schedulerun_once")]
        indexes = [models.Index(fields=["created_at"], name="jobs_schedulerun_created")]

    def __str__(self) -> str:
        return f"{self.schedule_id} at {self.due_at.isoformat()}"
