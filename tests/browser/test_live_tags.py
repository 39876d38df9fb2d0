"""The template tags render the state at load (pages work without JavaScript) with what the live
scripts need: {% job_progress %} and {% live_notifications %}. No browser needed."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.template import Context, Template
from django.test import RequestFactory

from jobs.models import Job
from notifications.api import notify

pytestmark = pytest.mark.django_db


def render(source: str, **context) -> str:
    return Template(source).render(Context(context))


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", "alice@example.com", "pw")


def request_for(user):
    request = RequestFactory().get("/")
    request.user = user
    return request


def test_job_progress_renders_a_running_jobs_state_and_sequence_number_for_the_live_script(alice):
    job = Job.objects.create(task_path="jobs.tasks.debug_report", owner=alice, status="RUNNING",
                             progress_done=3, progress_total=8, message="Checking the database…", seq=7)

    html = render("{% load jobs_live %}{% job_progress job %}", job=job)

    assert f'data-job-id="{job.pk}" data-seq="7" data-status="RUNNING" data-final="false"' in html
    assert 'aria-valuenow="37.5"' in html
    assert '<span class="job-percent" data-field="percent">37%</span>' in html
    assert '<p class="job-message" data-field="message">Checking the database…</p>' in html
    assert 'data-field="result" href="#" hidden' in html
    assert '<script type="module" src="/static/jobs/job-live.js"></script>' in html


def test_job_progress_of_a_successful_job_shows_100_percent_and_its_download_link(alice):
    job = Job.objects.create(task_path="jobs.tasks.debug_report", owner=alice, status="SUCCESSFUL",
                             progress_done=8, progress_total=8, result_file="jobs/x/report.txt", seq=12)

    html = render("{% load jobs_live %}{% job_progress job %}", job=job)

    assert 'data-final="true"' in html
    assert 'aria-valuenow="100.0"' in html
    assert f'data-field="result" href="/jobs/{job.pk}/download/" download>' in html
    assert 'data-action="cancel"' not in html


def test_job_progress_with_log_lists_the_jobs_log_lines(alice):
    job = Job.objects.create(task_path="jobs.tasks.debug_report", owner=alice, status="RUNNING", log_count=2,
                             log=[{"n": 1, "at": "2026-11-22T05:48:10+00:00", "text": "one"},
                                  {"n": 2, "at": "2026-11-22T05:48:11+00:00", "text": "<two>"}])

    html = render("{% load jobs_live %}{% job_progress job log=True %}", job=job)

    assert 'data-field="log" data-last-n="2"' in html
    assert '<li data-n="2"><time datetime="2026-11-22T05:48:11+00:00">05:48:11</time> &lt;two&gt;</li>' in html


def test_job_progress_refuses_something_that_is_not_a_job():
    from django.template import TemplateSyntaxError

    with pytest.raises(TemplateSyntaxError, match="job_progress needs a Job, got str"):
        render("{% load jobs_live %}{% job_progress job %}", job="nope")


def test_live_notifications_renders_the_unread_count_and_the_newest_notifications(alice):
    notify(alice, title="First", level="success", link="/jobs/")
    notify(alice, title="Second <b>", text="Details")

    html = render("{% load notifications_live %}{% live_notifications %}", request=request_for(alice))

    assert '<span class="ln-badge" data-unread="2">2</span>' in html
    assert html.index("Second &lt;b&gt;") < html.index("First")
    assert html.count('class="ln-item') == 2
    assert '<script type="module" src="/static/notifications/live-notifications.js"></script>' in html


def test_live_notifications_hides_the_badge_when_nothing_is_unread(alice):
    html = render("{% load notifications_live %}{% live_notifications %}", request=request_for(alice))

    assert '<span class="ln-badge" data-unread="0" hidden>0</span>' in html
    assert '<li class="ln-empty">No notifications yet.</li>' in html


def test_live_notifications_renders_nothing_for_an_anonymous_visitor():
    html = render("{% load notifications_live %}{% live_notifications %}", request=request_for(AnonymousUser()))

    assert html == ""
