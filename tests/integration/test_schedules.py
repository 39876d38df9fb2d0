"""Schedules in one process, on the real database: due times, missed-run policies, DST, the claim,
pause and resume through the admin, declarations and their checks."""
from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.test import Client

from jobs import schedules
from jobs.models import Job, Schedule, ScheduleRun

pytestmark = pytest.mark.django_db

UTC = dt_timezone.utc


@pytest.fixture(autouse=True)
def offline(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9"}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def make(name: str = "every-5", cron: str = "*/5 * * * *", *, first: datetime, zone: str = "UTC",
         missed: str = "once", **extra) -> Schedule:
    return Schedule.objects.create(name=name, task_path="tests.jobs_tasks.add", args=[1, 2], cron=cron,
                                   time_zone=zone, missed=missed, next_run_at=first, **extra)


def due_times(schedule: Schedule) -> list[datetime]:
    return list(ScheduleRun.objects.filter(schedule=schedule).order_by("due_at").values_list("due_at", flat=True))


def run_clock(schedule: Schedule, start: datetime, end: datetime, step: timedelta) -> None:
    """Tick like a worker would, at every step of a simulated clock."""
    now = start
    while now <= end:
        schedules.tick(now, names=[schedule.name], worker_id="clock")
        now += step


# Due times and policies ------------------------------------------------------------------------


def test_a_tick_enqueues_the_due_run_as_a_job_of_the_task_and_moves_to_the_next_due_time():
    s = make(first=utc(2026, 5, 1, 10, 0))
    assert schedules.tick(utc(2026, 5, 1, 10, 0, 30), names=["every-5"]) == 1
    s.refresh_from_db()
    run = ScheduleRun.objects.get(schedule=s)
    job = Job.objects.get()
    assert (run.due_at, run.job_id, job.task_path, job.args) == (utc(2026, 5, 1, 10, 0), job.pk, "tests.jobs_tasks.add", [1, 2])
    assert job.name == "every-5 @ 2026-05-01 10:00 UTC"
    assert (s.next_run_at, s.last_run_at, s.last_job_id) == (utc(2026, 5, 1, 10, 5), utc(2026, 5, 1, 10, 0), job.pk)


def test_nothing_is_enqueued_before_the_due_time():
    make(first=utc(2026, 5, 1, 10, 0))
    assert schedules.tick(utc(2026, 5, 1, 9, 59, 59), names=["every-5"]) == 0
    assert Job.objects.count() == 0


def test_missed_once_enqueues_one_run_for_the_latest_due_time_after_an_outage():
    s = make(first=utc(2026, 5, 1, 10, 0), missed="once")
    assert schedules.tick(utc(2026, 5, 1, 12, 2), names=["every-5"]) == 1
    s.refresh_from_db()
    assert due_times(s) == [utc(2026, 5, 1, 12, 0)]
    assert s.next_run_at == utc(2026, 5, 1, 12, 5)


def test_missed_all_enqueues_each_missed_due_time_oldest_first():
    s = make(first=utc(2026, 5, 1, 10, 0), missed="all")
    assert schedules.tick(utc(2026, 5, 1, 12, 2), names=["every-5"]) == 25
    assert due_times(s) == [utc(2026, 5, 1, 10, 0) + timedelta(minutes=5 * n) for n in range(25)]
    s.refresh_from_db()
    assert s.next_run_at == utc(2026, 5, 1, 12, 5)


def test_missed_skip_drops_due_times_older_than_the_missed_limit(settings):
    settings.JOBS = {"SCHEDULE_MISSED_AFTER": 60.0}
    s = make(first=utc(2026, 5, 1, 10, 0), missed="skip")
    assert schedules.tick(utc(2026, 5, 1, 12, 2), names=["every-5"]) == 0
    s.refresh_from_db()
    assert (due_times(s), s.next_run_at) == ([], utc(2026, 5, 1, 12, 5))


def test_missed_skip_still_runs_a_due_time_seen_within_the_missed_limit(settings):
    settings.JOBS = {"SCHEDULE_MISSED_AFTER": 60.0}
    s = make(first=utc(2026, 5, 1, 10, 0), missed="skip")
    assert schedules.tick(utc(2026, 5, 1, 10, 0, 40), names=["every-5"]) == 1
    assert due_times(s) == [utc(2026, 5, 1, 10, 0)]


def test_a_schedule_not_declared_in_this_process_is_left_to_the_processes_that_declare_it():
    make(first=utc(2026, 5, 1, 10, 0))
    assert schedules.tick(utc(2026, 5, 1, 11, 0), names=["another"]) == 0
    assert Job.objects.count() == 0


# Exactly once ----------------------------------------------------------------------------------


def test_two_workers_that_read_the_same_due_time_enqueue_it_once():
    make(first=utc(2026, 5, 1, 10, 0))
    stale_a = Schedule.objects.get()
    stale_b = Schedule.objects.get()  # both read next_run_at = 10:00 before either wrote
    now = utc(2026, 5, 1, 10, 1)
    assert schedules._advance(stale_a, now, "a") == (True, 1)
    assert schedules._advance(stale_b, now, "b") == (False, 0)
    assert Job.objects.count() == 1
    assert list(ScheduleRun.objects.values_list("worker_id", flat=True)) == ["a"]


def test_the_database_refuses_a_second_claim_of_the_same_due_time():
    s = make(first=utc(2026, 5, 1, 10, 0))
    ScheduleRun.objects.create(schedule=s, due_at=utc(2026, 5, 1, 10, 0))
    with pytest.raises(IntegrityError), transaction.atomic():
        ScheduleRun.objects.create(schedule=s, due_at=utc(2026, 5, 1, 10, 0))


def test_a_due_time_claimed_already_is_not_enqueued_again_and_nothing_of_the_batch_stays():
    s = make(first=utc(2026, 5, 1, 10, 0), missed="all")
    ScheduleRun.objects.create(schedule=s, due_at=utc(2026, 5, 1, 10, 5), worker_id="earlier")
    assert schedules._advance(s, utc(2026, 5, 1, 10, 7), "late") == (False, 0)
    s.refresh_from_db()
    assert (Job.objects.count(), s.next_run_at) == (0, utc(2026, 5, 1, 10, 0))
    assert list(ScheduleRun.objects.values_list("worker_id", flat=True)) == ["earlier"]


def test_a_run_that_cannot_be_enqueued_keeps_its_claim_with_the_reason_and_the_schedule_moves_on():
    s = make(first=utc(2026, 5, 1, 10, 0), queue="no-such-queue")
    assert schedules.tick(utc(2026, 5, 1, 10, 1), names=["every-5"]) == 0
    run = ScheduleRun.objects.get()
    s.refresh_from_db()
    assert run.job_id is None and "no-such-queue" in run.error
    assert s.last_error == run.error and s.next_run_at == utc(2026, 5, 1, 10, 5)
    assert Job.objects.count() == 0


# Time zones and DST ----------------------------------------------------------------------------


def test_a_daily_run_in_the_hour_skipped_by_dst_runs_right_after_the_jump_once():
    # Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    s = make("daily", "30 2 * * *", zone="Europe/Berlin", first=utc(2026, 3, 28, 1, 30))
    run_clock(s, utc(2026, 3, 28, 0, 0), utc(2026, 3, 31, 0, 0), timedelta(minutes=10))
    assert due_times(s) == [
        utc(2026, 3, 28, 1, 30),  # 02:30 CET
        utc(2026, 3, 29, 1, 0),  # 03:00 CEST, the first minute after the jump
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_a_daily_run_in_the_hour_repeated_by_dst_runs_once():
    # Europe/Berlin, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    s = make("daily", "30 2 * * *", zone="Europe/Berlin", first=utc(2026, 10, 24, 0, 30))
    run_clock(s, utc(2026, 10, 24, 0, 0), utc(2026, 10, 27, 0, 0), timedelta(minutes=10))
    assert due_times(s) == [
        utc(2026, 10, 24, 0, 30),  # 02:30 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST, the first of the two
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
    ]


def test_an_hourly_schedule_runs_once_per_real_hour_across_both_dst_changes():
    # From 00:30 to 23:30 local time on each change day (00:00 local is 23:00 / 22:00 UTC the day before).
    spring = make("hourly-spring", "30 * * * *", zone="Europe/Berlin", first=utc(2026, 3, 28, 23, 30))
    autumn = make("hourly-autumn", "30 * * * *", zone="Europe/Berlin", first=utc(2026, 10, 24, 22, 30))
    run_clock(spring, utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 21, 59), timedelta(minutes=10))
    run_clock(autumn, utc(2026, 10, 24, 22, 0), utc(2026, 10, 25, 22, 59), timedelta(minutes=10))
    # The local day of the spring change has 23 hours, that of the autumn change 25: one run each.
    assert due_times(spring) == [utc(2026, 3, 28, 23, 30) + timedelta(hours=n) for n in range(23)]
    assert due_times(autumn) == [utc(2026, 10, 24, 22, 30) + timedelta(hours=n) for n in range(25)]


def test_a_worker_down_across_a_dst_change_catches_up_without_skipping_or_doubling():
    s = make("daily", "30 2 * * *", zone="Europe/Berlin", first=utc(2026, 10, 24, 0, 30), missed="all")
    assert schedules.tick(utc(2026, 10, 27, 0, 0), names=["daily"]) == 3
    assert due_times(s) == [utc(2026, 10, 24, 0, 30), utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]


def test_the_default_time_zone_is_django_time_zone(settings):
    settings.TIME_ZONE = "America/New_York"
    assert schedules.next_due("0 9 * * *", "", utc(2026, 7, 1, 0, 0)) == utc(2026, 7, 1, 13, 0)  # 09:00 EDT


# Pause and resume in the admin -----------------------------------------------------------------


def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw-root-123"))
    return client


def test_a_schedule_paused_in_the_admin_enqueues_nothing():
    s = make(first=utc(2026, 5, 1, 10, 0))
    response = admin_client().post("/admin/jobs/schedule/", {"action": "pause_schedules", "_selected_action": [s.pk]})
    assert response.status_code == 302
    s.refresh_from_db()
    assert s.paused is True
    assert schedules.tick(utc(2026, 5, 1, 13, 0), names=["every-5"]) == 0
    assert (Job.objects.count(), ScheduleRun.objects.count()) == (0, 0)


def test_resuming_starts_from_the_next_due_time_without_making_up_the_paused_runs(monkeypatch):
    s = make(first=utc(2026, 5, 1, 10, 0), paused=True)
    monkeypatch.setattr(schedules.timezone, "now", lambda: utc(2026, 5, 1, 12, 2))
    response = admin_client().post("/admin/jobs/schedule/", {"action": "resume_schedules", "_selected_action": [s.pk]})
    assert response.status_code == 302
    s.refresh_from_db()
    assert (s.paused, s.next_run_at) == (False, utc(2026, 5, 1, 12, 5))
    assert schedules.tick(utc(2026, 5, 1, 12, 6), names=["every-5"]) == 1
    assert due_times(s) == [utc(2026, 5, 1, 12, 5)]


def test_the_admin_lists_schedules_with_their_next_and_last_runs_and_the_expression_in_words():
    s = make(first=utc(2026, 5, 1, 10, 0))
    schedules.tick(utc(2026, 5, 1, 10, 1), names=["every-5"])
    client = admin_client()
    page = client.get("/admin/jobs/schedule/").content.decode()
    assert "every-5" in page and "2026-05-01 10:05:00 UTC" in page and "2026-05-01 10:00:00 UTC" in page
    detail = client.get(f"/admin/jobs/schedule/{s.pk}/change/").content.decode()
    assert "Every fifth minute" in detail
    assert client.get("/admin/jobs/schedule/add/").status_code == 403


# Declarations ----------------------------------------------------------------------------------


def test_sync_creates_a_row_per_declaration_due_at_the_next_time(settings, monkeypatch):
    settings.JOBS = {"SCHEDULES": {"hourly": {"TASK": "tests.jobs_tasks.add", "CRON": "0 * * * *", "ARGS": [2, 3]}}}
    assert schedules.sync(utc(2026, 5, 1, 10, 20)) == ["hourly"]
    row = Schedule.objects.get(name="hourly")
    assert (row.task_path, row.args, row.next_run_at, row.paused) == ("tests.jobs_tasks.add", [2, 3], utc(2026, 5, 1, 11, 0), False)


def test_sync_follows_a_new_cron_expression_from_now_and_keeps_the_pause(settings):
    settings.JOBS = {"SCHEDULES": {"s": {"TASK": "tests.jobs_tasks.add", "CRON": "0 * * * *", "ARGS": [1, 1]}}}
    schedules.sync(utc(2026, 5, 1, 10, 20))
    Schedule.objects.filter(name="s").update(paused=True)
    settings.JOBS = {"SCHEDULES": {"s": {"TASK": "tests.jobs_tasks.add", "CRON": "*/15 * * * *", "ARGS": [1, 2]}}}
    schedules.sync(utc(2026, 5, 1, 10, 20))
    row = Schedule.objects.get(name="s")
    assert (row.cron, row.args, row.next_run_at, row.paused) == ("*/15 * * * *", [1, 2], utc(2026, 5, 1, 10, 30), True)


def test_periodic_declares_a_task_in_code(monkeypatch):
    from tests.jobs_tasks import add

    monkeypatch.setattr(schedules, "_declared", {})
    declaration = schedules.periodic("sum", add, "0 3 * * *", args=[1, 2], timezone="Europe/Paris", missed="all")
    assert schedules.declarations()["sum"] == declaration
    assert (declaration.task_path, declaration.missed) == ("tests.jobs_tasks.add", "all")


@pytest.mark.parametrize(
    ("cron", "options", "message"),
    [
        ("61 * * * *", {}, "Invalid cron expression '61 * * * *'"),
        ("0 3 * * *", {"timezone": "Mars/Olympus"}, "Unknown time zone 'Mars/Olympus'"),
        ("0 3 * * *", {"missed": "twice"}, "missed must be one of once, all, skip, not 'twice'"),
    ],
)
def test_periodic_refuses_a_bad_declaration_saying_what_is_wrong(cron, options, message):
    from tests.jobs_tasks import add

    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(")):
        schedules.periodic("bad", add, cron, **options)


def test_a_bad_schedule_in_settings_is_the_system_check_error_jobs_e101(settings):
    settings.JOBS = {"SCHEDULES": {"broken": {"TASK": "tests.jobs_tasks.nope", "CRON": "0 3 * * *"}}}
    errors = [e for e in schedules.check_schedules() if e.id == "jobs.E101"]
    assert len(errors) == 1 and "broken" in errors[0].msg and "tests.jobs_tasks.nope" in errors[0].msg


def test_manage_py_check_passes_with_a_valid_schedule_in_settings(settings):
    settings.JOBS = {"SCHEDULES": {"ok": {"TASK": "tests.jobs_tasks.add", "CRON": "0 3 * * *", "ARGS": [1, 2]}}}
    call_command("check")
