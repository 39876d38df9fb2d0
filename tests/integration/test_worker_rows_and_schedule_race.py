"""Real `manage.py jobworker` processes: three racing for 200 due times of one schedule (SQLite and
PostgreSQL), and the Worker rows they keep (written at start, by the heartbeat, at exit, lost)."""
from __future__ import annotations

import json
import signal
import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest

from tests.integration.test_worker_processes import (  # noqa: F401  (fixtures)
    PROCESS_TIMEOUT,
    Database,
    base_env,
    manage,
    migrated_sqlite,
    postgres_db,
    sqlite_db,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.slow

WORKERS = 3
DUE_TIMES = 200


def stop_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(PROCESS_TIMEOUT)
        except Exception:
            p.kill()
            p.wait(10)


def count(db: Database, sql: str) -> int:
    return db.rows(sql)[0][0]


def schedule_race(db: Database, tmp_path) -> None:
    # 200 due times on one day two days ago (minutes 0-49 of hours 0-3), none again for a year:
    # however long the race takes, exactly 200 due times are due.
    day = datetime.now(dt_timezone.utc) - timedelta(days=2)
    jobs_settings = {
        "SCHEDULE_INTERVAL": 0.05,
        "SCHEDULES": {"race": {"TASK": "tests.jobs_tasks.add", "ARGS": [1, 2], "CRON": f"0-49 0-3 {day.day} {day.month} *",
                               "TIMEZONE": "UTC", "MISSED": "all"}},
    }
    env = base_env(db.url, jobs_settings)
    procs = [start_worker(env, tmp_path, f"sched-{n}", "--concurrency", "1") for n in range(WORKERS)]
    try:
        # Every worker is up and ticking before the schedule is armed, so all three race for it.
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM jobs_worker WHERE state = 'RUNNING'") == WORKERS
                 and count(db, "SELECT COUNT(*) FROM jobs_schedule WHERE name = 'race'") == 1,
                 60, "three workers and the synchronised schedule")
        manage(env, "shell", "-v0", "-c",
               "from datetime import datetime, timezone; from jobs.models import Schedule; "
               f"Schedule.objects.filter(name='race').update(next_run_at=datetime({day.year}, {day.month}, {day.day}, "
               "tzinfo=timezone.utc))")
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM jobs_job WHERE status = 'SUCCESSFUL'") >= DUE_TIMES,
                 PROCESS_TIMEOUT, "200 scheduled jobs run")
        time.sleep(1.0)  # twenty more ticks of each worker: nothing more may appear
    finally:
        stop_all(procs)
    logs = [(tmp_path / f"sched-{n}.log").read_text()[-1500:] for n in range(WORKERS)]
    assert [p.returncode for p in procs] == [0] * WORKERS, logs
    assert count(db, "SELECT COUNT(*) FROM jobs_job") == DUE_TIMES, logs
    assert count(db, "SELECT COUNT(DISTINCT due_at) FROM jobs_schedulerun") == DUE_TIMES
    assert count(db, "SELECT COUNT(*) FROM jobs_schedulerun WHERE job_id IS NOT NULL") == DUE_TIMES
    per_worker = dict(db.rows("SELECT worker_id, COUNT(*) FROM jobs_schedulerun GROUP BY worker_id"))
    assert sum(per_worker.values()) == DUE_TIMES and set(per_worker) <= {f"sched-{n}" for n in range(WORKERS)}, per_worker
    states = db.rows("SELECT id, state FROM jobs_worker ORDER BY id")
    assert states == [(f"sched-{n}", "STOPPED") for n in range(WORKERS)]


def test_three_worker_processes_on_sqlite_enqueue_each_of_200_due_times_exactly_once(sqlite_db, tmp_path):
    schedule_race(sqlite_db, tmp_path)


@pytest.mark.postgres
def test_three_worker_processes_on_postgresql_enqueue_each_of_200_due_times_exactly_once(postgres_db, tmp_path):
    schedule_race(postgres_db, tmp_path)


def worker_row(db: Database, worker_id: str) -> dict:
    rows = db.rows("SELECT state, host, pid, queues, concurrency, succeeded, failed, running, heartbeat_at, stopped_at "
                   f"FROM jobs_worker WHERE id = '{worker_id}'")
    if not rows:
        return {}
    state, host, pid, queues, concurrency, succeeded, failed, running, heartbeat_at, stopped_at = rows[0]
    decode = (lambda v: json.loads(v) if isinstance(v, str) else v)
    return {"state": state, "host": host, "pid": pid, "queues": decode(queues), "concurrency": concurrency,
            "succeeded": succeeded, "failed": failed, "running": decode(running), "heartbeat_at": heartbeat_at,
            "stopped_at": stopped_at}


ENQUEUE_MIXED = """
from tests.jobs_tasks import add, always_fail, sleep_for
print(add.enqueue(1, 2).id); print(add.enqueue(3, 4).id); print(always_fail.enqueue().id)
print(sleep_for.enqueue("/dev/null", 30).id)
"""


def test_a_worker_process_keeps_its_row_by_heartbeat_and_marks_it_stopped_at_a_clean_exit(sqlite_db, tmp_path):
    env = base_env(sqlite_db.url)
    manage(env, "shell", "-v0", "-c", ENQUEUE_MIXED)
    proc = start_worker(env, tmp_path, "rowkeeper", "--concurrency", "2", "--queue", "default")
    try:
        row = wait_for(lambda: (r := worker_row(sqlite_db, "rowkeeper")) and r["succeeded"] == 2 and r["failed"] == 1
                       and len(r["running"]) == 1 and r, 60, "the row with 2 succeeded, 1 failed, 1 running")
        assert (row["state"], row["pid"], row["queues"], row["concurrency"]) == ("RUNNING", proc.pid, ["default"], 2)
        first_beat = row["heartbeat_at"]
        wait_for(lambda: worker_row(sqlite_db, "rowkeeper")["heartbeat_at"] != first_beat, 30, "a later heartbeat")
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: worker_row(sqlite_db, "rowkeeper")["state"] == "STOPPING", 30, "the row saying STOPPING")
        proc.send_signal(signal.SIGTERM)  # the second one releases the sleeping job at once
        assert proc.wait(PROCESS_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    row = worker_row(sqlite_db, "rowkeeper")
    assert (row["state"], row["running"], row["succeeded"], row["failed"]) == ("STOPPED", [], 2, 1)
    assert row["stopped_at"] is not None


def test_a_worker_killed_with_sigkill_is_marked_lost_by_another_after_stale_after(sqlite_db, tmp_path):
    env = base_env(sqlite_db.url)  # STALE_AFTER 1 s, heartbeats every 0.2 s
    victim = start_worker(env, tmp_path, "victim")
    survivor = None
    try:
        wait_for(lambda: worker_row(sqlite_db, "victim").get("state") == "RUNNING", 60, "the victim's row")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        survivor = start_worker(env, tmp_path, "survivor")
        wait_for(lambda: worker_row(sqlite_db, "victim").get("state") == "LOST", 60, "the victim marked lost")
        assert worker_row(sqlite_db, "survivor")["state"] == "RUNNING"
    finally:
        stop_all([p for p in (victim, survivor) if p is not None])
