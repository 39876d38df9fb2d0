"""The Job model: derived values, the guarded state changes, the compare-and-swap, the event JSON."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone as dt_timezone

import pytest
from django.contrib.auth import get_user_model

from jobs.events import job_event
from jobs.exceptions import JobStateError
from jobs.models import Job, JobStatus

pytestmark = pytest.mark.django_db


def make(**fields) -> Job:
    return Job.objects.create(task_path="tests.jobs_tasks.add", **fields)


def test_percent_is_done_over_total_with_one_decimal():
    assert Job(progress_done=1, progress_total=3).percent == 33.3


def test_percent_is_none_while_the_total_is_unknown():
    assert Job(progress_done=5, progress_total=None).percent is None


def test_percent_is_capped_at_100():
    assert Job(progress_done=12, progress_total=10).percent == 100.0


def test_the_display_name_falls_back_to_the_function_name():
    assert Job(task_path="jobs.tasks.debug_report").display_name == "Debug report"


def test_cancelling_a_ready_job_ends_it_cancelled_at_once():
    job = make()
    assert job.cancel() is True
    job.refresh_from_db()
    assert (job.status, job.cancel_requested, job.error_type, job.seq) == (
        "CANCELLED", True, "jobs.exceptions.JobCancelled", 1)
    assert job.finished_at is not None


def test_cancelling_a_running_job_only_requests_it():
    job = make(status=JobStatus.RUNNING)
    assert job.cancel() is False
    job.refresh_from_db()
    assert (job.status, job.cancel_requested, job.seq) == ("RUNNING", True, 1)


def test_cancelling_a_finished_job_is_refused_and_changes_nothing():
    job = make(status=JobStatus.SUCCESSFUL, seq=4)
    with pytest.raises(JobStateError, match=r"already finished \(SUCCESSFUL\); only READY or RUNNING"):
        job.cancel()
    job.refresh_from_db()
    assert (job.status, job.seq) == ("SUCCESSFUL", 4)


def test_retrying_a_running_job_is_refused():
    job = make(status=JobStatus.RUNNING)
    with pytest.raises(JobStateError, match="is RUNNING; only FAILED or CANCELLED jobs can be retried"):
        job.retry()


def test_retrying_a_successful_job_is_refused():
    with pytest.raises(JobStateError, match="is SUCCESSFUL"):
        make(status=JobStatus.SUCCESSFUL).retry()


def test_retrying_a_failed_job_makes_it_ready_with_one_more_attempt_allowed():
    job = make(status=JobStatus.FAILED, attempts=1, max_attempts=1, error_type="builtins.ValueError",
               error_message="bad", progress_done=3, progress_total=4)
    job.retry()
    job.refresh_from_db()
    assert (job.status, job.max_attempts, job.error_type, job.progress_done, job.progress_total, job.seq) == (
        "READY", 2, "", 0, None, 1)
    assert [entry["text"] for entry in job.log] == ["Retried after failed."]


def test_a_stale_instance_loses_the_compare_and_swap():
    job = make()
    other = Job.objects.get(pk=job.pk)
    assert other.cas_update(message="first") is True
    assert job.cas_update(message="second") is False
    job.refresh_from_db()
    assert (job.message, job.seq) == ("first", 1)


def test_the_log_keeps_the_last_entries_and_keeps_counting(settings):
    settings.JOBS = {"LOG_LIMIT": 3}
    job = make()
    at = datetime(2026, 1, 1, tzinfo=dt_timezone.utc)
    log, count = job.appended_log([(at, f"line {i}") for i in range(1, 6)])
    assert (count, [e["n"] for e in log], log[-1]) == (5, [3, 4, 5], {"n": 5, "at": "2026-01-01T00:00:00+00:00", "text": "line 5"})


def test_visible_to_gives_a_user_only_their_own_jobs():
    users = get_user_model().objects
    ann, bob = users.create_user("ann"), users.create_user("bob")
    mine = make(owner=ann)
    make(owner=bob)
    assert list(Job.objects.visible_to(ann)) == [mine]


def test_the_event_of_a_job_has_exactly_the_contract_fields():
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt_timezone.utc)
    job = make(
        id=uuid.UUID("12345678-1234-5678-1234-567812345678"), status=JobStatus.FAILED, progress_done=1,
        progress_total=4, message="half", error_type="builtins.ValueError", error_message="bad",
        error_traceback="Traceback...", attempts=1, max_attempts=2, seq=7, enqueued_at=at, started_at=at,
        finished_at=at, log=[{"n": i, "at": "x", "text": str(i)} for i in range(1, 26)], log_count=25,
    )
    event = job_event(job)
    assert event == {
        "type": "job", "id": "12345678-1234-5678-1234-567812345678", "seq": 7, "task": "tests.jobs_tasks.add",
        "name": "Add", "status": "FAILED", "final": True, "queue": "default", "owner_id": None,
        "progress": {"done": 1, "total": 4, "percent": 25.0}, "message": "half",
        "log": [{"n": i, "at": "x", "text": str(i)} for i in range(6, 26)],
        "error": {"type": "builtins.ValueError", "message": "bad"}, "result_url": None,
        "cancel_requested": False, "attempts": 1, "max_attempts": 2,
        "enqueued_at": "2026-01-02T03:04:05+00:00", "started_at": "2026-01-02T03:04:05+00:00",
        "finished_at": "2026-01-02T03:04:05+00:00",
        "display": {"state": "failed", "label": "Failed", "percent": 25, "percent_text": "25%",
                    "message": "Stopped during: half."},
    }


def test_a_successful_job_with_a_file_has_a_download_link_in_its_event():
    job = make(id=uuid.UUID("12345678-1234-5678-1234-567812345678"), status=JobStatus.SUCCESSFUL,
               result_file="jobs/x/out.txt")
    assert job_event(job)["result_url"] == "/jobs/12345678-1234-5678-1234-567812345678/download/"


def test_cas_many_writes_every_job_whose_seq_is_current():
    first, second = make(), make()
    assert Job.cas_many([(first, {"message": "a"}), (second, {"message": "b"})]) == [True, True]
    assert sorted(Job.objects.values_list("message", "seq")) == [("a", 1), ("b", 1)]


def test_cas_many_skips_only_the_job_changed_behind_its_back():
    first, second = make(), make()
    Job.objects.get(pk=second.pk).cas_update(message="someone else")
    assert Job.cas_many([(first, {"message": "a"}), (second, {"message": "b"})]) == [True, False]
    second.refresh_from_db()
    assert (second.message, second.seq) == ("someone else", 1)
