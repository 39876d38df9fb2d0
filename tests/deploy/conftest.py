"""Fixtures of the scale-out tests: deploy/ run for real (nginx, several daphne processes and
workers, PostgreSQL, RabbitMQ or ActiveMQ) and a headless Chromium that reaches it through nginx."""
from __future__ import annotations

import os
import time

import pytest

from tests.browser.conftest import browser  # noqa: F401 - the same Chromium fixture, package-scoped here
from tests.conftest import service_missing

from .deployment import USERS, Deployment, drop_postgres_database, nginx_missing, postgres_database

PASSWORDS = {name: password for name, password, _ in USERS}
# fail_timeout of deploy/nginx/live-jobs.conf's upstream servers.
NGINX_FAIL_TIMEOUT = 5.0


def postgres_base_url() -> str:
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        service_missing("TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/postgres)")
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=5).close()
    except Exception as exc:  # noqa: BLE001 - any failure to connect means the service is missing
        service_missing(f"PostgreSQL not reachable at TEST_POSTGRES_URL: {exc}")
    return url


@pytest.fixture(scope="module", params=["rabbitmq", "activemq"])
def deployment(request, tmp_path_factory):
    """nginx with deploy/'s configuration in front of 3 daphne processes, 3 workers, a new
    PostgreSQL database and the broker of the parameter (RabbitMQ's STOMP plugin at
    STOMP_RABBITMQ_URL, or an ActiveMQ of this session), each started as its systemd unit says."""
    why = nginx_missing()
    if why is not None:
        service_missing(why)
    broker_url = request.getfixturevalue(f"{request.param}_stomp_url")
    base_db = postgres_base_url()
    database = postgres_database(base_db, "deploy")
    deployment = Deployment(tmp_path_factory.mktemp(f"deploy-{request.param}"), database, broker_url)
    try:
        deployment.prepare().start()
        yield deployment
    finally:
        deployment.stop()
        print(deployment.logs())  # shown when a test failed
        drop_postgres_database(base_db, database)


def log_in(browser, deployment, username: str):
    """A fresh browser context on the deployment's https:// address (its certificate is the
    run's own) and a page of it logged in as ``username``."""
    context = browser.new_context(base_url=deployment.url, ignore_https_errors=True)
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto("/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORDS[username])
    page.click("form button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
    return context, page


@pytest.fixture
def new_page(browser, deployment):
    """new_page(user) -> a page logged in as ``user`` (log_in), parked on about:blank so it
    holds no socket until the test opens a page."""
    contexts = []

    def make(username: str):
        context, page = log_in(browser, deployment, username)
        contexts.append(context)
        page.goto("about:blank")
        return page

    yield make
    for context in contexts:
        context.close()
    # The processes a test killed come back, as systemd's Restart=on-failure brings them back,
    # and nginx tries a web process it saw fail again after the upstream's fail_timeout (5 s).
    if deployment.restart_dead():
        time.sleep(NGINX_FAIL_TIMEOUT + 1)
