"""Real `manage.py jobworker` processes on a shared database file (or PostgreSQL database):
racing for jobs, killed with SIGKILL, stopped with SIGTERM."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import port_open, service_missing
from tests.jobs_tasks import runs_in

ROOT = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT = 90
FAST_JOBS = {"HEARTBEAT_INTERVAL": 0.2, "STALE_AFTER": 1.0, "CANCEL_POLL_INTERVAL": 0.1, "PROGRESS_INTERVAL": 0.05}

pytestmark = pytest.mark.slow


def base_env(db_url: str, jobs_settings: dict | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=db_url,
        DJANGO_SETTINGS_MODULE="tests.jobs_settings",
        JOBS_SETTINGS_JSON=json.dumps(FAST_JOBS if jobs_settings is None else jobs_settings),
        DJANGO_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    # A reachable broker lets the publisher flush at exit at once; without one it waits 2 s per process.
    rabbit = os.environ.get("STOMP_RABBITMQ_URL", "stomp://guest:guest@127.0.0.1:61613")
    env["STOMP_BROKER_URL"] = rabbit if port_open("127.0.0.1", 61613) else "stomp://127.0.0.1:9"
    return env


def manage(env: dict, *args: str, timeout: float = PROCESS_TIMEOUT) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def start_worker(env: dict, log_dir: Path, name: str, *args: str) -> subprocess.Popen:
    # The child gets its own copy of the file descriptor: ours is closed once it has started.
    with open(log_dir / f"{name}.log", "w") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "jobworker", "--worker-id", name, "--poll-interval", "0.2", *args],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )


def enqueue(env: dict, code: str) -> list[str]:
    """Run enqueue code in a separate process on that database; it prints the job ids, one per line."""
    done = manage(env, "shell", "-v0", "-c", code)
    return [line for line in done.stdout.split() if line]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s")


class Database:
    """A database the subprocesses share, read back with the plain driver."""

    def __init__(self, url: str, connect):
        self.url = url
        self._connect = connect

    def rows(self, sql: str, params=()) -> list[tuple]:
        conn = self._connect()
        try:
            cur = conn.cursor()
            cur.execute(sql, params)
            return cur.fetchall()
        finally:
            conn.close()

    def job(self, job_id: str) -> dict:
        conn = self._connect()
        try:
            cur = conn.cursor()
            cur.execute("SELECT status, attempts, worker_ids, error_type, log FROM jobs_job WHERE id = %s"
                        .replace("%s", "?" if self.url.startswith("sqlite") else "%s"),
                        (job_id.replace("-", "") if self.url.startswith("sqlite") else job_id,))
            status, attempts, worker_ids, error_type, log = cur.fetchone()
        finally:
            conn.close()
        decode = (lambda v: json.loads(v) if isinstance(v, str) else v)
        return {"status": status, "attempts": attempts, "worker_ids": decode(worker_ids), "error_type": error_type,
                "log": [e["text"] for e in decode(log)]}


@pytest.fixture(scope="module")
def migrated_sqlite(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    manage(base_env(f"sqlite:///{path}"), "migrate", "-v0")
    return path


@pytest.fixture
def sqlite_db(migrated_sqlite, tmp_path) -> Database:
    path = tmp_path / "jobs.sqlite3"
    shutil.copy(migrated_sqlite, path)
    return Database(f"sqlite:///{path}", lambda: sqlite3.connect(path, timeout=20))


@pytest.fixture
def postgres_db() -> Database:
    base = os.environ.get("TEST_POSTGRES_URL")
    if not base:
        service_missing("TEST_POSTGRES_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/postgres)")
    import psycopg

    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        service_missing(f"PostgreSQL not reachable at TEST_POSTGRES_URL: {exc}")
    name = f"jobs_race_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        manage(base_env(url), "migrate", "-v0")
        yield Database(url, lambda: psycopg.connect(url))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


ENQUEUE_RECORDING = """
import os
from tests.jobs_tasks import record_run
for _ in range(int(os.environ["N_JOBS"])):
    print(record_run.enqueue(os.environ["RUNS_FILE"], 0.005).id)
"""


def race(db: Database, tmp_path: Path, workers: int = 2, jobs: int = 200) -> None:
    runs = tmp_path / "runs"
    # Default JOBS: a 1 s STALE_AFTER would let a worker stalled on the write lock look dead.
    env = base_env(db.url, {}) | {"N_JOBS": str(jobs), "RUNS_FILE": str(runs)}
    procs = [start_worker(env, tmp_path, f"racer-{n}", "--concurrency", "2") for n in range(workers)]
    try:
        # Every racer is up (its Worker row says RUNNING) before the first job exists: on a loaded
        # machine one interpreter can take seconds longer to start than the other, and a race
        # the slower one never joined would prove nothing.
        wait_for(lambda: db.rows("SELECT COUNT(*) FROM jobs_worker WHERE state = 'RUNNING'")[0][0] == workers,
                 PROCESS_TIMEOUT, "every racer registered")
        ids = enqueue(env, ENQUEUE_RECORDING)
        assert len(ids) == jobs
        wait_for(lambda: db.rows("SELECT COUNT(*) FROM jobs_job WHERE status IN ('SUCCESSFUL', 'FAILED')")[0][0] == jobs,
                 PROCESS_TIMEOUT, f"{jobs} jobs finished")
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(PROCESS_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert codes == [0] * workers, [(tmp_path / f"racer-{n}.log").read_text()[-2000:] for n in range(workers)]
    recorded = runs_in(str(runs))
    assert (len(recorded), set(recorded)) == (jobs, set(ids))
    states = db.rows("SELECT status, attempts, error_type, COUNT(*) FROM jobs_job GROUP BY status, attempts, error_type")
    assert states == [("SUCCESSFUL", 1, "", jobs)]
    per_worker = dict(db.rows("SELECT worker_id, COUNT(*) FROM jobs_job WHERE status = 'SUCCESSFUL' "
                              "AND attempts = 1 GROUP BY worker_id"))
    assert sum(per_worker.values()) == jobs
    assert sorted(per_worker) == [f"racer-{n}" for n in range(workers)]  # every worker got a share


def test_two_worker_processes_on_sqlite_run_each_of_200_jobs_exactly_once(sqlite_db, tmp_path):
    race(sqlite_db, tmp_path)


@pytest.mark.postgres
def test_two_worker_processes_on_postgresql_run_each_of_200_jobs_exactly_once(postgres_db, tmp_path):
    race(postgres_db, tmp_path)


def test_a_job_of_a_worker_killed_with_sigkill_is_requeued_and_run_by_another(sqlite_db, tmp_path):
    runs = tmp_path / "runs"
    env = base_env(sqlite_db.url) | {"RUNS_FILE": str(runs)}
    [job_id] = enqueue(env, (
        "import os\nfrom jobs.api import job_options\nfrom tests.jobs_tasks import sleep_for\n"
        "with job_options(max_attempts=2):\n    print(sleep_for.enqueue(os.environ['RUNS_FILE'], 1.0).id)\n"
    ))
    victim = start_worker(env, tmp_path, "victim")
    try:
        wait_for(lambda: runs_in(str(runs)), 30, "the victim starting the job")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert sqlite_db.job(job_id)["status"] == "RUNNING"  # nobody finished it: the worker is dead
    time.sleep(FAST_JOBS["STALE_AFTER"] + 0.5)  # its last heartbeat ages past STALE_AFTER
    rescuer = start_worker(env, tmp_path, "rescuer", "--burst")
    assert rescuer.wait(PROCESS_TIMEOUT) == 0
    job = sqlite_db.job(job_id)
    assert (job["status"], job["attempts"], job["worker_ids"]) == ("SUCCESSFUL", 2, ["victim", "rescuer"])
    assert job["log"][0].startswith("Worker victim stopped heartbeating")
    assert runs_in(str(runs)) == [job_id, job_id, f"finished {job_id}"]


def test_sigterm_lets_the_running_job_finish_then_the_worker_exits(sqlite_db, tmp_path):
    runs = tmp_path / "runs"
    env = base_env(sqlite_db.url) | {"RUNS_FILE": str(runs)}
    [job_id] = enqueue(env, "import os\nfrom tests.jobs_tasks import sleep_for\n"
                            "print(sleep_for.enqueue(os.environ['RUNS_FILE'], 1.0).id)\n")
    worker = start_worker(env, tmp_path, "graceful")
    try:
        wait_for(lambda: runs_in(str(runs)), 30, "the worker starting the job")
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert (code, sqlite_db.job(job_id)["status"], runs_in(str(runs))) == (0, "SUCCESSFUL", [job_id, f"finished {job_id}"])


def test_a_second_sigterm_releases_the_running_job_and_exits_at_once(sqlite_db, tmp_path):
    runs = tmp_path / "runs"
    env = base_env(sqlite_db.url) | {"RUNS_FILE": str(runs)}
    [job_id] = enqueue(env, "import os\nfrom tests.jobs_tasks import sleep_for\n"
                            "print(sleep_for.enqueue(os.environ['RUNS_FILE'], 30.0).id)\n")
    worker = start_worker(env, tmp_path, "impatient")
    try:
        wait_for(lambda: runs_in(str(runs)), 30, "the worker starting the job")
        worker.send_signal(signal.SIGTERM)
        # Two signals that arrive before the handler ran count as one: wait for the first to land.
        wait_for(lambda: "got SIGTERM: stopping" in (tmp_path / "impatient.log").read_text(), 15,
                 "the worker handling the first SIGTERM")
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(15)
    finally:
        if worker.poll() is None:
            worker.kill()
    job = sqlite_db.job(job_id)
    assert (code, job["status"], job["attempts"], job["log"]) == (0, "READY", 0, ["Released by worker impatient at shutdown."])


def test_a_prefetched_job_of_a_worker_killed_with_sigkill_is_requeued_and_run_once_by_another(sqlite_db, tmp_path):
    runs, queued_runs = tmp_path / "runs", tmp_path / "queued"
    env = base_env(sqlite_db.url, FAST_JOBS | {"PREFETCH": 4, "PREFETCH_SECONDS": None}) | {
        "RUNS_FILE": str(runs), "QUEUED_FILE": str(queued_runs)}
    busy_id, queued_id = enqueue(env, (
        "import os\nfrom tests.jobs_tasks import record_run, sleep_for\n"
        "print(sleep_for.using(priority=10).enqueue(os.environ['RUNS_FILE'], 5.0).id)\n"
        "print(record_run.enqueue(os.environ['QUEUED_FILE']).id)\n"
    ))
    victim = start_worker(env, tmp_path, "victim", "--concurrency", "1")
    try:
        wait_for(lambda: runs_in(str(runs)), 30, "the victim starting the busy job")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert sqlite_db.job(queued_id)["status"] == "RUNNING"  # prefetched by the victim, never started
    time.sleep(FAST_JOBS["STALE_AFTER"] + 0.5)
    rescuer = start_worker(env, tmp_path, "rescuer", "--burst")
    assert rescuer.wait(PROCESS_TIMEOUT) == 0
    queued, busy = sqlite_db.job(queued_id), sqlite_db.job(busy_id)
    assert (queued["status"], queued["attempts"], queued["worker_ids"]) == ("SUCCESSFUL", 1, ["victim", "rescuer"])
    assert (busy["status"], busy["error_type"]) == ("FAILED", "jobs.exceptions.WorkerLost")
    assert runs_in(str(queued_runs)) == [queued_id]


def test_sigterm_releases_prefetched_jobs_at_once_and_lets_the_running_one_finish(sqlite_db, tmp_path):
    runs, queued_runs = tmp_path / "runs", tmp_path / "queued"
    env = base_env(sqlite_db.url, FAST_JOBS | {"PREFETCH": 4, "PREFETCH_SECONDS": None}) | {
        "RUNS_FILE": str(runs), "QUEUED_FILE": str(queued_runs)}
    busy_id, queued_id = enqueue(env, (
        "import os\nfrom tests.jobs_tasks import record_run, sleep_for\n"
        "print(sleep_for.using(priority=10).enqueue(os.environ['RUNS_FILE'], 1.5).id)\n"
        "print(record_run.enqueue(os.environ['QUEUED_FILE']).id)\n"
    ))
    worker = start_worker(env, tmp_path, "graceful", "--concurrency", "1")
    try:
        wait_for(lambda: runs_in(str(runs)), 30, "the worker starting the busy job")
        worker.send_signal(signal.SIGTERM)
        wait_for(lambda: sqlite_db.job(queued_id)["status"] == "READY", 1.0, "the prefetched job released")
        busy_status_when_released = sqlite_db.job(busy_id)["status"]
        code = worker.wait(30)
    finally:
        if worker.poll() is None:
            worker.kill()
    queued = sqlite_db.job(queued_id)
    assert (code, busy_status_when_released, sqlite_db.job(busy_id)["status"]) == (0, "RUNNING", "SUCCESSFUL")
    assert (queued["status"], queued["attempts"], runs_in(str(queued_runs))) == ("READY", 0, [])
