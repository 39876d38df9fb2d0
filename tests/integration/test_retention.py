"""Retention on the real database: what is pruned and what stays, batches, result files, dry runs,
the commands, and a worker pruning on its own."""
from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs import retention
from jobs.models import Job, JobStatus, Schedule, ScheduleRun, WorkerState
from jobs.models import Worker as WorkerRow
from jobs.worker import Worker
from notifications.models import Notification
from notifications.retention import parse_age, prune_notifications

pytestmark = pytest.mark.django_db(transaction=True)

DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def offline(settings, tmp_path):
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9"}
    settings.MEDIA_ROOT = tmp_path / "media"


def job(status: str, finished_days_ago: float | None, *, file: str = "") -> Job:
    now = timezone.now()
    finished = now - timedelta(days=finished_days_ago) if finished_days_ago is not None else None
    row = Job.objects.create(task_path="tests.jobs_tasks.add", status=status, finished_at=finished,
                             enqueued_at=(finished or now) - timedelta(minutes=1))
    if file:
        row.result_file.save(file, ContentFile(b"report"), save=True)
    return row


def test_finished_jobs_older_than_the_limit_are_deleted_with_their_result_files():
    old_ok = job(JobStatus.SUCCESSFUL, 8, file="old.txt")
    path = old_ok.result_file.path
    job(JobStatus.FAILED, 9)
    job(JobStatus.CANCELLED, 10)
    result = retention.prune_jobs(older_than=7 * DAY)
    assert (result.jobs, result.files, result.file_errors) == (3, 1, 0)
    assert Job.objects.count() == 0
    assert not os.path.exists(path)


def test_unfinished_and_recent_jobs_are_kept():
    kept = {job(JobStatus.READY, None).pk, job(JobStatus.RUNNING, None).pk, job(JobStatus.SUCCESSFUL, 6).pk}
    old_ready = Job.objects.create(task_path="tests.jobs_tasks.add", enqueued_at=timezone.now() - 30 * DAY)
    kept.add(old_ready.pk)
    assert retention.prune_jobs(older_than=7 * DAY).jobs == 0
    assert set(Job.objects.values_list("pk", flat=True)) == kept


def test_jobs_are_deleted_in_batches_of_the_batch_size():
    Job.objects.bulk_create([Job(task_path="tests.jobs_tasks.add", status=JobStatus.SUCCESSFUL,
                                 finished_at=timezone.now() - 8 * DAY) for _ in range(1200)])
    result = retention.prune_jobs(older_than=7 * DAY, batch_size=500, pause=0)
    assert (result.jobs, result.batches) == (1200, 3)


def test_on_sqlite_each_batch_is_checkpointed_by_the_prune_not_left_to_a_workers_commit():
    # bench/prune_bench.py: without it, the write-ahead log grew with every deleted page and a
    # worker's claim that crossed the auto-checkpoint threshold copied it (claims up to 1.1 s).
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    Job.objects.bulk_create([Job(task_path="tests.jobs_tasks.add", status=JobStatus.SUCCESSFUL,
                                 finished_at=timezone.now() - 8 * DAY) for _ in range(250)])
    with CaptureQueriesContext(connection) as queries:
        result = retention.prune_jobs(older_than=7 * DAY, batch_size=100, pause=0)
    checkpoints = [q["sql"] for q in queries.captured_queries if "wal_checkpoint" in q["sql"]]
    assert result.batches == 3
    assert checkpoints == (["PRAGMA wal_checkpoint(PASSIVE)"] * 3 if connection.vendor == "sqlite" else [])


def test_on_sqlite_each_batch_of_notifications_is_checkpointed_by_the_prune_too():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    old = timezone.now() - 40 * DAY
    Notification.objects.bulk_create([Notification(title=f"n{i}", read=True) for i in range(25)])
    Notification.objects.update(created=old)
    with CaptureQueriesContext(connection) as queries:
        result = prune_notifications(older_than=30 * DAY, batch_size=10)
    checkpoints = [q["sql"] for q in queries.captured_queries if "wal_checkpoint" in q["sql"]]
    assert (result.deleted, result.batches) == (25, 3)
    assert checkpoints == (["PRAGMA wal_checkpoint(PASSIVE)"] * 3 if connection.vendor == "sqlite" else [])


def test_a_dry_run_counts_and_deletes_nothing():
    job(JobStatus.SUCCESSFUL, 8, file="a.txt")
    job(JobStatus.FAILED, 8)
    result = retention.prune_jobs(older_than=7 * DAY, dry_run=True)
    assert (result.jobs, result.files, result.dry_run) == (2, 1, True)
    assert Job.objects.count() == 2


def test_the_default_age_is_jobs_prune_jobs_after_and_none_keeps_everything(settings):
    job(JobStatus.SUCCESSFUL, 2)
    settings.JOBS = {"PRUNE_JOBS_AFTER": None}
    assert retention.prune_jobs().jobs == 0
    settings.JOBS = {"PRUNE_JOBS_AFTER": 86400.0}
    assert retention.prune_jobs().jobs == 1


def test_schedule_runs_lose_their_pruned_job_and_old_runs_are_pruned_too():
    old = job(JobStatus.SUCCESSFUL, 8)
    schedule = Schedule.objects.create(name="s", task_path="tests.jobs_tasks.add", cron="* * * * *", last_job=old)
    ScheduleRun.objects.create(schedule=schedule, due_at=timezone.now() - 8 * DAY, job=old,
                               created_at=timezone.now() - 8 * DAY)
    recent = ScheduleRun.objects.create(schedule=schedule, due_at=timezone.now(), job=old)
    result = retention.prune(older_than=7 * DAY)
    assert (result.jobs, result.schedule_runs) == (1, 1)
    recent.refresh_from_db()
    schedule.refresh_from_db()
    assert (recent.job_id, schedule.last_job_id) == (None, None)


def test_stopped_and_lost_worker_rows_are_pruned_after_their_limit_and_running_ones_kept(settings):
    settings.JOBS = {"PRUNE_WORKERS_AFTER": 3600.0}
    long_ago = timezone.now() - 2 * DAY
    for name, state in [("gone", WorkerState.STOPPED), ("lost", WorkerState.LOST), ("alive", WorkerState.RUNNING)]:
        WorkerRow.objects.create(id=name, state=state, heartbeat_at=long_ago)
    WorkerRow.objects.create(id="just-stopped", state=WorkerState.STOPPED)
    assert retention.prune_workers().workers == 2
    assert sorted(WorkerRow.objects.values_list("id", flat=True)) == ["alive", "just-stopped"]


def test_read_notifications_and_broadcasts_are_pruned_and_unread_ones_kept():
    alice = User.objects.create_user("alice")
    old = timezone.now() - 40 * DAY
    Notification.objects.create(recipient=alice, title="read", read=True, created=old)
    unread = Notification.objects.create(recipient=alice, title="unread", created=old)
    Notification.objects.create(title="all", created=old)
    fresh = Notification.objects.create(recipient=alice, title="fresh", read=True)
    result = prune_notifications(older_than=30 * DAY)
    assert result.deleted == 2
    assert set(Notification.objects.values_list("pk", flat=True)) == {unread.pk, fresh.pk}  # not read, nor broadcast


def test_prunejobs_reports_a_dry_run_then_deletes(capsys):
    job(JobStatus.SUCCESSFUL, 8)
    call_command("prunejobs", "--older-than", "7d", "--dry-run")
    assert "Would delete 1 job(s) (0 result file(s)), 0 schedule run(s) and 0 worker row(s) (dry run" in capsys.readouterr().out
    assert Job.objects.count() == 1
    call_command("prunejobs", "--older-than", "7d")
    assert "Deleted 1 job(s)" in capsys.readouterr().out
    assert Job.objects.count() == 0


def test_prunejobs_refuses_an_age_it_cannot_read():
    with pytest.raises(CommandError, match="'a week' is not an age: use a number with s, m, h, d or w"):
        call_command("prunejobs", "--older-than", "a week")


def test_prunenotifications_deletes_old_read_ones(capsys):
    Notification.objects.create(title="all", created=timezone.now() - 40 * DAY)
    call_command("prunenotifications", "--dry-run")
    assert "Would delete 1 notification(s)" in capsys.readouterr().out
    call_command("prunenotifications", "--older-than", "30d")
    assert "Deleted 1 notification(s) in 1 batch(es)." in capsys.readouterr().out


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45", 45),
                                               ("1.5w", 1.5 * 7 * 86400)])
def test_ages_are_read_with_units(text, seconds):
    assert parse_age(text).total_seconds() == seconds


def test_a_running_worker_prunes_old_jobs_by_itself(settings):
    settings.JOBS = {"PRUNE_INTERVAL": 0.2, "PRUNE_JOBS_AFTER": 86400.0, "HEARTBEAT_INTERVAL": 0.2}
    old = [job(JobStatus.SUCCESSFUL, 2).pk for _ in range(3)]
    recent = job(JobStatus.SUCCESSFUL, 0.5).pk
    worker = Worker(concurrency=1, poll_interval=0.1, wakeups=False, schedules=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = timezone.now() + timedelta(seconds=30)
        while Job.objects.filter(pk__in=old).exists() and timezone.now() < deadline:
            threading.Event().wait(0.05)
        assert list(Job.objects.values_list("pk", flat=True)) == [recent]
    finally:
        worker.stop(force=True)
        thread.join(30)
