"""Pages for logged-in users: my jobs, one job, start a debug report, download a result, cancel.

Who sees what is Job.objects.visible_to(user): one's own jobs, or every job with the
jobs.view_job permission. Anything else is a 404, never a 403, so ids of other people's jobs
are not confirmed to exist.
"""
from __future__ import annotations

import logging
import os

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.core.paginator import Paginator
from django.db import transaction
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.tasks.exceptions import InvalidTask
from django.views.decorators.http import require_http_methods, require_POST

from .api import enqueue_for
from .events import job_event, result_url
from .exceptions import JobError, JobStateError
from .models import Job
from .tasks import debug_report

__all__ = ["job_list", "job_detail", "start_debug_report", "download", "cancel"]

logger = logging.getLogger(__name__)

# Jobs per page of "my jobs".
PAGE_SIZE = 25


def _visible_job(request: HttpRequest, job_id) -> Job:
    return get_object_or_404(Job.objects.visible_to(request.user).select_related("owner"), pk=job_id)


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    jobs = Job.objects.visible_to(request.user).select_related("owner").order_by("-enqueued_at")
    page = Paginator(jobs, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "jobs/list.html",
        {"page": page, "jobs": page.object_list, "sees_all": request.user.has_perm("jobs.view_job")},
    )


@login_required
def job_detail(request: HttpRequest, job_id) -> HttpResponse:
    job = _visible_job(request, job_id)
    return render(
        request,
        "jobs/detail.html",
        {
            "job": job,
            "event": job_event(job),
            "result_url": result_url(job),
            "can_cancel": not job.is_final and _may_change(request.user, job),
            "show_traceback": request.user.is_staff,
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def start_debug_report(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "jobs/start_debug_report.html", {"task": debug_report})
    try:
        with transaction.atomic():
            result = enqueue_for(request.user, debug_report)
    except (InvalidTask, JobError) as exc:
        messages.error(request, f"The debug report could not be started: {exc}")
        return redirect("jobs:start_debug_report")
    # The page itself says whether it is following the job (the widget's "Live" mark), and stops
    # saying so when the job ends; a flash message would go on claiming it.
    messages.success(request, "Debug report started.")
    return redirect("jobs:detail", job_id=result.id)


@login_required
def download(request: HttpRequest, job_id) -> FileResponse:
    job = _visible_job(request, job_id)
    name = job.result_file.name if job.result_file else ""
    if job.status != "SUCCESSFUL" or not name:
        raise Http404("This job has no result file.")
    try:
        handle = default_storage.open(name, "rb")
    except FileNotFoundError as exc:
        logger.warning("Result file %s of job %s is missing from storage", name, job.pk)
        raise Http404("The result file is no longer available.") from exc
    filename = os.path.basename(name)
    content_type = "text/plain; charset=utf-8" if filename.endswith(".txt") else None
    return FileResponse(handle, as_attachment=True, filename=filename, content_type=content_type)


def _may_change(user, job: Job) -> bool:
    return job.owner_id == user.pk or user.has_perm("jobs.change_job")


@login_required
@require_POST
def cancel(request: HttpRequest, job_id) -> HttpResponse:
    """Cancel from a plain form (pages without JavaScript); the live widget cancels over STOMP."""
    job = _visible_job(request, job_id)
    if not _may_change(request.user, job):
        raise Http404("No such job.")
    try:
        with transaction.atomic():
            ended = job.cancel()
    except JobStateError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Job cancelled." if ended else "Asked the running job to stop.")
    return redirect("jobs:detail", job_id=job.pk)
