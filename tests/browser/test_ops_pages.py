"""End to end in a real headless Chromium: the admin's Overview dashboard and Workers page update
live from the overview a real worker publishes (daphne, jobworker, broker, one SQLite file)."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TIMEOUT_MS = 60_000


@pytest.mark.parametrize("live_stack", [{"worker": False}], indirect=True)
def test_the_overview_dashboard_shows_a_new_worker_and_a_failure_in_its_chart_without_a_reload(new_page, live_stack):
    admin = new_page("admin")
    admin.goto("/admin/jobs/worker/overview/")
    expect(admin.locator('[data-field="workers"] tbody')).to_have_text("No worker has run yet.")
    expect(admin.locator('[data-state="FAILED"]')).to_have_text("0")
    admin.wait_for_function("document.documentElement.dataset.stomp === 'connected'")
    admin.evaluate("window.__sameDocument = true")

    live_stack.start_worker()
    expect(admin.locator('[data-field="workers"] tbody td.worker-state-running')).to_have_count(1, timeout=TIMEOUT_MS)

    live_stack.shell("from django.utils import timezone; from jobs.models import Job; "
                     "Job.objects.create(task_path='jobs.tasks.debug_report', status='FAILED', "
                     "started_at=timezone.now(), finished_at=timezone.now())")
    expect(admin.locator('[data-state="FAILED"]')).to_have_text("1", timeout=TIMEOUT_MS)
    tallest_failed = admin.evaluate(
        "Math.max(...[...document.querySelectorAll('.ops-chart rect.ops-failed')].map(r => +r.getAttribute('height')))")
    assert tallest_failed == 110  # the only finished job of the hour: a full-height red bar
    assert admin.evaluate("window.__sameDocument") is True


@pytest.mark.parametrize("live_stack", [{"worker": False}], indirect=True)
def test_the_workers_page_announces_a_worker_started_after_it_was_loaded(new_page, live_stack):
    admin = new_page("admin")
    admin.goto("/admin/jobs/worker/")
    admin.wait_for_function("document.documentElement.dataset.stomp === 'connected'")
    live_stack.start_worker()
    banner = admin.locator("[data-ops-new-workers]")
    expect(banner).to_be_visible(timeout=TIMEOUT_MS)
    expect(banner).to_contain_text("1 worker started since this page was loaded.")
    admin.reload()
    expect(admin.locator('#result_list [data-field="state"]')).to_have_text("Running")
