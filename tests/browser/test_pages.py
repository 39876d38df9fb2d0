"""The pages look finished and say the same thing everywhere, checked in a real Chromium.

One stack for the module (daphne, the embedded broker, no worker: the seeded jobs of
tests/browser/catalogue.py keep their states); each test changes only jobs and notifications
it creates itself. axe-core (npm, tests/browser/js) checks every page of the catalogue in light
and dark. Each of the other tests is one defect of issue 10 that it would have caught.
"""
from __future__ import annotations

import colorsys
import json
import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.conftest import service_missing

from .catalogue import PAGES, open_page, seed
from .conftest import log_in
from .stack import LiveStack

pytestmark = [pytest.mark.browser, pytest.mark.slow]

AXE = Path(__file__).parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
# What the issue asks for: no violation of these impacts (minor and moderate ones are reported
# by the screenshots' reviewer, not failed on).
BLOCKING_IMPACTS = {"serious", "critical"}
# WCAG 2 AA for normal text.
MIN_CONTRAST = 4.5


@pytest.fixture(scope="module")
def seeded(request, tmp_path_factory, template_db):
    """(stack, ids): the product with a job in every state, and notifications for alice."""
    chosen = os.environ.get("E2E_BROKER", "embedded")
    if chosen != "embedded":
        pytest.skip("the page checks do not depend on the broker: they run once, on the embedded one")
    from notifications.broker import BrokerConfig, BrokerThread

    with BrokerThread(BrokerConfig(host="127.0.0.1", port=0, close_timeout=2.0)) as broker:
        stack = LiveStack(
            var_dir=tmp_path_factory.mktemp("pages") / "var", broker_url=broker.url, template_db=template_db,
            worker=False,
        ).start()
        try:
            yield stack, seed(stack)
        finally:
            stack.stop()
            print(stack.logs())


@pytest.fixture
def browse(browser, seeded):
    """browse(user, width=1280, scheme="light") -> a page of a new browser context, logged in."""
    stack, _ = seeded
    contexts = []

    def make(user: str | None, width: int = 1280, scheme: str = "light"):
        context = browser.new_context(
            base_url=stack.url, viewport={"width": width, "height": 800}, color_scheme=scheme, reduced_motion="reduce"
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        if user is not None:
            log_in(page, user)
        return page

    yield make
    for context in contexts:
        context.close()


def connected(page) -> None:
    page.wait_for_function("document.documentElement.dataset.stomp === 'connected'")


def shell(stack: LiveStack, code: str) -> str:
    return stack.shell("from notifications.publisher import get_publisher\n" + code + "\nassert get_publisher().flush(10)\n")


def new_job(stack: LiveStack, owner: str = "alice", **state) -> str:
    """A job of `owner` in the given state (no worker touches it); returns its id."""
    out = stack.shell(
        "from django.contrib.auth import get_user_model\n"
        "from django.utils import timezone\n"
        "from jobs.api import job_options\n"
        "from jobs.models import Job\n"
        "from jobs.tasks import debug_report\n"
        f"with job_options(owner=get_user_model().objects.get(username={owner!r})):\n"
        "    result = debug_report.enqueue()\n"
        f"state = {state!r}\n"
        "if state.get('status') in ('RUNNING', 'SUCCESSFUL', 'FAILED', 'CANCELLED'):\n"
        "    state.update(started_at=timezone.now(), heartbeat_at=timezone.now(), attempts=1)\n"
        "Job.objects.filter(pk=result.id).update(**state)\n"
        "print(result.id)\n"
    )
    return out.strip().splitlines()[-1]


def change_job(stack: LiveStack, job_id: str, **changes) -> None:
    """Write `changes` to the job (one seq further) and publish its event, as the worker would."""
    shell(
        stack,
        "from django.db.models import F\n"
        "from django.utils import timezone\n"
        "from jobs.events import publish_job\n"
        "from jobs.models import Job\n"
        f"changes = {changes!r}\n"
        "if changes.get('status') in ('SUCCESSFUL', 'FAILED', 'CANCELLED'):\n"
        "    changes['finished_at'] = timezone.now()\n"
        f"Job.objects.filter(pk={job_id!r}).update(seq=F('seq') + 1, **changes)\n"
        f"publish_job(Job.objects.get(pk={job_id!r}))\n",
    )


def notify(stack: LiveStack, user: str, **fields) -> None:
    shell(
        stack,
        "from django.contrib.auth import get_user_model\n"
        "from notifications.api import notify\n"
        f"notify(get_user_model().objects.get(username={user!r}), **{fields!r})\n",
    )


# ------------------------------------------------------------------ colours


def rgb(css: str) -> tuple[float, float, float, float]:
    """'rgb(1, 2, 3)' or 'rgba(1, 2, 3, 0.5)' (Chromium's computed style) -> channels 0..1 and alpha."""
    m = re.fullmatch(r"rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?\)", css.strip())
    assert m, f"not a computed rgb() colour: {css!r}"
    r, g, b = (float(m.group(i)) / 255 for i in (1, 2, 3))
    return r, g, b, float(m.group(4)) if m.group(4) is not None else 1.0


def luminance(colour: tuple[float, ...]) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = colour[:3]
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a: str, b: str) -> float:
    la, lb = sorted((luminance(rgb(a)), luminance(rgb(b))), reverse=True)
    return (la + 0.05) / (lb + 0.05)


# The first opaque background colour of the element or its ancestors.
BACKGROUND_OF = """(el) => {
  for (let n = el; n; n = n.parentElement) {
    const bg = getComputedStyle(n).backgroundColor;
    if (!/rgba\\(.*,\\s*0\\)$/.test(bg) && bg !== 'transparent') return bg;
  }
  return getComputedStyle(document.documentElement).backgroundColor;
}"""


# ------------------------------------------------------------------ axe-core


def axe_violations(page) -> list[dict]:
    if not AXE.exists():
        service_missing("axe-core is not installed: npm ci --prefix tests/browser/js (scripts/test does it)")
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "async () => { const r = await axe.run(document, { resultTypes: ['violations'] });"
        " return r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' ') + ': ' + (n.failureSummary || '').split('\\n').slice(1, 2).join(''))"
        ".slice(0, 5) })); }"
    )
    return [v for v in result if v["impact"] in BLOCKING_IMPACTS]


AXE_PAGES = [p for p in PAGES if p.name != "not-found"]  # the stack runs with DEBUG on: Django's own 404


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("spec", AXE_PAGES, ids=[p.name for p in AXE_PAGES])
def test_axe_core_finds_no_serious_or_critical_violation_on_the_page(browse, seeded, spec, scheme):
    _, ids = seeded
    page = browse(spec.user, scheme=scheme)

    open_page(page, spec, ids)

    violations = axe_violations(page)
    assert violations == [], json.dumps(violations, indent=1)


# ------------------------------------------------------------------ the admin


def test_a_toast_in_the_admin_keeps_its_own_look_and_its_download_link_is_readable(browse, seeded):
    stack, ids = seeded
    page = browse("admin")
    page.goto("/admin/jobs/job/")
    expect(page.locator("[data-live-notifications]")).to_have_attribute("data-live", "ready")

    notify(stack, "admin", title="Debug report: Successful", text="Report ready", level="success",
           link=f"/jobs/{ids['done']}/download/")

    toast = page.locator(".ln-toast")
    expect(toast).to_have_count(1)
    link = toast.locator("a.ln-link")
    expect(link).to_have_text("Download")
    colour = link.evaluate("(a) => getComputedStyle(a).color")
    background = link.evaluate(BACKGROUND_OF)
    assert contrast(colour, background) >= MIN_CONTRAST, (colour, background)
    title = toast.locator(".ln-title")
    assert title.evaluate("(e) => getComputedStyle(e).textTransform") == "none"
    assert title.evaluate("(e) => getComputedStyle(e).textAlign") in {"left", "start"}


def test_the_admins_result_link_downloads_for_the_owner_and_staff_and_is_not_found_for_others(browse, seeded):
    _, ids = seeded
    admin = browse("admin")
    admin.goto(f"/admin/jobs/job/{ids['done']}/change/")
    href = admin.locator(".field-result_link a").get_attribute("href")

    alice, bob = browse("alice"), browse("bob")

    assert href == f"/jobs/{ids['done']}/download/"
    assert admin.request.get(href).status == 200
    assert alice.request.get(href).status == 200
    assert bob.request.get(href).status == 404


def test_the_job_page_and_the_admin_show_the_same_word_and_percentage_at_the_same_moment(browse, seeded):
    stack, _ = seeded
    job_id = new_job(stack, status="RUNNING", progress_done=3, progress_total=8, message="Checking settings…")
    page, admin = browse("alice"), browse("admin")
    page.goto(f"/jobs/{job_id}/")
    admin.goto("/admin/jobs/job/")
    widget = page.locator(f'[data-job-live][data-job-id="{job_id}"]')
    row = admin.locator(f'#result_list tbody tr:has(input.action-select[value="{job_id}"])')

    def shown() -> tuple[tuple[str, str], tuple[str, str]]:
        return (
            (widget.locator("[data-field=status]").inner_text(), widget.locator("[data-field=percent]").inner_text()),
            (row.locator(".field-status_display").inner_text(), row.locator("[data-field=percent]").inner_text()),
        )

    at_load = shown()
    connected(page)
    connected(admin)
    change_job(stack, job_id, progress_done=2, progress_total=3, cancel_requested=True)  # 66.7 %
    expect(widget.locator("[data-field=percent]")).to_have_text("66%")
    expect(row.locator("[data-field=percent]")).to_have_text("66%")

    assert at_load == (("Running", "37%"), ("Running", "37%"))
    assert shown() == (("Cancelling", "66%"), ("Cancelling", "66%"))


def test_the_admin_change_list_fits_1280_px_without_horizontal_scrolling(browse, seeded):
    page = browse("admin", width=1280)
    page.goto("/admin/jobs/job/")

    overflow = page.evaluate(
        "() => { const r = document.querySelector('#changelist .results');"
        " return [document.documentElement.scrollWidth - document.documentElement.clientWidth,"
        " r.scrollWidth - r.clientWidth]; }"
    )

    assert overflow[0] <= 0 and overflow[1] <= 0, f"overflow of the page, of the table: {overflow} px"


def test_running_and_successful_are_different_colours_in_the_admin_change_list(browse, seeded):
    _, ids = seeded
    page = browse("admin")
    page.goto("/admin/jobs/job/")

    def badge(job_id):
        return page.locator(f'#result_list tr:has(input.action-select[value="{job_id}"]) .field-status_display span')

    running, successful = badge(ids["running"]), badge(ids["done"])

    def hue_and_background(badge) -> tuple[float, str]:
        background = badge.evaluate("(e) => getComputedStyle(e).backgroundColor")
        r, g, b, alpha = rgb(background)
        assert alpha > 0, "the state has no background of its own"
        return colorsys.rgb_to_hls(r, g, b)[0] * 360, background

    (hue_a, bg_a), (hue_b, bg_b) = hue_and_background(running), hue_and_background(successful)

    distance = min(abs(hue_a - hue_b), 360 - abs(hue_a - hue_b))
    assert distance >= 45, f"Running {bg_a} and Successful {bg_b} are {distance:.0f}° apart"
    assert (running.inner_text(), successful.inner_text()) == ("Running", "Successful")


def test_the_admin_page_of_a_job_stops_saying_it_follows_the_job_once_it_ended(browse, seeded):
    stack, _ = seeded
    job_id = new_job(stack, status="RUNNING", progress_done=1, progress_total=8, message="Listing installed packages…")
    admin = browse("admin")
    admin.goto(f"/admin/jobs/job/{job_id}/change/")
    note = admin.get_by_text("This page follows the job live.")
    expect(note).to_be_visible()
    connected(admin)

    change_job(stack, job_id, status="SUCCESSFUL", progress_done=8, message="Report ready")

    expect(admin.locator(".field-status_display .readonly")).to_have_text("Successful")
    expect(note).to_be_hidden()


# ------------------------------------------------------------------ the job pages


def test_the_job_page_stops_saying_it_follows_the_job_once_it_ended(browse, seeded):
    page = browse("alice")
    page.goto("/jobs/debug-report/")
    page.click("main form button[type=submit]")  # no worker: the job waits, READY
    page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    widget = page.locator("[data-job-live]")
    follow = widget.locator(".job-follow")
    connected(page)
    expect(follow).to_be_visible()
    expect(widget).to_have_attribute("data-live", "live")

    widget.locator("[data-action=cancel]").click()

    expect(widget).to_have_attribute("data-status", "CANCELLED")
    expect(follow).to_be_hidden()
    expect(page.get_by_text(re.compile("follows it live|follows the job live"))).to_have_count(0)


def test_a_cancelled_job_says_where_it_stopped_instead_of_its_last_running_message(browse, seeded):
    stack, ids = seeded
    job_id = new_job(stack, status="RUNNING", progress_done=1, progress_total=8, message="Listing installed packages…")
    page = browse("alice")
    page.goto(f"/jobs/{job_id}/")
    message = page.locator("[data-job-live] [data-field=message]")
    expect(message).to_have_text("Listing installed packages…")
    connected(page)

    change_job(stack, job_id, status="CANCELLED", error_type="jobs.exceptions.JobCancelled",
               error_message="Cancelled while running.")

    expect(page.locator("[data-job-live] [data-field=status]")).to_have_text("Cancelled")
    expect(message).to_have_text("Stopped during: Listing installed packages.")
    page.goto(f"/jobs/{ids['cancelled']}/")  # and as the server renders it
    expect(message).to_have_text("Stopped during: Listing installed packages.")


def test_a_job_that_ends_is_announced_once_and_its_progress_steps_are_not(browse, seeded):
    stack, _ = seeded
    job_id = new_job(stack, status="RUNNING", progress_done=1, progress_total=8, message="Listing installed packages…")
    page = browse("alice")
    page.goto(f"/jobs/{job_id}/")
    widget = page.locator("[data-job-live]")
    announcer = widget.locator("[data-field=announce]")
    connected(page)
    expect(widget).to_have_attribute("data-live", "live")

    change_job(stack, job_id, progress_done=2, message="Checking settings…")
    expect(widget.locator("[data-field=percent]")).to_have_text("25%")
    after_a_step = announcer.inner_text()
    change_job(stack, job_id, status="SUCCESSFUL", progress_done=8, message="Report ready")
    expect(widget).to_have_attribute("data-status", "SUCCESSFUL")

    assert after_a_step == ""
    expect(announcer).to_have_text("Debug report: Successful. Report ready")
    assert announcer.get_attribute("aria-live") == "polite"
    live_regions = page.locator("main [aria-live]")
    assert live_regions.count() == 1  # the log, the bar and the percentage are not live regions


def test_the_job_page_has_styled_facts_a_styled_cancel_button_and_an_empty_state_for_the_log(browse, seeded):
    _, ids = seeded
    page = browse("alice")
    page.goto(f"/jobs/{ids['starting']}/")

    facts = page.locator("dl.job-facts")
    cancel = page.locator("[data-action=cancel]")

    assert facts.evaluate("(e) => getComputedStyle(e).display") == "grid"
    assert page.locator("dl.job-facts dd").first.evaluate("(e) => getComputedStyle(e).marginLeft") == "0px"
    assert cancel.evaluate("(e) => getComputedStyle(e).appearance") == "none"
    assert float(cancel.evaluate("(e) => parseFloat(getComputedStyle(e).borderTopLeftRadius)")) >= 4
    expect(page.locator(".job-log")).to_be_hidden()
    expect(page.locator(".job-log-empty")).to_be_visible()
    expect(page.locator(".job-log-empty")).to_contain_text("No messages yet")


def test_the_all_jobs_table_is_styled_with_left_aligned_headers_row_lines_and_compact_rows(browse, seeded):
    page = browse("admin")
    page.goto("/jobs/")
    table = page.locator("table.jobs-table")
    expect(page.locator("h1")).to_have_text("All jobs")

    aligns = table.locator("thead th").evaluate_all("(ths) => ths.map(th => getComputedStyle(th).textAlign)")
    line = table.locator("tbody td").first.evaluate("(td) => getComputedStyle(td).borderBottomWidth")
    heights = table.locator("tbody tr").evaluate_all("(trs) => trs.map(tr => tr.getBoundingClientRect().height)")
    start = page.locator(".ui-page-head button[type=submit]")

    assert aligns[:-1] == ["left"] * (len(aligns) - 1) and aligns[-1] == "right"  # run time: a number
    assert line == "1px"
    assert max(heights) <= 90, heights  # one job, one line of state and a thin bar (+ a long name)
    assert start.evaluate("(e) => getComputedStyle(e).appearance") == "none"


def test_the_home_page_links_to_the_jobs_list_and_has_no_download_button_per_job(browse, seeded):
    page = browse("alice")
    page.goto("/")

    expect(page.locator("header nav a[href='/jobs/']")).to_have_text("Jobs")
    expect(page.locator(".recent-jobs a[href='/jobs/']")).to_be_visible()
    assert page.locator(".recent-job").count() == 5
    assert page.locator(".recent-jobs [data-field=result]").count() == 0


@pytest.mark.parametrize("user", ["alice", "admin"])
@pytest.mark.parametrize("path", ["/", "/jobs/"])
def test_the_header_stays_on_one_line_at_390_px(browse, seeded, user, path):
    page = browse(user, width=390)
    page.goto(path)
    connected(page)

    lines = page.locator("body > header a, body > header button, body > header summary").evaluate_all(
        "(els) => els.filter(e => e.checkVisibility()).map(e => [e.textContent.trim(), e.getClientRects().length,"
        " Math.round(e.getBoundingClientRect().height)])"
    )
    header = page.locator("body > header").bounding_box()

    assert [(text, rects) for text, rects, _ in lines if rects != 1] == []
    assert all(height <= 32 for _, _, height in lines), lines
    assert header["height"] <= 56, header
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


# ------------------------------------------------------------------ notifications


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("user, path", [("alice", "/jobs/"), ("admin", "/admin/jobs/job/")])
def test_the_open_notifications_dropdown_lies_inside_the_window(browse, seeded, user, path, width):
    page = browse(user, width=width)
    page.goto(path)
    page.click(".ln-panel > summary")
    dropdown = page.locator(".ln-dropdown")
    expect(dropdown).to_be_visible()

    box = dropdown.bounding_box()

    assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
    assert box["width"] >= min(320, width - 40), box


def test_a_toast_closes_from_the_keyboard_and_is_marked_read(browse, seeded):
    stack, _ = seeded
    page = browse("bob")
    page.goto("/")
    expect(page.locator("[data-live-notifications]")).to_have_attribute("data-live", "ready")
    notify(stack, "bob", title="Please look", level="warning")
    toast = page.locator(".ln-toast")
    expect(toast).to_have_count(1)

    toast.locator(".ln-close").focus()
    page.keyboard.press("Escape")

    expect(toast).to_have_count(0)
    expect(page.locator(".ln-badge")).to_be_hidden()


# ------------------------------------------------------------------ the screenshot command


def test_the_screenshot_command_writes_each_page_light_and_dark_at_both_widths(browser, seeded, tmp_path):
    from .screenshots import take

    stack, ids = seeded

    files = take(stack, ids, tmp_path, only={"login"}, browser=browser)

    assert sorted(f.name for f in files) == [
        "login-1280-dark.png", "login-1280-light.png", "login-390-dark.png", "login-390-light.png",
    ]
    for f in files:
        head = f.read_bytes()[:24]
        width = int.from_bytes(head[16:20], "big")
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        assert width == int(f.name.split("-")[1])
    assert "login-390-dark.png" in (tmp_path / "index.html").read_text()
