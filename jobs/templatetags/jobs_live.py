"""{% job_progress job %}: a job's progress bar, state, message and result link, kept live.

The markup is the job's state when the page was rendered (a page without JavaScript is right
at load); data-job-id and data-seq let jobs/job-live.js subscribe to the job's topic and apply
only newer events.
"""
from __future__ import annotations

from django import template
from django.templatetags.static import static
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from jobs.events import result_url
from jobs.models import Job

__all__ = ["job_progress", "job_log", "recent_jobs", "jobs_live_assets", "STATUS_LABELS"]

register = template.Library()

# The words a person sees for each status (the JavaScript uses the same ones).
STATUS_LABELS = {
    "READY": "Waiting",
    "RUNNING": "Running",
    "SUCCESSFUL": "Done",
    "FAILED": "Failed",
    "CANCELLED": "Cancelled",
}


def _percent(job: Job) -> float | None:
    return 100.0 if job.status == "SUCCESSFUL" else job.percent


def _cancel_control(job: Job, request) -> SafeString:
    if job.is_final:
        return mark_safe("")
    hidden = mark_safe(" hidden") if job.cancel_requested else mark_safe("")
    try:
        url = reverse("jobs:cancel", args=[job.pk])
    except NoReverseMatch:
        url = None
    if url and request is not None:
        from django.middleware.csrf import get_token

        return format_html(
            '<form method="post" action="{}" class="job-cancel-form"><input type="hidden" '
            'name="csrfmiddlewaretoken" value="{}"><button type="submit" class="job-cancel" '
            'data-action="cancel"{}>Cancel</button></form>',
            url,
            get_token(request),
            hidden,
        )
    # Without a cancel URL the button works over STOMP only, so it stays out of script-less pages.
    return format_html(
        '<button type="button" class="job-cancel job-needs-js" data-action="cancel"{}>Cancel</button>', hidden
    )


def _log_items(entries) -> SafeString:
    return format_html_join(
        "",
        '<li data-n="{}"><time datetime="{}">{}</time> {}</li>',
        ((e.get("n"), e.get("at", ""), (e.get("at") or "")[11:19], e.get("text", "")) for e in entries),
    )


def _log_list(job: Job) -> SafeString:
    entries = list(job.log or [])
    last = entries[-1]["n"] if entries else 0
    return format_html(
        '<ol class="job-log" data-field="log" data-last-n="{}" aria-live="polite">{}</ol>', last, _log_items(entries)
    )


@register.simple_tag
def jobs_live_assets() -> SafeString:
    """The stylesheet and the module script (a module runs once per page however often it is included)."""
    return format_html(
        '<link rel="stylesheet" href="{}"><script type="module" src="{}"></script>',
        static("jobs/job-live.css"),
        static("jobs/job-live.js"),
    )


@register.simple_tag(takes_context=True)
def job_progress(context, job: Job, log: bool = False, cancel: bool = True, title: bool = False) -> SafeString:
    """The live progress widget of one job: {% job_progress job %}, {% job_progress job log=True %}."""
    if not isinstance(job, Job):
        raise template.TemplateSyntaxError(f"job_progress needs a Job, got {type(job).__name__}")
    percent = _percent(job)
    status = str(job.status)
    indeterminate = percent is None and status == "RUNNING"
    done, total = job.progress_done, job.progress_total
    counts = f"{done} / {total}" if total else (str(done) if done else "")
    url = result_url(job)
    error = job.error_message if status in {"FAILED", "CANCELLED"} else ""
    heading = (
        format_html('<div class="job-title">{}</div>', job.display_name) if title else mark_safe("")
    )
    return format_html(
        '<div class="job-live job-status-{status_lc}" data-job-live data-job-id="{id}" data-seq="{seq}" '
        'data-status="{status}" data-final="{final}">{heading}'
        '<div class="job-line"><span class="job-state" data-field="status">{label}</span>'
        '<span class="job-percent" data-field="percent">{percent_text}</span>'
        '<span class="job-counts" data-field="counts">{counts}</span></div>'
        '<div class="job-bar{indeterminate}" role="progressbar" aria-label="Progress of {name}" aria-valuemin="0" '
        'aria-valuemax="100"{valuenow}><div class="job-bar-fill" style="width: {width}%"></div></div>'
        '<p class="job-message" data-field="message">{message}</p>'
        '<p class="job-error" data-field="error"{error_hidden}>{error}</p>'
        '<div class="job-actions"><a class="job-result button" data-field="result" href="{href}"{result_hidden} download>'
        "Download the result</a>{cancel}</div>{log}</div>{assets}",
        status_lc=status.lower(),
        id=job.pk,
        seq=job.seq,
        status=status,
        final="true" if job.is_final else "false",
        heading=heading,
        label="Cancelling" if job.cancel_requested and not job.is_final else STATUS_LABELS.get(status, status),
        percent_text=f"{int(percent)}%" if percent is not None else "",
        counts=counts,
        indeterminate=" job-bar-indeterminate" if indeterminate else "",
        name=job.display_name,
        valuenow=format_html(' aria-valuenow="{}"', percent) if percent is not None else mark_safe(""),
        width=percent or 0,
        message=job.message,
        error_hidden=mark_safe("") if error else mark_safe(" hidden"),
        error=error,
        href=url or "#",
        result_hidden=mark_safe("") if url else mark_safe(" hidden"),
        cancel=_cancel_control(job, context.get("request")) if cancel else mark_safe(""),
        log=_log_list(job) if log else mark_safe(""),
        assets=jobs_live_assets(),
    )


@register.simple_tag
def job_log(job: Job) -> SafeString:
    """Just the live message log of a job (the progress widget with log=True includes it)."""
    return _log_list(job)


@register.simple_tag(takes_context=True)
def recent_jobs(context, limit: int = 5) -> list[Job]:
    """{% recent_jobs 5 as jobs %}: the current user's own newest jobs (the home page lists them)."""
    request = context.get("request")
    user = getattr(request, "user", None) or context.get("user")
    if user is None or not user.is_authenticated:
        return []
    return list(Job.objects.filter(owner=user).order_by("-enqueued_at")[: int(limit)])
