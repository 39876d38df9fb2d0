"""Tasks used by the jobs tests (importable by worker subprocesses as tests.jobs_tasks)."""
from __future__ import annotations

import asyncio
import os
import time

from django.tasks import task

from jobs.progress import check_cancelled, current_job_id, log, report_progress, save_result_file


def _append(path: str, line: str) -> None:
    # O_APPEND writes of one short line are atomic across processes: the file is the run record.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def runs_in(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


@task
def add(a, b):
    return a + b


@task(queue_name="reports", priority=10)
def add_report(a, b):
    return a + b


@task
async def async_add(a, b):
    await asyncio.sleep(0)
    report_progress(1, 1, "async done")
    return a + b


@task(takes_context=True)
def attempt_number(context):
    return context.attempt


@task(takes_context=True)
def context_progress(context):
    """Reports progress from a task taking context; returns whether the context names this job."""
    report_progress(1, 1, "with context")
    return context.task_result.id == current_job_id()


@task
def record_run(path, sleep=0.0):
    """Records the job id in ``path`` each time it runs (exactly-once checks)."""
    _append(path, current_job_id() or "outside-worker")
    if sleep:
        time.sleep(sleep)
    return "ok"


@task
def count_to(n, message="step"):
    for i in range(1, n + 1):
        report_progress(i, n, f"{message} {i}")
        log(f"did {i}")
    return n


@task
def count_slowly(n, delay=0.03):
    for i in range(1, n + 1):
        time.sleep(delay)
        report_progress(i, n, f"step {i}")
    log("counted")
    return n


@task
def wait_for_cancel(path, seconds=20.0):
    """Records that it started, then waits cooperatively for a cancel request."""
    _append(path, current_job_id() or "outside-worker")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_cancelled()
        time.sleep(0.01)
    return "not cancelled"


@task
def report_then_wait(path, seconds=20.0):
    """Reports half the work, records that it did, then waits for a cancel request."""
    report_progress(2, 4, "halfway")
    log("half done")
    _append(path, current_job_id() or "outside-worker")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_cancelled()
        time.sleep(0.01)
    return "not cancelled"


@task
def sleep_for(path, seconds):
    """Records that it started, then sleeps without looking at cancellation."""
    _append(path, current_job_id() or "outside-worker")
    time.sleep(seconds)
    _append(path, f"finished {current_job_id()}")
    return seconds


@task(time_limit=0.5)
def spin_past_limit():
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.01)
    return "should have timed out"


@task(max_attempts=3)
def fail_twice(path):
    """Fails on its first two runs, succeeds on the third (attempts counted in ``path``)."""
    _append(path, f"{time.time():.3f}")
    if len(runs_in(path)) < 3:
        raise ValueError(f"run {len(runs_in(path))} fails on purpose")
    return len(runs_in(path))


@task
def always_fail():
    raise RuntimeError("always fails")


@task
def returns_object():
    return object()


@task
def write_file(text):
    save_result_file("out.txt", text)
    return {"chars": len(text)}


def not_a_task():
    return None


def _finish_slowly(sender, task_result, **kwargs) -> None:
    """A task_finished receiver that records the job id, then sleeps: it widens the window between
    a job's final commit and whatever a worker does after it (the SIGKILL tests kill it there)."""
    _append(os.environ["SLOW_TASK_FINISHED_FILE"], task_result.id)
    time.sleep(float(os.environ.get("SLOW_TASK_FINISHED_SECONDS", "60")))


if os.environ.get("SLOW_TASK_FINISHED_FILE"):  # set only for the worker processes of those tests
    from django.tasks.signals import task_finished

    task_finished.connect(_finish_slowly, dispatch_uid="tests.jobs_tasks.finish_slowly")
