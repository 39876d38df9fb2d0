"""Broker failover and TLS on a RabbitMQ cluster of the test's own: two nodes on this machine
(own names, ports and data; tests/deploy/rabbitmq_nodes.py), joined with `rabbitmqctl
join_cluster`, each with a STOMP and a STOMP-over-TLS listener (a CA made by the test).

The failover test runs deploy/ (nginx, a daphne process, a worker, PostgreSQL) with both nodes
in STOMP_BROKER_URL, a browser watching a job, and stops the node every process is on.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time

import pytest
from playwright.sync_api import expect

from notifications.publisher import Publisher
from tests.conftest import service_missing

from . import rabbitmq_nodes
from .conftest import log_in, postgres_base_url
from .deployment import Deployment, drop_postgres_database, nginx_missing, postgres_database

pytestmark = [pytest.mark.deploy, pytest.mark.slow, pytest.mark.timeout(900)]

# Every job event a page applied: [browser clock in ms, status, progress done].
RECORD_UPDATES = """
window.__jobUpdates = [];
document.addEventListener('job:update',
  (e) => window.__jobUpdates.push([Date.now(), e.detail.status, e.detail.progress.done]));
"""
# The watched job: 300 progress steps 0.1 s apart (about 30 s), each one an event.
LONG_JOB_STEPS = 300
# Short jobs enqueued on each side of the node's stop; every one must finish.
SHORT_JOBS = 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = rabbitmq_nodes.missing()
    if why is not None:
        service_missing(why)
    nodes = rabbitmq_nodes.start_cluster(tmp_path_factory.mktemp("rabbitmq-cluster"))
    try:
        yield nodes
    finally:
        rabbitmq_nodes.stop_all(nodes)
        for node in nodes:
            print(node.log())  # shown when a test failed


# ------------------------------------------------------------------------------------- TLS


class Recorder:
    def __init__(self):
        self.events = []

    def hub_event(self, event) -> None:
        self.events.append(event)

    def hub_reconnected(self) -> None:
        pass


def hub_round_trip(url: str, destination: str) -> list:
    """Connect a Hub to ``url`` in a thread of its own (its own event loop), subscribe, publish
    one message through it and return what came back."""
    from notifications.hub import Hub

    async def main() -> list:
        hub = Hub(url, reconnect_min=0.05, reconnect_max=0.5)
        hub.start()
        try:
            assert await hub.wait_connected(30), f"the hub did not connect to {url}"
            listener = Recorder()
            await hub.subscribe(destination, listener)
            hub.publish(destination, {"over": "tls"})
            async with asyncio.timeout(30):
                while not listener.events:
                    await asyncio.sleep(0.02)
            return [event.data for event in listener.events]
        finally:
            await hub.close()

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="hub-over-tls")
    thread.start()
    thread.join(60)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_the_hub_speaks_tls_to_rabbitmqs_stomp_listener_verifying_its_certificate(cluster, caplog):
    caplog.set_level(logging.INFO, logger="notifications.hub")
    node = cluster[-1]

    got = hub_round_trip(node.tls_url(node.ca_file), "/topic/test.rabbit.tls.hub")

    assert got == [{"over": "tls"}]
    connected = next(r.getMessage() for r in caplog.records if "STOMP hub connected to" in r.getMessage())
    assert connected.startswith(
        f"STOMP hub connected to stomp+ssl://guest:***@127.0.0.1:{node.stomp_tls_port}?ca_file={node.ca_file}: "
        "server 'RabbitMQ/"
    )
    assert ", TLS TLSv1." in connected


def test_the_publisher_speaks_tls_to_rabbitmqs_stomp_listener_verifying_its_certificate(cluster):
    node = cluster[-1]
    p = Publisher(node.tls_url(node.ca_file), reconnect_min=0.05, reconnect_max=0.5)
    got = []
    arrived = threading.Event()
    try:
        p.subscribe("/topic/test.rabbit.tls.pub", lambda headers, body: (got.append(body), arrived.set()))
        p.publish("/topic/test.rabbit.tls.pub", {"over": "tls"})
        assert p.flush(30) is True
        assert arrived.wait(30)
    finally:
        p.close()
    assert (got, p.stats().connects) == ([b'{"over":"tls"}'], 1)


def test_rabbitmqs_tls_listener_is_refused_with_a_clear_error_when_its_ca_is_not_trusted(cluster, caplog):
    node = cluster[-1]
    p = Publisher(node.tls_url(), reconnect_min=0.05, reconnect_max=0.5)
    try:
        p.publish("/topic/test.rabbit.tls.untrusted", {"n": 1})
        assert p.flush(2) is False
    finally:
        p.close()
    assert p.stats().connects == 0
    assert (
        # RabbitMQ sends the CA along with its certificate (ssl_options.cacertfile).
        f"TLS certificate of 127.0.0.1:{node.stomp_tls_port} not trusted: self-signed certificate in certificate chain "
        "(pass the CA that signed it with ?ca_file=/path/ca.pem)"
    ) in caplog.text


# -------------------------------------------------------------------------------- failover


@pytest.fixture(scope="module")
def clustered_deployment(cluster, tmp_path_factory):
    """deploy/ with one web process and one worker, both nodes in STOMP_BROKER_URL (first: a)."""
    why = nginx_missing()
    if why is not None:
        service_missing(why)
    base_db = postgres_base_url()
    database = postgres_database(base_db, "failover")
    broker_url = ",".join(node.stomp_url for node in cluster)
    deployment = Deployment(tmp_path_factory.mktemp("deploy-cluster"), database, broker_url, web=1, workers=1)
    try:
        deployment.prepare().start()
        yield deployment
    finally:
        deployment.stop()
        print(deployment.logs())
        drop_postgres_database(base_db, database)


def enqueue(deployment, code: str) -> list[str]:
    """Enqueue jobs from a `manage.py shell` process; their ids."""
    out = deployment.shell(
        "import json\n"
        "from django.contrib.auth import get_user_model\n"
        "from jobs.api import job_options\n"
        "from notifications.publisher import get_publisher\n"
        "from tests import jobs_tasks\n"
        "alice = get_user_model().objects.get(username='alice')\n"
        "ids = []\n"
        f"{code}\n"
        "get_publisher().flush(30)\n"
        "print(json.dumps(ids))\n"
    )
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.browser
def test_stopping_the_rabbitmq_node_in_use_moves_web_and_worker_to_the_other_node_and_loses_no_job_or_update(
    cluster, clustered_deployment, browser, record_property
):
    a, b = cluster
    deployment = clustered_deployment
    assert a.stomp_connections() >= 2 and b.stomp_connections() == 0  # web hub and worker, on a
    [long_job] = enqueue(deployment, (
        "with job_options(owner=alice, name='Long count'):\n"
        f"    ids.append(str(jobs_tasks.count_slowly.enqueue({LONG_JOB_STEPS}, 0.1).id))\n"
    ))
    alice_context, watcher = log_in(browser, deployment, "alice")
    admin_context, admin = log_in(browser, deployment, "admin")
    try:
        watcher.add_init_script(RECORD_UPDATES)
        watcher.goto(f"/jobs/{long_job}/")
        admin.goto("/admin/jobs/job/")
        admin.wait_for_function("document.documentElement.dataset.stomp === 'connected'")
        # Live and well past its start: the stop falls mid-job.
        watcher.wait_for_function("window.__jobUpdates.filter(u => u[1] === 'RUNNING').length >= 20", timeout=120_000)
        before = enqueue(deployment, (
            f"for n in range({SHORT_JOBS}):\n"
            "    ids.append(str(jobs_tasks.count_slowly.enqueue(10, 0.05).id))\n"
        ))

        stopped_at = time.time() * 1000
        a.stop()
        after = enqueue(deployment, (
            f"for n in range({SHORT_JOBS}):\n"
            "    ids.append(str(jobs_tasks.add.enqueue(n, 1).id))\n"
        ))

        widget = watcher.locator(f'[data-job-live][data-job-id="{long_job}"]')
        expect(widget).to_have_attribute("data-status", "SUCCESSFUL", timeout=180_000)
        row = admin.locator(f'#result_list tbody tr:has(input.action-select[value="{long_job}"])')
        expect(row.locator(".field-status_display")).to_have_text("Successful", timeout=60_000)
        updates = watcher.evaluate("window.__jobUpdates")
        assert watcher.evaluate("document.documentElement.dataset.stomp") == "connected"
    finally:
        alice_context.close()
        admin_context.close()

    # Every job ended, none lost; web and worker are on b now.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = dict(deployment.rows("SELECT id::text, status FROM jobs_job"))
        if all(state in {"SUCCESSFUL", "FAILED", "CANCELLED"} for state in states.values()):
            break
        time.sleep(0.5)
    assert set(states) == {long_job, *before, *after}
    assert set(states.values()) == {"SUCCESSFUL"}
    assert b.running_nodes() == [b.name] and b.stomp_connections() >= 2

    # How long the page went without an update: the longest gap between two updates from the
    # moment `rabbitmqctl stop` was asked (the node closes its connections a few seconds later,
    # once the command has started) to the job's end; the gaps before it, for comparison.
    times = [t for t, _, _ in updates]
    gaps_after = [(b2 - b1, b1) for b1, b2 in zip(times, times[1:]) if b2 > stopped_at]
    longest, gap_start = max(gaps_after)
    interruption = longest / 1000
    steady = sorted(b2 - b1 for b1, b2 in zip(times, times[1:]) if b2 <= stopped_at)
    record_property("updates_interrupted_s", round(interruption, 3))
    line = (f"RabbitMQ node stopped mid-job: the page's updates stopped for {interruption:.2f} s "
            f"(median gap before: {steady[len(steady) // 2] / 1000:.2f} s); "
            f"{len(updates)} updates, {2 * SHORT_JOBS + 1} jobs all SUCCESSFUL")
    print(line)
    logging.getLogger(__name__).warning(line)
    if os.environ.get("DEPLOY_FAILOVER_RESULTS"):
        with open(os.environ["DEPLOY_FAILOVER_RESULTS"], "a") as out:
            out.write(json.dumps({"interruption_s": round(interruption, 3), "updates": len(updates),
                                  "median_gap_s": steady[len(steady) // 2] / 1000, "at": time.time()}) + "\n")
    assert [status for _, status, _ in updates][-1] == "SUCCESSFUL"
    running_after = [t for t, status, _ in updates if status == "RUNNING" and t > gap_start + longest]
    assert running_after  # live updates resumed during the job, not only its end
    assert deployment.errors() == []  # no web process or worker logged an error (a failed resync, say)
