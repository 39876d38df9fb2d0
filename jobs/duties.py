"""What a worker does besides running jobs: its Worker row, the schedules, the housekeeping
(marking silent workers lost, pruning old rows: jobs.retention, publishing the admin's live
overview: jobs.ops_live).

jobs.worker.Worker calls three hooks: start() when its loop starts, beat() with each heartbeat
of its loop (the Worker row), stop() when it exits. Schedules and housekeeping run in a thread
of their own ("jobworker-duties", its own database connection), so they never delay a claim of
this worker; each duty is one short transaction at a time.
"""
from __future__ import annotations

import logging
import random
import threading
import time
from typing import TYPE_CHECKING

from django.db import connection

from . import conf, metrics, retention, schedules, workers

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["WorkerDuties"]

logger = logging.getLogger(__name__)

# Seconds the duties thread pauses after a duty failed (the database restarting, a lock timeout).
ERROR_PAUSE = 1.0
# Seconds stop() waits for the duties thread (it finishes the transaction it is in).
JOIN_TIMEOUT = 10.0


class WorkerDuties:
    """The Worker row, schedule ticks and the stale-worker sweep of one Worker."""

    def __init__(self, worker: Worker, *, schedules: bool = True) -> None:
        self.worker = worker
        self.schedules = schedules
        self.schedule_names: list[str] = []
        self.enqueued = 0  # jobs this worker enqueued for schedules
        self.pruned: retention.Pruned | None = None  # what its last prune deleted
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """In the worker's loop thread: write the Worker row, read the schedules, start the thread."""
        try:
            workers.register(self.worker)
        except Exception:  # the database may be restarting: the first heartbeat writes it
            logger.exception("Worker %s: could not write its Worker row yet", self.worker.worker_id)
        if self.schedules:
            self.schedule_names = sorted(schedules.declarations())
            try:
                schedules.sync()
            except Exception:
                logger.exception("Worker %s: could not synchronise the schedules; using the rows as they are",
                                 self.worker.worker_id)
            if self.schedule_names:
                logger.info("Worker %s: schedules %s", self.worker.worker_id, ", ".join(self.schedule_names))
        self._thread = threading.Thread(target=self._run, name="jobworker-duties", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        """In the worker's loop thread, with its job heartbeat."""
        workers.beat(self.worker)

    def outcomes(self, jobs: list, kinds: list[str]) -> None:
        """In the worker's loop thread, after outcomes were committed: what no task signal says."""
        metrics.count_outcomes(jobs, kinds)

    def stop(self) -> None:
        """In the worker's loop thread, at exit: stop the thread, mark the row STOPPED."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT)
        try:
            workers.stopped(self.worker)
        except Exception:
            logger.exception("Worker %s: could not mark its row stopped", self.worker.worker_id)

    # The thread -------------------------------------------------------------------------------

    def _intervals(self) -> dict[str, float]:
        intervals = {"lost": max(0.2, float(conf.get("STALE_AFTER")) / 3)}
        if self.schedule_names:
            intervals["schedules"] = float(conf.get("SCHEDULE_INTERVAL"))
        if conf.get("PRUNE_INTERVAL") is not None:
            intervals["prune"] = float(conf.get("PRUNE_INTERVAL"))
        if conf.get("OVERVIEW_INTERVAL") is not None:
            intervals["overview"] = float(conf.get("OVERVIEW_INTERVAL"))
        return intervals

    def _run(self) -> None:
        intervals = self._intervals()
        now = time.monotonic()
        due = dict.fromkeys(intervals, now)
        if "prune" in due:  # workers started together spread their prunes over the interval
            due["prune"] = now + random.uniform(0, intervals["prune"])
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for name in [n for n, at in due.items() if at <= now]:
                    try:
                        getattr(self, f"_do_{name}")()
                    except Exception:
                        logger.exception("Worker %s: duty %r failed; retrying in %.1f s", self.worker.worker_id, name,
                                         ERROR_PAUSE)
                        self._close_connection()
                        due[name] = time.monotonic() + max(ERROR_PAUSE, intervals[name])
                    else:
                        due[name] = time.monotonic() + intervals[name]
                self._stop.wait(max(0.0, min(due.values()) - time.monotonic()))
        finally:
            self._close_connection()

    def _do_schedules(self) -> None:
        if self.worker.stopping:
            return
        self.enqueued += schedules.tick(names=self.schedule_names, worker_id=self.worker.worker_id)

    def _do_lost(self) -> None:
        workers.mark_lost()

    def _do_overview(self) -> None:
        from . import ops_live

        if not self.worker.stopping and ops_live.is_publisher(self.worker.worker_id):
            ops_live.publish_overview()

    def _do_prune(self) -> None:
        self.pruned = retention.prune(should_stop=lambda: self._stop.is_set() or self.worker.stopping)

    @staticmethod
    def _close_connection() -> None:
        try:
            connection.close()
        except Exception:
            pass
