"""The Worker run in a thread of the test process, on the test database: every policy, one by one."""
from __future__ import annotations

import contextlib
import logging
import threading
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.tasks import TaskResultStatus

from jobs.api import enqueue_for
from jobs.models import Job
from jobs.worker import Worker, backoff_delay
from tests import jobs_tasks

pytestmark = pytest.mark.django_db(transaction=True)

FAST = {
    "HEARTBEAT_INTERVAL": 0.1,
    "CANCEL_POLL_INTERVAL": 0.05,
    "PROGRESS_INTERVAL": 0.05,
    "STALE_AFTER": 1.0,
    "RETRY_BACKOFF": 0.2,
    "SHUTDOWN_GRACE": 5.0,
}


@pytest.fixture(autouse=True)
def fast_jobs(settings):
    settings.JOBS = dict(FAST)


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def status_of(result) -> str:
    return Job.objects.get(pk=result.id).status


@contextlib.contextmanager
def running_worker(**options):
    options.setdefault("poll_interval", 0.05)
    options.setdefault("wakeups", False)
    worker = Worker(**options)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("stats", worker.run()), daemon=True)
    thread.start()
    assert worker.started.wait(10)
    try:
        yield worker
    finally:
        worker.stop(force=True)
        thread.join(15)
        assert not thread.is_alive(), "worker did not stop"


def run_burst(**options):
    options.setdefault("poll_interval", 0.05)
    options.setdefault("wakeups", False)
    return Worker(burst=True, **options).run()


def test_a_burst_worker_runs_a_job_and_stores_its_result():
    result = jobs_tasks.add.enqueue(2, 3)
    run_burst()
    result.refresh()
    assert (result.status, result.return_value, result.attempts) == (TaskResultStatus.SUCCESSFUL, 5, 1)


def test_the_final_row_carries_the_last_progress_and_log():
    result = jobs_tasks.count_to.enqueue(3)
    run_burst()
    job = Job.objects.get(pk=result.id)
    assert (job.progress_done, job.progress_total, job.message, job.log_count, [e["text"] for e in job.log]) == (
        3, 3, "step 3", 3, ["did 1", "did 2", "did 3"])


def test_an_async_task_runs_under_asyncio():
    result = jobs_tasks.async_add.enqueue(4, 5)
    run_burst()
    result.refresh()
    assert result.return_value == 9


def test_a_task_taking_context_sees_its_attempt_number():
    result = jobs_tasks.attempt_number.enqueue()
    run_burst()
    result.refresh()
    assert result.return_value == 1


def test_a_task_taking_context_reports_progress_for_its_own_job():
    result = jobs_tasks.context_progress.enqueue()
    run_burst()
    job = Job.objects.get(pk=result.id)
    assert (job.result, job.progress_done, job.message) == (True, 1, "with context")


def test_a_failing_task_ends_failed_with_type_message_and_traceback():
    result = jobs_tasks.always_fail.enqueue()
    run_burst()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.error_type, job.error_message) == ("FAILED", "builtins.RuntimeError", "always fails")
    assert "raise RuntimeError" in job.error_traceback


def test_a_return_value_that_is_not_json_fails_the_job_with_a_clear_error():
    result = jobs_tasks.returns_object.enqueue()
    run_burst()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.error_type) == ("FAILED", "builtins.TypeError")
    assert job.error_message.startswith("The task returned a value that is not JSON-serialisable")


def test_a_job_whose_task_path_no_longer_imports_fails_with_unknown_task():
    result = jobs_tasks.add.enqueue(1, 1)
    Job.objects.filter(pk=result.id).update(task_path="tests.jobs_tasks.gone")
    run_burst()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.error_type) == ("FAILED", "jobs.exceptions.UnknownTask")
    assert "tests.jobs_tasks.gone" in job.error_message


def test_higher_priority_jobs_run_first():
    low = jobs_tasks.add.using(priority=-10).enqueue(0, 0)
    high = jobs_tasks.add.using(priority=50).enqueue(0, 0)
    run_burst(concurrency=1)
    low_job, high_job = Job.objects.get(pk=low.id), Job.objects.get(pk=high.id)
    assert high_job.started_at < low_job.started_at


def test_a_worker_serves_only_its_queues():
    report = jobs_tasks.add_report.enqueue(1, 1)
    default = jobs_tasks.add.enqueue(1, 1)
    run_burst(queues=["default"])
    assert (status_of(default), status_of(report)) == ("SUCCESSFUL", "READY")


def test_max_jobs_stops_the_worker_after_that_many_jobs():
    for _ in range(3):
        jobs_tasks.add.enqueue(1, 1)
    stats = Worker(max_jobs=2, poll_interval=0.05, wakeups=False).run()
    assert (stats.claimed, Job.objects.filter(status="READY").count()) == (2, 1)


def test_a_job_due_later_is_not_run_before_its_run_after():
    from datetime import timedelta

    from django.utils import timezone

    result = jobs_tasks.add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    stats = run_burst()
    assert (stats.claimed, status_of(result)) == (0, "READY")


def test_progress_is_written_to_the_database_while_the_task_runs(tmp_path):
    runs = tmp_path / "runs"
    result = jobs_tasks.report_then_wait.enqueue(str(runs), 20)
    with running_worker():
        wait_until(lambda: jobs_tasks.runs_in(str(runs)))
        job = wait_until(lambda: Job.objects.filter(pk=result.id, progress_done=2).first(), timeout=5)
        Job.objects.get(pk=result.id).cancel()
    assert (job.status, job.progress_done, job.progress_total, job.percent, job.message, [e["text"] for e in job.log]) == (
        "RUNNING", 2, 4, 50.0, "halfway", ["half done"])


def test_the_first_report_after_a_quiet_interval_is_written_without_waiting_for_the_interval(settings, tmp_path):
    # The interval limits how often a run is written, not how late its first report is.
    settings.JOBS = {**FAST, "PROGRESS_INTERVAL": 120.0}
    runs = tmp_path / "runs"
    result = jobs_tasks.report_then_wait.enqueue(str(runs), 20)
    with running_worker():
        wait_until(lambda: jobs_tasks.runs_in(str(runs)))
        job = wait_until(lambda: Job.objects.filter(pk=result.id, progress_done=2).first(), timeout=10)
        Job.objects.get(pk=result.id).cancel()
    assert (job.status, job.message, [e["text"] for e in job.log]) == ("RUNNING", "halfway", ["half done"])


def test_a_job_deleted_while_it_runs_is_dropped_and_the_worker_goes_on(tmp_path):
    runs = tmp_path / "runs"
    doomed = jobs_tasks.sleep_for.enqueue(str(runs), 0.3)
    with running_worker(concurrency=1):
        wait_until(lambda: jobs_tasks.runs_in(str(runs)))
        Job.objects.filter(pk=doomed.id).delete()
        after = jobs_tasks.add.enqueue(1, 1)
        wait_until(lambda: status_of(after) == "SUCCESSFUL")
    assert Job.objects.filter(pk=doomed.id).exists() is False


def test_cancelling_before_the_run_means_the_task_never_runs(tmp_path):
    runs = tmp_path / "runs"
    result = jobs_tasks.record_run.enqueue(str(runs))
    Job.objects.get(pk=result.id).cancel()
    run_burst()
    assert (status_of(result), jobs_tasks.runs_in(str(runs))) == ("CANCELLED", [])


def test_cancelling_during_the_run_stops_a_cooperative_task(tmp_path):
    runs = tmp_path / "runs"
    result = jobs_tasks.wait_for_cancel.enqueue(str(runs), 20)
    with running_worker():
        wait_until(lambda: jobs_tasks.runs_in(str(runs)))
        started = time.monotonic()
        Job.objects.get(pk=result.id).cancel()
        wait_until(lambda: status_of(result) == "CANCELLED", timeout=5)
        took = time.monotonic() - started
    job = Job.objects.get(pk=result.id)
    assert (job.error_type, job.cancel_requested) == ("jobs.exceptions.JobCancelled", True)
    assert took < 2.0


def finished_log_lines(caplog, result) -> list[tuple[str, str]]:
    """django.tasks' log lines about the end of ``result`` (not its start, state=RUNNING)."""
    return [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "django.tasks" and f"id={result.id} " in r.getMessage() and "state=RUNNING" not in r.getMessage()]


def test_a_cancelled_job_is_logged_as_cancelled_at_info_not_as_a_failed_task(tmp_path, caplog):
    runs = tmp_path / "runs"
    result = jobs_tasks.wait_for_cancel.enqueue(str(runs), 20)
    with caplog.at_level(logging.INFO, logger="django.tasks"), running_worker():
        wait_until(lambda: jobs_tasks.runs_in(str(runs)))
        Job.objects.get(pk=result.id).cancel()
        wait_until(lambda: status_of(result) == "CANCELLED", timeout=5)
        wait_until(lambda: finished_log_lines(caplog, result))
    assert finished_log_lines(caplog, result) == [
        ("INFO", f"Task id={result.id} path=tests.jobs_tasks.wait_for_cancel state=CANCELLED")]


def test_a_failed_job_is_still_logged_as_an_error_by_django_tasks(caplog):
    result = jobs_tasks.always_fail.enqueue()
    with caplog.at_level(logging.INFO, logger="django.tasks"):
        run_burst()
    assert finished_log_lines(caplog, result) == [
        ("ERROR", f"Task id={result.id} path=tests.jobs_tasks.always_fail state=FAILED")]


def test_a_job_past_its_time_limit_fails_with_job_timeout():
    result = jobs_tasks.spin_past_limit.enqueue()
    started = time.monotonic()
    with running_worker():
        wait_until(lambda: status_of(result) == "FAILED", timeout=10)
    job = Job.objects.get(pk=result.id)
    assert (job.error_type, job.error_message) == (
        "jobs.exceptions.JobTimeout", "Ran longer than its time limit of 0.5 s.")
    assert time.monotonic() - started < 5


def test_the_thread_of_a_timed_out_job_is_stopped():
    result = jobs_tasks.spin_past_limit.enqueue()
    with running_worker() as worker:
        wait_until(lambda: status_of(result) == "FAILED", timeout=10)
        wait_until(lambda: worker._busy == 0, timeout=5)


def test_backoff_doubles_from_the_base_up_to_the_cap(settings):
    settings.JOBS = {"RETRY_BACKOFF": 0.5, "RETRY_BACKOFF_MAX": 3}
    assert [backoff_delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3, 3]


def test_a_failing_task_with_attempts_left_is_retried_with_backoff(tmp_path):
    runs = tmp_path / "runs"
    result = jobs_tasks.fail_twice.enqueue(str(runs))
    with running_worker():
        wait_until(lambda: status_of(result) == "SUCCESSFUL", timeout=15)
    times = [float(t) for t in jobs_tasks.runs_in(str(runs))]
    job = Job.objects.get(pk=result.id)
    assert (job.attempts, job.result, len(times)) == (3, 3, 3)
    # backoff 0.2 s then 0.4 s (RETRY_BACKOFF 0.2)
    assert times[1] - times[0] >= 0.2 and times[2] - times[1] >= 0.4
    assert [e["text"].split(" failed")[0] for e in job.log] == ["Attempt 1 of 3", "Attempt 2 of 3"]


def test_a_failing_task_without_attempts_left_is_not_retried(tmp_path):
    result = jobs_tasks.always_fail.enqueue()
    stats = run_burst()
    assert (stats.retried, stats.failed, Job.objects.get(pk=result.id).attempts) == (0, 1, 1)


def test_stale_running_jobs_of_a_dead_worker_are_requeued_while_attempts_remain():
    from datetime import timedelta

    from django.utils import timezone

    old = timezone.now() - timedelta(seconds=5)
    job = Job.objects.create(task_path="tests.jobs_tasks.add", args=[1, 2], status="RUNNING", attempts=1,
                             max_attempts=2, worker_id="dead:1", heartbeat_at=old, started_at=old)
    run_burst()
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result, job.worker_ids) == ("SUCCESSFUL", 2, 3, [job.worker_id])
    assert job.log[0]["text"].startswith("Worker dead:1 stopped heartbeating")


def test_stale_running_jobs_without_attempts_left_fail_with_worker_lost():
    from datetime import timedelta

    from django.utils import timezone

    old = timezone.now() - timedelta(seconds=5)
    job = Job.objects.create(task_path="tests.jobs_tasks.add", args=[1, 2], status="RUNNING", attempts=1,
                             max_attempts=1, worker_id="dead:1", heartbeat_at=old, started_at=old)
    stats = run_burst()
    job.refresh_from_db()
    assert (job.status, job.error_type, stats.recovered) == ("FAILED", "jobs.exceptions.WorkerLost", 1)


def test_a_running_job_with_a_fresh_heartbeat_is_left_alone():
    from django.utils import timezone

    job = Job.objects.create(task_path="tests.jobs_tasks.add", status="RUNNING", attempts=1, max_attempts=2,
                             worker_id="alive:1", heartbeat_at=timezone.now())
    run_burst()
    job.refresh_from_db()
    assert (job.status, job.worker_id) == ("RUNNING", "alive:1")


def test_stop_lets_a_running_job_finish_within_the_grace_period(tmp_path):
    runs = tmp_path / "runs"
    result = jobs_tasks.sleep_for.enqueue(str(runs), 0.5)
    worker = Worker(poll_interval=0.05, wakeups=False, shutdown_grace=10)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_until(lambda: jobs_tasks.runs_in(str(runs)))
    worker.stop()
    thread.join(10)
    assert (thread.is_alive(), status_of(result)) == (False, "SUCCESSFUL")


def test_a_second_stop_releases_the_running_job_back_to_ready(tmp_path):
    runs = tmp_path / "runs"
    result = jobs_tasks.sleep_for.enqueue(str(runs), 3)
    worker = Worker(poll_interval=0.05, wakeups=False, shutdown_grace=30)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_until(lambda: jobs_tasks.runs_in(str(runs)))
    worker.stop()
    worker.stop()
    thread.join(10)
    job = Job.objects.get(pk=result.id)
    assert (thread.is_alive(), job.status, job.attempts, job.worker_id) == (False, "READY", 0, "")
    assert job.log[-1]["text"] == f"Released by worker {worker.worker_id} at shutdown."


def test_running_jobs_still_running_after_the_grace_period_are_released(tmp_path):
    runs = tmp_path / "runs"
    result = jobs_tasks.sleep_for.enqueue(str(runs), 3)
    worker = Worker(poll_interval=0.05, wakeups=False, shutdown_grace=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_until(lambda: jobs_tasks.runs_in(str(runs)))
    worker.stop()
    thread.join(10)
    assert (thread.is_alive(), status_of(result)) == (False, "READY")


def test_the_owner_is_notified_when_their_job_ends():
    from notifications.models import Notification

    user = get_user_model().objects.create_user("ann")
    enqueue_for(user, jobs_tasks.always_fail)
    run_burst()
    note = Notification.objects.get(recipient=user)
    assert (note.level, note.title, note.text) == ("error", "Always fail: Failed", "always fails")


def test_a_result_file_gives_the_event_a_download_link(settings, tmp_path):
    from jobs.events import job_event

    settings.MEDIA_ROOT = str(tmp_path)
    result = jobs_tasks.write_file.enqueue("hello")
    run_burst()
    job = Job.objects.get(pk=result.id)
    assert (job.result_file.read(), job_event(job)["result_url"]) == (b"hello", f"/jobs/{job.pk}/download/")


def test_the_command_refuses_an_unknown_queue_naming_the_known_ones():
    with pytest.raises(CommandError, match="Unknown queue.* nightly; the queues of backend 'default' are default, reports"):
        call_command("jobworker", "--queue", "nightly", "--burst")


def test_the_command_refuses_a_concurrency_of_zero():
    with pytest.raises(CommandError, match="concurrency must be a whole number of at least 1"):
        call_command("jobworker", "--concurrency", "0", "--burst")


def test_the_command_refuses_a_negative_poll_interval():
    with pytest.raises(CommandError, match="poll_interval must be a positive number"):
        call_command("jobworker", "--poll-interval", "-1", "--burst")


def test_the_command_in_burst_mode_runs_the_ready_jobs_and_reports_them():
    import io

    jobs_tasks.add.enqueue(1, 1)
    out = io.StringIO()
    call_command("jobworker", "--burst", "--no-wakeup", "--worker-id", "cmd-1", stdout=out)
    assert out.getvalue().strip() == "Worker cmd-1 ran 1 job(s): 1 successful, 0 failed, 0 cancelled, 0 retried, 0 released."


# Prefetch: a claim takes more jobs than free slots into the worker's local queue. -----------

PREFETCH_ALWAYS = {"PREFETCH": 4, "PREFETCH_SECONDS": None}


def start_prefetching_worker(settings, tmp_path, **options):
    """A one-slot worker busy with a 1.5 s job while two more jobs wait in its local queue."""
    settings.JOBS = FAST | PREFETCH_ALWAYS
    busy_runs, queued_runs = str(tmp_path / "busy"), str(tmp_path / "queued")
    busy = jobs_tasks.sleep_for.using(priority=10).enqueue(busy_runs, 1.5)
    queued = [jobs_tasks.record_run.enqueue(queued_runs) for _ in range(2)]
    worker = Worker(concurrency=1, poll_interval=0.05, wakeups=False, **options)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_until(lambda: jobs_tasks.runs_in(busy_runs))
    return worker, thread, busy, queued, queued_runs


def test_prefetched_jobs_wait_running_on_this_worker_without_a_start_time(settings, tmp_path):
    worker, thread, busy, queued, _ = start_prefetching_worker(settings, tmp_path)
    try:
        rows = [Job.objects.get(pk=r.id) for r in queued]
    finally:
        worker.stop(force=True)
        thread.join(15)
    assert [(j.status, j.worker_id, j.started_at, j.attempts) for j in rows] == [
        ("RUNNING", worker.worker_id, None, 1)] * 2


def test_a_first_stop_sends_prefetched_jobs_back_to_ready_while_the_running_job_finishes(settings, tmp_path):
    worker, thread, busy, queued, queued_runs = start_prefetching_worker(settings, tmp_path, shutdown_grace=10)
    worker.stop()
    wait_until(lambda: all(status_of(r) == "READY" for r in queued), timeout=1.0)
    busy_status_when_released = status_of(busy)
    thread.join(15)
    rows = [Job.objects.get(pk=r.id) for r in queued]
    assert (thread.is_alive(), busy_status_when_released, status_of(busy)) == (False, "RUNNING", "SUCCESSFUL")
    assert [(j.status, j.attempts, j.worker_id, j.log[-1]["text"]) for j in rows] == [
        ("READY", 0, "", f"Released by worker {worker.worker_id} at shutdown before it started.")] * 2
    assert jobs_tasks.runs_in(queued_runs) == []


def test_a_prefetched_job_cancelled_before_its_slot_takes_it_ends_cancelled_without_running(settings, tmp_path):
    worker, thread, busy, queued, queued_runs = start_prefetching_worker(settings, tmp_path)
    try:
        ended_now = Job.objects.get(pk=queued[0].id).cancel()
        wait_until(lambda: status_of(queued[0]) == "CANCELLED", timeout=1.0)
        wait_until(lambda: status_of(queued[1]) == "SUCCESSFUL", timeout=10)
    finally:
        worker.stop(force=True)
        thread.join(15)
    job = Job.objects.get(pk=queued[0].id)
    assert (ended_now, job.error_type, job.error_message, job.started_at) == (
        False, "jobs.exceptions.JobCancelled", "Cancelled before it started.", None)
    assert jobs_tasks.runs_in(queued_runs) == [str(queued[1].id)]


def test_a_prefetched_job_of_a_dead_worker_is_requeued_without_counting_the_attempt():
    from datetime import timedelta

    from django.utils import timezone

    old = timezone.now() - timedelta(seconds=5)
    job = Job.objects.create(task_path="tests.jobs_tasks.add", args=[1, 2], status="RUNNING", attempts=1,
                             max_attempts=1, worker_id="dead:1", heartbeat_at=old, started_at=None)
    stats = run_burst()
    job.refresh_from_db()
    assert (job.status, job.attempts, job.result, stats.recovered) == ("SUCCESSFUL", 1, 3, 1)
    assert job.log[0]["text"].startswith("Worker dead:1 stopped heartbeating")


def test_prefetched_jobs_are_heartbeated_while_they_wait(settings, tmp_path):
    worker, thread, busy, queued, _ = start_prefetching_worker(settings, tmp_path)
    try:
        first = Job.objects.get(pk=queued[0].id).heartbeat_at
        later = wait_until(lambda: (h := Job.objects.get(pk=queued[0].id).heartbeat_at) > first and h, timeout=2)
    finally:
        worker.stop(force=True)
        thread.join(15)
    assert later > first


def test_a_higher_priority_job_enqueued_later_runs_before_prefetched_lower_ones(settings, tmp_path):
    worker, thread, busy, queued, queued_runs = start_prefetching_worker(settings, tmp_path)
    try:
        urgent = jobs_tasks.record_run.using(priority=50).enqueue(queued_runs)
        wait_until(lambda: len(jobs_tasks.runs_in(queued_runs)) == 3, timeout=10)
    finally:
        worker.stop(force=True)
        thread.join(15)
    assert jobs_tasks.runs_in(queued_runs)[0] == str(urgent.id)


def test_max_jobs_counts_prefetched_jobs_and_claims_no_more(settings):
    settings.JOBS = FAST | PREFETCH_ALWAYS
    for _ in range(5):
        jobs_tasks.add.enqueue(1, 1)
    stats = Worker(max_jobs=3, concurrency=1, poll_interval=0.05, wakeups=False).run()
    assert (stats.claimed, stats.succeeded, Job.objects.filter(status="READY").count()) == (3, 3, 2)


def test_a_prefetched_job_deleted_before_its_slot_takes_it_never_runs(settings, tmp_path):
    worker, thread, busy, queued, queued_runs = start_prefetching_worker(settings, tmp_path)
    try:
        Job.objects.filter(pk=queued[0].id).delete()
        wait_until(lambda: status_of(queued[1]) == "SUCCESSFUL", timeout=10)
        wait_until(lambda: worker._busy == 0, timeout=5)
    finally:
        worker.stop(force=True)
        thread.join(15)
    assert jobs_tasks.runs_in(queued_runs) == [str(queued[1].id)]
