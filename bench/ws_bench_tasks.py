"""The task bench/ws_bench.py runs in `manage.py jobworker`: progress at a fixed rate, then a burst.

Each progress message carries the time of the report_progress() call ("s <epoch>" in the
steady phase, "b <epoch>" in the burst), so a client can measure the whole path: the task's
call, the worker's write and publish, the broker, the web process's hub and consumer, the
WebSocket.
"""
from __future__ import annotations

import time

from django.tasks import task

from jobs.progress import report_progress


@task(queue_name="default")
def ticker(rate: float, seconds: float, burst: int, pause: float = 1.0) -> dict:
    steady = int(rate * seconds)
    total = steady + burst
    start = time.perf_counter()
    for i in range(steady):
        # Absolute schedule: a late tick does not push every later one back.
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        report_progress(i + 1, total, f"s {time.time():.6f}")
    time.sleep(pause)
    for i in range(burst):
        report_progress(steady + i + 1, total, f"b {time.time():.6f}")
    return {"steady": steady, "burst": burst}
