"""The jobs admin through Django's test client: columns, filters, search, read-only page, actions."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from jobs.api import job_options
from jobs.models import Job
from jobs.tasks import debug_report

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/jobs/job/"


@pytest.fixture(autouse=True)
def fast_and_offline(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9"}


@pytest.fixture
def root(db) -> User:
    return User.objects.create_superuser("root", password="pw-root-123")


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def viewer(db) -> User:
    user = User.objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_job", content_type__app_label="jobs"))
    return user


def login(user: User) -> Client:
    c = Client()
    c.force_login(user)
    return c


def make_job(owner: User | None = None, *, name: str = "", **state) -> Job:
    with job_options(owner=owner, name=name or None):
        result = debug_report.enqueue()
    if state:
        Job.objects.filter(pk=result.id).update(**state)
    return Job.objects.get(pk=result.id)


def running(**extra) -> dict:
    now = timezone.now()
    return {"status": "RUNNING", "started_at": now, "heartbeat_at": now, "attempts": 1, **extra}


def finished(status: str, **extra) -> dict:
    now = timezone.now()
    return {"status": status, "started_at": now - timedelta(seconds=3), "finished_at": now, "attempts": 1, **extra}


def act(client: Client, action: str, jobs: list[Job], **extra):
    data = {"action": action, "index": 0, "_selected_action": [str(j.pk) for j in jobs], **extra}
    return client.post(CHANGELIST, data, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# ------------------------------------------------------------------ list, filters, search


def test_the_list_shows_status_progress_owner_and_durations(root, alice):
    make_job(alice, name="Half done", **running(progress_done=3, progress_total=6, message="step three"))
    page = login(root).get(CHANGELIST).content.decode()
    assert "Half done" in page
    assert '<span class="job-admin-status job-status-running">Running</span>' in page
    assert '<progress max="100" value="50.0">50%</progress>' in page
    assert "3 / 6" in page and "step three" in page
    assert ">alice<" in page
    for column in ("queued for", "run time", "attempts"):
        assert f">{column.capitalize()}<" in page or f">{column}<" in page.lower()


def test_the_status_filter_shows_only_jobs_with_that_status(root):
    make_job(name="Waiting one")
    make_job(name="Broken one", **finished("FAILED", error_type="builtins.ValueError", error_message="bad"))
    page = login(root).get(CHANGELIST + "?status__exact=FAILED").content.decode()
    assert "Broken one" in page
    assert "Waiting one" not in page


def test_the_queue_and_task_filters_are_offered(root):
    make_job()
    page = login(root).get(CHANGELIST).content.decode()
    assert "?queue=reports" in page
    assert "?task_path=jobs.tasks.debug_report" in page


def test_search_finds_a_job_by_the_short_id_shown_in_the_list(root):
    wanted = make_job(name="Wanted")
    make_job(name="Other")
    page = login(root).get(CHANGELIST, {"q": str(wanted.pk)[:8]}).content.decode()
    assert "Wanted" in page
    assert "Other" not in page


def test_search_finds_a_job_by_its_full_id(root):
    wanted = make_job(name="Wanted")
    make_job(name="Other")
    page = login(root).get(CHANGELIST, {"q": str(wanted.pk)}).content.decode()
    assert "Wanted" in page and "Other" not in page


def test_search_finds_jobs_by_owner_username_and_by_message(root, alice):
    make_job(alice, name="Alices")
    make_job(name="Messaged", message="checking the flux capacitor")
    make_job(name="Neither")
    c = login(root)
    by_owner = c.get(CHANGELIST, {"q": "alice"}).content.decode()
    by_message = c.get(CHANGELIST, {"q": "flux"}).content.decode()
    assert "Alices" in by_owner and "Neither" not in by_owner
    assert "Messaged" in by_message and "Neither" not in by_message


# ------------------------------------------------------------------ the read-only job page


def test_a_jobs_page_is_read_only_with_its_log_and_no_save_button(root):
    job = make_job(
        log=[{"n": 1, "at": "2026-01-01T10:00:00+00:00", "text": "Environment: Python 3.13"}], log_count=1
    )
    page = login(root).get(reverse("admin:jobs_job_change", args=[job.pk])).content.decode()
    assert "Environment: Python 3.13" in page
    assert 'name="_save"' not in page
    assert 'name="task_path"' not in page  # shown as text, not an input


def test_there_is_no_add_page(root):
    assert login(root).get("/admin/jobs/job/add/").status_code == 403


def test_anonymous_users_are_sent_to_the_admin_login(client):
    response = client.get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


# ------------------------------------------------------------------ cancel


def test_cancelling_a_waiting_job_ends_it_cancelled(root):
    job = make_job()
    response = act(login(root), "cancel_jobs", [job])
    job.refresh_from_db()
    assert job.status == "CANCELLED"
    assert messages_of(response) == ["Cancelled 1 waiting job."]


def test_cancelling_a_running_job_asks_it_to_stop(root):
    job = make_job(**running())
    response = act(login(root), "cancel_jobs", [job])
    job.refresh_from_db()
    assert (job.status, job.cancel_requested) == ("RUNNING", True)
    assert messages_of(response) == ["Asked 1 running job to stop; it ends CANCELLED when the task notices."]


def test_cancelling_a_finished_job_is_an_error_that_changes_nothing(root):
    job = make_job(**finished("SUCCESSFUL"))
    seq = job.seq
    response = act(login(root), "cancel_jobs", [job])
    job.refresh_from_db()
    assert (job.status, job.seq, job.cancel_requested) == ("SUCCESSFUL", seq, False)
    assert messages_of(response) == [
        f"Could not cancel 1 job: Job {job.pk} already finished (SUCCESSFUL); "
        "only READY or RUNNING jobs can be cancelled."
    ]


def test_cancelling_a_mix_reports_what_worked_and_what_did_not(root):
    waiting = make_job()
    done = make_job(**finished("FAILED"))
    response = act(login(root), "cancel_jobs", [waiting, done])
    waiting.refresh_from_db()
    done.refresh_from_db()
    assert (waiting.status, done.status) == ("CANCELLED", "FAILED")
    assert len(messages_of(response)) == 2
    assert messages_of(response)[0] == "Cancelled 1 waiting job."
    assert messages_of(response)[1].startswith("Could not cancel 1 job:")


def test_a_job_can_be_cancelled_from_its_own_admin_page(root):
    job = make_job()
    url = reverse("admin:jobs_job_change", args=[job.pk])
    response = login(root).post(
        url, {"CHANGE_FORM-action": "cancel_jobs", "_selected_action": str(job.pk)}, follow=True
    )
    job.refresh_from_db()
    assert job.status == "CANCELLED"
    assert "Cancelled 1 waiting job." in messages_of(response)


# ------------------------------------------------------------------ retry


def test_retrying_a_failed_job_queues_it_again(root):
    job = make_job(**finished("FAILED", error_type="builtins.ValueError", error_message="bad"))
    response = act(login(root), "retry_jobs", [job])
    job.refresh_from_db()
    assert (job.status, job.error_type, job.max_attempts) == ("READY", "", 2)
    assert messages_of(response) == ["Queued 1 job to run again."]


def test_retrying_a_running_job_is_an_error_that_changes_nothing(root):
    job = make_job(**running())
    seq = job.seq
    response = act(login(root), "retry_jobs", [job])
    job.refresh_from_db()
    assert (job.status, job.seq) == ("RUNNING", seq)
    assert messages_of(response) == [
        f"Could not retry 1 job: Job {job.pk} is RUNNING; only FAILED or CANCELLED jobs can be retried."
    ]


# ------------------------------------------------------------------ start a debug report


def test_start_a_debug_report_needs_no_selection_and_opens_the_new_job(root):
    c = login(root)
    response = c.post(CHANGELIST, {"action": "start_debug_report", "index": 0})
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
    assert (job.owner, job.task_path, job.status) == (root, "jobs.tasks.debug_report", "READY")


def test_start_a_debug_report_with_jobs_selected_starts_exactly_one(root):
    selected = [make_job(), make_job()]
    login(root).post(CHANGELIST, {"action": "start_debug_report", "index": 0, "_selected_action": [str(j.pk) for j in selected]})
    assert Job.objects.count() == 3


def test_the_start_url_starts_a_report_on_post_and_refuses_get(root):
    c = login(root)
    url = reverse("admin:jobs_job_start_debug_report")
    assert c.get(url).status_code == 405
    response = c.post(url)
    job = Job.objects.get()
    assert response["Location"] == reverse("admin:jobs_job_change", args=[job.pk])


# ------------------------------------------------------------------ permissions


def test_staff_who_may_only_view_jobs_are_not_offered_cancel_or_retry(viewer):
    make_job()  # the admin shows actions only above a non-empty list
    page = login(viewer).get(CHANGELIST).content.decode()
    assert 'value="start_debug_report"' in page
    assert 'value="cancel_jobs"' not in page
    assert 'value="retry_jobs"' not in page


def test_staff_who_may_only_view_jobs_cannot_cancel_by_posting_the_action(viewer):
    job = make_job()
    act(login(viewer), "cancel_jobs", [job])
    job.refresh_from_db()
    assert job.status == "READY"


def test_a_user_who_is_not_staff_gets_the_admin_login(alice):
    response = login(alice).get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_an_empty_change_list_still_offers_a_button_that_starts_a_debug_report(root):
    c = login(root)
    page = c.get(CHANGELIST).content.decode()
    start_url = reverse("admin:jobs_job_start_debug_report")
    assert f'<form method="post" action="{start_url}" class="job-start-report">' in page
    response = c.post(start_url)
    job = Job.objects.get()
    assert response["Location"] == reverse("admin:jobs_job_change", args=[job.pk])
