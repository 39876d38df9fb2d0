"""jobs.vocabulary: one word per state and one rounding rule, shared by pages, admin and events."""
from __future__ import annotations

import pytest

from jobs import vocabulary
from jobs.events import job_event
from jobs.models import Job, JobStatus
from jobs.tasks import counted

pytestmark = pytest.mark.django_db


def make(**fields) -> Job:
    return Job.objects.create(task_path="tests.jobs_tasks.add", **fields)


@pytest.mark.parametrize(
    "status, label",
    [("READY", "Ready"), ("RUNNING", "Running"), ("SUCCESSFUL", "Successful"), ("FAILED", "Failed"), ("CANCELLED", "Cancelled")],
)
def test_each_state_has_one_word_the_same_as_the_admins_filter(status, label):
    assert vocabulary.label(status) == label
    assert JobStatus(status).label == label


def test_a_running_job_asked_to_stop_is_cancelling_until_it_ends():
    assert vocabulary.label("RUNNING", cancel_requested=True) == "Cancelling"
    assert vocabulary.label("CANCELLED", cancel_requested=True) == "Cancelled"
    assert vocabulary.state("RUNNING", cancel_requested=True) == "cancelling"


@pytest.mark.parametrize(
    "percent, status, shown",
    [(37.5, "RUNNING", "37%"), (66.7, "RUNNING", "66%"), (99.9, "RUNNING", "99%"), (0.0, "RUNNING", "0%"),
     (100.0, "RUNNING", "100%"), (None, "RUNNING", ""), (50.0, "SUCCESSFUL", "100%"), (None, "SUCCESSFUL", "100%"),
     (12.5, "CANCELLED", "12%")],
)
def test_a_percentage_is_rounded_down_and_a_successful_job_shows_100(percent, status, shown):
    assert vocabulary.percent_text(percent, status) == shown


def test_a_cancelled_job_says_where_it_stopped_not_what_it_was_doing():
    job = make(status="CANCELLED", message="Listing installed packages…", started_at="2026-11-22T10:00:00Z")
    assert vocabulary.message(job) == "Stopped during: Listing installed packages."


def test_a_job_cancelled_before_it_started_says_so():
    assert vocabulary.message(make(status="CANCELLED")) == "Stopped before it started."


def test_a_waiting_job_without_a_message_says_it_waits_for_a_worker():
    assert vocabulary.message(make(status="READY")) == "Waiting for a worker to start it."


def test_every_job_event_carries_what_the_pages_show():
    job = make(status="RUNNING", progress_done=2, progress_total=3, message="step two", cancel_requested=True)
    assert job_event(job)["display"] == {
        "state": "cancelling", "label": "Cancelling", "percent": 66, "percent_text": "66%", "message": "step two",
    }


@pytest.mark.parametrize("n, text", [(0, "0 settings problems"), (1, "1 settings problem"), (2, "2 settings problems")])
def test_the_debug_report_counts_in_words_not_with_parenthesised_plurals(n, text):
    assert counted(n, "settings problem") == text


def test_the_debug_reports_settings_summary_has_no_parenthesised_plural(settings):
    from jobs.tasks import _section_settings

    settings.DEBUG = True  # one problem
    settings.ALLOWED_HOSTS = ["example.com"]
    settings.SECRET_KEY = "insecure-short"  # two: too short, and a development key
    summary = _section_settings().summary
    assert summary == "3 settings problems"


@pytest.mark.parametrize(
    "status, title, level",
    [("SUCCESSFUL", "Debug report: Successful", "success"), ("FAILED", "Debug report: Failed", "error"),
     ("CANCELLED", "Debug report: Cancelled", "warning")],
)
def test_a_finished_jobs_notification_is_titled_with_its_name_and_the_word_for_its_state(status, title, level):
    from jobs.events import owner_notification

    note = owner_notification(make(name="Debug report", status=status))
    assert (note["title"], note["level"]) == (title, level)


def test_a_long_job_name_is_cut_in_the_notification_title_but_never_the_word_for_its_state():
    from jobs.events import owner_notification

    title = owner_notification(make(name="x" * 199, status="FAILED"))["title"]
    assert (len(title), title[-12:]) == (200, "xxx…: Failed")
