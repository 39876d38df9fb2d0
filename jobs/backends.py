"""A django.tasks backend whose results are Job rows, run by `manage.py jobworker`.

    TASKS = {"default": {"BACKEND": "jobs.backends.JobBackend", "QUEUES": ["default", "reports"]}}

Tasks are declared with Django's own decorator; this backend adds two options to it:

    @task(max_attempts=3, time_limit=60)   # retried with backoff up to 3 runs; failed after 60 s
    def build_report(n): ...

Per enqueue, `jobs.api.job_options(owner=..., name=..., max_attempts=..., time_limit=...)` (a
context manager) or `jobs.api.enqueue_for(user, task, *args, **kwargs)` set the same values.

Validation happens at the call that enqueues, and nothing is written when it fails: an unknown
queue (the error names the known ones), arguments that are not JSON, a run_after more than
RUN_AFTER_TOLERANCE in the past, a task the worker could not import by its dotted path. A row
whose task path no longer imports when the worker picks it up ends FAILED (jobs.exceptions.UnknownTask).

The hot path is one INSERT per job and nothing more on the database (a statement built once per
database, the values prepared by the model's fields: the ORM's compiler cost more than the
database's work). After the commit the job's READY event and one wake-up per queue go to the
publisher (not durable: the row is the truth). JobBackend.enqueue_many() (jobs.api.enqueue_many)
writes many jobs with one multi-row INSERT (per bulk batch of the database).
"""
from __future__ import annotations

import contextvars
import json
import logging
import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.signals import setting_changed
from django.db import connections, router, transaction
from django.db.models import NOT_PROVIDED
from django.db.models import signals as model_signals
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from . import conf
from .exceptions import InvalidArguments

__all__ = [
    "JobBackend",
    "JobTask",
    "EnqueueOptions",
    "RUN_AFTER_TOLERANCE",
    "current_options",
    "load_task",
    "install_task_log",
]

logger = logging.getLogger(__name__)

# A run_after this far in the past is a mistake (a stale value, a wrong time zone), not clock jitter
# between computing "now" and enqueueing.
RUN_AFTER_TOLERANCE = timedelta(seconds=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTask(Task):
    """Django's Task plus the two options this backend understands (None: JOBS defaults)."""

    max_attempts: int | None = None  # total runs allowed; failures are retried with exponential backoff
    time_limit: float | None = None  # seconds; the worker fails the job (JobTimeout) past it


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """Per-enqueue extras set by jobs.api.job_options(); None keeps the task's or JOBS' default."""

    owner: Any = None
    name: str | None = None
    max_attempts: int | None = None
    time_limit: float | None = None


_options: contextvars.ContextVar[EnqueueOptions | None] = contextvars.ContextVar("jobs_enqueue_options", default=None)


def current_options() -> EnqueueOptions:
    return _options.get() or EnqueueOptions()


def _missing_task_placeholder(*args: Any, **kwargs: Any) -> None:
    """Stands in for a task whose path no longer imports, so its old results stay readable."""
    raise RuntimeError("This task no longer exists.")


def load_task(path: str) -> Task:
    """The Task at a dotted path; raises ImportError or TypeError with a readable message."""
    try:
        obj = import_string(path)
    except ImportError as exc:
        raise ImportError(f"Task {path!r} cannot be imported: {exc}") from exc
    if not isinstance(obj, Task):
        raise TypeError(f"{path!r} is a {type(obj).__name__}, not a task (decorate it with @task).")
    return obj


def _check_limits(max_attempts: Any, time_limit: Any, where: str) -> None:
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise InvalidTask(f"{where}: max_attempts must be a whole number of at least 1, not {max_attempts!r}.")
    if time_limit is not None and (
        isinstance(time_limit, bool)
        or not isinstance(time_limit, (int, float))
        or not math.isfinite(time_limit)
        or time_limit <= 0
    ):
        raise InvalidTask(f"{where}: time_limit must be a positive number of seconds, not {time_limit!r}.")


def _json_arguments(task_path: str, args: Any, kwargs: Any) -> tuple[list, dict]:
    """The arguments as stored, or InvalidArguments saying which value does not survive JSON."""
    stored = []
    for label, value in (("args", args), ("kwargs", kwargs)):
        try:
            normalized = normalize_json(value)
            round_tripped = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InvalidArguments(
                f"The {label} of {task_path} must be JSON-serialisable (str, int, float, bool, None, "
                f"lists and dicts with str keys): {exc}"
            ) from exc
        if round_tripped != normalized:
            raise InvalidArguments(
                f"The {label} of {task_path} change when stored as JSON ({value!r} would come back as "
                f"{round_tripped!r}); use str dict keys and plain lists."
            )
        stored.append(normalized)
    return list(stored[0]), dict(stored[1])


# INSERT statements by (database alias, rows): built once, like the worker's claim statements.
_INSERT_SQL: dict[tuple[str, int], str] = {}
# The fields enqueue sets on every new job; every other field keeps its default, so its value as
# the database takes it is prepared once per database (the values the same for every new job).
_PER_JOB_FIELDS = frozenset({
    "id", "task_path", "name", "args", "kwargs", "queue", "priority", "run_after", "backend", "owner",
    "enqueued_at", "max_attempts", "time_limit",
})
_ROW_TEMPLATES: dict[str, list[tuple[Any, Any]]] = {}


def _row_template(using: str) -> list[tuple[Any, Any]]:
    """Per concrete field of Job: (field, None) for a field prepared per job, or (None, value) for
    a default prepared once. A default made by a callable other than list or dict (a new
    timestamp, a new uuid each time) is prepared per job too."""
    template = _ROW_TEMPLATES.get(using)
    if template is None:
        from .models import Job

        connection = connections[using]
        blank = Job()
        template = []
        for field in Job._meta.concrete_fields:
            constant = (
                field.name not in _PER_JOB_FIELDS
                and (field.default is NOT_PROVIDED or not callable(field.default) or field.default in (list, dict))
                and not getattr(field, "auto_now", False)
                and not getattr(field, "auto_now_add", False)
            )
            if constant:
                template.append((None, field.get_db_prep_save(field.pre_save(blank, True), connection)))
            else:
                template.append((field, None))
        _ROW_TEMPLATES[using] = template
    return template


_FIELD_DEFAULTS: list[tuple[str, Any]] = []


def _new_instance(values: dict[str, Any]) -> Any:
    """A new Job from ``values`` (by attname), every other field at its default, built with
    positional arguments: Django's fast path for model instances (keywords cost ~3x as much)."""
    from .models import Job

    if not _FIELD_DEFAULTS:
        _FIELD_DEFAULTS.extend((field.attname, field.get_default) for field in Job._meta.concrete_fields)
    return Job(*[values[name] if name in values else default() for name, default in _FIELD_DEFAULTS])


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "DATABASES":  # tests switch databases: prepare the statements again
        _INSERT_SQL.clear()
        _ROW_TEMPLATES.clear()


setting_changed.connect(_on_setting_changed, dispatch_uid="jobs.backends.setting_changed")


def _insert_jobs(jobs: list[Any], using: str) -> None:
    """Write new Job instances with one INSERT per bulk batch of the database (one for a single job).

    Model signals (pre_save/post_save on Job) are Django's to send: when a receiver listens, a
    single job goes through save() and many through bulk_create() (which, as in Django, sends none).
    """
    from .models import Job

    if model_signals.pre_save.has_listeners(Job) or model_signals.post_save.has_listeners(Job):
        if len(jobs) == 1:
            jobs[0].save(using=using, force_insert=True)
        else:
            Job.objects.using(using).bulk_create(jobs)
        return
    connection = connections[using]
    fields = Job._meta.concrete_fields
    template = _row_template(using)
    batch = 1 if len(jobs) == 1 else max(1, connection.ops.bulk_batch_size(fields, jobs))
    with connection.cursor() as cursor:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start:start + batch]
            sql = _INSERT_SQL.get((using, len(chunk)))
            if sql is None:
                qn = connection.ops.quote_name
                row = f"({', '.join(['%s'] * len(fields))})"
                sql = (f"INSERT INTO {qn(Job._meta.db_table)} ({', '.join(qn(f.column) for f in fields)}) "
                       f"VALUES {', '.join([row] * len(chunk))}")
                if len(_INSERT_SQL) > 64:  # chunk sizes vary with bulk sizes: keep a few
                    _INSERT_SQL.clear()
                _INSERT_SQL[(using, len(chunk))] = sql
            params = [
                value if field is None else field.get_db_prep_save(field.pre_save(job, True), connection)
                for job in chunk
                for field, value in template
            ]
            cursor.execute(sql, params)
    for job in jobs:
        job._state.adding = False
        job._state.db = using


class JobBackend(BaseTaskBackend):
    """Results are Job rows; `manage.py jobworker` runs them."""

    task_class = JobTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        self._variants: dict[tuple, Task] = {}
        self._valid: set[Task] = set()  # tasks that passed validate_task() and the import check

    def validate_task(self, task: Task) -> None:
        if self.queues and task.queue_name not in self.queues:
            raise InvalidTask(
                f"Queue {task.queue_name!r} is not one of the queues of task backend {self.alias!r}: "
                f"{', '.join(sorted(self.queues))} (TASKS[{self.alias!r}]['QUEUES'])."
            )
        super().validate_task(task)
        _check_limits(getattr(task, "max_attempts", None), getattr(task, "time_limit", None), task.module_path)

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        from .models import Job

        job = self._new_job(task, args, kwargs, timezone.now(), current_options())
        _insert_jobs([job], router.db_for_write(Job))
        return self._enqueued(task, [job])[0]

    def enqueue_many(self, task: Task, calls: Iterable[tuple[Any, Any]]) -> list[TaskResult]:
        """Enqueue ``task`` once per (args, kwargs) pair of ``calls``, in one transaction with one
        multi-row INSERT per bulk batch of the database. Every call is validated before anything
        is written; the results are in the order of ``calls``."""
        from .models import Job

        now, options = timezone.now(), current_options()
        jobs = [self._new_job(task, args, kwargs, now, options) for args, kwargs in calls]
        if not jobs:
            return []
        db = router.db_for_write(Job)
        with transaction.atomic(using=db):
            _insert_jobs(jobs, db)
            return self._enqueued(task, jobs)

    def _checked(self, task: Task) -> None:
        """Validate a task once per backend (a Task is a frozen value; settings changes make new backends)."""
        if task in self._valid:
            return
        self.validate_task(task)
        path = task.module_path
        try:
            importable = load_task(path)
        except (ImportError, TypeError) as exc:
            raise InvalidTask(f"The worker could not run {path}: {exc}") from exc
        if importable.func is not task.func:
            raise InvalidTask(f"{path} does not import to this task's function; the worker could not run it.")
        if len(self._valid) > 1000:
            self._valid.clear()
        self._valid.add(task)

    def _new_job(self, task: Task, args: Any, kwargs: Any, now: datetime, options: EnqueueOptions) -> Any:
        """A validated, unsaved Job for one call (InvalidTask or InvalidArguments otherwise)."""
        from .models import Job

        self._checked(task)
        path = task.module_path
        args, kwargs = _json_arguments(path, args, kwargs)
        run_after = task.run_after
        if run_after is not None and run_after < now - RUN_AFTER_TOLERANCE:
            raise InvalidTask(
                f"run_after {run_after.isoformat()} is in the past (now {now.isoformat()}); "
                "leave it out to run the task as soon as possible."
            )
        _check_limits(options.max_attempts, options.time_limit, "job_options()")
        max_attempts = options.max_attempts or getattr(task, "max_attempts", None) or int(conf.get("MAX_ATTEMPTS"))
        time_limit = options.time_limit or getattr(task, "time_limit", None)
        if time_limit is None and conf.get("TIME_LIMIT") is not None:
            time_limit = float(conf.get("TIME_LIMIT"))
        owner = options.owner
        if owner is not None and not getattr(owner, "is_authenticated", False):
            owner = None  # AnonymousUser: nobody to own the job
        job = _new_instance({
            "task_path": path,
            "name": (options.name or "")[:200],
            "args": args,
            "kwargs": kwargs,
            "queue": task.queue_name,
            "priority": task.priority,
            "run_after": max(run_after, now) if run_after is not None else now,
            "backend": self.alias,
            "owner_id": owner.pk if owner is not None else None,
            "enqueued_at": now,
            "max_attempts": max_attempts,
            "time_limit": time_limit,
        })
        if owner is not None:
            job.owner = owner  # cached: reading job.owner needs no query
        return job

    def _enqueued(self, task: Task, jobs: list[Any]) -> list[TaskResult]:
        """After the INSERT: the results, task_enqueued for each, and (after the commit) each job's
        READY event and one wake-up per queue."""
        from . import events

        results = [self._to_result(job, task) for job in jobs]
        for result in results:
            task_enqueued.send(type(self), task_result=result)
        snapshots = [events.job_event(job) for job in jobs]
        queues = list(dict.fromkeys(job.queue for job in jobs))

        def announce() -> None:
            for snapshot in snapshots:
                events.publish_event(snapshot)
            for queue in queues:
                events.publish_wakeup(queue)

        transaction.on_commit(announce, using=jobs[0]._state.db)
        return results

    def get_result(self, result_id: Any) -> TaskResult:
        from .models import Job

        try:
            job = Job.objects.get(pk=uuid.UUID(str(result_id)))
        except (ValueError, ValidationError, Job.DoesNotExist) as exc:
            raise TaskResultDoesNotExist(result_id) from exc
        return self.result_from_job(job)

    def result_from_job(self, job: Any) -> TaskResult:
        """The TaskResult view of a Job row (CANCELLED shows as FAILED, with a JobCancelled error)."""
        try:
            task = load_task(job.task_path)
        except (ImportError, TypeError):
            task = JobTask(func=_missing_task_placeholder, backend=self.alias)
        return self._to_result(job, task)

    def _to_result(self, job: Any, task: Task) -> TaskResult:
        # using() re-validates the task (signature inspection): remember the few variants a worker sees.
        key = (task, job.priority, job.queue, job.backend)
        variant = self._variants.get(key)
        if variant is None:
            try:
                variant = task.using(priority=job.priority, queue_name=job.queue, backend=job.backend)
            except InvalidTask:  # the queue or backend left the settings since: show the task as declared
                variant = task
            if len(self._variants) > 1000:
                self._variants.clear()
            self._variants[key] = variant
        task = variant
        status = TaskResultStatus.FAILED if job.status == "CANCELLED" else TaskResultStatus(job.status)
        errors = []
        if job.error_type and job.status in {"FAILED", "CANCELLED"}:
            errors.append(TaskError(exception_class_path=job.error_type, traceback=job.error_traceback or job.error_message))
        result = TaskResult(
            task=task,
            id=str(job.pk),
            status=status,
            enqueued_at=job.enqueued_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            last_attempted_at=job.started_at,
            args=job.args,
            kwargs=job.kwargs,
            backend=job.backend,
            errors=errors,
            worker_ids=list(job.worker_ids or []),
        )
        if job.status == "SUCCESSFUL":
            object.__setattr__(result, "_return_value", job.result)
        return result



# django.tasks has no CANCELLED status: a cancelled job's TaskResult is FAILED with this error.
_CANCELLED_ERROR = "jobs.exceptions.JobCancelled"


def _is_cancelled(sender: Any, task_result: TaskResult) -> bool:
    return (
        isinstance(sender, type)
        and issubclass(sender, JobBackend)
        and task_result.status == TaskResultStatus.FAILED
        and bool(task_result.errors)
        and task_result.errors[-1].exception_class_path == _CANCELLED_ERROR
    )


def _log_task_finished(sender: Any, task_result: TaskResult, **kwargs: Any) -> None:
    """django.tasks' own "Task id=... path=... state=..." line for a finished task, except that a
    job cancelled on request (FAILED in django.tasks' terms) is logged at INFO as
    state=CANCELLED: nothing failed, so it is no ERROR."""
    from django.tasks import signals

    if _is_cancelled(sender, task_result):
        logging.getLogger("django.tasks").info(
            "Task id=%s path=%s state=CANCELLED", task_result.id, task_result.task.module_path
        )
        return
    signals.log_task_finished(sender, task_result=task_result, **kwargs)


def install_task_log() -> None:
    """Put _log_task_finished in place of django.tasks' receiver that logs finished tasks (for
    every backend: it hands every other case to Django's). Called by JobsConfig.ready(); does
    nothing when a project has already disconnected Django's receiver."""
    from django.tasks import signals

    if signals.task_finished.disconnect(signals.log_task_finished):
        signals.task_finished.connect(_log_task_finished, dispatch_uid="jobs.backends.log_task_finished")
