"""In Chromium: the test app (tests/liveapp, the README's example) live in the admin and on its page.

The stack runs with tests.liveapp.settings (the e2e settings plus the app and its page).
"""
from __future__ import annotations

import re
import shutil

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import log_in
from tests.browser.stack import LiveStack, environment, manage

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SETTINGS = "tests.liveapp.settings"


class ShopStack(LiveStack):
    """The product with tests.liveapp installed."""

    @property
    def env(self) -> dict[str, str]:
        return {**environment(self.var_dir, self.broker_url), "DJANGO_SETTINGS_MODULE": SETTINGS}

    def start(self) -> ShopStack:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.template_db, self.var_dir / "db.sqlite3")
        manage(self.env, "migrate", "shop", "--noinput")
        self.template_db = None  # copied and migrated: LiveStack.start must not copy it again
        return super().start()


@pytest.fixture
def shop_stack(tmp_path, template_db, stack_broker_url):
    stack = ShopStack(var_dir=tmp_path / "var", broker_url=stack_broker_url, template_db=template_db, worker=False)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        print(stack.logs())


@pytest.fixture
def login(browser, shop_stack):
    contexts = []

    def make(username: str):
        context = browser.new_context(base_url=shop_stack.url)
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        log_in(page, username)
        return page

    yield make
    for context in contexts:
        context.close()


def _order(stack: ShopStack, customer: str = "alice") -> int:
    code = (
        "from django.contrib.auth import get_user_model\n"
        "from tests.liveapp.models import Order\n"
        f"print(Order.objects.create(customer=get_user_model().objects.get(username={customer!r})).pk)\n"
    )
    return int(stack.shell(code).split()[-1])


def _set_status(stack: ShopStack, pk: int, status: str) -> None:
    stack.shell(
        "from notifications.publisher import get_publisher\n"
        "from tests.liveapp.models import Order\n"
        f"order = Order.objects.get(pk={pk}); order.status = {status!r}; order.save()\n"
        "assert get_publisher().flush(10)\n"
    )


def test_the_admin_change_list_of_the_apps_own_model_updates_live(shop_stack, login):
    first, second = _order(shop_stack), _order(shop_stack)
    admin = login("admin")
    admin.goto("/admin/shop/order/")
    row = admin.locator(f'#result_list tbody tr:has(input.action-select[value="{second}"])')
    expect(row.locator(".field-status")).to_have_text("new")
    expect(admin.locator("#result_list")).to_have_attribute("data-live", "live")
    expect(admin.locator(".live-admin-state")).to_have_text("This list updates live.")
    admin.evaluate("window.__sameDocument = true")
    admin.locator(f'input.action-select[value="{first}"]').check()  # a selection survives updates

    _set_status(shop_stack, second, "shipped")

    expect(row.locator(".field-status")).to_have_text("shipped")
    expect(row).to_have_class(re.compile(r"\blive-admin-updated\b"))
    assert admin.evaluate("window.__sameDocument") is True
    expect(admin.locator(f'input.action-select[value="{first}"]')).to_be_checked()
    expect(admin.locator(f'#result_list tbody tr:has(input.action-select[value="{first}"]) .field-status')).to_have_text("new")


def test_an_order_created_elsewhere_is_announced_on_the_change_list(shop_stack, login):
    _order(shop_stack)
    admin = login("admin")
    admin.goto("/admin/shop/order/")
    expect(admin.locator("#result_list")).to_have_attribute("data-live", "live")

    _set_status(shop_stack, _order(shop_stack), "new")

    banner = admin.locator("[data-live-admin-banner]")
    expect(banner).to_contain_text("1 other object changed or added")
    # Styled as the jobs admin's banner: the admin's info message colour (base.css, light theme).
    assert banner.evaluate("(e) => getComputedStyle(e).backgroundColor") == "rgb(204, 239, 255)"


def test_the_page_api_shows_the_snapshot_then_sends_and_follows_the_change(shop_stack, login):
    pk = _order(shop_stack)
    page = login("alice")
    page.goto(f"/orders/{pk}/")
    expect(page.locator("#status")).to_have_text("new")

    page.click("#cancel")

    expect(page.locator("#status")).to_have_text("cancelled")
    assert "cancelled" in shop_stack.shell(
        f"from tests.liveapp.models import Order\nprint(Order.objects.get(pk={pk}).status)\n"
    )


def test_the_page_api_shows_nothing_of_another_customers_order(shop_stack, login):
    pk = _order(shop_stack, customer="bob")
    page = login("alice")
    page.goto(f"/orders/{pk}/")
    page.wait_for_function("document.documentElement.dataset.stomp === 'connected'")
    page.wait_for_timeout(1000)
    expect(page.locator("#status")).to_have_text("…")


# What a person sees of the toasts and the bell's list; the same in the jobs admin and on a user's
# LiveModelAdmin page, in the admin's dark theme too (where the admin's colours replace the design's).
LOOK = """(names) => {
  const look = (e) => { const s = getComputedStyle(e);
    return [s.color, s.backgroundColor, s.fontSize, s.fontWeight, s.textTransform, s.textAlign, s.letterSpacing,
            s.borderBottomWidth, s.textDecorationLine]; };
  return Object.fromEntries(names.map((n) => [n, look(document.querySelector(n))]));
}"""
PARTS = [".ln-toast", ".ln-toast .ln-title", ".ln-toast .ln-text", ".ln-toast a.ln-link", ".ln-dropdown",
         ".ln-dropdown .ln-head strong", ".ln-dropdown .ln-list a", ".ln-dropdown .ln-mark-all button"]


def test_the_toasts_and_the_bell_on_the_apps_live_admin_look_exactly_as_on_the_jobs_admin(shop_stack, login):
    _order(shop_stack)
    shop, jobs = login("admin"), login("admin")
    for page, url in ((shop, "/admin/shop/order/"), (jobs, "/admin/jobs/job/")):
        page.emulate_media(color_scheme="dark")
        page.goto(url)
        expect(page.locator("[data-live-notifications]")).to_have_attribute("data-live", "ready")

    shop_stack.shell(
        "from django.contrib.auth import get_user_model\n"
        "from notifications.api import notify\n"
        "from notifications.publisher import get_publisher\n"
        "notify(get_user_model().objects.get(username='admin'), title='Order 1 shipped', text='On its way',"
        " level='success', link='/orders/1/')\n"
        "assert get_publisher().flush(10)\n"
    )

    looks = []
    for page in (shop, jobs):
        expect(page.locator(".ln-toast")).to_have_count(1)
        page.locator(".ln-panel > summary").click()
        expect(page.locator(".ln-dropdown .ln-list a")).to_have_count(1)
        looks.append(page.evaluate(LOOK, PARTS))
    # The admin's own dark colours (its --body-bg, #121212), not the design system's: admin.css is there.
    assert (looks[0][".ln-toast"][1], looks[0][".ln-dropdown"][1]) == ("rgb(18, 18, 18)", "rgb(18, 18, 18)")
    assert looks[0][".ln-toast .ln-title"][4:6] == ["none", "left"]
    assert looks[0] == looks[1]
