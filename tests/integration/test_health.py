"""Health: `manage.py jobhealth` (in process and as a real process with its exit code) and the HTTP
endpoint a load balancer polls, against a real broker and a real database."""
from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.test import AsyncClient
from django.utils import timezone

from jobs.models import Job, WorkerState
from jobs.models import Worker as WorkerRow
from notifications import hub as hub_module
from tests.integration.test_worker_processes import (  # noqa: F401  (fixtures)
    ROOT,
    base_env,
    migrated_sqlite,
    sqlite_db,
    start_worker,
    wait_for,
)

DEAD_BROKER = "stomp://127.0.0.1:9"


@pytest.fixture
def broker(settings, embedded_broker):
    settings.NOTIFICATIONS = {"BROKER_URL": embedded_broker.url, "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.5}
    return embedded_broker


def alive_worker(**extra) -> WorkerRow:
    return WorkerRow.objects.create(id="w1", state=WorkerState.RUNNING, heartbeat_at=timezone.now(), **extra)


@pytest.mark.django_db
def test_jobhealth_passes_with_a_live_worker_no_old_job_and_a_reachable_broker(broker, capsys):
    alive_worker()
    call_command("jobhealth")
    out = capsys.readouterr().out
    assert "OK workers: 1 worker(s) alive" in out and "OK queues: no job is waiting" in out
    assert f"OK broker: {broker.url} answered in" in out


@pytest.mark.django_db
def test_jobhealth_fails_when_no_worker_ever_ran(broker):
    with pytest.raises(CommandError, match="workers: no worker has ever run") as failure:
        call_command("jobhealth", "--no-broker")
    assert failure.value.returncode == 1


@pytest.mark.django_db
def test_jobhealth_fails_when_the_freshest_heartbeat_is_too_old_and_names_the_worker(broker):
    WorkerRow.objects.create(id="old-one", state=WorkerState.RUNNING, heartbeat_at=timezone.now() - timedelta(minutes=5))
    with pytest.raises(CommandError, match=r"no worker heartbeated in the last 30.0 s; the last was old-one \(RUNNING\)"):
        call_command("jobhealth", "--no-broker", "--max-heartbeat-age", "30")


@pytest.mark.django_db
def test_jobhealth_fails_when_a_due_job_waits_longer_than_the_limit(broker, capsys):
    alive_worker()
    Job.objects.create(task_path="tests.jobs_tasks.add", queue="reports", run_after=timezone.now() - timedelta(minutes=10))
    Job.objects.create(task_path="tests.jobs_tasks.add", run_after=timezone.now() + timedelta(hours=1))  # not due
    with pytest.raises(CommandError, match=r"queue reports: 1 job\(s\) waiting, the oldest for 10.0 min \(limit 5.0 min\)"):
        call_command("jobhealth", "--no-broker", "--max-ready-age", "300")
    assert "FAIL queue reports" in capsys.readouterr().out


@pytest.mark.django_db
def test_jobhealth_fails_when_the_broker_does_not_answer(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": DEAD_BROKER, "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.2}
    alive_worker()
    with pytest.raises(CommandError, match=r"broker: no STOMP session with stomp://127.0.0.1:9 within 0.5 s"):
        call_command("jobhealth", "--broker-timeout", "0.5")


@pytest.mark.django_db
def test_jobhealth_refuses_a_negative_limit_with_exit_code_2():
    with pytest.raises(CommandError, match="--max-ready-age must be a positive number of seconds") as failure:
        call_command("jobhealth", "--max-ready-age", "-1")
    assert failure.value.returncode == 2


def test_the_jobhealth_process_exits_1_without_a_worker_then_0_while_one_runs(sqlite_db, tmp_path):
    env = base_env(sqlite_db.url)

    def jobhealth() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "manage.py", "jobhealth", "--no-broker"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    sick = jobhealth()
    assert sick.returncode == 1 and "no worker has ever run" in sick.stderr
    worker = start_worker(env, tmp_path, "healthy")
    try:
        wait_for(lambda: sqlite_db.rows("SELECT COUNT(*) FROM jobs_worker WHERE state = 'RUNNING'")[0][0] == 1, 60,
                 "the worker's row")
        well = jobhealth()
        assert well.returncode == 0, well.stdout + well.stderr
        assert "OK workers: 1 worker(s) alive" in well.stdout
    finally:
        worker.terminate()
        worker.wait(60)


@pytest.mark.django_db(transaction=True)
async def test_the_health_endpoint_says_ok_when_the_database_and_the_hub_are_connected(broker):
    try:
        response = await AsyncClient().get("/ops/health/")
    finally:
        await hub_module.shutdown()
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] is True and body["checks"]["hub"]["ok"] is True
    assert response["Cache-Control"].startswith("max-age=0")


@pytest.mark.django_db(transaction=True)
async def test_the_health_endpoint_answers_503_when_the_hub_cannot_reach_the_broker(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": DEAD_BROKER, "RECONNECT_MIN": 0.05, "RECONNECT_MAX": 0.2}
    try:
        response = await AsyncClient().get("/ops/health/")
    finally:
        await hub_module.shutdown()
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["hub"] == {"ok": False, "detail": "not connected to stomp://127.0.0.1:9 (reconnecting)"}
