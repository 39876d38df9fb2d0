"""In Chromium: an open page shows every notification created while the web process had lost the
broker, not only the newest few (issue 8, defect 4).

No worker runs, so the outbox cannot deliver those notifications late as live events: the page
has to learn about them from the resync its subscription gets when the server reconnects.
"""
from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FORTY = """
from django.contrib.auth import get_user_model
from notifications.api import notify
alice = get_user_model().objects.get(username="alice")
for n in range(40):
    notify(alice, title=f"While away {n}")
"""


@pytest.fixture
def restartable_broker(embedded_broker):
    """The embedded broker, which this test stops and starts again on the same port."""
    if os.environ.get("E2E_BROKER", "embedded") != "embedded":
        pytest.skip("needs a broker the test can stop and start: the embedded one (runs with E2E_BROKER unset)")
    return embedded_broker


@pytest.mark.parametrize("live_stack", [{"worker": False}], indirect=True)
def test_every_notification_created_while_the_broker_was_down_is_listed_after_it_comes_back(
    restartable_broker, new_page, live_stack
):
    from notifications.broker import BrokerConfig, BrokerThread

    page = new_page("alice")
    page.goto("/")
    expect(page.locator("[data-live-notifications]")).to_have_attribute("data-live", "ready")
    # The web process's hub is connected and a tick of its timers has seen it up.
    page.wait_for_timeout(1500)

    port = restartable_broker.port
    restartable_broker.stop()
    broker = None
    try:
        live_stack.shell(FORTY)
        broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=port, close_timeout=2.0)).start()

        items = page.locator(".ln-list .ln-item", has_text="While away")
        expect(items).to_have_count(40, timeout=30_000)
        expect(page.locator(".ln-list .ln-item").first).to_contain_text("While away 39")  # newest on top
        expect(page.locator(".ln-toast")).to_have_count(5)  # the newest few pop up, all are listed
        expect(page.locator(".ln-badge")).to_have_text("40")
    finally:
        if broker is not None:
            broker.stop()
