"""Admin for jobs: a read-only record of every job, with cancel, retry and start a debug report.

Jobs change only through their state machine (Job.cancel(), Job.retry(), the worker), never by
editing fields, so every field is read-only and the change page has no Save buttons. Actions
work on the list (selected jobs) and on a job's own page. "Start a debug report" needs no
selection: it is also reachable as a POST to admin:jobs_job_start_debug_report.
"""
from __future__ import annotations

import uuid

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import ActionLocation
from django.db import transaction
from django.db.models import Q
from django.http import HttpRequest, HttpResponseNotAllowed, HttpResponseRedirect
from django.tasks.exceptions import InvalidTask
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from notifications.live_admin import LiveModelAdmin

from . import live, vocabulary
from .api import enqueue_for
from .events import result_url
from .exceptions import JobError, JobStateError
from .models import Job, JobStatus
from .tasks import debug_report

__all__ = ["JobAdmin"]

BOTH = [ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM]


def _seconds(delta) -> str:
    if delta is None:
        return "—"
    total = delta.total_seconds()
    if total < 60:
        return f"{total:.1f} s"
    minutes, seconds = divmod(int(total), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@admin.register(Job)
class JobAdmin(LiveModelAdmin, admin.ModelAdmin):
    list_display = (
        "job_column",
        "status_display",
        "progress_display",
        "owner",
        "enqueued",
        "queued_for",
        "run_time",
        "attempts_display",
    )
    list_display_links = ("job_column",)
    list_filter = ("status", "queue", "task_path", "cancel_requested")
    search_fields = ("task_path", "name", "owner__username", "message")
    search_help_text = "A job id, a task path, a name, an owner's username or words of the status message."
    list_select_related = ("owner",)
    date_hierarchy = "enqueued_at"
    list_per_page = 50
    # Live: the list follows every job, a job's page its own topic; jobs/admin-live.js renders
    # the events (they carry the whole state) instead of fetching the page again.
    live_destination = live.JOBS_ALL
    live_object_destination = live.job("{pk}")
    live_script = "jobs/admin-live.js"
    actions = ("cancel_jobs", "retry_jobs", "start_debug_report")
    fieldsets = (
        # The state as the change list shows it (a badge, "Cancelling" included), not the bare status.
        (None, {"fields": ("id", "job_name", "task_path", "status_display", "progress_display", "message", "owner")}),
        ("Run", {"fields": ("queue", "priority", "run_after", "enqueued_at", "started_at", "finished_at",
                            "queued_for", "run_time", "heartbeat_at", "worker_id", "attempts", "max_attempts",
                            "time_limit", "cancel_requested", "seq")}),
        ("Arguments and result", {"fields": ("args", "kwargs", "result", "result_link")}),
        ("Error", {"fields": ("error_type", "error_message", "error_traceback")}),
        ("Log", {"fields": ("log_display",)}),
    )

    # ---------------------------------------------------------------- read-only record

    def get_readonly_fields(self, request, obj=None):
        names = [f.name for f in Job._meta.fields]
        return names + ["job_name", "status_display", "progress_display", "enqueued", "queued_for", "run_time", "log_display", "result_link"]

    def has_add_permission(self, request) -> bool:
        return False  # jobs are enqueued through django.tasks (or the action), never typed in

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # ---------------------------------------------------------------- columns

    @admin.display(description="job", ordering="task_path")
    def job_name(self, job: Job) -> str:
        return job.display_name

    @admin.display(description="job", ordering="task_path")
    def job_column(self, job: Job) -> str:
        """The name, with the short id (what the search box takes) under it: one column, not two."""
        return format_html('{} <small class="job-admin-id">{}</small>', job.display_name, str(job.pk)[:8])

    @admin.display(description="status", ordering="status")
    def status_display(self, job: Job) -> str:
        # The state and word of jobs.vocabulary ("cancelling" for a running job asked to stop);
        # the colour per state is job-live.css's (a badge). jobs/admin-live.js renders the same.
        return format_html(
            '<span class="job-admin-status job-status-{}">{}</span>',
            vocabulary.state(job.status, job.cancel_requested),
            vocabulary.label(job.status, job.cancel_requested),
        )

    @admin.display(description="progress")
    def progress_display(self, job: Job) -> str:
        percent = 100.0 if job.status == JobStatus.SUCCESSFUL else job.percent
        if job.progress_total:
            counts = f"{job.progress_done} / {job.progress_total}"
        else:
            counts = str(job.progress_done) if job.progress_done else ""
        shown = vocabulary.percent_text(job.percent, job.status)
        message = vocabulary.message(job)
        return format_html(
            '<span class="job-admin-progress" data-job-id="{}" data-seq="{}" data-status="{}">'
            '<progress max="100"{}>{}</progress> <span data-field="percent">{}</span> '
            '<span data-field="counts">{}</span> <span data-field="message" title="{}">{}</span></span>',
            job.pk,
            job.seq,
            job.status,
            format_html(' value="{}"', percent) if percent is not None else "",
            shown,
            shown,
            counts,
            message,
            Truncator(message).chars(60),
        )

    @admin.display(description="enqueued", ordering="enqueued_at")
    def enqueued(self, job: Job) -> str:
        """When it was enqueued, compactly (the full time is the tooltip and the change page's)."""
        local = timezone.localtime(job.enqueued_at)
        today = timezone.localdate()
        short = local.strftime("%H:%M:%S") if local.date() == today else local.strftime("%Y-%m-%d %H:%M")
        return format_html('<time datetime="{}" title="{}">{}</time>', local.isoformat(), local.strftime("%Y-%m-%d %H:%M:%S %Z"), short)

    @admin.display(description="result file")
    def result_link(self, job: Job) -> str:
        """The result through the permission-checked download view, never the storage's own URL
        (media files are not served: a result belongs to its owner and to who may view jobs)."""
        url = result_url(job)
        if not url:
            return job.result_file.name if job.result_file else "—"
        return format_html(
            '<a href="{}" download>{}</a>', url, job.result_file.name.rsplit("/", 1)[-1]
        )

    @admin.display(description="queued for")
    def queued_for(self, job: Job) -> str:
        """Time between enqueue and start (or until now while still waiting)."""
        if job.started_at is not None:
            return _seconds(job.started_at - job.enqueued_at)
        if job.status == JobStatus.READY:
            return _seconds(timezone.now() - job.enqueued_at)
        return "—"

    @admin.display(description="run time")
    def run_time(self, job: Job) -> str:
        return _seconds(job.duration)

    @admin.display(description="attempts")
    def attempts_display(self, job: Job) -> str:
        return f"{job.attempts}/{job.max_attempts}"

    @admin.display(description="log")
    def log_display(self, job: Job) -> str:
        entries = list(job.log or [])
        if not entries:
            return "—"
        earlier = job.log_count - len(entries)
        note = format_html("<p>({} earlier lines not kept)</p>", earlier) if earlier > 0 else ""
        items = format_html_join(
            "",
            '<li data-n="{}"><time datetime="{}">{}</time> {}</li>',
            ((e.get("n"), e.get("at", ""), (e.get("at") or "")[:19].replace("T", " "), e.get("text", "")) for e in entries),
        )
        return format_html('{}<ol class="job-log" data-field="log">{}</ol>', note, items)

    # ---------------------------------------------------------------- search

    def get_search_results(self, request, queryset, search_term):
        # An id (full or its first characters, as the list shows them) is the most common
        # search; UUIDs are not text on every database, so match them explicitly.
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term:
            try:
                queryset |= self.model.objects.filter(pk=uuid.UUID(term))
            except ValueError:
                hexpart = term.replace("-", "").lower()
                if 4 <= len(hexpart) < 32 and all(c in "0123456789abcdef" for c in hexpart):
                    low = uuid.UUID(hexpart.ljust(32, "0"))
                    high = uuid.UUID(hexpart.ljust(32, "f"))
                    queryset |= self.model.objects.filter(Q(pk__gte=low) & Q(pk__lte=high))
        return queryset, may_have_duplicates

    # ---------------------------------------------------------------- actions

    @admin.action(description="Cancel selected jobs", permissions=["change"], location=BOTH)
    def cancel_jobs(self, request: HttpRequest, queryset) -> None:
        ended, asked, errors = 0, 0, []
        for job in queryset:
            try:
                with transaction.atomic():
                    if job.cancel():
                        ended += 1
                    else:
                        asked += 1
            except JobStateError as exc:
                errors.append(str(exc))
        if ended:
            self.message_user(request, f"Cancelled {_plural(ended, 'waiting job')}.", messages.SUCCESS)
        if asked:
            self.message_user(
                request, f"Asked {_plural(asked, 'running job')} to stop; it ends CANCELLED when the task notices.",
                messages.SUCCESS,
            )
        self._report_errors(request, "cancel", errors)

    @admin.action(description="Retry selected jobs", permissions=["change"], location=BOTH)
    def retry_jobs(self, request: HttpRequest, queryset) -> None:
        retried, errors = 0, []
        for job in queryset:
            try:
                with transaction.atomic():
                    job.retry()
                retried += 1
            except JobStateError as exc:
                errors.append(str(exc))
        if retried:
            self.message_user(request, f"Queued {_plural(retried, 'job')} to run again.", messages.SUCCESS)
        self._report_errors(request, "retry", errors)

    def _report_errors(self, request: HttpRequest, verb: str, errors: list[str]) -> None:
        if not errors:
            return
        shown = " ".join(errors[:5]) + (f" (and {len(errors) - 5} more)" if len(errors) > 5 else "")
        self.message_user(
            request, f"Could not {verb} {_plural(len(errors), 'job')}: {shown}", messages.ERROR
        )

    @admin.action(description="Start a debug report (no selection needed)", permissions=["add_report"])
    def start_debug_report(self, request: HttpRequest, queryset=None) -> HttpResponseRedirect | None:
        try:
            with transaction.atomic():
                result = enqueue_for(request.user, debug_report)
        except (InvalidTask, JobError) as exc:
            self.message_user(request, f"The debug report could not be started: {exc}", messages.ERROR)
            return None
        self.message_user(request, "Debug report started; its page updates live.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[result.id]))

    def has_add_report_permission(self, request: HttpRequest) -> bool:
        # Starting a report creates a job, but through the task API: viewing jobs is enough.
        return self.has_view_permission(request)

    def changelist_view(self, request, extra_context=None):
        # Django refuses an action without a selection; this one needs none.
        if (
            request.method == "POST"
            and request.POST.get("action") == "start_debug_report"
            and not request.POST.getlist(helpers.ACTION_CHECKBOX_NAME)
            and self.has_add_report_permission(request)
        ):
            response = self.start_debug_report(request)
            return response or HttpResponseRedirect(request.get_full_path())
        return super().changelist_view(request, extra_context)

    def get_urls(self):
        urls = super().get_urls()
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "start-debug-report/",
                self.admin_site.admin_view(self.start_debug_report_view),
                name="%s_%s_start_debug_report" % info,
            ),
            *urls,
        ]

    def start_debug_report_view(self, request: HttpRequest):
        """POST only (CSRF-checked by the admin): start a report, go to its page."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_add_report_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        response = self.start_debug_report(request)
        return response or HttpResponseRedirect(reverse("admin:jobs_job_changelist"))


from . import ops_admin  # noqa: E402,F401  (schedules and workers: jobs.ops_admin)
