"""The terminal view behind `manage.py jobs`: list, show, cancel, retry, and watch jobs live.

Watching is fed like the pages: subscribe to the job's STOMP topic (or /topic/jobs.all) through a
hub, wait for the broker to confirm, read the current state from the database (the snapshot),
then apply each event newer than what is shown (per-job ``seq``). The database is read again
every RESYNC_SECONDS and after the hub reconnects, so a broker outage only slows the view down.

On a terminal it draws rich progress bars; piped (or with --plain, or NO_COLOR) it prints one
plain line per change, with no colour and no cursor movement, so logs and scripts can read it.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any, TextIO

from channels.db import database_sync_to_async
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table

from . import events, live
from .models import FINAL_STATUSES, Job, JobStatus

__all__ = ["JobsView", "PlainRenderer", "RichRenderer", "renderer_for", "watch", "job_rows", "print_list",
           "print_detail", "summary", "EXIT_CODES"]

logger = logging.getLogger(__name__)

# Seconds between two database reads while watching (events are the fast path; this is the net).
RESYNC_SECONDS = 5.0
# Jobs shown by `jobs watch` without an id, like the pages' list snapshot.
WATCH_LIMIT = 50
# How `jobs watch <id>` exits, by the job's final state (and 2 for bad options, Django's CommandError).
EXIT_CODES = {JobStatus.SUCCESSFUL: 0, JobStatus.FAILED: 1, JobStatus.CANCELLED: 3}
_STYLE = {"READY": "cyan", "RUNNING": "yellow", "SUCCESSFUL": "green", "FAILED": "red", "CANCELLED": "magenta"}
ACTIVE = (JobStatus.READY, JobStatus.RUNNING)


def _short(job_id: str) -> str:
    return str(job_id)[:8]


def _percent(event: dict) -> str:
    if event["status"] == "SUCCESSFUL":
        return "100%"
    percent = (event.get("progress") or {}).get("percent")
    return f"{percent:.0f}%" if percent is not None else ""


def summary(event: dict) -> str:
    """One line for a job's state: id, name, status, percent, message or error."""
    parts = [_short(event["id"]), event.get("name") or event.get("task", ""), event["status"]]
    if event.get("cancel_requested") and not event.get("final"):
        parts[-1] += " (cancelling)"
    percent = _percent(event)
    if percent:
        parts.append(percent)
    error = event.get("error")
    if error and event["status"] in {"FAILED", "CANCELLED"}:
        parts.append(f"{error['type'].rsplit('.', 1)[-1]}: {error['message']}")
    elif event.get("message"):
        parts.append(event["message"])
    return "  ".join(p for p in parts if p)


# Renderers ---------------------------------------------------------------------------------------


class PlainRenderer:
    """One line per change of what a person would see (status, percent, message)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._last: dict[str, str] = {}

    def __enter__(self) -> PlainRenderer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.out.flush()

    def show(self, event: dict) -> None:
        line = summary(event)
        if self._last.get(event["id"]) != line:
            self._last[event["id"]] = line
            self.out.write(line + "\n")
            self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


class RichRenderer:
    """A progress bar per job, redrawn in place (rich.progress)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.fields[short]}", style="dim"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[percent]:>4}"),
            TextColumn("{task.fields[status]}"),
            TextColumn("{task.fields[message]}", style="dim"),
            console=console,
            auto_refresh=True,
            refresh_per_second=8,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichRenderer:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def show(self, event: dict) -> None:
        progress = event.get("progress") or {}
        total = progress.get("total") or None
        done = progress.get("done") or 0
        if event["status"] == "SUCCESSFUL":
            done = total = total or 1
        status = event["status"] + (" (cancelling)" if event.get("cancel_requested") and not event.get("final") else "")
        error = event.get("error") if event["status"] in {"FAILED", "CANCELLED"} else None
        message = f"{error['type'].rsplit('.', 1)[-1]}: {error['message']}" if error else (event.get("message") or "")
        fields = dict(short=_short(event["id"]), percent=_percent(event),
                      status=f"[{_STYLE.get(event['status'], 'white')}]{status}[/]", message=message[:60])
        name = event.get("name") or event.get("task", "")
        task = self._tasks.get(event["id"])
        if task is None:
            self._tasks[event["id"]] = self.progress.add_task(name, total=total, completed=done, **fields)
        else:
            self.progress.update(task, description=name, total=total, completed=done, **fields)

    def note(self, text: str) -> None:
        self.progress.console.print(text)


def renderer_for(out: TextIO, *, plain: bool = False) -> PlainRenderer | RichRenderer:
    """Rich bars on a terminal, plain lines when piped, with --plain or with NO_COLOR set."""
    console = Console(file=out)
    if plain or not console.is_terminal or os.environ.get("NO_COLOR"):
        return PlainRenderer(out)
    return RichRenderer(console)


# Watching ------------------------------------------------------------------------------------------


class JobsView:
    """The newest state of each watched job: events apply only when newer (seq) than what is shown."""

    def __init__(self, job_id: str | None) -> None:
        self.job_id = job_id
        self.jobs: dict[str, dict] = {}

    def apply(self, event: dict) -> bool:
        """Take an event (or snapshot); True if it changed what is shown."""
        if event.get("type") != "job" or (self.job_id and event.get("id") != self.job_id):
            return False
        known = self.jobs.get(event["id"])
        if known is not None and known["seq"] >= event["seq"]:
            return False
        self.jobs[event["id"]] = event
        return True

    @property
    def done(self) -> bool:
        """Watching one job: it reached a final state. Watching all: none is READY or RUNNING."""
        if self.job_id:
            job = self.jobs.get(self.job_id)
            return job is not None and job["final"]
        return all(job["final"] for job in self.jobs.values())


def _snapshot(job_id: str | None) -> list[dict]:
    if job_id:
        return [events.job_event(job) for job in Job.objects.filter(pk=job_id)]
    active = Job.objects.filter(status__in=ACTIVE).order_by("-priority", "enqueued_at")[:WATCH_LIMIT]
    return [events.job_event(job) for job in active]


class _Listener:
    def __init__(self, queue: asyncio.Queue) -> None:
        self.queue = queue

    def hub_event(self, event) -> None:
        if event.data is not None:
            self.queue.put_nowait(event.data)

    def hub_reconnected(self) -> None:
        self.queue.put_nowait(None)  # read the database again


async def watch(job_id: str | None, renderer: PlainRenderer | RichRenderer, *, until_idle: bool = False,
                broker_url: Any = None, stop: Callable[[], bool] | None = None) -> str | None:
    """Show one job (until it is final) or all active jobs (until interrupted, or until none is
    active with ``until_idle``); returns the watched job's final status (None when watching all)."""
    from notifications.hub import Hub

    view = JobsView(job_id)
    queue: asyncio.Queue = asyncio.Queue()
    listener = _Listener(queue)
    hub = Hub(broker_url)
    destination = live.job(job_id) if job_id else live.JOBS_ALL
    try:
        await hub.subscribe(destination, listener)  # returns once the broker confirmed: the snapshot misses nothing
        if not hub.connected:
            renderer.note(f"(broker {hub.url} unreachable: reading the database every {RESYNC_SECONDS:g} s)")
        snapshot = await database_sync_to_async(_snapshot)(job_id)
        if job_id and not snapshot:
            raise LookupError(f"No job {job_id}.")
        with renderer:
            for event in snapshot:
                if view.apply(event):
                    renderer.show(event)
            if not job_id and not snapshot:
                renderer.note("No READY or RUNNING job; waiting for new ones (Ctrl-C to stop).")
            while not (view.done and (job_id or until_idle)) and not (stop and stop()):
                try:
                    item = await asyncio.wait_for(queue.get(), RESYNC_SECONDS)
                except TimeoutError:
                    item = None
                if item is None:  # a resync: the database is the truth
                    known = list(view.jobs) if not job_id else [job_id]
                    fresh = await database_sync_to_async(_snapshot)(job_id)
                    if not job_id:  # jobs that finished while no event came
                        fresh += await database_sync_to_async(
                            lambda: [events.job_event(j) for j in Job.objects.filter(pk__in=known, status__in=FINAL_STATUSES)])()
                    items = fresh
                else:
                    items = [item]
                for event in items:
                    if view.apply(event):
                        renderer.show(event)
    finally:
        hub.unsubscribe(destination, listener)
        await hub.close()
    if job_id:
        return view.jobs[job_id]["status"]
    return None


# Listing ---------------------------------------------------------------------------------------------


def job_rows(queryset) -> list[dict]:
    return [events.job_event(job) for job in queryset]


def print_list(out: TextIO, rows: list[dict], *, plain: bool = False) -> None:
    console = Console(file=out)
    if plain or not console.is_terminal or os.environ.get("NO_COLOR"):
        out.write("ID\tSTATUS\tPROGRESS\tQUEUE\tNAME\tENQUEUED\tMESSAGE\n")
        for r in rows:
            out.write("\t".join([r["id"], r["status"], _percent(r), r["queue"], r["name"], r["enqueued_at"] or "",
                                 (r["message"] or "").replace("\t", " ")]) + "\n")
        return
    table = Table(show_edge=False, header_style="bold")
    for column in ("id", "status", "progress", "queue", "name", "enqueued", "message"):
        table.add_column(column)
    for r in rows:
        table.add_row(_short(r["id"]), f"[{_STYLE.get(r['status'], 'white')}]{r['status']}[/]", _percent(r), r["queue"],
                      r["name"], (r["enqueued_at"] or "")[:19].replace("T", " "), (r["message"] or "")[:50])
    console.print(table)


def print_detail(out: TextIO, job: Job) -> None:
    e = events.job_event(job)
    lines = [
        f"Job {e['id']}",
        f"  name:      {e['name']}",
        f"  task:      {e['task']}",
        f"  status:    {e['status']}" + (" (cancel requested)" if e["cancel_requested"] and not e["final"] else ""),
        f"  progress:  {_percent(e) or '-'} ({e['progress']['done']} of {e['progress']['total'] or '?'})",
        f"  message:   {e['message'] or '-'}",
        f"  queue:     {e['queue']} (priority {job.priority})",
        f"  attempts:  {e['attempts']} of {e['max_attempts']}",
        f"  enqueued:  {e['enqueued_at']}",
        f"  started:   {e['started_at'] or '-'}",
        f"  finished:  {e['finished_at'] or '-'}",
        f"  worker:    {job.worker_id or '-'}",
    ]
    if e["error"]:
        lines.append(f"  error:     {e['error']['type']}: {e['error']['message']}")
    if job.status == JobStatus.SUCCESSFUL:
        lines.append(f"  result:    {job.result!r}")
    if e["result_url"]:
        lines.append(f"  download:  {e['result_url']}")
    if job.log:
        lines.append("  log:")
        lines += [f"    {entry.get('at', '')[:19].replace('T', ' ')}  {entry.get('text', '')}" for entry in job.log[-10:]]
    out.write("\n".join(lines) + "\n")
