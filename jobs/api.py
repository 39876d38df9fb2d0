"""What other Django code calls to start jobs with extras Django's Task API has no place for.

    from jobs.api import enqueue_for, job_options

    result = enqueue_for(request.user, debug_report)          # owned by the user, notified at the end
    with job_options(owner=user, name="Nightly export", max_attempts=3, time_limit=600):
        export.enqueue("2026-01-01")
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from django.tasks import Task, TaskResult

from .backends import EnqueueOptions, _options

__all__ = ["enqueue_for", "job_options", "aenqueue_for"]


@contextlib.contextmanager
def job_options(
    *,
    owner: Any = None,
    name: str | None = None,
    max_attempts: int | None = None,
    time_limit: float | None = None,
) -> Iterator[EnqueueOptions]:
    """Within the block, jobs enqueued through the JobBackend get these extras.

    owner: a user (AnonymousUser or None: no owner); name: shown instead of the task name;
    max_attempts / time_limit: override @task(...) and JOBS defaults. Invalid values raise
    django.tasks.exceptions.InvalidTask at enqueue.
    """
    options = EnqueueOptions(owner=owner, name=name, max_attempts=max_attempts, time_limit=time_limit)
    token = _options.set(options)
    try:
        yield options
    finally:
        _options.reset(token)


def enqueue_for(user: Any, task: Task, *args: Any, **kwargs: Any) -> TaskResult:
    """``task.enqueue(*args, **kwargs)`` with ``user`` as the job's owner."""
    with job_options(owner=user):
        return task.enqueue(*args, **kwargs)


async def aenqueue_for(user: Any, task: Task, *args: Any, **kwargs: Any) -> TaskResult:
    with job_options(owner=user):
        return await task.aenqueue(*args, **kwargs)
