"""What other Django code calls to start jobs with extras Django's Task API has no place for.

    from jobs.api import enqueue_for, job_options

    result = enqueue_for(request.user, debug_report)          # owned by the user, notified at the end
    with job_options(owner=user, name="Nightly export", max_attempts=3, time_limit=600):
        export.enqueue("2026-01-01")

    results = enqueue_many(export, [("2026-01-01",), ("2026-01-02",), call("2026-01-03", force=True)])
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.tasks import Task, TaskResult

from .backends import EnqueueOptions, JobBackend, _options

__all__ = ["enqueue_for", "job_options", "aenqueue_for", "enqueue_many", "call", "Call"]


@dataclass(frozen=True)
class Call:
    """The arguments of one job for enqueue_many(); make it with call(*args, **kwargs)."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def call(*args: Any, **kwargs: Any) -> Call:
    """``call(1, 2, force=True)``: one job's arguments for enqueue_many()."""
    return Call(args, kwargs)


def enqueue_many(task: Task, calls: Iterable[Call | tuple | list]) -> list[TaskResult]:
    """Enqueue ``task`` once per item of ``calls``: a tuple or list of positional arguments, or a
    call(*args, **kwargs). On the JobBackend this is one transaction and one multi-row INSERT (per
    bulk batch of the database: about 1,000 jobs on SQLite) instead of one INSERT per job; every
    call is validated first, so a bad one writes nothing. job_options() applies to every job.
    Returns the results in order; after the commit each job's READY event and one wake-up per
    queue are published. Other backends get one task.enqueue() per call.
    """
    pairs = []
    for item in calls:
        if isinstance(item, Call):
            pairs.append((item.args, item.kwargs))
        elif isinstance(item, (tuple, list)):
            pairs.append((tuple(item), {}))
        else:
            raise TypeError(
                f"enqueue_many() takes each job's positional arguments as a tuple or list, or call(*args, **kwargs), "
                f"not {type(item).__name__} (a single argument x is (x,))"
            )
    backend = task.get_backend()
    if isinstance(backend, JobBackend):
        return backend.enqueue_many(task, pairs)
    return [task.enqueue(*args, **kwargs) for args, kwargs in pairs]


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
