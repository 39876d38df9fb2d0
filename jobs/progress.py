"""Report progress from inside a running task: plain attribute stores, never I/O, never an error.

    from jobs.progress import report_progress, log, is_cancel_requested, check_cancelled

    @task
    def crunch(n):
        for i in range(n):
            check_cancelled()                      # raises JobCancelled once someone cancelled
            report_progress(i + 1, n, f"Item {i + 1}")
            log("a line kept in the job's log")

A call only records the latest state on the job's in-memory RunState (found through a context
variable the worker sets for the task's thread, copied into asyncio tasks): the worker's loop
writes it to the database and publishes it at most every JOBS["PROGRESS_INTERVAL"] seconds
(latest state wins). The first report after a quiet interval wakes the loop, so it goes out at
once; reports arriving faster than that are merged into the next write. Outside a worker (tests
calling the function, the ImmediateBackend) every call is a no-op and is_cancel_requested() is
False.
"""
from __future__ import annotations

import contextvars
import logging
import time
from collections import deque
from typing import Any, Callable

__all__ = [
    "RunState",
    "report_progress",
    "log",
    "is_cancel_requested",
    "check_cancelled",
    "save_result_file",
    "current_job_id",
]

logger = logging.getLogger(__name__)

_current: contextvars.ContextVar[RunState | None] = contextvars.ContextVar("jobs_current_run", default=None)


class RunState:
    """What a running task reported and what its worker knows, shared by two threads.

    The task's thread only stores attributes or appends to a deque (atomic under the GIL);
    the worker's loop reads them. ``dirty`` is cleared by the reader *before* it reads, so a
    report racing with a flush is picked up by the next flush, never lost. ``wake`` (set by the
    worker) is called when ``dirty`` goes from False to True: once per flush at most, however
    often the task reports.
    """

    __slots__ = (
        "job_id",
        "progress",
        "dirty",
        "pending_log",
        "cancel_requested",
        "result_file",
        "abandoned",
        "in_task",
        "wake",
        "__weakref__",
    )

    def __init__(self, job_id: Any, done: int = 0, total: int | None = None, message: str = "") -> None:
        self.job_id = job_id
        self.progress: tuple[int, int | None, str] = (done, total, message)
        self.dirty = False
        self.pending_log: deque[tuple[float, str]] = deque()
        self.cancel_requested = False
        self.result_file: str | None = None
        # Set when the worker gave up on the run (timeout, lost ownership): reports are ignored.
        self.abandoned = False
        self.in_task = False
        self.wake: Callable[[], None] | None = None

    def mark_dirty(self) -> None:
        if not self.dirty:
            self.dirty = True
            wake = self.wake
            if wake is not None:
                wake()

    def take_log(self) -> list[tuple[float, str]]:
        taken = []
        pending = self.pending_log
        while True:
            try:
                taken.append(pending.popleft())
            except IndexError:
                return taken


def activate(state: RunState | None) -> contextvars.Token:
    """Make ``state`` the current run in this thread (the worker calls it around a task)."""
    return _current.set(state)


def deactivate(token: contextvars.Token) -> None:
    _current.reset(token)


_warned_bad_input = False


def _warn_once(what: str) -> None:
    global _warned_bad_input
    if not _warned_bad_input:
        _warned_bad_input = True
        logger.warning("report_progress() ignored bad input (%s); reported once per process", what)


def report_progress(done: int, total: int | None = None, message: str | None = None) -> None:
    """Record that ``done`` of ``total`` units are done (total None: unknown), with a status message.

    ``message`` None keeps the previous message. Never blocks, never raises: bad values are
    ignored with one warning per process.
    """
    state = _current.get()
    if state is None:
        return
    if type(done) is not int or (total is not None and type(total) is not int):
        try:
            done = int(done)
            total = None if total is None else int(total)
        except (TypeError, ValueError, OverflowError):
            _warn_once(f"done={done!r}, total={total!r}")
            return
    if message is None:
        message = state.progress[2]
    elif type(message) is not str:
        message = str(message)
    state.progress = (done, total, message)
    if not state.dirty:  # the usual case while a flush is pending: no method call at all
        state.mark_dirty()


def log(text: str) -> None:
    """Append a line to the job's log (kept: the last JOBS["LOG_LIMIT"] lines). Never raises."""
    state = _current.get()
    if state is None:
        return
    state.pending_log.append((time.time(), text if type(text) is str else str(text)))
    state.mark_dirty()


def is_cancel_requested() -> bool:
    """True once someone asked to cancel this job (or the worker gave up on it)."""
    state = _current.get()
    return state is not None and (state.cancel_requested or state.abandoned)


def check_cancelled() -> None:
    """Raise jobs.exceptions.JobCancelled if cancellation was requested; the job ends CANCELLED."""
    if is_cancel_requested():
        from .exceptions import JobCancelled

        raise JobCancelled("Cancelled on request.")


def current_job_id() -> str | None:
    """The id of the job this code runs in, or None outside a worker."""
    state = _current.get()
    return None if state is None else str(state.job_id)


def save_result_file(filename: str, content: bytes | str) -> str:
    """Store a file produced by the running job; once it ends SUCCESSFUL its event carries
    ``result_url`` (jobs:download). Returns the storage name. Outside a worker it raises
    RuntimeError (there is no job to attach the file to). This one call does I/O (the storage)."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    state = _current.get()
    if state is None:
        raise RuntimeError("save_result_file() is only available inside a job run by the worker.")
    data = content.encode("utf-8") if isinstance(content, str) else content
    safe = filename.replace("/", "_").replace("\\", "_") or "result"
    name = default_storage.save(f"jobs/{state.job_id}/{safe}", ContentFile(data))
    state.result_file = name
    state.mark_dirty()
    return name
