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

from jobs import vocabulary
from jobs.events import result_url
from jobs.models import Job

__all__ = ["job_progress", "job_log", "recent_jobs", "jobs_live_assets", "job_state_badge", "job_label"]

register = template.Library()


def _badge(job: Job, standalone: bool = True) -> SafeString:
    """The state word in a badge. Its colour comes from job-live.css, by the widget's
    job-status-* class inside a live widget (which the script keeps current), else by its own
    job-state-* class; the word is always there, so colour is never the only signal."""
    status = str(job.status)
    return format_html(
        '<span class="ui-badge job-state{}" data-field="status">{}</span>',
        f" job-state-{vocabulary.state(status, job.cancel_requested)}" if standalone else "",
        vocabulary.label(status, job.cancel_requested),
    )


@register.filter
def job_label(job: Job) -> str:
    """{{ job|job_label }}: the word for the job's state (jobs.vocabulary)."""
    return vocabulary.label(str(job.status), job.cancel_requested)


@register.simple_tag
def job_state_badge(job: Job) -> SafeString:
    """{% job_state_badge job %}: the job's state word in a coloured badge (not live by itself)."""
    if not isinstance(job, Job):
        raise template.TemplateSyntaxError(f"job_state_badge needs a Job, got {type(job).__name__}")
    return _badge(job)


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
            'name="csrfmiddlewaretoken" value="{}"><button type="submit" class="ui-button ui-button--small job-cancel" '
            'data-action="cancel"{}>Cancel</button></form>',
            url,
            get_token(request),
            hidden,
        )
    # Without a cancel URL the button works over STOMP only, so it stays out of script-less pages.
    return format_html(
        '<button type="button" class="ui-button ui-button--small job-cancel job-needs-js" data-action="cancel"{}>Cancel</button>',
        hidden,
    )


def _log_items(entries) -> SafeString:
    return format_html_join(
        "",
        '<li data-n="{}"><time datetime="{}">{}</time> {}</li>',
        ((e.get("n"), e.get("at", ""), (e.get("at") or "")[11:19], e.get("text", "")) for e in entries),
    )


def _log_list(job: Job) -> SafeString:
    # Not a live region: a screen reader would read every line as it comes. The widget's
    # announcer says the final state instead. The empty state shows (CSS) while the list is empty.
    entries = list(job.log or [])
    last = entries[-1]["n"] if entries else 0
    return format_html(
        '<ol class="job-log" data-field="log" data-last-n="{}" aria-label="Messages of the job">{}</ol>'
        '<p class="ui-empty job-log-empty">No messages yet: the job\'s messages appear here as it runs.</p>',
        last,
        _log_items(entries),
    )


@register.simple_tag
def jobs_live_assets() -> SafeString:
    """The design system's and the widget's stylesheets and the module script (a module runs once
    per page however often it is included; a stylesheet linked twice is fetched once)."""
    return format_html(
        '<link rel="stylesheet" href="{}"><link rel="stylesheet" href="{}"><script type="module" src="{}"></script>',
        static("notifications/ui.css"),
        static("jobs/job-live.css"),
        static("jobs/job-live.js"),
    )


@register.simple_tag(takes_context=True)
def job_progress(
    context, job: Job, log: bool = False, cancel: bool = True, title: bool = False, result: bool = True,
    compact: bool = False,
) -> SafeString:
    """The live progress widget of one job: {% job_progress job %}, {% job_progress job log=True %}.

    ``result=False`` leaves out the download button (lists link to the job page instead),
    ``compact=True`` is the one-line form for lists (no message line).
    """
    if not isinstance(job, Job):
        raise template.TemplateSyntaxError(f"job_progress needs a Job, got {type(job).__name__}")
    percent = 100.0 if job.status == "SUCCESSFUL" else job.percent
    status = str(job.status)
    indeterminate = percent is None and status == "RUNNING"
    done, total = job.progress_done, job.progress_total
    counts = f"{done} / {total}" if total else (str(done) if done else "")
    url = result_url(job)
    error = job.error_message if status in {"FAILED", "CANCELLED"} else ""
    heading = (
        format_html('<div class="job-title">{}</div>', job.display_name) if title else mark_safe("")
    )
    result_link = (
        format_html(
            '<a class="ui-button ui-button--primary job-result" data-field="result" href="{}"{} download>'
            "Download the result</a>",
            url or "#",
            mark_safe("") if url else mark_safe(" hidden"),
        )
        if result
        else mark_safe("")
    )
    shown = vocabulary.percent_text(job.percent, status)
    return format_html(
        '<div class="job-live job-status-{status_lc}{compact}" data-job-live data-job-id="{id}" data-seq="{seq}" '
        'data-status="{status}" data-final="{final}"{announced}>{heading}'
        '<div class="job-line">{badge}'
        '<span class="job-percent" data-field="percent">{percent_text}</span>'
        '<span class="job-follow">Live</span>'
        '<span class="job-counts" data-field="counts">{counts}</span></div>'
        '<div class="job-bar{indeterminate}" role="progressbar" aria-label="Progress of {name}" aria-valuemin="0" '
        'aria-valuemax="100"{valuenow}{valuetext}><div class="job-bar-fill" style="width: {width}%"></div></div>'
        '{message}'
        '<p class="job-error" data-field="error"{error_hidden}>{error}</p>'
        '{actions}{log}<p class="ui-visually-hidden" data-field="announce" aria-live="polite"></p></div>{assets}',
        status_lc=status.lower(),
        compact=" job-live-compact" if compact else "",
        id=job.pk,
        seq=job.seq,
        status=status,
        final="true" if job.is_final else "false",
        # Already final at load: nothing to announce (the script announces a job that ends).
        announced=format_html(' data-announced="{}"', status) if job.is_final else mark_safe(""),
        heading=heading,
        badge=_badge(job, standalone=False),
        percent_text=shown,
        counts=counts,
        indeterminate=" job-bar-indeterminate" if indeterminate else "",
        name=job.display_name,
        valuenow=format_html(' aria-valuenow="{}"', percent) if percent is not None else mark_safe(""),
        valuetext=format_html(' aria-valuetext="{}"', shown) if shown else mark_safe(""),
        width=percent or 0,
        message=(
            mark_safe("")
            if compact
            else format_html('<p class="job-message" data-field="message">{}</p>', vocabulary.message(job))
        ),
        error_hidden=mark_safe("") if error else mark_safe(" hidden"),
        error=error,
        actions=(
            format_html(
                '<div class="job-actions">{}{}</div>',
                result_link,
                _cancel_control(job, context.get("request")) if cancel else mark_safe(""),
            )
            if result or cancel
            else mark_safe("")
        ),
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
