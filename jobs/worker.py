"""The job worker behind `manage.py jobworker`: claim, run, heartbeat, cancel, time out, retry, recover.

One loop thread owns every database write the worker makes; each job runs in one of
``concurrency`` slot threads (an async task runs under ``asyncio.run`` in its slot thread).

Claims are atomic across processes: one transaction selects the best READY jobs (priority,
then run_after) and marks them RUNNING. On SQLite that transaction starts with BEGIN IMMEDIATE
(DATABASES OPTIONS transaction_mode, checked by jobs.E003), so claimers queue on the write lock;
on PostgreSQL the SELECT uses FOR UPDATE SKIP LOCKED, so claimers skip each other's rows. Every
later write to a job is a compare-and-swap on its ``seq`` that also checks the job is still RUNNING
on this worker, so a job re-queued behind a worker's back can never be finished twice.

Prefetch: a claim takes up to ``concurrency + JOBS["PREFETCH"]`` jobs (minus those already held)
in one statement, so short jobs share claim statements and commits; every finished outcome of a
loop turn is written in the same transaction as the next claim. The extra jobs wait in a local
queue ordered like the claim (priority, then run_after), so a higher-priority job claimed later
still starts before every prefetched job no slot has taken. They are RUNNING on this worker with
``started_at`` NULL: heartbeated and cancel-polled like running jobs; a slot writes the real start
time (at the next loop turn, or with the outcome); a cancel request ends one CANCELLED without
running it ("Cancelled before it started."); the first stop() puts them back to READY at once
(attempt not counted); the stale sweep re-queues them without counting the attempt. How many are
held is bounded twice: by PREFETCH, and by about JOBS["PREFETCH_SECONDS"] of expected work per
slot (the moving average of this worker's run times; nothing extra before its first job ends), so
long jobs are never hoarded away from idle workers and a later higher-priority job waits at most
about that long behind prefetched ones. One crash window: a worker killed in the milliseconds
between a slot starting a prefetched job and the loop's next commit leaves it with started_at NULL,
so the sweep re-queues it without counting that attempt.

Policies (also in the README):
- Time limit (JOBS["TIME_LIMIT"], @task(time_limit=...)): past it the job is written FAILED
  (jobs.exceptions.JobTimeout, never retried) and JobTimeout is raised asynchronously in its
  thread, which stops pure-Python code at once and blocking C calls when they return. The slot
  stays occupied until the thread really ends, so runaway tasks cannot pile up threads.
- Retries: a task that raises is run again while attempts < max_attempts, after
  RETRY_BACKOFF * 2 ** (attempt - 1) seconds (capped at RETRY_BACKOFF_MAX). Cancellation and
  timeouts are final.
- Stale jobs: a RUNNING job whose heartbeat is older than JOBS["STALE_AFTER"] belongs to a dead
  worker (SIGKILL, power loss, a hung process). Any worker finds it (at start, then every
  STALE_AFTER / 3 seconds) and re-queues it if attempts remain (attempts < max_attempts), else
  fails it with jobs.exceptions.WorkerLost. A worker that was only frozen longer than STALE_AFTER
  learns it lost the job at its next cancel poll and drops the result.
- Stopping: the first stop() (SIGTERM or SIGINT) stops claiming and lets running jobs finish for
  up to ``shutdown_grace`` seconds; then, or at a second stop(), still-running jobs are released:
  back to READY, the attempt not counted, their threads told to cancel, the process exits.
- Cancel requests (Job.cancel()) reach the task within JOBS["CANCEL_POLL_INTERVAL"] through
  jobs.progress.is_cancel_requested() / check_cancelled(); a task that ignores them runs on.
- Nothing promised is lost (DESIGN principle 8): the transaction that makes a job final also
  writes its final event and its owner's notification to the notifications outbox
  (jobs.events.promise_final); they are published after the commit, before task_finished is
  sent. The worker is its process's outbox relay: its loop deletes the rows the broker
  confirmed, and about every second claims rows left unconfirmed past their bound by any
  process (a worker killed after its commit, a shell that exited too soon) and publishes them
  (notifications.outbox). A stopping worker waits up to notifications.outbox.DRAIN_TIMEOUT for
  its confirmations, so a `--burst` run also publishes what a dead worker left.
"""
from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from inspect import iscoroutinefunction
from itertools import count as _counter
from queue import Empty, PriorityQueue, SimpleQueue
from typing import Any

from django.db import DatabaseError, close_old_connections, connection, transaction
from django.tasks import TaskContext, task_backends
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from . import conf, events
from .duties import WorkerDuties
from .backends import JobBackend, load_task
from .exceptions import JobCancelled, JobTimeout, UnknownTask, WorkerLost
from .models import Job, JobStatus
from .progress import RunState, activate, deactivate

__all__ = ["Worker", "WorkerStats", "backoff_delay"]

logger = logging.getLogger(__name__)

# Back off this long after a database error in the loop (the database restarting, a lock timeout).
DB_ERROR_PAUSE = 1.0
# Compare-and-swap rounds before a write gives up for this loop turn (it is retried next turn).
CAS_ROUNDS = 5
# The error message of a job cancelled while it waited in a worker's local queue.
CANCELLED_BEFORE_START = "Cancelled before it started."
# Weight of the newest run time in the moving average that sizes the prefetch.
RUN_TIME_WEIGHT = 0.2
# Seconds stop() waits for the slot threads to exit once nothing runs on them.
THREAD_JOIN_TIMEOUT = 2.0
# The outbox relay's turn (delete confirmed rows, claim overdue ones) comes at most this often,
# and at least four times per NOTIFICATIONS["OUTBOX_RETRY_AFTER"].
OUTBOX_TICK = 1.0


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before the run after ``attempt`` (1-based) failed."""
    base = float(conf.get("RETRY_BACKOFF"))
    cap = float(conf.get("RETRY_BACKOFF_MAX"))
    return min(cap, base * (2 ** max(0, attempt - 1)))


@dataclass(frozen=True)
class WorkerStats:
    """What one Worker.run() did."""

    claimed: int = 0  # jobs taken to run (prefetched jobs released unstarted at a stop are not counted)
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    timed_out: int = 0
    released: int = 0
    recovered: int = 0  # stale jobs of other workers re-queued or failed by this one


@dataclass(frozen=True)
class _Outcome:
    """How one run ended, as seen by its slot thread."""

    ok: bool
    value: Any = None
    error_type: str = ""
    error_message: str = ""
    error_traceback: str = ""
    cancelled: bool = False


@dataclass(eq=False)
class _Run:
    job: Job
    state: RunState
    task: Any
    deadline: float | None  # set by the slot when the task really starts
    thread_id: int | None = None
    # Written under Worker._lock: a slot sets `started` when it takes the run; the loop sets
    # `skipped` on a run no slot took yet (released or cancelled while prefetched), and a slot
    # that takes a skipped run drops it.
    started: bool = False
    skipped: bool = False
    started_at: datetime | None = None  # when the slot started the task (the row's started_at at the end)
    elapsed: float | None = None  # seconds the task ran
    finished: bool = False  # the outcome was written (or the run abandoned)
    unsaved_log: list = field(default_factory=list)  # log lines taken from the state, not yet in a written row


def _error_path(exc: BaseException) -> str:
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Ask CPython to raise exc_type in another thread at its next bytecode (not inside C calls)."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    if done > 1:  # should never happen; undo rather than hit several threads
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return done == 1


class Worker:
    """Runs jobs of some queues until stopped (or, in burst mode, until none is ready).

    Construct, then call run() (blocking) in any thread; stop() from any thread (or a signal
    when install_signal_handlers=True) asks it to stop. Bad arguments raise ValueError.
    """

    def __init__(
        self,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        burst: bool = False,
        max_jobs: int | None = None,
        poll_interval: float | None = None,
        worker_id: str | None = None,
        backend: str = "default",
        shutdown_grace: float | None = None,
        install_signal_handlers: bool = False,
        wakeups: bool = True,
        schedules: bool = True,
    ) -> None:
        try:
            backend_obj = task_backends[backend]
        except Exception as exc:
            raise ValueError(f"Unknown task backend {backend!r} (TASKS setting): {exc}") from exc
        if not isinstance(backend_obj, JobBackend):
            raise ValueError(f"Task backend {backend!r} is {type(backend_obj).__name__}, not jobs.backends.JobBackend.")
        self.backend: JobBackend = backend_obj
        known = sorted(backend_obj.queues)
        queues = list(dict.fromkeys(queues or known))
        unknown = [q for q in queues if q not in backend_obj.queues]
        if unknown:
            raise ValueError(f"Unknown queue(s) {', '.join(unknown)}; the queues of backend {backend!r} are {', '.join(known)}.")
        concurrency = int(conf.get("CONCURRENCY")) if concurrency is None else concurrency
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be a whole number of at least 1, not {concurrency!r}.")
        if max_jobs is not None and (isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1):
            raise ValueError(f"max_jobs must be a whole number of at least 1, not {max_jobs!r}.")
        poll_interval = float(conf.get("POLL_INTERVAL")) if poll_interval is None else poll_interval
        if not isinstance(poll_interval, (int, float)) or not poll_interval > 0:
            raise ValueError(f"poll_interval must be a positive number of seconds, not {poll_interval!r}.")
        grace = float(conf.get("SHUTDOWN_GRACE")) if shutdown_grace is None else shutdown_grace
        if not isinstance(grace, (int, float)) or grace < 0:
            raise ValueError(f"shutdown_grace must be zero or more seconds, not {grace!r}.")
        if worker_id is not None and (not worker_id.strip() or len(worker_id) > 100):
            raise ValueError("worker_id must be 1 to 100 characters.")

        self.queues = queues
        self.concurrency = concurrency
        self.burst = burst
        self.max_jobs = max_jobs
        self.poll_interval = float(poll_interval)
        self.shutdown_grace = float(grace)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.install_signal_handlers = install_signal_handlers
        self.wakeups = wakeups
        self.schedules = schedules  # enqueue due periodic tasks (jobs.schedules)
        self._duties: WorkerDuties | None = None  # its Worker row, schedules, housekeeping (jobs.duties)

        self._wake = threading.Event()
        self._claim_now = True
        self._stop_count = 0
        self._stop_deadline: float | None = None
        # Claimed runs waiting for a slot (prefetched ones included), best priority first, then
        # earliest run_after, then claim order; the shutdown sentinels sort after every run.
        self._todo: PriorityQueue[tuple] = PriorityQueue()
        self._order = _counter()
        self._lock = threading.Lock()
        self._avg_run: float | None = None  # moving average of task run times (prefetch depth)
        self._done: SimpleQueue[tuple[_Run, _Outcome]] = SimpleQueue()
        self._runs: dict[Any, _Run] = {}  # claimed and not yet written final, by job id
        self._busy = 0  # runs handed to the slots, queued or running, outcome not written (abandoned runs included)
        self._threads: list[threading.Thread] = []
        self._unwritten: list[tuple[_Run, _Outcome]] = []
        self._counts = dict.fromkeys(WorkerStats.__dataclass_fields__, 0)
        self._next_retry_at: float | None = None
        self.started = threading.Event()  # set once run() is ready to claim (tests wait on it)
        self.polls = 0  # claim queries made so far
        self._claim_statements: tuple[str, str] | None = None
        self._claim_returning: str | None = None
        self._relay: Any = None  # this process's notifications outbox relay, while run() runs

    # Control --------------------------------------------------------------------------------

    def stop(self, force: bool = False) -> None:
        """Stop claiming and finish (first call), or release running jobs and exit (second call or force)."""
        self._stop_count = 2 if force else self._stop_count + 1
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic() + self.shutdown_grace
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop_count > 0

    def activity(self) -> tuple[dict[str, int], list[str]]:
        """Counters so far (WorkerStats' names) and the ids of the jobs held now; for the Worker row."""
        return dict(self._counts), [str(pk) for pk, run in list(self._runs.items()) if not run.finished]

    def wake(self) -> None:
        """Claim at once (a STOMP wake-up calls this)."""
        self._claim_now = True
        self._wake.set()

    # The loop -------------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        """Run until stopped, or until nothing is ready (burst) or max_jobs were run."""
        previous_handlers = self._install_signals() if self.install_signal_handlers else {}
        logger.info(
            "Worker %s: queues %s, concurrency %d%s", self.worker_id, ",".join(self.queues), self.concurrency,
            ", burst" if self.burst else "",
        )
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._slot, name=f"jobworker-slot-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if self.wakeups:
            self._subscribe_wakeups()
        self._relay = self._attach_relay()
        interval = {
            "heartbeat": float(conf.get("HEARTBEAT_INTERVAL")),
            "cancel": float(conf.get("CANCEL_POLL_INTERVAL")),
            "progress": float(conf.get("PROGRESS_INTERVAL")),
            "stale": max(0.2, float(conf.get("STALE_AFTER")) / 3),
            "outbox": self._outbox_interval(),
        }
        now = time.monotonic()
        due = {"heartbeat": now + interval["heartbeat"], "cancel": now + interval["cancel"],
               "progress": now, "stale": now, "poll": now, "outbox": now}
        self._duties = WorkerDuties(self, schedules=self.schedules)
        self._duties.start()
        self.started.set()
        try:
            while True:
                try:
                    if self._turn(due, interval):
                        break
                except DatabaseError:
                    logger.exception("Worker %s: database error; retrying in %.1f s", self.worker_id, DB_ERROR_PAUSE)
                    self._reset_connection()
                    if self._stop_count >= 2:
                        break
                    self._wake.wait(DB_ERROR_PAUSE)
                # Progress is due only while some run has unwritten reports; the first report
                # after a quiet interval wakes this loop (RunState.wake) and is written at once.
                wait = min(v for k, v in due.items() if k != "progress" or self._dirty_runs()) - time.monotonic()
                if self._next_retry_at is not None and not self.stopping:
                    wait = min(wait, self._next_retry_at - time.monotonic())
                if self._stop_deadline is not None:
                    wait = min(wait, self._stop_deadline - time.monotonic())
                if wait > 0 and not self._claim_now and self._done.empty():
                    self._wake.wait(wait)
                self._wake.clear()
        finally:
            self._shutdown_threads()
            self._duties.stop()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self._detach_relay()
            self._reset_connection()
        stats = WorkerStats(**self._counts)
        logger.info("Worker %s stopped: %s", self.worker_id, stats)
        return stats

    def _turn(self, due: dict[str, float], interval: dict[str, float]) -> bool:
        """One pass of the loop; True when the worker should exit."""
        while True:
            try:
                self._unwritten.append(self._done.get_nowait())
            except Empty:
                break
        now = time.monotonic()
        if self._timed_out_runs(now):
            self._time_out(now)
        if self._stop_count >= 2 or (self._stop_deadline is not None and now >= self._stop_deadline and self._active()):
            if self._unwritten:
                self._sync(0)
            self._release_all()
            return True
        if self.stopping:  # prefetched jobs no slot took go back to READY at once
            self._release_queued()
        if due["progress"] <= now and self._flush_progress():
            due["progress"] = now + interval["progress"]
        if due["heartbeat"] <= now:
            self._heartbeat()
            due["heartbeat"] = now + interval["heartbeat"]
        if due["cancel"] <= now:
            self._poll_cancels()
            due["cancel"] = now + interval["cancel"]
        if due["stale"] <= now:
            self._sweep_stale()
            due["stale"] = now + interval["stale"]
        if due["outbox"] <= now:
            self._relay_outbox()
            due["outbox"] = now + interval["outbox"]

        # Finished runs are written and new jobs claimed in one transaction (one commit, one lock).
        freeing = sum(1 for run, _ in self._unwritten if run.task is not None)
        remaining = None if self.max_jobs is None else self.max_jobs - self._counts["claimed"]
        retry_due = self._next_retry_at is not None and self._next_retry_at <= now
        want = not self.stopping and remaining != 0 and (self._claim_now or freeing or due["poll"] <= now or retry_due)
        limit = start_now = 0
        if want:
            self._claim_now = False
            if retry_due:
                self._next_retry_at = None
            due["poll"] = now + self.poll_interval
            free = self.concurrency + self._prefetch_depth() - self._busy + freeing
            limit = max(0, free if remaining is None else min(free, remaining))
            start_now = min(limit, max(0, self.concurrency - self._busy + freeing))
        claimed = self._sync(limit, start_now) if (self._unwritten or limit or self._unmarked()) else 0
        if limit and claimed == limit:
            self._claim_now = True  # there may be more
        if self.stopping or (self.max_jobs is not None and self._counts["claimed"] >= self.max_jobs):
            return not self._active() and not self._unwritten
        return self.burst and want and claimed == 0 and not self._active() and not self._unwritten

    def _prefetch_depth(self) -> int:
        """How many jobs beyond one per slot the next claim may take (see JOBS["PREFETCH"])."""
        most = max(0, int(conf.get("PREFETCH")))
        seconds = conf.get("PREFETCH_SECONDS")
        if seconds is None or most == 0:
            return most
        if self._avg_run is None:  # nothing finished yet: the jobs may be long, take none extra
            return 0
        return min(most, int(float(seconds) * self.concurrency / max(self._avg_run, 1e-6)))

    def _active(self) -> bool:
        return any(not run.finished for run in self._runs.values())

    # Claiming -------------------------------------------------------------------------------

    def _claim_rows(self, limit: int, start_now: int) -> list[Job]:
        """Mark up to ``limit`` due READY jobs RUNNING for this worker; call inside a transaction.

        The best ``start_now`` of them go to free slots at once and get ``started_at`` now; the
        others are prefetched: ``started_at`` stays NULL until a slot really starts them (see
        _mark_started), which tells the stale sweep they never ran.

        Plain SQL built once per worker: the ORM's query compiler cost more than the database
        work for short jobs (this runs once per job at --concurrency 1).
        """
        self.polls += 1
        now = timezone.now()
        if connection.vendor == "postgresql":
            return self._claim_rows_returning(limit, start_now, now)
        select_sql, update_sql = self._claim_sql()
        params = [JobStatus.READY, self.backend.alias, *self.queues, Job._meta.get_field("run_after").get_db_prep_value(now, connection), limit]
        jobs = list(Job.objects.raw(select_sql, params))
        groups: dict[tuple, list[Job]] = {}
        for n, job in enumerate(jobs):
            groups.setdefault((tuple(job.worker_ids or ()), n < start_now), []).append(job)
        prep = {name: Job._meta.get_field(name) for name in ("started_at", "worker_ids", "id")}
        for (previous, starts), members in groups.items():
            started = now if starts else None
            stamp = prep["started_at"].get_db_prep_save(started, connection)
            worker_ids = [*previous, self.worker_id]
            ids = [prep["id"].get_db_prep_value(j.pk, connection) for j in members]
            sql = update_sql.replace("%(ids)s", ", ".join(["%s"] * len(ids)))
            with connection.cursor() as cursor:
                cursor.execute(sql, [JobStatus.RUNNING, stamp, prep["started_at"].get_db_prep_save(now, connection), self.worker_id,
                                     prep["worker_ids"].get_db_prep_save(worker_ids, connection), *ids, JobStatus.READY])
                updated = cursor.rowcount
            if updated != len(members):  # only if the claim transaction did not lock (see jobs.E003)
                raise DatabaseError(f"Claim raced with another worker ({updated} of {len(members)} rows).")
            for job in members:
                job.status, job.started_at, job.heartbeat_at, job.finished_at = JobStatus.RUNNING, started, now, None
                job.worker_id, job.worker_ids = self.worker_id, worker_ids
                job.attempts += 1
                job.seq += 1
                job.progress_done, job.progress_total, job.message = 0, None, ""
        return jobs

    def _claim_rows_returning(self, limit: int, start_now: int, now: datetime) -> list[Job]:
        """PostgreSQL: select (SKIP LOCKED) and mark RUNNING in one statement, one round trip."""
        if self._claim_returning is None:
            qn = connection.ops.quote_name
            meta = Job._meta
            col = {f.name: qn(f.column) for f in meta.concrete_fields}
            table = qn(meta.db_table)
            queues = ", ".join(["%s"] * len(self.queues))
            self._claim_returning = (
                f"WITH picked AS (SELECT {col['id']}, {col['priority']}, {col['run_after']} FROM {table} "
                f"WHERE {col['status']} = %s "
                f"AND {col['backend']} = %s AND {col['queue']} IN ({queues}) AND {col['run_after']} <= %s "
                f"ORDER BY {col['priority']} DESC, {col['run_after']} ASC LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"UPDATE {table} SET {col['status']} = %s, "
                f"{col['started_at']} = CASE WHEN {col['id']} IN (SELECT {col['id']} FROM picked "
                f"ORDER BY {col['priority']} DESC, {col['run_after']} ASC LIMIT %s) THEN %s::timestamptz ELSE NULL END, "
                f"{col['heartbeat_at']} = %s, "
                f"{col['finished_at']} = NULL, {col['worker_id']} = %s, "
                f"{col['worker_ids']} = {col['worker_ids']} || jsonb_build_array(%s::text), "
                f"{col['attempts']} = {col['attempts']} + 1, {col['seq']} = {col['seq']} + 1, "
                f"{col['progress_done']} = 0, {col['progress_total']} = NULL, {col['message']} = '' "
                f"WHERE {col['id']} IN (SELECT {col['id']} FROM picked) "
                f"RETURNING {', '.join(col[f.name] for f in meta.concrete_fields)}"
            )
        params = [JobStatus.READY, self.backend.alias, *self.queues, now, limit,
                  JobStatus.RUNNING, start_now, now, now, self.worker_id, self.worker_id]
        jobs = list(Job.objects.raw(self._claim_returning, params))
        jobs.sort(key=lambda job: (-job.priority, job.run_after))
        return jobs

    def _claim_sql(self) -> tuple[str, str]:
        if self._claim_statements is None:
            qn = connection.ops.quote_name
            meta = Job._meta
            col = {f.name: qn(f.column) for f in meta.concrete_fields}
            table = qn(meta.db_table)
            columns = ", ".join(col[f.name] for f in meta.concrete_fields)
            queues = ", ".join(["%s"] * len(self.queues))
            select = (
                f"SELECT {columns} FROM {table} WHERE {col['status']} = %s AND {col['backend']} = %s "
                f"AND {col['queue']} IN ({queues}) AND {col['run_after']} <= %s "
                f"ORDER BY {col['priority']} DESC, {col['run_after']} ASC LIMIT %s"
            )
            if connection.features.has_select_for_update_skip_locked:
                select += " FOR UPDATE SKIP LOCKED"
            update = (
                f"UPDATE {table} SET {col['status']} = %s, {col['started_at']} = %s, {col['heartbeat_at']} = %s, "
                f"{col['finished_at']} = NULL, {col['worker_id']} = %s, {col['worker_ids']} = %s, "
                f"{col['attempts']} = {col['attempts']} + 1, {col['seq']} = {col['seq']} + 1, "
                f"{col['progress_done']} = 0, {col['progress_total']} = NULL, {col['message']} = '' "
                f"WHERE {col['id']} IN (%(ids)s) AND {col['status']} = %s"
            )
            self._claim_statements = (select, update)
        return self._claim_statements

    def _start(self, job: Job) -> None:
        """Hand a claimed job to a slot, then publish its RUNNING event (the row is committed)."""
        try:
            task = load_task(job.task_path)
        except (ImportError, TypeError) as exc:
            run = _Run(job=job, state=RunState(job.pk), task=None, deadline=None, started_at=job.started_at)
            self._runs[job.pk] = run
            self._unwritten.append((run, _Outcome(
                ok=False, error_type=f"{UnknownTask.__module__}.{UnknownTask.__qualname__}",
                error_message=str(exc), error_traceback="", cancelled=True,  # never retried: it cannot import
            )))
            events.publish_job(job)
            return
        run = _Run(job=job, state=RunState(job.pk), task=task, deadline=None)
        run.state.wake = self._wake.set  # a report after a quiet interval is written at once
        self._runs[job.pk] = run
        self._busy += 1
        # First: the task need not wait for the event and the signal.
        self._todo.put((0, -job.priority, job.run_after.timestamp(), next(self._order), run))
        events.publish_job(job)
        try:
            task_started.send(sender=type(self.backend), task_result=self.backend.result_from_job(job))
        except Exception:
            logger.exception("A task_started receiver failed for job %s", job.pk)

    # Slot threads ---------------------------------------------------------------------------

    def _slot(self) -> None:
        while True:
            run = self._todo.get()[-1]
            if run is None:
                connection.close()  # this thread's own connection, if a task opened one
                return
            with self._lock:
                if run.skipped or run.finished:  # released, cancelled or lost while it waited here
                    continue
                run.started = True
            if run.state.cancel_requested:  # cancelled while prefetched: never run it
                outcome = _Outcome(ok=False, cancelled=True, error_type=_error_path(JobCancelled()),
                                   error_message=CANCELLED_BEFORE_START)
            else:
                run.started_at = timezone.now()
                if run.job.started_at is None:  # prefetched: the loop writes started_at next turn
                    self._wake.set()
                began = time.monotonic()
                time_limit = run.job.time_limit
                run.deadline = began + time_limit if time_limit else None
                try:
                    outcome = self._execute(run)
                except BaseException as exc:  # a late async JobTimeout can land outside _execute's try
                    outcome = _Outcome(ok=False, error_type=_error_path(exc), error_message=str(exc))
                run.elapsed = time.monotonic() - began
            self._done.put((run, outcome))
            self._wake.set()

    def _execute(self, run: _Run) -> _Outcome:
        job, task = run.job, run.task
        close_old_connections()
        token = activate(run.state)
        run.thread_id = threading.get_ident()
        try:
            try:
                args, kwargs = list(job.args or []), dict(job.kwargs or {})
                if task.takes_context:
                    args.insert(0, TaskContext(task_result=self.backend.result_from_job(job)))
                run.state.in_task = True
                try:
                    if iscoroutinefunction(task.func):
                        value = asyncio.run(task.func(*args, **kwargs))
                    else:
                        value = task.func(*args, **kwargs)
                finally:
                    run.state.in_task = False
            except JobCancelled as exc:
                return _Outcome(ok=False, cancelled=True, error_type=_error_path(exc),
                                error_message=str(exc) or "Cancelled on request.")
            except BaseException as exc:
                return _Outcome(ok=False, error_type=_error_path(exc), error_message=str(exc)[:2000] or type(exc).__name__,
                                error_traceback="".join(traceback.format_exception(exc))[-20000:])
            try:
                value = normalize_json(value)
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as exc:
                return _Outcome(ok=False, cancelled=True,  # running it again would return the same value
                                error_type=_error_path(exc),
                                error_message=f"The task returned a value that is not JSON-serialisable: {exc}")
            return _Outcome(ok=True, value=value)
        finally:
            deactivate(token)
            close_old_connections()

    # Writing outcomes -----------------------------------------------------------------------

    def _sync(self, limit: int, start_now: int = 0) -> int:
        """Write the outcomes of finished runs and claim up to ``limit`` jobs, in one transaction;
        then publish, and hand the claimed jobs to the slots. Returns how many were claimed."""
        pending = self._unwritten
        already = {id(run) for run, _ in pending if run.finished}
        published: list[Job] = []
        kinds: list[str] = []
        claimed: list[Job] = []
        try:
            with transaction.atomic():
                # Timed-out or released runs (finished) had their row written then.
                for run, kind in self._write_outcomes_batched([(r, o) for r, o in pending if not r.finished]):
                    kinds.append(kind)
                    published.append(run.job)
                durable = events.promise_final(published)
                self._mark_started()
                if limit > 0:
                    claimed = self._claim_rows(limit, start_now)
        except DatabaseError:
            for run, _ in pending:  # rolled back: write them again next turn (the CAS re-reads seq)
                if id(run) not in already:
                    run.finished = False
                    run.state.abandoned = False
            raise
        self._unwritten = []
        self._busy -= sum(1 for run, _ in pending if run.task is not None)
        for run, _ in pending:
            if run.elapsed is not None:
                avg = self._avg_run
                self._avg_run = run.elapsed if avg is None else avg + RUN_TIME_WEIGHT * (run.elapsed - avg)
        for kind in kinds:
            self._counts[kind] += 1
        if self._duties is not None:
            self._duties.outcomes(published, kinds)
        for run, _ in pending:
            self._runs.pop(run.job.pk, None)
        for job in claimed:  # slots first, then the events of the runs that ended
            self._counts["claimed"] += 1
            self._start(job)
        self._announce(published, durable)
        return len(claimed)

    def _unmarked(self) -> list[_Run]:
        """Prefetched runs a slot started whose row does not say so yet (started_at NULL)."""
        return [run for run in self._runs.values()
                if run.started and run.job.started_at is None and run.started_at is not None and not run.finished]

    def _mark_started(self) -> None:
        """Write started_at for prefetched jobs that slots started since the last turn, so the stale
        sweep counts their attempt (runs that ended meanwhile get it with their outcome instead).
        Like the heartbeat, a bookkeeping write: seq is not bumped and no event is published."""
        done = {id(run) for run, _ in self._unwritten}
        runs = [run for run in self._unmarked() if id(run) not in done]
        if not runs:
            return
        # One statement for all (the start times differ by milliseconds at most; the outcome
        # write stores each run's exact start).
        Job.objects.filter(pk__in=[run.job.pk for run in runs], status=JobStatus.RUNNING, worker_id=self.worker_id,
                           started_at__isnull=True).update(started_at=min(run.started_at for run in runs))
        for run in runs:
            run.job.started_at = run.started_at

    def _outcome_changes(self, run: _Run, outcome: _Outcome, now: datetime) -> tuple[dict[str, Any], str]:
        """The row changes for how a run ended, and the WorkerStats counter it bumps."""
        job, state = run.job, run.state
        changes = self._progress_changes(run, now)
        if state.result_file:
            changes["result_file"] = state.result_file
        # The row said the claim time while the job waited in the local queue; now the real start
        # (None for a job cancelled before a slot started it, like Job.cancel() on a READY job).
        changes.update(started_at=run.started_at, finished_at=now, heartbeat_at=now)
        if outcome.ok:
            changes.update(status=JobStatus.SUCCESSFUL, result=outcome.value)
            return changes, "succeeded"
        changes.update(error_type=outcome.error_type, error_message=outcome.error_message,
                       error_traceback=outcome.error_traceback)
        if outcome.cancelled and outcome.error_type.endswith("JobCancelled"):
            changes["status"] = JobStatus.CANCELLED
            return changes, "cancelled"
        if outcome.cancelled or job.attempts >= job.max_attempts or job.cancel_requested:
            changes["status"] = JobStatus.FAILED
            return changes, "failed"
        delay = backoff_delay(job.attempts)
        text = (f"Attempt {job.attempts} of {job.max_attempts} failed "
                f"({outcome.error_type.rsplit('.', 1)[-1]}: {outcome.error_message}); retrying in {delay:g} s.")
        count = changes.get("log_count", job.log_count) + 1
        limit = max(1, int(conf.get("LOG_LIMIT")))
        log = [*changes.get("log", job.log or []), {"n": count, "at": now.isoformat(), "text": text[:2000]}][-limit:]
        changes.update(status=JobStatus.READY, run_after=now + timedelta(seconds=delay),
                       finished_at=None, heartbeat_at=None, worker_id="", log=log, log_count=count)
        retry_at = time.monotonic() + delay
        self._next_retry_at = retry_at if self._next_retry_at is None else min(self._next_retry_at, retry_at)
        return changes, "retried"

    def _write_outcomes_batched(self, items: list[tuple[_Run, _Outcome]]) -> list[tuple[_Run, str]]:
        """Write many outcomes with one executemany per column set (one round trip on PostgreSQL,
        in pipeline mode); anything that lost its compare-and-swap takes the one-by-one path."""
        now = timezone.now()
        groups: dict[tuple[str, ...], list[tuple[_Run, _Outcome, dict[str, Any], str]]] = {}
        for run, outcome in items:
            changes, kind = self._outcome_changes(run, outcome, now)
            groups.setdefault(tuple(changes), []).append((run, outcome, changes, kind))
        written: list[tuple[_Run, str]] = []
        for members in groups.values():
            applied = Job.cas_many([(run.job, changes) for run, _, changes, _ in members])
            for (run, outcome, changes, kind), ok in zip(members, applied):
                if ok:
                    run.finished = True
                    run.unsaved_log = []
                    written.append((run, kind))
                else:
                    kind = self._write_outcome(run, outcome)
                    if kind:
                        written.append((run, kind))
        return written

    def _write_outcome(self, run: _Run, outcome: _Outcome) -> str | None:
        """Write how a run ended; returns the WorkerStats counter to bump, None if the job was lost."""
        for _ in range(CAS_ROUNDS):
            changes, kind = self._outcome_changes(run, outcome, timezone.now())
            if self._cas_owned(run, changes):
                run.finished = True
                return kind
            if run.finished:  # lost ownership
                return None
        logger.warning("Job %s: could not write its outcome after %d tries; retrying later", run.job.pk, CAS_ROUNDS)
        raise DatabaseError(f"Job {run.job.pk} kept changing while its outcome was written.")

    def _cas_owned(self, run: _Run, changes: dict[str, Any]) -> bool:
        """CAS a change on a job this worker runs; on a conflict refresh and re-check ownership."""
        job = run.job
        if job.cas_update(**changes):
            run.unsaved_log = []
            return True
        try:
            job.refresh_from_db()
        except Job.DoesNotExist:
            logger.warning("Job %s was deleted while it ran; this worker dropped its run", job.pk)
            self._abandon(run)
            return False
        if job.status != JobStatus.RUNNING or job.worker_id != self.worker_id:
            logger.warning("Job %s is %s on %r now; this worker dropped its run", job.pk, job.status, job.worker_id)
            self._abandon(run)
        else:
            run.state.cancel_requested = job.cancel_requested
        return False

    def _abandon(self, run: _Run) -> None:
        run.finished = True
        run.state.abandoned = True
        # A prefetched run no slot took (its row was deleted or re-queued behind this worker's
        # back) must never start: no slot will report it, so it leaves the books here.
        if self._take_queued([run]):
            self._busy -= 1
            self._runs.pop(run.job.pk, None)

    def _progress_changes(self, run: _Run, now: datetime) -> dict[str, Any]:
        state, job = run.state, run.job
        state.dirty = False
        done, total, message = state.progress
        changes: dict[str, Any] = {"progress_done": done, "progress_total": total, "message": message[:500]}
        run.unsaved_log.extend(state.take_log())
        entries = run.unsaved_log
        if entries:
            log, count = job.appended_log([(datetime.fromtimestamp(at, tz=now.tzinfo), text) for at, text in entries])
            changes.update(log=log, log_count=count)
        return changes

    def _announce(self, jobs: list[Job], durable: bool = True) -> None:
        """After the commit that wrote ``jobs``: publish their events, then send task_finished for
        the final ones. With ``durable`` (jobs.events.promise_final wrote them in that transaction)
        the final events and notifications are already on their way from the outbox."""
        for job in jobs:
            if not (durable and job.is_final):
                events.publish_job(job)
        for job in jobs:
            if job.is_final:
                try:
                    task_finished.send(sender=type(self.backend), task_result=self.backend.result_from_job(job))
                except Exception:
                    logger.exception("A task_finished receiver failed for job %s", job.pk)

    # Periodic work --------------------------------------------------------------------------

    def _dirty_runs(self) -> list[_Run]:
        """The runs whose task reported something not yet written."""
        return [run for run in self._runs.values() if not run.finished and run.state.dirty]

    def _flush_progress(self) -> bool:
        """Write and publish the runs with new reports; False if there were none."""
        dirty = self._dirty_runs()
        if not dirty:
            return False
        changed: list[Job] = []
        now = timezone.now()
        with transaction.atomic():
            for run in dirty:
                for _ in range(CAS_ROUNDS):
                    if run.finished:
                        break
                    if self._cas_owned(run, self._progress_changes(run, now)):
                        changed.append(run.job)
                        break
        self._announce(changed)
        return True

    def _heartbeat(self) -> None:
        ids = [pk for pk, run in self._runs.items() if not run.finished]
        if ids:
            Job.objects.filter(pk__in=ids, status=JobStatus.RUNNING, worker_id=self.worker_id).update(
                heartbeat_at=timezone.now()
            )
        if self._duties is not None:
            self._duties.beat()

    def _poll_cancels(self) -> None:
        runs = {pk: run for pk, run in self._runs.items() if not run.finished}
        if not runs:
            return
        rows = Job.objects.filter(pk__in=list(runs)).values_list("pk", "status", "worker_id", "cancel_requested", "seq")
        seen = set()
        for pk, status, worker_id, cancel_requested, seq in rows:
            seen.add(pk)
            run = runs[pk]
            if status != JobStatus.RUNNING or worker_id != self.worker_id:
                logger.warning("Job %s is %s on %r now; this worker dropped its run", pk, status, worker_id)
                self._abandon(run)
                continue
            if seq != run.job.seq:
                run.job.refresh_from_db()
            if cancel_requested and not run.state.cancel_requested:
                logger.info("Job %s: cancel requested", pk)
            run.state.cancel_requested = cancel_requested
        for pk in set(runs) - seen:  # deleted rows
            self._abandon(runs[pk])
        # Prefetched jobs no slot took yet end CANCELLED now, without running (the outcome is
        # written with this turn's other outcomes).
        waiting = [run for run in runs.values() if run.state.cancel_requested and not run.finished]
        for run in self._take_queued(waiting):
            self._unwritten.append((run, _Outcome(ok=False, cancelled=True, error_type=_error_path(JobCancelled()),
                                                  error_message=CANCELLED_BEFORE_START)))

    def _timed_out_runs(self, now: float) -> bool:
        return any(r.deadline is not None and r.deadline <= now and not r.finished for r in self._runs.values())

    def _time_out(self, now: float) -> None:
        late = [r for r in self._runs.values() if r.deadline is not None and r.deadline <= now and not r.finished]
        written: list[Job] = []
        ts = timezone.now()
        with transaction.atomic():
            for run in late:
                message = f"Ran longer than its time limit of {run.job.time_limit:g} s."
                for _ in range(CAS_ROUNDS):
                    changes = self._progress_changes(run, ts)
                    changes.update(
                        status=JobStatus.FAILED, started_at=run.started_at, finished_at=ts,
                        error_type=_error_path(JobTimeout(message)),
                        error_message=message, error_traceback="",
                    )
                    if self._cas_owned(run, changes):
                        written.append(run.job)
                        self._counts["timed_out"] += 1
                        self._counts["failed"] += 1
                        break
                    if run.finished:
                        break
                self._abandon(run)
            durable = events.promise_final(written)
        for run in late:
            if run.thread_id is not None and run.state.in_task:
                _raise_in_thread(run.thread_id, JobTimeout)
        self._announce(written, durable)

    def _sweep_stale(self) -> None:
        """Re-queue (attempts left) or fail (none left) RUNNING jobs of workers that stopped heartbeating."""
        stale_after = float(conf.get("STALE_AFTER"))
        now = timezone.now()
        limit = now - timedelta(seconds=stale_after)
        candidates = list(
            Job.objects.filter(status=JobStatus.RUNNING, backend=self.backend.alias, heartbeat_at__lt=limit)
            .exclude(worker_id=self.worker_id)[:100]
        )
        handled: list[Job] = []
        durable = True
        for job in candidates:
            last = job.heartbeat_at.isoformat() if job.heartbeat_at else "never"
            if job.started_at is None:  # prefetched, never started: the attempt does not count
                log, count = job.appended_log([(now, f"Worker {job.worker_id} stopped heartbeating (last {last}) "
                                                     f"before starting it; re-queued.")])
                changes = dict(status=JobStatus.READY, run_after=now, worker_id="", heartbeat_at=None,
                               attempts=max(0, job.attempts - 1), log=log, log_count=count)
            elif job.attempts < job.max_attempts:
                log, count = job.appended_log([(now, f"Worker {job.worker_id} stopped heartbeating (last {last}); "
                                                     f"re-queued for attempt {job.attempts + 1} of {job.max_attempts}.")])
                changes = dict(status=JobStatus.READY, run_after=now, worker_id="", heartbeat_at=None,
                               log=log, log_count=count)
            else:
                message = (f"Worker {job.worker_id} stopped heartbeating (last {last}) and no attempt is left "
                           f"({job.attempts} of {job.max_attempts}).")
                changes = dict(status=JobStatus.FAILED, finished_at=now,
                               error_type=f"{WorkerLost.__module__}.{WorkerLost.__qualname__}",
                               error_message=message, error_traceback="")
            with transaction.atomic():  # a final state and what it promises commit together
                changed = job.cas_update(**changes)  # a conflict means the job moved on: leave it
                if changed:
                    durable = events.promise_final([job]) and durable
            if changed:
                logger.warning("Job %s: %s", job.pk, "re-queued" if job.status == JobStatus.READY else "failed (worker lost)")
                handled.append(job)
                self._counts["recovered"] += 1
        if handled:
            self._announce(handled, durable)
            if any(job.status == JobStatus.READY for job in handled):
                self._claim_now = True
                for queue in {job.queue for job in handled if job.status == JobStatus.READY}:
                    events.publish_wakeup(queue)

    def _take_queued(self, runs: list[_Run]) -> list[_Run]:
        """Of ``runs``, those no slot has taken yet, now marked so that no slot ever will."""
        taken = []
        with self._lock:
            for run in runs:
                if run.task is not None and not run.started and not run.skipped:
                    run.skipped = True
                    taken.append(run)
        return taken

    def _release_queued(self) -> None:
        """Put prefetched jobs no slot took back to READY, the attempt not counted (stopping)."""
        queued = self._take_queued([r for r in self._runs.values() if not r.finished])
        if not queued:
            return
        released = self._release(queued, "Released by worker {worker} at shutdown before it started.")
        for run in queued:
            if run.finished:  # released (or found lost): no slot will report it
                self._busy -= 1
                self._runs.pop(run.job.pk, None)
            else:  # the release failed: let it run after all
                run.skipped = False
                self._todo.put((0, -run.job.priority, run.job.run_after.timestamp(), next(self._order), run))
        self._counts["claimed"] -= len(released)
        if released:
            logger.info("Worker %s released %d prefetched job(s)", self.worker_id, len(released))
        self._announce(released)
        for queue in {job.queue for job in released}:
            events.publish_wakeup(queue)

    def _release(self, runs: list[_Run], text: str) -> list[Job]:
        """CAS each run's job back to READY (attempt not counted) in one transaction; the jobs released.
        Every run ends finished (released or lost), unless the transaction fails: then none is."""
        released: list[Job] = []
        now = timezone.now()
        try:
            with transaction.atomic():
                for run in runs:
                    job = run.job
                    for _ in range(CAS_ROUNDS):
                        log, count = job.appended_log([(now, text.format(worker=self.worker_id))])
                        changes = dict(status=JobStatus.READY, run_after=now, worker_id="", heartbeat_at=None,
                                       started_at=None, attempts=max(0, job.attempts - 1), log=log, log_count=count)
                        if self._cas_owned(run, changes):
                            released.append(job)
                            break
                        if run.finished:
                            break
        except DatabaseError:
            logger.exception("Worker %s could not release prefetched jobs; they will run", self.worker_id)
            for run in runs:
                run.finished = False
                run.state.abandoned = False
            return []
        for run in runs:
            self._abandon(run)
        return released

    def _release_all(self) -> None:
        """Put still-running jobs back to READY (the attempt not counted); their threads are told to cancel."""
        released: list[Job] = []
        now = timezone.now()
        queued = self._take_queued([r for r in self._runs.values() if not r.finished])
        self._busy -= len(queued)  # no slot will take them
        try:
            with transaction.atomic():
                for run in [r for r in self._runs.values() if not r.finished]:
                    run.state.cancel_requested = True
                    job = run.job
                    for _ in range(CAS_ROUNDS):
                        log, count = job.appended_log([(now, f"Released by worker {self.worker_id} at shutdown.")])
                        changes = dict(status=JobStatus.READY, run_after=now, worker_id="", heartbeat_at=None,
                                       started_at=None, attempts=max(0, job.attempts - 1), log=log, log_count=count)
                        if self._cas_owned(run, changes):
                            released.append(job)
                            self._counts["released"] += 1
                            break
                        if run.finished:
                            break
                    self._abandon(run)
        except DatabaseError:
            logger.exception("Worker %s could not release its jobs; the stale sweep will recover them", self.worker_id)
            return
        self._announce(released)
        for queue in {job.queue for job in released}:
            events.publish_wakeup(queue)

    # The outbox relay ---------------------------------------------------------------------

    def _attach_relay(self) -> Any:
        """This process's outbox relay, now deleting confirmed rows from this loop; None without
        the notifications app (nothing is written to an outbox then)."""
        if not events.outbox_installed():
            return None
        from notifications.outbox import get_relay

        relay = get_relay()
        relay.attach()
        try:
            relay.publisher().start()  # connected by the first relay turn, even with --no-wakeup
        except Exception:
            logger.exception("Worker %s: no STOMP publisher for the outbox relay", self.worker_id)
        return relay

    def _outbox_interval(self) -> float:
        if self._relay is None:
            return OUTBOX_TICK
        from notifications import conf as notifications_conf

        return max(0.05, min(OUTBOX_TICK, float(notifications_conf.get("OUTBOX_RETRY_AFTER")) / 4))

    def _relay_outbox(self) -> None:
        """Delete the rows the broker confirmed; publish rows overdue anywhere (a dead process's)."""
        relay = self._relay
        if relay is None:
            return
        relay.delete_confirmed()
        if not self.stopping:
            relay.recover()

    def _detach_relay(self) -> None:
        relay, self._relay = self._relay, None
        if relay is None:
            return
        from notifications.outbox import DRAIN_TIMEOUT

        try:
            if not relay.drain(DRAIN_TIMEOUT, recover=self._stop_count < 2):
                stats = relay.stats()
                logger.warning("Worker %s: exiting with %d outbox message(s) not confirmed by the broker; any "
                               "worker's relay publishes them later", self.worker_id, stats.unconfirmed)
        except Exception:
            logger.exception("Worker %s: could not drain the outbox; any worker's relay publishes the rest later",
                             self.worker_id)
        finally:
            relay.detach()

    # Infrastructure -------------------------------------------------------------------------

    def _subscribe_wakeups(self) -> None:
        try:
            from . import live as destinations
            from notifications.publisher import get_publisher
        except ImportError:
            logger.info("No publisher: worker %s polls every %.1f s", self.worker_id, self.poll_interval)
            return
        ref = weakref.ref(self)
        queues = set(self.queues)

        def on_wakeup(headers: dict, body: bytes) -> None:
            worker = ref()
            if worker is not None and body.decode("utf-8", "replace").strip() in queues:
                worker.wake()

        try:
            get_publisher().subscribe(destinations.JOBS_WAKEUP, on_wakeup)
        except Exception:
            logger.exception("Worker %s could not subscribe to wake-ups; polling only", self.worker_id)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def handler(signum, frame) -> None:
            logger.warning(
                "Worker %s got %s: %s", self.worker_id, signal.Signals(signum).name,
                "stopping (again to force)" if self._stop_count == 0 else "forcing",
            )
            self.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, handler)
        return previous

    def _reset_connection(self) -> None:
        try:
            if not connection.in_atomic_block:
                connection.close()
        except Exception:
            pass

    def _shutdown_threads(self) -> None:
        for _ in self._threads:
            self._todo.put((1, 0, 0.0, next(self._order), None))
        if self._busy == 0:
            deadline = time.monotonic() + THREAD_JOIN_TIMEOUT
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))
