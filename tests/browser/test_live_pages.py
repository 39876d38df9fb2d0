"""End to end in a real headless Chromium: the pages, the admin and the notifications update live.

Each test runs the product for real (daphne, `manage.py jobworker`, the embedded STOMP broker,
one SQLite file) and drives it the way a person would.
"""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

JOB_URL = re.compile(r"/jobs/([0-9a-f-]{36})/$")
# The debug report takes a few seconds; a loaded 2-core machine may take several times longer.
JOB_TIMEOUT_MS = 60_000

# Counts the job events a page applied and proves later that the document was never reloaded.
RECORD_UPDATES = """
window.__jobUpdates = [];
document.addEventListener('job:update', (e) => window.__jobUpdates.push(e.detail.status));
"""


def start_debug_report(page) -> str:
    """Start a debug report from the home page; returns the job id the page lands on."""
    page.goto("/")
    page.click("[data-action=start-debug-report]")
    page.wait_for_url(JOB_URL)
    return JOB_URL.search(page.url).group(1)


def test_a_debug_report_started_from_the_home_page_reaches_100_percent_and_offers_the_download_without_a_reload(
    new_page,
):
    page = new_page("alice")
    page.add_init_script(RECORD_UPDATES)
    job_id = start_debug_report(page)
    widget = page.locator(f'[data-job-live][data-job-id="{job_id}"]')
    status_at_load = widget.get_attribute("data-status")
    page.evaluate("window.__sameDocument = true")

    expect(widget).to_have_attribute("data-status", "SUCCESSFUL", timeout=JOB_TIMEOUT_MS)

    assert status_at_load in {"READY", "RUNNING"}
    assert page.evaluate("window.__sameDocument") is True
    assert page.evaluate("window.__jobUpdates")[-1] == "SUCCESSFUL"
    expect(widget.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    expect(widget.locator("[data-field=percent]")).to_have_text("100%")
    link = widget.locator("[data-field=result]")
    expect(link).to_be_visible()
    expect(link).to_have_attribute("href", f"/jobs/{job_id}/download/")


def test_the_download_link_that_appeared_live_downloads_the_report(new_page):
    page = new_page("alice")
    job_id = start_debug_report(page)
    link = page.locator(f'[data-job-id="{job_id}"] [data-field=result]')
    expect(link).to_be_visible(timeout=JOB_TIMEOUT_MS)

    with page.expect_download() as download:
        link.click()

    assert download.value.suggested_filename.startswith("debug-report-")
    assert download.value.path().read_text().startswith("Debug report\n")


@pytest.mark.parametrize("live_stack", [{"worker": False}], indirect=True)
def test_the_admin_change_list_follows_a_job_from_ready_to_successful_without_a_reload(new_page, live_stack):
    alice = new_page("alice")
    job_id = start_debug_report(alice)  # no worker yet: the job waits, READY
    admin = new_page("admin")
    admin.goto("/admin/jobs/job/")
    row = admin.locator(f'#result_list tbody tr:has(input.action-select[value="{job_id}"])')
    expect(row.locator(".field-status_display")).to_have_text("Ready")
    expect(row.locator(".field-run_time")).to_have_text("—")
    admin.wait_for_function("document.documentElement.dataset.stomp === 'connected'")
    admin.evaluate("window.__sameDocument = true")

    live_stack.start_worker()

    expect(row.locator(".field-status_display")).to_have_text("Successful", timeout=JOB_TIMEOUT_MS)
    expect(row.locator(".field-progress_display [data-field=percent]")).to_have_text("100%")
    expect(row.locator(".field-run_time")).to_have_text(re.compile(r"^\d+\.\d s$"))
    expect(row.locator(".field-attempts_display")).to_have_text("1/1")
    assert admin.evaluate("window.__sameDocument") is True


@pytest.mark.parametrize("live_stack", [{"worker": False}], indirect=True)
def test_a_running_job_asked_to_stop_gets_the_cancelling_badge_live_exactly_as_a_reload_renders_it(new_page, live_stack):
    # A task that sleeps without looking at cancellation: it stays RUNNING with cancel_requested.
    runs = live_stack.var_dir / "runs"
    job_id = live_stack.shell(
        f"from tests.jobs_tasks import sleep_for\nprint(sleep_for.enqueue({str(runs)!r}, 120).id)\n"
    ).split()[-1]
    admin = new_page("admin")
    admin.goto("/admin/jobs/job/")
    listed = admin.locator(f'#result_list tbody tr:has(input.action-select[value="{job_id}"]) .job-admin-status')
    form = new_page("admin")
    form.goto(f"/admin/jobs/job/{job_id}/change/")
    shown = form.locator(".field-status_display .job-admin-status")
    colour = "(e) => getComputedStyle(e).backgroundColor"
    expect(listed).to_have_text("Ready")
    colours = {"Ready": listed.evaluate(colour)}
    for page in (admin, form):
        page.wait_for_function("document.documentElement.dataset.stomp === 'connected'")
    live_stack.start_worker()
    expect(listed).to_have_text("Running", timeout=JOB_TIMEOUT_MS)
    expect(shown).to_have_text("Running")
    colours["Running"] = listed.evaluate(colour)

    live_stack.shell(
        "from jobs.models import Job\nfrom notifications.publisher import get_publisher\n"
        f"assert Job.objects.get(pk={job_id!r}).cancel() is False\nassert get_publisher().flush(10)\n"
    )

    expect(listed).to_have_text("Cancelling")
    expect(shown).to_have_text("Cancelling")
    live = [listed.evaluate("(e) => [e.outerHTML, getComputedStyle(e).backgroundColor]"),
            shown.evaluate("(e) => [e.outerHTML, getComputedStyle(e).backgroundColor]")]
    admin.reload()
    form.reload()
    reloaded = [listed.evaluate("(e) => [e.outerHTML, getComputedStyle(e).backgroundColor]"),
                shown.evaluate("(e) => [e.outerHTML, getComputedStyle(e).backgroundColor]")]
    live_stack.procs["worker"].kill()  # the task would sleep on; nothing more to see

    assert live[0][0] == '<span class="job-admin-status job-status-cancelling">Cancelling</span>'
    assert live == reloaded
    assert live[0][1] == live[1][1] and live[0][1] not in colours.values(), (live, colours)


@pytest.mark.parametrize("live_stack", [{"worker": False}], indirect=True)
def test_the_admin_change_page_shows_the_job_log_growing_live(new_page, live_stack):
    alice = new_page("alice")
    job_id = start_debug_report(alice)
    admin = new_page("admin")
    admin.goto(f"/admin/jobs/job/{job_id}/change/")
    expect(admin.locator(".field-log_display .readonly")).to_have_text("—")
    admin.wait_for_function("document.documentElement.dataset.stomp === 'connected'")

    live_stack.start_worker()

    expect(admin.locator(".field-status_display .readonly")).to_have_text("Successful", timeout=JOB_TIMEOUT_MS)
    log = admin.locator(".field-log_display ol.job-log li")
    expect(log.last).to_contain_text("Wrote debug-report-")
    assert log.count() >= 8


def test_notify_called_in_another_process_pops_up_a_toast_and_counts_it_unread(new_page, live_stack):
    page = new_page("alice")
    page.goto("/")
    expect(page.locator("[data-live-notifications]")).to_have_attribute("data-live", "ready")
    expect(page.locator(".ln-badge")).to_be_hidden()

    live_stack.shell(
        "from django.contrib.auth import get_user_model\n"
        "from notifications.api import notify\n"
        "from notifications.publisher import get_publisher\n"
        "notify(get_user_model().objects.get(username='alice'), title='Hello from the shell',"
        " text='Sent by another process', level='warning', link='/jobs/')\n"
        "assert get_publisher().flush(10)\n"
    )

    toast = page.locator(".ln-toast")
    expect(toast).to_have_count(1)
    expect(toast.locator(".ln-title")).to_have_text("Hello from the shell")
    expect(toast.locator(".ln-text")).to_have_text("Sent by another process")
    expect(page.locator(".ln-badge")).to_have_text("1")


def test_closing_a_toast_marks_the_notification_read_in_the_database(new_page, live_stack):
    page = new_page("alice")
    page.goto("/")
    expect(page.locator("[data-live-notifications]")).to_have_attribute("data-live", "ready")
    live_stack.shell(
        "from django.contrib.auth import get_user_model\n"
        "from notifications.api import notify\n"
        "from notifications.publisher import get_publisher\n"
        "notify(get_user_model().objects.get(username='alice'), title='Read me', level='error')\n"
        "assert get_publisher().flush(10)\n"
    )
    expect(page.locator(".ln-badge")).to_have_text("1")

    page.click(".ln-toast .ln-close")

    expect(page.locator(".ln-badge")).to_be_hidden()
    out = live_stack.shell(
        "from notifications.models import Notification\n"
        "print(Notification.objects.filter(read=False).count(), Notification.objects.filter(read=True).count())\n"
    )
    assert out.split() == ["0", "1"]


def test_unread_notifications_sent_while_no_page_was_open_show_on_the_next_page_load(new_page, live_stack):
    live_stack.shell(
        "from django.contrib.auth import get_user_model\n"
        "from notifications.api import notify\n"
        "notify(get_user_model().objects.get(username='alice'), title='While you were away')\n"
    )

    page = new_page("alice")
    page.goto("/")

    expect(page.locator(".ln-badge")).to_have_text("1")
    page.click(".ln-panel > summary")
    expect(page.locator(".ln-item.ln-unread .ln-title")).to_have_text("While you were away")


def test_a_second_user_neither_sees_nor_can_subscribe_to_the_first_users_job(new_page):
    alice = new_page("alice")
    job_id = start_debug_report(alice)
    bob = new_page("bob")
    bob.goto("/")
    bob.wait_for_function("document.documentElement.dataset.stomp === 'connected'")
    # Bob's page asks for Alice's job topic with the page's own client.
    bob.evaluate(
        """async (id) => {
            const m = await import('/static/notifications/stomp-client.js');
            window.__got = []; window.__denied = [];
            m.connection().subscribe(`/topic/jobs.${id}`, (f) => window.__got.push(f.text),
                { onError: (f) => window.__denied.push(f.headers.destination) });
        }""",
        job_id,
    )

    bob.wait_for_function("window.__denied.length === 1")
    expect(alice.locator(f'[data-job-id="{job_id}"]')).to_have_attribute(
        "data-status", "SUCCESSFUL", timeout=JOB_TIMEOUT_MS
    )
    expect(alice.locator(".ln-toast")).to_have_count(1)  # Alice's own "Debug report: Successful" notification

    assert bob.evaluate("window.__denied") == [f"/topic/jobs.{job_id}"]
    assert bob.evaluate("window.__got") == []
    assert bob.locator(".ln-toast").count() == 0
    assert bob.goto(f"/jobs/{job_id}/").status == 404
    bob.goto("/jobs/")
    assert job_id not in bob.content()


@pytest.mark.parametrize("live_stack", [{"worker": False}], indirect=True)
def test_a_page_whose_server_restarted_reconnects_and_catches_up_with_a_job_that_finished_meanwhile(
    new_page, live_stack
):
    page = new_page("alice")
    job_id = start_debug_report(page)
    widget = page.locator(f'[data-job-live][data-job-id="{job_id}"]')
    expect(widget).to_have_attribute("data-live", "live")
    page.evaluate("window.__sameDocument = true")

    live_stack.stop_web()
    page.wait_for_function("document.documentElement.dataset.stomp === 'reconnecting'")
    live_stack.start_worker()
    live_stack.shell(  # the job ends while no web server runs: only a resubscription can tell the page
        "import time\n"
        "from jobs.models import Job\n"
        "for _ in range(600):\n"
        f"    if Job.objects.get(pk='{job_id}').is_final: break\n"
        "    time.sleep(0.1)\n"
    )
    live_stack.start_web()

    expect(widget).to_have_attribute("data-status", "SUCCESSFUL", timeout=JOB_TIMEOUT_MS)
    expect(widget.locator("[data-field=result]")).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True


@pytest.mark.parametrize("live_stack", [{"worker": False}], indirect=True)
def test_the_cancel_button_cancels_over_the_websocket_and_the_page_shows_it_without_a_reload(new_page):
    page = new_page("alice")
    job_id = start_debug_report(page)  # no worker: the job stays READY until cancelled
    widget = page.locator(f'[data-job-live][data-job-id="{job_id}"]')
    expect(widget).to_have_attribute("data-live", "live")
    page.evaluate("window.__sameDocument = true")

    widget.locator("[data-action=cancel]").click()

    expect(widget).to_have_attribute("data-status", "CANCELLED")
    expect(widget.locator("[data-field=status]")).to_have_text("Cancelled")
    expect(widget.locator("[data-action=cancel]")).to_be_hidden()
    assert page.evaluate("window.__sameDocument") is True


def test_without_javascript_the_job_page_shows_the_state_of_the_job_when_it_is_loaded(browser, live_stack):
    context = browser.new_context(base_url=live_stack.url, java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto("/login/")
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "alice-pass-1")
        page.click("form button[type=submit]")
        page.wait_for_url(lambda url: "/login/" not in url)
        job_id = start_debug_report(page)
        live_stack.shell(
            "import time\n"
            "from jobs.models import Job\n"
            "for _ in range(600):\n"
            f"    if Job.objects.get(pk='{job_id}').is_final: break\n"
            "    time.sleep(0.1)\n"
        )

        page.reload()

        widget = page.locator(f'[data-job-live][data-job-id="{job_id}"]')
        expect(widget.locator("[data-field=status]")).to_have_text("Successful")
        expect(widget.locator("[data-field=percent]")).to_have_text("100%")
        expect(widget.locator("[data-field=result]")).to_be_visible()
        expect(page.locator(".ln-badge")).to_have_text("1")
    finally:
        context.close()


def test_a_notification_sent_while_the_page_was_disconnected_pops_up_after_it_reconnects(new_page, live_stack):
    page = new_page("alice")
    page.goto("/")
    expect(page.locator("[data-live-notifications]")).to_have_attribute("data-live", "ready")

    live_stack.stop_web()
    page.wait_for_function("document.documentElement.dataset.stomp === 'reconnecting'")
    live_stack.shell(
        "from django.contrib.auth import get_user_model\n"
        "from notifications.api import notify\n"
        "from notifications.publisher import get_publisher\n"
        "notify(get_user_model().objects.get(username='alice'), title='Sent while you were offline')\n"
        "get_publisher().flush(10)\n"
    )
    live_stack.start_web()

    expect(page.locator(".ln-toast .ln-title")).to_have_text("Sent while you were offline", timeout=30_000)
    expect(page.locator(".ln-badge")).to_have_text("1")
