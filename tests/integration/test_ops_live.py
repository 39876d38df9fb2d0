"""The admin's live operations pages: the overview's figures, the pages, the destination over a
real WebSocket (permission, snapshot, events), and a worker publishing it through a real broker."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
import stomp
from channels.db import database_sync_to_async
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from jobs import ops_live
from jobs.models import Job, JobStatus, WorkerState
from jobs.models import Worker as WorkerRow
from jobs.ops_admin import chart_bars
from jobs.worker import Worker
from notifications import hub as hub_module
from tests.integration.stomp_ws_support import WsStomp, session_cookie

UTC = dt_timezone.utc
NOW = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)


def finished(status: str, minute: int, seconds: float, task: str = "tests.jobs_tasks.add") -> Job:
    end = datetime(2026, 5, 1, 11, minute, 10, tzinfo=UTC)
    return Job.objects.create(task_path=task, status=status, started_at=end - timedelta(seconds=seconds), finished_at=end)


def staff(name: str = "ops", *perms: str) -> User:
    user = User.objects.create_user(name, password="pw-ops-12345", is_staff=True)
    for perm in perms or ("view_worker",):
        user.user_permissions.add(Permission.objects.get(codename=perm, content_type__app_label="jobs"))
    return user


@pytest.mark.django_db
def test_the_overview_counts_states_minutes_queues_slowest_tasks_and_workers():
    finished(JobStatus.SUCCESSFUL, 58, 2.0)
    finished(JobStatus.SUCCESSFUL, 58, 4.0)
    finished(JobStatus.FAILED, 59, 1.0)
    finished(JobStatus.SUCCESSFUL, 59, 30.0, task="tests.jobs_tasks.count_slowly")
    finished(JobStatus.SUCCESSFUL, 5, 99.0)  # 11:05, in the hour
    Job.objects.create(task_path="tests.jobs_tasks.add", queue="reports", run_after=NOW - timedelta(seconds=40))
    Job.objects.create(task_path="tests.jobs_tasks.add", run_after=NOW + timedelta(hours=1))  # not due
    WorkerRow.objects.create(id="w-a", state=WorkerState.RUNNING, heartbeat_at=NOW - timedelta(seconds=1),
                             running=["x"], succeeded=7)
    WorkerRow.objects.create(id="w-silent", state=WorkerState.RUNNING, heartbeat_at=NOW - timedelta(minutes=5))
    o = ops_live.overview(NOW)
    assert o["states"] == {"READY": 2, "RUNNING": 0, "SUCCESSFUL": 4, "FAILED": 1, "CANCELLED": 0}
    minutes = {m["minute"][11:16]: (m["succeeded"], m["failed"]) for m in o["per_minute"] if m["succeeded"] or m["failed"]}
    assert minutes == {"11:05": (1, 0), "11:58": (2, 0), "11:59": (1, 1)}
    assert len(o["per_minute"]) == 60 and o["per_minute"][-1]["minute"] == "2026-05-01T12:00:00+00:00"
    assert o["queues"] == [{"queue": "reports", "depth": 1, "oldest_seconds": 40.0}]
    assert o["slowest"] == [
        {"task": "tests.jobs_tasks.add", "runs": 3, "avg_seconds": 35.0, "max_seconds": 99.0},
        {"task": "tests.jobs_tasks.count_slowly", "runs": 1, "avg_seconds": 30.0, "max_seconds": 30.0},
    ]
    workers = {w["id"]: (w["state"], w["heartbeat_age"], len(w["running"]), w["succeeded"]) for w in o["workers"]}
    assert workers == {"w-a": ("RUNNING", 1.0, 1, 7), "w-silent": ("LOST", 300.0, 0, 0)}


def test_the_chart_stacks_succeeded_on_failed_scaled_to_the_tallest_minute():
    peak, bars = chart_bars([{"minute": "2026-05-01T11:58:00+00:00", "succeeded": 2, "failed": 0},
                             {"minute": "2026-05-01T11:59:00+00:00", "succeeded": 3, "failed": 1}])
    assert peak == 4
    assert bars[1] == {"x": 10, "failed_y": 92.5, "failed_h": 27.5, "ok_y": 10.0, "ok_h": 82.5,
                       "label": "11:59 UTC: 3 succeeded, 1 failed"}


@pytest.mark.django_db
def test_the_workers_page_marks_each_live_cell_and_links_the_overview():
    WorkerRow.objects.create(id="w-a", state=WorkerState.RUNNING, running=["x", "y"], succeeded=3)
    client = Client()
    client.force_login(staff())
    page = client.get("/admin/jobs/worker/").content.decode()
    assert '<span data-worker="w-a" data-field="running">2</span>' in page
    assert 'data-worker="w-a" data-field="state">Running</span>' in page
    assert "jobs/ops-live.js" in page and 'href="/admin/jobs/worker/overview/"' in page


@pytest.mark.django_db
def test_the_overview_page_shows_the_figures_at_load_and_needs_the_permission():
    finished(JobStatus.FAILED, 59, 1.0)
    WorkerRow.objects.create(id="w-a", state=WorkerState.RUNNING)
    client = Client()
    client.force_login(staff())
    response = client.get("/admin/jobs/worker/overview/")
    page = response.content.decode()
    assert response.status_code == 200
    assert '<span class="ops-count" data-state="FAILED">1</span>' in page
    assert '<td>w-a</td><td class="worker-state worker-state-running">Running</td>' in page
    assert 'id="ops-overview-data"' in page and 'data-destination="/topic/ops.overview"' in page
    other = Client()
    other.force_login(staff("nobody", "view_job"))
    assert other.get("/admin/jobs/worker/overview/").status_code == 403


@pytest.fixture
async def live(settings, embedded_broker):
    settings.NOTIFICATIONS = {"BROKER_URL": embedded_broker.url, "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.5}
    yield embedded_broker
    await hub_module.shutdown()


async def connected(user) -> WsStomp:
    client = WsStomp(await database_sync_to_async(session_cookie)(user))
    assert await client.open()
    assert (await client.connect()).command == "CONNECTED"
    return client


@pytest.mark.django_db(transaction=True)
async def test_a_permitted_user_gets_the_overview_first_then_each_published_one(live):
    user = await database_sync_to_async(staff)()
    await database_sync_to_async(WorkerRow.objects.create)(id="w-a", state=WorkerState.RUNNING)
    client = await connected(user)
    await client.subscribe(ops_live.OVERVIEW)
    first = await client.next_event(lambda e: e.get("type") == "jobs.overview")
    assert [w["id"] for w in first["workers"]] == ["w-a"]
    await database_sync_to_async(Job.objects.create)(task_path="tests.jobs_tasks.add", status=JobStatus.FAILED)
    await database_sync_to_async(ops_live.publish_overview)()
    later = await client.next_event(lambda e: e.get("type") == "jobs.overview" and e["states"]["FAILED"] == 1, 10)
    assert later["generated_at"] > first["generated_at"]
    await client.close()


@pytest.mark.django_db(transaction=True)
async def test_staff_without_the_worker_permission_is_refused_the_overview(live):
    user = await database_sync_to_async(staff)("viewer", "view_job")
    client = await connected(user)
    await client.subscribe(ops_live.OVERVIEW)
    frame = await client.next_control_frame()
    assert frame.command == "ERROR" and ops_live.OVERVIEW in (frame.get("message") or "") + (frame.get("destination") or "")
    await client.expect_closed()


@pytest.mark.django_db(transaction=True)
def test_a_running_worker_publishes_the_overview_with_itself_in_it(settings, embedded_broker):
    settings.NOTIFICATIONS = {"BROKER_URL": embedded_broker.url, "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.5}
    settings.JOBS = {"OVERVIEW_INTERVAL": 0.2, "HEARTBEAT_INTERVAL": 0.2, "STALE_AFTER": 5.0}
    received: list[dict] = []
    arrived = threading.Event()

    class Listener(stomp.ConnectionListener):
        def on_message(self, frame):
            event = json.loads(frame.body)
            if any(w["id"] == "publisher" and w["state"] == "RUNNING" for w in event.get("workers", [])):
                received.append(event)
                arrived.set()

    conn = stomp.Connection12([(embedded_broker.host, embedded_broker.port)])
    conn.set_listener("", Listener())
    conn.connect(wait=True)
    conn.subscribe(ops_live.OVERVIEW, id="1")
    worker = Worker(concurrency=1, poll_interval=0.1, wakeups=False, schedules=False, worker_id="publisher")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert arrived.wait(30), "no overview from the worker"
    finally:
        worker.stop(force=True)
        thread.join(30)
        conn.disconnect()
    assert received[0]["type"] == "jobs.overview"
    assert timezone.now().isoformat() > received[0]["generated_at"]
