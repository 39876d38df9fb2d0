"""The tasks a chaos run enqueues (imported by the worker processes as tests.chaos.tasks).

Each run of a job appends "start <job> <pid>" and "end <job> <pid>" to CHAOS_RUNS_FILE, so the
harness counts executions (a job re-run after its worker was killed appears twice) without
trusting the database it checks.

When the harness arms it (creates the file CHAOS_LINGER_FILE + ".arm"), the next job to finish
in any worker takes the arm (one unlink wins), writes "<job> <pid>" to CHAOS_LINGER_FILE and
sleeps CHAOS_LINGER_SECONDS in a task_finished receiver: the worker has committed the job's
final state and not yet notified its owner (issue 8's defect 3), and the harness kills it there.
"""
from __future__ import annotations

import os
import time

from django.tasks import task
from django.tasks.signals import task_finished

from jobs.progress import current_job_id, report_progress

__all__ = ["chaos_step", "runs_in"]


def _append(path: str, line: str) -> None:
    # One short O_APPEND write is atomic across processes: the file is the run record.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def runs_in(path: str) -> list[tuple[str, str, str]]:
    """[(kind, job id, pid)] from a runs file, kind "start" or "end"."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [tuple(line.split()) for line in f if len(line.split()) == 3]


@task(queue_name="default")
def chaos_step(steps: int, delay: float) -> dict:
    """Report ``steps`` progress ticks ``delay`` seconds apart; record the run's start and end."""
    runs = os.environ.get("CHAOS_RUNS_FILE")
    job = current_job_id() or "outside-worker"
    if runs:
        _append(runs, f"start {job} {os.getpid()}")
    for i in range(1, steps + 1):
        time.sleep(delay)
        report_progress(i, steps, f"step {i} of {steps}")
    if runs:
        _append(runs, f"end {job} {os.getpid()}")
    return {"steps": steps}


def _linger(sender, task_result, **kwargs) -> None:
    path = os.environ.get("CHAOS_LINGER_FILE")
    if not path:
        return
    try:
        os.unlink(path + ".arm")
    except FileNotFoundError:
        return
    _append(path, f"{task_result.id} {os.getpid()}")
    time.sleep(float(os.environ.get("CHAOS_LINGER_SECONDS", "0.5")))


task_finished.connect(_linger, dispatch_uid="tests.chaos.tasks.linger")
