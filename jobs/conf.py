"""The JOBS settings dict: every key, its default, read when used (never at import)."""
from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "get"]

DEFAULTS: dict[str, Any] = {
    # Jobs run at once by one `manage.py jobworker` (threads); --concurrency overrides it.
    "CONCURRENCY": 2,
    # Prefetch: besides one job per slot, a claim may take up to this many more jobs into the
    # worker's local queue (RUNNING on this worker, heartbeated; started as slots free up), so
    # short jobs share claim statements and commits. 0 disables it.
    "PREFETCH": 32,
    # ...but only about this many seconds of expected work per slot (from the average run time
    # of the jobs this worker finished), so long jobs are never held back from idle workers and
    # a higher-priority job enqueued later waits at most about this long behind prefetched ones.
    # None: always prefetch PREFETCH jobs (tests use it).
    "PREFETCH_SECONDS": 0.05,
    # Seconds between two claim queries when no STOMP wake-up arrives; --poll-interval overrides it.
    "POLL_INTERVAL": 1.0,
    # Seconds between the heartbeats a worker writes for its running jobs.
    "HEARTBEAT_INTERVAL": 1.0,
    # A RUNNING job whose heartbeat is older than this (seconds) belongs to a dead worker:
    # re-queued if attempts remain, else FAILED with jobs.exceptions.WorkerLost.
    "STALE_AFTER": 30.0,
    # Seconds between two reads of cancel requests for the running jobs of a worker.
    "CANCEL_POLL_INTERVAL": 0.5,
    # Progress and log lines are written to the database and published at most this often (seconds);
    # the first report after a quieter spell is written at once, faster ones are merged (latest wins).
    "PROGRESS_INTERVAL": 0.1,
    # Entries kept in Job.log (oldest dropped first; Job.log_count keeps counting).
    "LOG_LIMIT": 200,
    # Default per-job time limit in seconds (None: unlimited); @task(time_limit=...) overrides it.
    "TIME_LIMIT": 3600.0,
    # Seconds a stopping worker (first SIGTERM/SIGINT) waits for running jobs before releasing them.
    "SHUTDOWN_GRACE": 30.0,
    # Retries: attempts per job by default (1: no retry; @task(max_attempts=...) overrides it),
    # the delay before the 2nd attempt, doubled for each further attempt up to the maximum (seconds).
    "MAX_ATTEMPTS": 1,
    "RETRY_BACKOFF": 1.0,
    "RETRY_BACKOFF_MAX": 300.0,
    # Seconds the built-in debug report (jobs.tasks.debug_report) pauses before each step, so a
    # person can watch it run (about five seconds in all); tests set 0.
    "DEBUG_REPORT_STEP_DELAY": 0.6,
    # Operations (README "Operations"). Periodic tasks declared in settings, by name:
    # {"nightly": {"TASK": "app.tasks.export", "CRON": "0 3 * * *", "ARGS": [], "KWARGS": {},
    #  "TIMEZONE": "Europe/Paris", "MISSED": "once" | "all" | "skip", "QUEUE": ..., "PRIORITY": ...}}
    # (jobs.schedules.periodic() declares them in code, too).
    "SCHEDULES": {},
    # Seconds between two looks at due schedules by each worker (jobworker --no-schedules: never).
    "SCHEDULE_INTERVAL": 1.0,
    # A due time older than this (seconds) when a worker first sees it was missed: MISSED "skip"
    # drops it, "once" folds it into one run, "all" runs it anyway.
    "SCHEDULE_MISSED_AFTER": 60.0,
    # Retention. Finished jobs (SUCCESSFUL, FAILED, CANCELLED) are deleted, with their result
    # files, this many seconds after they finished (None: kept forever), and so are schedule runs
    # that old; STOPPED and LOST Worker rows after PRUNE_WORKERS_AFTER.
    "PRUNE_JOBS_AFTER": 7 * 86400.0,
    "PRUNE_WORKERS_AFTER": 86400.0,
    # Seconds between two prunes by each worker (the first comes at a random point of the first
    # interval, so workers spread out); None: workers never prune (run `manage.py prunejobs`).
    "PRUNE_INTERVAL": 300.0,
    # Rows deleted per transaction, and the pause between two (seconds), so claims never wait
    # behind a prune for long (bench/prune_bench.py measures it).
    "PRUNE_BATCH": 100,
    "PRUNE_BATCH_PAUSE": 0.05,
    # Health (`manage.py jobhealth`): a due READY job waiting longer than this (seconds) makes
    # its queue unhealthy; the broker must open a STOMP session within HEALTH_BROKER_TIMEOUT.
    "HEALTH_MAX_READY_AGE": 300.0,
    "HEALTH_BROKER_TIMEOUT": 5.0,
    # Metrics (/ops/metrics, jobworker --metrics-port): a scrape passes with the header
    # "Authorization: Bearer <METRICS_TOKEN>" or from an address or network listed in
    # METRICS_ALLOWED_IPS. With neither set: loopback only while DEBUG is on, nobody in production
    # (a worker's own --metrics-port endpoint allows loopback).
    "METRICS_TOKEN": None,
    "METRICS_ALLOWED_IPS": None,
    # Seconds between two publications of the admin's live overview (/topic/ops.overview) by
    # the first alive worker; None: the pages show the state at load only.
    "OVERVIEW_INTERVAL": 2.0,
}


def get(key: str) -> Any:
    """One JOBS key, from settings or its default."""
    from django.conf import settings

    if key not in DEFAULTS:
        raise KeyError(f"Unknown JOBS key {key!r}; known keys: {', '.join(sorted(DEFAULTS))}")
    configured = getattr(settings, "JOBS", {}) or {}
    return configured.get(key, DEFAULTS[key])
