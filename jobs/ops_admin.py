"""Admin for the operations models: schedules (pause, resume, next and last runs) and workers.

Both are records written by the workers, so every field is read-only; schedules change only
through their actions (pause, resume), workers not at all. Imported by jobs/admin.py.
"""
from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from . import ops_live, schedules
from .models import Schedule, ScheduleRun, Worker, WorkerState

__all__ = ["ScheduleAdmin", "WorkerAdmin"]


def _ago(value) -> str:
    if value is None:
        return "—"
    seconds = (timezone.now() - value).total_seconds()
    if seconds < 0:
        return "in the future"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _local(value, zone_name: str) -> str:
    if value is None:
        return "—"
    return f"{value.astimezone(schedules._zone(zone_name)):%Y-%m-%d %H:%M:%S %Z}"


# The overview's chart: a 600 x 120 SVG, one 8-wide bar per minute (jobs/ops-live.js draws the same).
CHART_HEIGHT = 110
CHART_STEP = 10


def chart_bars(per_minute: list[dict]) -> tuple[int, list[dict]]:
    """The tallest bar (jobs) and each minute's bar: succeeded stacked on failed, bottom-aligned."""
    peak = max([1, *(m["succeeded"] + m["failed"] for m in per_minute)])
    bars = []
    for n, m in enumerate(per_minute):
        failed_h = round(CHART_HEIGHT * m["failed"] / peak, 1)
        ok_h = round(CHART_HEIGHT * m["succeeded"] / peak, 1)
        bars.append({"x": n * CHART_STEP, "failed_y": round(120 - failed_h, 1), "failed_h": failed_h,
                     "ok_y": round(120 - failed_h - ok_h, 1), "ok_h": ok_h,
                     "label": f"{m['minute'][11:16]} UTC: {m['succeeded']} succeeded, {m['failed']} failed"})
    return peak, bars


class ScheduleRunInline(admin.TabularInline):
    model = ScheduleRun
    fields = ("due_at", "job", "worker_id", "created_at", "error")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ("-due_at",)
    verbose_name_plural = "recent runs"

    def get_queryset(self, request):
        # The last 20: a minutely schedule has thousands; the job list has the rest.
        queryset = super().get_queryset(request)
        ids = list(queryset.order_by("-due_at").values_list("pk", flat=True)[:20])
        return queryset.filter(pk__in=ids)


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    list_display = ("name", "task_path", "cron", "when", "zone", "missed", "state", "next_run", "last_run",
                    "last_job_link")
    list_filter = ("paused", "missed")
    search_fields = ("name", "task_path")
    actions = ("pause_schedules", "resume_schedules")
    inlines = [ScheduleRunInline]
    fieldsets = (
        (None, {"fields": ("name", "state", "task_path", "args", "kwargs", "queue", "priority")}),
        ("When", {"fields": ("cron", "when", "zone", "missed", "next_run", "last_run", "last_job_link", "last_error")}),
        ("Record", {"fields": ("synced_at", "created_at")}),
    )

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Schedule._meta.fields] + ["when", "zone", "state", "next_run", "last_run",
                                                         "last_job_link"]

    def has_add_permission(self, request) -> bool:
        return False  # declared in code or settings (jobs.schedules), never typed in

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "show_save": False, "show_save_and_continue": False,
                         "show_save_and_add_another": False}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="in words")
    def when(self, obj: Schedule) -> str:
        return schedules.explain(obj.cron)

    @admin.display(description="time zone")
    def zone(self, obj: Schedule) -> str:
        from django.conf import settings

        return obj.time_zone or f"{settings.TIME_ZONE} (TIME_ZONE)"

    @admin.display(description="state", ordering="paused")
    def state(self, obj: Schedule) -> str:
        return "Paused" if obj.paused else "Active"

    @admin.display(description="next run", ordering="next_run_at")
    def next_run(self, obj: Schedule) -> str:
        if obj.paused:
            return "— (paused)"
        return _local(obj.next_run_at, obj.time_zone)

    @admin.display(description="last run", ordering="last_run_at")
    def last_run(self, obj: Schedule) -> str:
        return _local(obj.last_run_at, obj.time_zone)

    @admin.display(description="last job")
    def last_job_link(self, obj: Schedule) -> str:
        if obj.last_job_id is None:
            return "—"
        url = reverse("admin:jobs_job_change", args=[obj.last_job_id])
        return format_html('<a href="{}">{}</a>', url, str(obj.last_job_id)[:8])

    @admin.action(description="Pause selected schedules", permissions=["change"])
    def pause_schedules(self, request, queryset) -> None:
        paused = sum(schedules.pause(s) for s in queryset)
        self.message_user(request, f"Paused {paused} schedule(s); nothing is enqueued for them until resumed.",
                          messages.SUCCESS)

    @admin.action(description="Resume selected schedules", permissions=["change"])
    def resume_schedules(self, request, queryset) -> None:
        resumed = sum(schedules.resume(s) for s in queryset)
        self.message_user(request, f"Resumed {resumed} schedule(s) from their next due time (paused runs are not "
                                   "made up).", messages.SUCCESS)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    """The workers, live (jobs/ops-live.js follows /topic/ops.overview), and the Overview dashboard
    at admin/jobs/worker/overview/."""

    list_display = ("id", "state_display", "host", "pid", "queue_list", "concurrency", "heartbeat_age",
                    "running_count", "succeeded_count", "failed_count", "started_at")
    list_filter = ("state", "host")
    search_fields = ("id", "host")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Worker._meta.fields] + ["heartbeat_age", "state_display"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def _cell(self, obj: Worker, field: str, text) -> str:
        return format_html('<span data-worker="{}" data-field="{}">{}</span>', obj.id, field, text)

    @admin.display(description="state", ordering="state")
    def state_display(self, obj: Worker) -> str:
        return format_html('<span class="worker-state worker-state-{}" data-worker="{}" data-field="state">{}</span>',
                           obj.state.lower(), obj.id, obj.get_state_display())

    @admin.display(description="queues")
    def queue_list(self, obj: Worker) -> str:
        return ", ".join(obj.queues or [])

    @admin.display(description="heartbeat", ordering="heartbeat_at")
    def heartbeat_age(self, obj: Worker) -> str:
        alive = obj.state in {WorkerState.RUNNING, WorkerState.STOPPING}
        return self._cell(obj, "heartbeat", _ago(obj.heartbeat_at) if alive else "—")

    @admin.display(description="running")
    def running_count(self, obj: Worker) -> str:
        return self._cell(obj, "running", len(obj.running or []))

    @admin.display(description="succeeded", ordering="succeeded")
    def succeeded_count(self, obj: Worker) -> str:
        return self._cell(obj, "succeeded", obj.succeeded)

    @admin.display(description="failed", ordering="failed")
    def failed_count(self, obj: Worker) -> str:
        return self._cell(obj, "failed", obj.failed)

    def get_urls(self):
        return [path("overview/", self.admin_site.admin_view(self.overview_view), name="jobs_overview"),
                *super().get_urls()]

    def overview_view(self, request):
        """Jobs per state, throughput and failures per minute, queues, slowest tasks, workers: live."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        data = ops_live.overview()
        peak, bars = chart_bars(data["per_minute"])
        context = {
            **self.admin_site.each_context(request),
            "title": "Jobs overview",
            "opts": self.opts,
            "overview": data,
            "peak": peak,
            "bars": bars,
            "destination": ops_live.OVERVIEW,
        }
        return TemplateResponse(request, "admin/jobs/overview.html", context)
