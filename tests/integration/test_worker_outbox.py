"""Nothing promised is lost when a process dies (issue 8, defect 3; DESIGN principle 8): real
`manage.py jobworker` processes SIGKILLed between a job's final commit and what follows it, on
SQLite and PostgreSQL, with a real STOMP broker and a stomp.py subscriber."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from jobs import live as job_destinations
from notifications import destinations
from tests.conftest import free_port
from tests.integration.test_job_events import Subscriber
from tests.integration.test_worker_processes import (  # noqa: F401  (fixtures)
    PROCESS_TIMEOUT,
    Database,
    base_env,
    enqueue,
    migrated_sqlite,
    postgres_db,
    sqlite_db,
    start_worker,
    wait_for,
)
from tests.jobs_tasks import runs_in

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# The outbox's retry bound in these workers: a row unconfirmed this long after its commit is
# published by any worker's relay.
RETRY_AFTER = 1.0
OUTBOX_SETTINGS = json.dumps({"OUTBOX_RETRY_AFTER": RETRY_AFTER})

ENQUEUE_OWNED = """
import os
from django.contrib.auth import get_user_model
from jobs.api import enqueue_for
from tests.jobs_tasks import record_run
alice = get_user_model().objects.create_user("alice")
print(alice.pk)
print(enqueue_for(alice, record_run, os.environ["RUNS_FILE"]).id)
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request) -> Database:
    return request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "postgres_db")


def param(db: Database) -> str:
    return "?" if db.url.startswith("sqlite") else "%s"


def job_status(db: Database, job_id: str) -> str:
    return db.job(job_id)["status"]


def notifications_of(db: Database, user_id: int) -> list[tuple[str, str]]:
    return db.rows(f"SELECT title, level FROM notifications_notification WHERE recipient_id = {param(db)}", (user_id,))


def outbox_rows(db: Database) -> int:
    return db.rows("SELECT COUNT(*) FROM notifications_outboxmessage")[0][0]


def test_a_worker_killed_right_after_a_jobs_final_commit_loses_neither_its_notification_nor_its_final_event(
    db, embedded_broker, tmp_path
):
    runs, finished = tmp_path / "runs", tmp_path / "task-finished"
    env = base_env(db.url) | {"RUNS_FILE": str(runs), "NOTIFICATIONS_SETTINGS_JSON": OUTBOX_SETTINGS,
                              "STOMP_BROKER_URL": embedded_broker.url}
    user_id, job_id = enqueue(env, ENQUEUE_OWNED)
    subscriber = Subscriber(embedded_broker.url)
    try:
        subscriber.subscribe(job_destinations.job(job_id))
        subscriber.subscribe(destinations.user_notifications(int(user_id)))
        # The victim cannot reach the broker, so nothing it publishes can arrive: whatever the
        # subscriber gets below was published by the rescuer.
        victim_env = env | {"STOMP_BROKER_URL": f"stomp://127.0.0.1:{free_port()}",
                            "SLOW_TASK_FINISHED_FILE": str(finished)}
        victim = start_worker(victim_env, tmp_path, "victim")
        try:
            wait_for(lambda: runs_in(str(finished)), 60, "the victim's task_finished receiver")
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
        finally:
            if victim.poll() is None:
                victim.kill()
        assert runs_in(str(runs)) == [job_id]
        assert job_status(db, job_id) == "SUCCESSFUL"
        assert notifications_of(db, int(user_id)) == [("Record run: Successful", "success")]
        assert outbox_rows(db) == 2  # the final event and the notification's event, unconfirmed

        time.sleep(RETRY_AFTER + 0.5)  # the rows are now overdue for any relay
        rescuer = start_worker(env, tmp_path, "rescuer", "--burst")
        assert rescuer.wait(PROCESS_TIMEOUT) == 0, (tmp_path / "rescuer.log").read_text()[-3000:]
        events = subscriber.wait_until(lambda evs: any(e.get("final") for _, e in evs)
                                       and any(e.get("type") == "notification" for _, e in evs))
    finally:
        subscriber.close()
    final = [e for d, e in events if d == job_destinations.job(job_id) and e.get("final")]
    toast = [e for d, e in events if e.get("type") == "notification"]
    assert (final[0]["id"], final[0]["status"]) == (job_id, "SUCCESSFUL")
    assert (toast[0]["title"], toast[0]["unread"]) == ("Record run: Successful", 1)
    assert outbox_rows(db) == 0  # confirmed by the broker, then deleted
    assert runs_in(str(runs)) == [job_id]  # the rescuer published; it did not run the job again


NOTIFY_AND_EXIT = """
from notifications.api import broadcast
broadcast(title="Maintenance at noon", level="warning")
"""


def test_a_broadcast_from_a_process_that_could_not_reach_the_broker_is_published_by_a_worker(
    db, embedded_broker, tmp_path
):
    env = base_env(db.url) | {"NOTIFICATIONS_SETTINGS_JSON": OUTBOX_SETTINGS, "STOMP_BROKER_URL": embedded_broker.url}
    subscriber = Subscriber(embedded_broker.url)
    try:
        subscriber.subscribe(destinations.NOTIFICATIONS_BROADCAST)
        # A shell on a machine whose broker is down: the row is committed, the event cannot go out.
        enqueue(env | {"STOMP_BROKER_URL": f"stomp://127.0.0.1:{free_port()}"}, NOTIFY_AND_EXIT)
        assert outbox_rows(db) == 1
        time.sleep(RETRY_AFTER + 0.5)
        worker = start_worker(env, tmp_path, "relay", "--burst")
        assert worker.wait(PROCESS_TIMEOUT) == 0, (tmp_path / "relay.log").read_text()[-3000:]
        events = subscriber.wait_until(lambda evs: len(evs) >= 1)
    finally:
        subscriber.close()
    assert [(e["title"], e["level"]) for _, e in events] == [("Maintenance at noon", "warning")]
    assert outbox_rows(db) == 0


def test_a_worker_with_a_working_broker_leaves_no_outbox_rows_behind(db, embedded_broker, tmp_path):
    runs = tmp_path / "runs"
    env = base_env(db.url) | {"RUNS_FILE": str(runs), "STOMP_BROKER_URL": embedded_broker.url}
    user_id, job_id = enqueue(env, ENQUEUE_OWNED)
    worker = start_worker(env, tmp_path, "tidy", "--burst")
    assert worker.wait(PROCESS_TIMEOUT) == 0, (tmp_path / "tidy.log").read_text()[-3000:]
    assert (job_status(db, job_id), notifications_of(db, int(user_id))) == (
        "SUCCESSFUL", [("Record run: Successful", "success")])
    assert outbox_rows(db) == 0
    assert "Outbox" not in Path(tmp_path / "tidy.log").read_text()  # nothing was retried or left
