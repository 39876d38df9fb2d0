"""Errors raised by the jobs app: one root, one class per mistake a caller can make."""
from __future__ import annotations

__all__ = [
    "JobError",
    "JobStateError",
    "JobCancelled",
    "JobTimeout",
    "WorkerLost",
    "UnknownTask",
    "InvalidArguments",
]


class JobError(Exception):
    """Root of every error the jobs app raises on purpose."""


class JobStateError(JobError):
    """The job is not in a state that allows the requested change (e.g. cancelling a finished job)."""


class JobCancelled(JobError):
    """Raised inside a task (by ``jobs.progress.check_cancelled()``) once cancellation was requested.

    A task that lets it propagate ends CANCELLED, never retried.
    """


class JobTimeout(JobError):
    """The job ran longer than its time limit; the worker failed it (never retried)."""


class WorkerLost(JobError):
    """The worker running the job stopped heartbeating (killed or hung) and no attempt remained."""


class UnknownTask(JobError):
    """The job's task path does not import to a task (the code was removed or renamed)."""


class InvalidArguments(JobError, TypeError):
    """Task arguments that would not survive being stored as JSON; nothing was enqueued."""
