"""The jobs pages through Django's test client: who sees which job, starting a report, downloads."""
from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from django.urls import reverse

from jobs.api import job_options
from jobs.models import Job
from jobs.tasks import debug_report

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def media_and_no_broker(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    # Logins are not what is tested here; the default hasher costs ~0.3 s per user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Nothing listens here: events are buffered by the publisher, pages must not care.
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9"}


@pytest.fixture
def alice(db) -> User:
    return User.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def bob(db) -> User:
    return User.objects.create_user("bob", password="pw-bob-123")


@pytest.fixture
def viewer(db) -> User:
    user = User.objects.create_user("viewer", password="pw-viewer-123", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_job", content_type__app_label="jobs"))
    return user


def client_for(user: User) -> Client:
    c = Client()
    c.force_login(user)
    return c


def enqueue_report(owner: User, name: str = "") -> Job:
    with job_options(owner=owner, name=name or None):
        result = debug_report.enqueue()
    return Job.objects.get(pk=result.id)


def finished_with_file(owner: User, content: bytes = b"report body\n") -> Job:
    job = enqueue_report(owner)
    name = default_storage.save(f"jobs/{job.pk}/debug-report-test.txt", ContentFile(content))
    Job.objects.filter(pk=job.pk).update(status="SUCCESSFUL", result_file=name, progress_done=8, progress_total=8)
    job.refresh_from_db()
    return job


# ------------------------------------------------------------------ anonymous users


@pytest.mark.parametrize("name", ["jobs:list", "jobs:start_debug_report"])
def test_anonymous_users_are_sent_to_the_login_page(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


def test_anonymous_users_are_sent_to_login_for_a_job_page(client, alice):
    job = enqueue_report(alice)
    response = client.get(reverse("jobs:detail", args=[job.pk]))
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next=/jobs/{job.pk}/"


def test_anonymous_users_are_sent_to_login_for_a_download(client, alice):
    job = finished_with_file(alice)
    response = client.get(reverse("jobs:download", args=[job.pk]))
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next=/jobs/{job.pk}/download/"


# ------------------------------------------------------------------ my jobs


def test_my_jobs_lists_only_my_own_jobs(alice, bob):
    enqueue_report(alice, name="Alice's report")
    enqueue_report(bob, name="Bob's report")
    page = client_for(alice).get(reverse("jobs:list")).content.decode()
    assert "Alice&#x27;s report" in page
    assert "Bob&#x27;s report" not in page
    assert "<h1>My jobs</h1>" in page


def test_a_user_with_the_view_permission_sees_every_job(alice, bob, viewer):
    enqueue_report(alice, name="Alice's report")
    enqueue_report(bob, name="Bob's report")
    page = client_for(viewer).get(reverse("jobs:list")).content.decode()
    assert "Alice&#x27;s report" in page and "Bob&#x27;s report" in page
    assert "<h1>All jobs</h1>" in page


def test_my_jobs_says_so_when_there_are_none(alice):
    page = client_for(alice).get(reverse("jobs:list")).content.decode()
    assert "No jobs yet." in page


# ------------------------------------------------------------------ one job


def test_the_job_page_shows_a_live_progress_widget_with_the_job_id_and_seq(alice):
    job = enqueue_report(alice)
    response = client_for(alice).get(reverse("jobs:detail", args=[job.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert f'data-job-id="{job.pk}"' in page
    assert f'data-seq="{job.seq}"' in page
    assert 'role="progressbar"' in page
    assert '<script id="job-snapshot" type="application/json">' in page
    assert "<code>jobs.tasks.debug_report</code> on queue <code>reports</code>" in page


def test_the_job_page_of_someone_elses_job_is_not_found(alice, bob):
    job = enqueue_report(alice)
    assert client_for(bob).get(reverse("jobs:detail", args=[job.pk])).status_code == 404


def test_a_user_with_the_view_permission_may_open_any_job_page(alice, viewer):
    job = enqueue_report(alice)
    assert client_for(viewer).get(reverse("jobs:detail", args=[job.pk])).status_code == 200


def test_an_unknown_job_id_is_not_found(alice):
    assert client_for(alice).get(reverse("jobs:detail", args=[uuid.uuid4()])).status_code == 404


def test_a_job_page_shows_the_log_the_error_and_the_download_link(alice):
    job = finished_with_file(alice)
    Job.objects.filter(pk=job.pk).update(
        log=[{"n": 1, "at": "2026-01-01T10:00:00+00:00", "text": "Environment: Python 3.13"}], log_count=1
    )
    page = client_for(alice).get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "Environment: Python 3.13" in page
    assert f'href="/jobs/{job.pk}/download/"' in page


def test_a_failed_job_page_shows_its_error_but_the_traceback_only_to_staff(alice, viewer):
    job = enqueue_report(alice)
    Job.objects.filter(pk=job.pk).update(
        status="FAILED", error_type="builtins.RuntimeError", error_message="disk full",
        error_traceback="Traceback (most recent call last): boom",
    )
    mine = client_for(alice).get(reverse("jobs:detail", args=[job.pk])).content.decode()
    staff = client_for(viewer).get(reverse("jobs:detail", args=[job.pk])).content.decode()
    assert "<code>builtins.RuntimeError</code>: disk full" in mine
    assert "Traceback (most recent call last): boom" not in mine
    assert "Traceback (most recent call last): boom" in staff


# ------------------------------------------------------------------ start a debug report


def test_the_start_page_shows_a_form_that_posts_with_a_csrf_token(alice):
    page = client_for(alice).get(reverse("jobs:start_debug_report")).content.decode()
    assert '<form method="post" action="/jobs/debug-report/">' in page
    assert 'name="csrfmiddlewaretoken"' in page


def test_starting_a_debug_report_creates_my_job_and_redirects_to_its_page(alice):
    response = client_for(alice).post(reverse("jobs:start_debug_report"))
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/jobs/{job.pk}/"
    assert (job.owner, job.task_path, job.queue, job.status) == (alice, "jobs.tasks.debug_report", "reports", "READY")


def test_starting_a_debug_report_without_a_csrf_token_is_refused_and_creates_nothing(alice):
    c = Client(enforce_csrf_checks=True)
    c.force_login(alice)
    response = c.post(reverse("jobs:start_debug_report"))
    assert response.status_code == 403
    assert Job.objects.count() == 0


def test_starting_a_debug_report_with_the_csrf_token_of_the_form_works(alice):
    c = Client(enforce_csrf_checks=True)
    c.force_login(alice)
    c.get(reverse("jobs:start_debug_report"))
    token = c.cookies["csrftoken"].value
    response = c.post(reverse("jobs:start_debug_report"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert Job.objects.filter(owner=alice).count() == 1


def test_the_start_url_refuses_other_methods(alice):
    assert client_for(alice).put(reverse("jobs:start_debug_report")).status_code == 405


def test_an_unknown_queue_in_settings_is_reported_and_nothing_is_created(alice, settings):
    settings.TASKS = {"default": {"BACKEND": "jobs.backends.JobBackend", "QUEUES": ["default"]}}
    from django.tasks import task_backends

    task_backends._settings = None
    try:
        response = client_for(alice).post(reverse("jobs:start_debug_report"), follow=True)
    finally:
        task_backends._settings = None
    assert Job.objects.count() == 0
    assert "The debug report could not be started" in response.content.decode()


# ------------------------------------------------------------------ download


def test_the_owner_downloads_the_result_file(alice):
    job = finished_with_file(alice, b"Debug report\nall good\n")
    response = client_for(alice).get(reverse("jobs:download", args=[job.pk]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"Debug report\nall good\n"
    assert response["Content-Disposition"] == 'attachment; filename="debug-report-test.txt"'
    assert response["Content-Type"] == "text/plain; charset=utf-8"


def test_staff_with_the_view_permission_download_anyones_result(alice, viewer):
    job = finished_with_file(alice)
    assert client_for(viewer).get(reverse("jobs:download", args=[job.pk])).status_code == 200


def test_another_user_gets_a_404_for_a_download(alice, bob):
    job = finished_with_file(alice)
    assert client_for(bob).get(reverse("jobs:download", args=[job.pk])).status_code == 404


def test_an_unknown_id_gets_a_404_for_a_download(alice):
    assert client_for(alice).get(reverse("jobs:download", args=[uuid.uuid4()])).status_code == 404


def test_a_job_without_a_result_file_gets_a_404_for_a_download(alice):
    job = enqueue_report(alice)
    assert client_for(alice).get(reverse("jobs:download", args=[job.pk])).status_code == 404


def test_a_result_file_missing_from_storage_gets_a_404(alice):
    job = finished_with_file(alice)
    default_storage.delete(job.result_file.name)
    assert client_for(alice).get(reverse("jobs:download", args=[job.pk])).status_code == 404


# ------------------------------------------------------------------ cancel form


def test_the_owner_cancels_a_waiting_job_from_its_page(alice):
    job = enqueue_report(alice)
    response = client_for(alice).post(reverse("jobs:cancel", args=[job.pk]), follow=True)
    job.refresh_from_db()
    assert job.status == "CANCELLED"
    assert "Job cancelled." in response.content.decode()


def test_cancelling_a_finished_job_from_its_page_says_why_and_changes_nothing(alice):
    job = finished_with_file(alice)
    response = client_for(alice).post(reverse("jobs:cancel", args=[job.pk]), follow=True)
    job.refresh_from_db()
    assert job.status == "SUCCESSFUL"
    assert "already finished (SUCCESSFUL)" in response.content.decode()


def test_another_user_cannot_cancel_my_job(alice, bob):
    job = enqueue_report(alice)
    assert client_for(bob).post(reverse("jobs:cancel", args=[job.pk])).status_code == 404
    job.refresh_from_db()
    assert job.status == "READY"


# ------------------------------------------------------------------ error pages (DEBUG off, as in production)


def test_someone_elses_job_is_the_sites_own_404_page_not_a_list_of_urls(alice, bob, settings):
    settings.DEBUG = False
    job = enqueue_report(alice)

    response = client_for(bob).get(reverse("jobs:detail", args=[job.pk]))
    page = response.content.decode()

    assert response.status_code == 404
    assert "<h1>Page not found</h1>" in page
    assert '<body class="ui-page">' in page
    assert "URLconf" not in page and "jobs/&lt;uuid:job_id&gt;/" not in page


def test_a_forbidden_page_is_the_sites_own_403_page(rf, alice):
    from django.views.defaults import permission_denied

    request = rf.get("/admin/")
    request.user = alice
    response = permission_denied(request, exception=None)

    assert response.status_code == 403
    assert "<h1>Not allowed</h1>" in response.content.decode()


def test_a_form_posted_without_its_csrf_token_gets_the_sites_own_page(alice, settings):
    settings.DEBUG = False
    c = Client(enforce_csrf_checks=True)
    c.force_login(alice)

    response = c.post(reverse("jobs:start_debug_report"))

    assert response.status_code == 403
    assert "<h1>The form has expired</h1>" in response.content.decode()


def test_a_server_error_page_renders_with_no_context_and_no_database_query(rf, django_assert_num_queries):
    from django.views.defaults import server_error

    with django_assert_num_queries(0):
        response = server_error(rf.get("/"))
    page = response.content.decode()

    assert response.status_code == 500
    assert "<h1>Something went wrong on our side</h1>" in page
    assert "/static/notifications/ui.css" in page


# ------------------------------------------------------------------ packaged templates


def test_the_jobs_pages_render_in_a_project_without_the_demos_templates(alice, settings):
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": []}]
    job = enqueue_report(alice)

    listing = client_for(alice).get(reverse("jobs:list")).content.decode()
    detail = client_for(alice).get(reverse("jobs:detail", args=[job.pk])).content.decode()

    for page in (listing, detail):
        assert '<body class="ui-page">' in page
        assert 'href="/static/notifications/ui.css"' in page and 'href="/static/jobs/job-live.css"' in page
        assert '<a href="/jobs/" aria-current="page">Jobs</a>' in page
        assert "Live jobs" not in page  # the demo's name is in the demo's own base template
