"""Prometheus metrics: who may scrape, what the web endpoint reads from the database and this
process, and a real worker process scraped during a run, its counters checked against the rows."""
from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from jobs import metrics
from jobs.models import Job, JobStatus, WorkerState
from jobs.models import Worker as WorkerRow
from tests.integration.test_worker_processes import (  # noqa: F401  (fixtures)
    base_env,
    manage,
    migrated_sqlite,
    sqlite_db,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.django_db

TOKEN = "a-long-enough-metrics-token-1234"


@pytest.fixture(autouse=True)
def offline(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9"}


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, (label, value) pairs...): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


def scrape(client: Client | None = None, **headers) -> tuple[int, str]:
    response = (client or Client()).get("/ops/metrics", **headers)
    return response.status_code, response.content.decode()


# Access -----------------------------------------------------------------------------------------


def test_metrics_are_off_in_production_without_a_token_or_an_address_list(settings):
    settings.DEBUG = False
    before = metrics.REGISTRY.get_sample_value("jobs_metrics_refused_total")
    status, body = scrape()
    assert (status, body) == (403, "Metrics: forbidden (JOBS['METRICS_TOKEN'] or JOBS['METRICS_ALLOWED_IPS']).\n")
    assert metrics.REGISTRY.get_sample_value("jobs_metrics_refused_total") == before + 1


def test_loopback_may_scrape_while_debug_is_on(settings):
    settings.DEBUG = True
    assert scrape()[0] == 200


def test_the_bearer_token_opens_the_metrics_and_a_wrong_one_does_not(settings):
    settings.DEBUG = False
    settings.JOBS = {"METRICS_TOKEN": TOKEN}
    assert scrape(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")[0] == 200
    assert scrape(HTTP_AUTHORIZATION="Bearer guessed")[0] == 403


def test_an_address_list_with_networks_decides_who_may_scrape(settings):
    settings.DEBUG = True  # the list replaces the loopback default
    settings.JOBS = {"METRICS_ALLOWED_IPS": ["10.0.0.0/8", "192.0.2.7"]}
    assert scrape(REMOTE_ADDR="10.1.2.3")[0] == 200
    assert scrape(REMOTE_ADDR="192.0.2.7")[0] == 200
    assert scrape(REMOTE_ADDR="192.0.2.8")[0] == 403
    assert scrape(REMOTE_ADDR="127.0.0.1")[0] == 403


def test_a_bad_metrics_setting_is_the_system_check_error_jobs_e103(settings):
    from jobs.ops_checks import check_operations_settings

    settings.JOBS = {"METRICS_TOKEN": "short", "METRICS_ALLOWED_IPS": ["10.0.0.0/8", "not-an-address"]}
    ids = [e.id for e in check_operations_settings()]
    messages = " ".join(e.msg for e in check_operations_settings())
    assert ids == ["jobs.E103", "jobs.E103"] and "'not-an-address'" in messages


# What the web endpoint says ------------------------------------------------------------------------


def test_the_web_endpoint_reads_queue_depth_states_and_workers_from_the_database(settings):
    from datetime import timedelta

    from django.utils import timezone

    from tests.jobs_tasks import add, add_report

    settings.DEBUG = True
    before = metrics.REGISTRY.get_sample_value("jobs_enqueued_total", {"task": "tests.jobs_tasks.add_report",
                                                                       "queue": "reports"}) or 0
    for n in range(3):
        add_report.enqueue(n, n)
    add.enqueue(1, 1)
    Job.objects.filter(task_path="tests.jobs_tasks.add").update(run_after=timezone.now() - timedelta(seconds=90))
    Job.objects.create(task_path="tests.jobs_tasks.add", status=JobStatus.FAILED)
    WorkerRow.objects.create(id="w-alive", state=WorkerState.RUNNING, heartbeat_at=timezone.now())
    WorkerRow.objects.create(id="w-gone", state=WorkerState.STOPPED)
    status, body = scrape()
    assert status == 200
    s = samples(body)
    assert s[("jobs_queue_depth", ("queue", "reports"))] == 3
    assert s[("jobs_queue_depth", ("queue", "default"))] == 1
    assert s[("jobs_oldest_ready_age_seconds", ("queue", "default"))] >= 90
    assert s[("jobs_in_state", ("status", "READY"))] == 4 and s[("jobs_in_state", ("status", "FAILED"))] == 1
    assert s[("jobs_workers", ("state", "RUNNING"))] == 1 and s[("jobs_workers", ("state", "STOPPED"))] == 1
    assert s[("jobs_workers_alive",)] == 1
    assert s[("jobs_enqueued_total", ("queue", "reports"), ("task", "tests.jobs_tasks.add_report"))] == before + 3
    assert ("process_resident_memory_bytes",) in s


def test_openmetrics_is_served_when_the_scraper_asks_for_it(settings):
    settings.DEBUG = True
    response = Client().get("/ops/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


@pytest.mark.django_db(transaction=True)
async def test_the_hub_and_websocket_metrics_follow_this_process_hub(settings, embedded_broker):
    from asgiref.sync import sync_to_async

    from notifications import hub as hub_module

    settings.DEBUG = True
    settings.NOTIFICATIONS = {"BROKER_URL": embedded_broker.url}
    hub = hub_module.get_hub()
    try:
        assert await hub.wait_connected(15)
        s = samples((await sync_to_async(scrape)())[1])
    finally:
        await hub_module.shutdown()
    assert s[("notifications_hub_connected",)] == 1
    assert s[("notifications_hub_connects_total",)] == 1
    assert s[("notifications_websocket_connections",)] == 0


def test_the_embedded_broker_collector_reports_connections_messages_and_queue_depths(embedded_broker):
    import stomp
    from prometheus_client import CollectorRegistry, generate_latest

    from notifications.metrics import BrokerCollector

    conn = stomp.Connection12([(embedded_broker.host, embedded_broker.port)])
    conn.connect(wait=True)
    for n in range(3):
        conn.send("/queue/ops.waiting", f"m{n}", receipt=f"r{n}")
    wait_for(lambda: embedded_broker.stats().messages_received == 3, 10, "three messages in")
    registry = CollectorRegistry()
    registry.register(BrokerCollector.for_thread(embedded_broker))
    s = samples(generate_latest(registry).decode())
    conn.disconnect()
    assert s[("notifications_broker_connections",)] == 1
    assert s[("notifications_broker_messages_in_total",)] == 3
    assert s[("notifications_broker_queue_depth", ("queue", "/queue/ops.waiting"))] == 3


@pytest.fixture
def fresh_relay(settings, embedded_broker):
    """This process's outbox relay and publisher made anew, on the embedded broker."""
    from notifications import outbox
    from notifications import publisher as publisher_module

    settings.NOTIFICATIONS = {"BROKER_URL": embedded_broker.url, "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.2}
    publisher_module._publisher, outbox._relay = None, None
    yield outbox.get_relay()
    made, publisher_module._publisher, outbox._relay = publisher_module._publisher, None, None
    if made is not None:
        made.close()


@pytest.mark.django_db(transaction=True)
def test_the_outbox_counters_and_backlog_are_scraped_and_match_the_table(settings, fresh_relay):
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from notifications import outbox
    from notifications.models import OutboxMessage

    settings.DEBUG = True
    with transaction.atomic():  # written here, published, confirmed and deleted
        outbox.publish_durable_many([("/topic/metrics.outbox", {"n": n}) for n in range(3)])
    wait_for(lambda: fresh_relay.stats().deleted == 3, 15, "three rows confirmed and deleted")
    # Left behind by a process that died: two overdue, one not due yet, one past OUTBOX_MAX_AGE (1 day).
    now = timezone.now()
    OutboxMessage.objects.bulk_create([
        OutboxMessage(destinations=["/topic/metrics.outbox"], body='{"n":%d}' % n, created=now - timedelta(seconds=age),
                      available_at=now + timedelta(seconds=due))
        for n, age, due in ((3, 90_000, -90_000), (4, 120, -110), (5, 60, -50), (6, 5, 30))
    ])
    assert fresh_relay.prune() == 1
    s = samples(scrape()[1])
    table = OutboxMessage.objects.count()
    assert (table, s[("notifications_outbox_pending",)]) == (3, 3)
    assert s[("notifications_outbox_overdue",)] == 2
    assert 120 <= s[("notifications_outbox_oldest_age_seconds",)] < 300
    assert [s[(f"notifications_outbox_{name}_total",)] for name in
            ("written", "published", "confirmed", "deleted", "retried", "expired")] == [3, 3, 3, 3, 0, 1]

    assert fresh_relay.recover() == 2  # a worker's relay publishes the overdue rows again
    wait_for(lambda: fresh_relay.stats().deleted == 5, 15, "the two retried rows confirmed and deleted")
    s = samples(scrape()[1])
    assert (OutboxMessage.objects.count(), s[("notifications_outbox_pending",)]) == (1, 1)
    assert s[("notifications_outbox_overdue",)] == 0
    assert 5 <= s[("notifications_outbox_oldest_age_seconds",)] < 60
    assert [s[(f"notifications_outbox_{name}_total",)] for name in
            ("written", "published", "confirmed", "deleted", "retried", "expired")] == [3, 5, 5, 5, 2, 1]
    assert s[("notifications_outbox_unconfirmed",)] == 0


def test_the_outbox_backlog_of_an_empty_table_is_zero(settings):
    settings.DEBUG = True
    s = samples(scrape()[1])
    assert [s[(f"notifications_outbox_{name}",)] for name in ("pending", "overdue", "oldest_age_seconds")] == [0, 0, 0]


# A real worker process, scraped during a run ---------------------------------------------------------

ENQUEUE_RUN = """
from tests.jobs_tasks import add, always_fail, fail_twice, sleep_for
for n in range(5):
    add.enqueue(n, n)
always_fail.enqueue()
fail_twice.enqueue(RUNS)
print(sleep_for.enqueue("/dev/null", 4).id)
"""


def worker_metrics(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return samples(response.read().decode())


def per_task(s: dict, name: str) -> dict[str, float]:
    return {dict(key[1:])["task"].rsplit(".", 1)[-1]: value for key, value in s.items()
            if key[0] == name and value}


def test_a_worker_process_counts_what_the_database_says_during_and_after_a_run(sqlite_db, tmp_path):
    env = base_env(sqlite_db.url, {"RETRY_BACKOFF": 0.1, "HEARTBEAT_INTERVAL": 0.2, "STALE_AFTER": 5.0})
    manage(env, "shell", "-v0", "-c", ENQUEUE_RUN.replace("RUNS", repr(str(tmp_path / "runs"))))
    proc = start_worker(env, tmp_path, "metered", "--metrics-port", "0", "--concurrency", "2")
    try:
        log = tmp_path / "metered.log"
        port = int(wait_for(lambda: re.search(r"Metrics on http://127.0.0.1:(\d+)/metrics", log.read_text()), 60,
                            "the metrics address").group(1))

        def finished() -> dict[str, int]:
            rows = sqlite_db.rows("SELECT task_path, status, COUNT(*) FROM jobs_job GROUP BY task_path, status")
            return {f"{path.rsplit('.', 1)[-1]}:{status}": n for path, status, n in rows}

        # During the run: the sleeper holds a slot; every counter is at most what the rows say.
        during = wait_for(lambda: (s := worker_metrics(port)) and per_task(s, "jobs_started_total").get("sleep_for")
                          and s, 60, "the sleeper started")
        rows = finished()
        assert per_task(during, "jobs_succeeded_total").get("add", 0) <= rows.get("add:SUCCESSFUL", 0)
        assert rows.get("sleep_for:RUNNING") == 1 and per_task(during, "jobs_succeeded_total").get("sleep_for", 0) == 0

        wait_for(lambda: finished().get("sleep_for:SUCCESSFUL") == 1 and finished().get("fail_twice:SUCCESSFUL") == 1,
                 60, "every job finished")
        after = worker_metrics(port)
    finally:
        proc.terminate()
        proc.wait(60)
    rows = finished()
    assert rows == {"add:SUCCESSFUL": 5, "always_fail:FAILED": 1, "fail_twice:SUCCESSFUL": 1, "sleep_for:SUCCESSFUL": 1}
    attempts = dict(sqlite_db.rows("SELECT task_path, SUM(attempts) FROM jobs_job GROUP BY task_path"))
    assert per_task(after, "jobs_succeeded_total") == {"add": 5, "fail_twice": 1, "sleep_for": 1}
    assert per_task(after, "jobs_failed_total") == {"always_fail": 1}
    assert per_task(after, "jobs_retried_total") == {"fail_twice": attempts["tests.jobs_tasks.fail_twice"] - 1}
    assert per_task(after, "jobs_started_total") == {path.rsplit(".", 1)[-1]: n for path, n in attempts.items()}
    assert per_task(after, "jobs_duration_seconds_count") == {"add": 5, "always_fail": 1, "fail_twice": 1,
                                                             "sleep_for": 1}
    assert ("jobs_queue_depth", ("queue", "default")) not in after  # the database gauges are the web's


def test_a_worker_metrics_endpoint_refuses_other_addresses_when_a_list_is_set(sqlite_db, tmp_path):
    env = base_env(sqlite_db.url, {"METRICS_ALLOWED_IPS": ["192.0.2.1"], "HEARTBEAT_INTERVAL": 0.2,
                                   "STALE_AFTER": 5.0})
    proc = start_worker(env, tmp_path, "guarded", "--metrics-port", "0")
    try:
        log = tmp_path / "guarded.log"
        port = int(wait_for(lambda: re.search(r"Metrics on http://127.0.0.1:(\d+)/metrics", log.read_text()), 60,
                            "the metrics address").group(1))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert refused.value.code == 403
    finally:
        proc.terminate()
        proc.wait(60)
    assert "Metrics refused to 127.0.0.1 (no token)" in (tmp_path / "guarded.log").read_text()


def test_the_stompbroker_process_serves_its_connections_messages_and_queue_depths(tmp_path):
    import os
    import subprocess
    import sys

    import stomp

    from tests.conftest import free_port
    from tests.integration.test_worker_processes import ROOT

    port = free_port()
    log = open(tmp_path / "broker.log", "w")
    proc = subprocess.Popen([sys.executable, "manage.py", "stompbroker", "--port", str(port), "--metrics-port", "0"],
                            cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT)
    try:
        metrics_port = int(wait_for(lambda: re.search(r"Metrics on http://127.0.0.1:(\d+)/metrics",
                                                      (tmp_path / "broker.log").read_text()), 60, "the broker").group(1))
        conn = stomp.Connection12([("127.0.0.1", port)])
        conn.connect(wait=True)
        for n in range(2):
            conn.send("/queue/ops.depth", f"m{n}", receipt=f"r{n}")
        s = wait_for(lambda: (s := worker_metrics(metrics_port))
                     and s.get(("notifications_broker_messages_in_total",)) == 2 and s, 30, "two messages counted")
        conn.disconnect()
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    assert s[("notifications_broker_connections",)] == 1
    assert s[("notifications_broker_queue_depth", ("queue", "/queue/ops.depth"))] == 2
    assert ("process_resident_memory_bytes",) in s
