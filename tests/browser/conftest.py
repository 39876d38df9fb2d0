"""Fixtures for the end-to-end tests: a real headless Chromium (Playwright) against the real stack."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import service_missing

from .stack import USERS, LiveStack, prepare_database

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PASSWORDS = {name: password for name, password, _ in USERS}


def log_in(page, username: str) -> None:
    """Log in through the site's login form as one of the stack's USERS (the page's context has the
    stack's base_url); returns once the form has sent the browser on."""
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORDS[username])
    page.click("main form button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)


def chromium_path() -> str | None:
    path = os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"
    return path if Path(path).exists() else shutil.which("chromium")


# Package scope: Playwright's sync API keeps an event loop marked as running in this thread
# while it is open, which would break every asyncio test collected after the browser tests.
@pytest.fixture(scope="package")
def browser():
    path = chromium_path()
    if path is None:
        service_missing("Chromium not found (install Debian's chromium or set CHROMIUM_PATH)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """A migrated database with alice, bob (plain users) and admin (superuser), copied by each stack."""
    return prepare_database(tmp_path_factory.mktemp("template-db"))


@pytest.fixture
def stack_broker_url(request) -> str:
    """The embedded broker (the default deployment); E2E_BROKER=rabbitmq, activemq, stompserver
    or coilmq runs the same tests on that broker, with its plain stomp://127.0.0.1:PORT URL
    (RabbitMQ's with its login) and no other setting."""
    chosen = os.environ.get("E2E_BROKER", "embedded")
    if chosen in {"rabbitmq", "activemq", "stompserver", "coilmq"}:
        return request.getfixturevalue(f"{chosen}_stomp_url")
    if chosen != "embedded":
        raise pytest.UsageError(f"E2E_BROKER={chosen!r}: expected embedded, rabbitmq, activemq, stompserver or coilmq")
    try:
        return request.getfixturevalue("embedded_broker").url
    except pytest.FixtureLookupError:
        return request.getfixturevalue("rabbitmq_stomp_url")


@pytest.fixture
def live_stack(request, tmp_path, template_db, stack_broker_url):
    """The running product. Parametrize indirectly with {"worker": False} to start the worker later."""
    options = getattr(request, "param", {})
    stack = LiveStack(
        var_dir=tmp_path / "var", broker_url=stack_broker_url, template_db=template_db,
        worker=options.get("worker", True),
    ).start()
    try:
        yield stack
    finally:
        stack.stop()
        print(stack.logs())  # pytest shows it only when the test failed


@pytest.fixture
def new_page(browser, live_stack):
    """new_page(user) -> a Playwright page of a fresh browser context, logged in as `user`."""
    contexts = []

    def make(username: str | None = None):
        context = browser.new_context(base_url=live_stack.url, accept_downloads=True)
        context.set_default_timeout(20_000)
        contexts.append(context)
        page = context.new_page()
        if username is not None:
            log_in(page, username)
        return page

    yield make
    for context in contexts:
        context.close()
