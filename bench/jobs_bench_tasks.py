"""Tasks of bench/jobs_bench.py: a job that sleeps ``ms`` (0: a no-op) and proves it ran exactly once, and a progress probe.

The no-op appends its number to the file named by BENCH_RUNLOG (one O_APPEND write, no
database), so the benchmark can count how often each job really ran, whatever the backend.
"""
from __future__ import annotations

import os
import time

from django.tasks import task

from jobs.progress import report_progress

_fd: int | None = None


def _record(i: int) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["BENCH_RUNLOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, b"%d\n" % i)


@task(queue_name="default")
def noop(i: int, ms: int = 0) -> None:
    if ms:
        time.sleep(ms / 1000)
    _record(i)


@task(queue_name="default", backend="tasksdb")
def noop_tasksdb(i: int, ms: int = 0) -> None:
    if ms:
        time.sleep(ms / 1000)
    _record(i)


@task(queue_name="default")
def progress_probe(calls: int) -> dict:
    """Time `calls` report_progress() calls inside a running job (minus the empty loop)."""
    started = time.perf_counter_ns()
    for i in range(calls):
        report_progress(i + 1, calls, "working")
    elapsed = time.perf_counter_ns() - started
    started = time.perf_counter_ns()
    for i in range(calls):
        pass
    loop = time.perf_counter_ns() - started
    return {"calls": calls, "ns_per_call": elapsed / calls, "loop_ns_per_iteration": loop / calls}
