"""`manage.py jobs`: list, show, cancel and retry in process; watch as a real process under a real
pseudo-terminal (pexpect) and piped, fed by a real worker through a real broker."""
from __future__ import annotations

import re
import subprocess
import sys
from io import StringIO

import pexpect
import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from jobs.models import Job, JobStatus
from tests.integration.test_worker_processes import (  # noqa: F401  (fixtures)
    ROOT,
    base_env,
    manage,
    migrated_sqlite,
    sqlite_db,
    start_worker,
)

ANSI = re.compile(r"\x1b\[")


def run(*args: str) -> str:
    out = StringIO()
    call_command("jobs", *args, stdout=out)
    return out.getvalue()


def make(task: str = "tests.jobs_tasks.add", **fields) -> Job:
    return Job.objects.create(task_path=task, **fields)


# list, show, cancel, retry ------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_prints_tab_separated_lines_with_a_header_when_not_on_a_terminal():
    job = make(message="half way", progress_done=1, progress_total=2, status=JobStatus.RUNNING)
    lines = run("list").splitlines()
    assert lines[0] == "ID\tSTATUS\tPROGRESS\tQUEUE\tNAME\tENQUEUED\tMESSAGE"
    assert lines[1].split("\t")[:5] == [str(job.pk), "RUNNING", "50%", "default", "Add"]
    assert lines[1].endswith("\thalf way")


@pytest.mark.django_db
def test_list_filters_by_status_queue_task_and_owner():
    alice = User.objects.create_user("alice")
    wanted = make("tests.jobs_tasks.add_report", queue="reports", status=JobStatus.FAILED, owner=alice)
    make("tests.jobs_tasks.add_report", queue="reports", status=JobStatus.SUCCESSFUL, owner=alice)
    make(status=JobStatus.FAILED, owner=alice)
    make("tests.jobs_tasks.add_report", queue="reports", status=JobStatus.FAILED)
    lines = run("list", "--status", "FAILED", "--queue", "reports", "--task", "add_report", "--owner", "alice").splitlines()
    assert [line.split("\t")[0] for line in lines[1:]] == [str(wanted.pk)]


@pytest.mark.django_db
def test_show_finds_a_job_by_its_first_characters_and_prints_everything_about_it():
    job = make(status=JobStatus.FAILED, error_type="builtins.ValueError", error_message="bad input", attempts=2,
               max_attempts=3, log=[{"n": 1, "at": "2026-05-01T10:00:00+00:00", "text": "started"}], log_count=1)
    text = run("show", str(job.pk)[:8])
    assert f"Job {job.pk}" in text and "  status:    FAILED" in text and "  attempts:  2 of 3" in text
    assert "  error:     builtins.ValueError: bad input" in text and "    2026-05-01 10:00:00  started" in text


@pytest.mark.django_db
def test_an_unknown_or_ambiguous_id_is_a_clear_error_with_exit_code_2():
    with pytest.raises(CommandError, match="No job starts with abcdef12.") as missing:
        run("show", "abcdef12")
    assert missing.value.returncode == 2
    with pytest.raises(CommandError, match="'zz' is not a job id"):
        run("show", "zz")


@pytest.mark.django_db(transaction=True)
def test_cancel_ends_a_ready_job_and_asks_a_running_one_to_stop(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9"}
    ready, running = make(), make(status=JobStatus.RUNNING)
    out = run("cancel", str(ready.pk), str(running.pk))
    assert out.splitlines() == [f"{ready.pk}: cancelled", f"{running.pk}: asked to stop (it is running)"]
    ready.refresh_from_db()
    running.refresh_from_db()
    assert (ready.status, running.status, running.cancel_requested) == ("CANCELLED", "RUNNING", True)


@pytest.mark.django_db(transaction=True)
def test_retry_queues_a_failed_job_again_and_refuses_a_successful_one(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://127.0.0.1:9"}
    failed, done = make(status=JobStatus.FAILED, attempts=1), make(status=JobStatus.SUCCESSFUL)
    err = StringIO()
    with pytest.raises(CommandError, match=r"1 job\(s\) could not be retried.") as refused:
        call_command("jobs", "retry", str(failed.pk), str(done.pk), stdout=StringIO(), stderr=err)
    assert refused.value.returncode == 1
    assert "only FAILED or CANCELLED jobs can be retried" in err.getvalue()
    failed.refresh_from_db()
    assert failed.status == "READY"


# watch, for real ------------------------------------------------------------------------------------

ENQUEUE = "from tests.jobs_tasks import {task}; print({task}.enqueue({args}).id)"


@pytest.fixture
def stack(sqlite_db, embedded_broker, tmp_path):
    """A database file and a broker that a watcher process and a worker process share."""
    env = base_env(sqlite_db.url) | {"STOMP_BROKER_URL": embedded_broker.url, "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    workers = []

    def worker():
        workers.append(start_worker(env, tmp_path, f"w{len(workers)}"))

    def enqueue(task: str, args: str) -> str:
        return manage(env, "shell", "-v0", "-c", ENQUEUE.format(task=task, args=args)).stdout.split()[-1]

    yield env, enqueue, worker
    for proc in workers:
        proc.terminate()
        proc.wait(60)


def test_watch_under_a_terminal_draws_bars_live_and_exits_0_when_the_job_succeeds(stack):
    env, enqueue, worker = stack
    job_id = enqueue("count_slowly", "30, 0.1")
    child = pexpect.spawn(sys.executable, ["manage.py", "jobs", "watch", job_id], cwd=str(ROOT), env=env,
                          encoding="utf-8", timeout=90, dimensions=(30, 120))
    child.logfile_read = screen = StringIO()
    try:
        child.expect("READY")  # the snapshot, before any worker ran it
        worker()
        child.expect("RUNNING")
        child.expect("SUCCESSFUL")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    seen = screen.getvalue()
    assert child.exitstatus == 0, seen
    assert ANSI.search(seen) and "━" in seen  # colour and a bar, redrawn in place


def test_watch_piped_prints_plain_lines_from_the_snapshot_and_the_stream_and_exits_0(stack):
    env, enqueue, worker = stack
    job_id = enqueue("count_slowly", "30, 0.1")
    watcher = subprocess.Popen([sys.executable, "manage.py", "jobs", "watch", job_id], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = watcher.stdout.readline()
        assert first.startswith(f"{job_id[:8]}  Count slowly  READY"), first
        worker()
        out, err = watcher.communicate(timeout=90)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
    assert watcher.returncode == 0, out + err
    lines = out.splitlines()
    assert not ANSI.search(out)
    assert lines[-1] == f"{job_id[:8]}  Count slowly  SUCCESSFUL  100%  step 30"
    # Progress arrived as events: the database is read only every 5 s, the job runs 3 s.
    percents = {m.group(1) for line in lines if (m := re.search(r"RUNNING  (\d+)%", line))}
    assert len(percents) >= 3, lines


def test_watch_exits_1_with_the_error_when_the_job_fails(stack):
    env, enqueue, worker = stack
    job_id = enqueue("always_fail", "")
    worker()
    done = subprocess.run([sys.executable, "manage.py", "jobs", "watch", job_id], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == f"{job_id[:8]}  Always fail  FAILED  RuntimeError: always fails"
    assert f"Job {job_id} ended FAILED." in done.stderr


def test_watch_all_until_idle_follows_every_active_job_to_its_end(stack):
    env, enqueue, worker = stack
    first, second = enqueue("count_slowly", "10, 0.05"), enqueue("add", "2, 3")
    watcher = subprocess.Popen([sys.executable, "manage.py", "jobs", "watch", "--until-idle"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "READY" in watcher.stdout.readline()
        worker()
        out, err = watcher.communicate(timeout=90)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)
    assert watcher.returncode == 0, out + err
    assert f"{first[:8]}  Count slowly  SUCCESSFUL  100%  step 10" in out.splitlines()
    assert f"{second[:8]}  Add  SUCCESSFUL  100%" in out.splitlines()
