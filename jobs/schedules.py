"""Periodic tasks: declared in code or settings, kept as Schedule rows, enqueued by the workers.

    # myapp/schedules.py (found like admin.py), or JOBS["SCHEDULES"] in settings
    from jobs.schedules import periodic
    from .tasks import export

    periodic("nightly-export", export, "0 3 * * *", args=["all"], timezone="Europe/Paris")

Every `manage.py jobworker` synchronises the declarations into Schedule rows when it starts
(a changed cron expression or time zone recomputes the next due time) and then, every
JOBS["SCHEDULE_INTERVAL"] seconds, enqueues what is due. Exactly once per due time, whatever
the number of workers: a worker first moves the schedule's ``next_run_at`` on with a
compare-and-swap (``UPDATE ... WHERE next_run_at = <what it read>``: one of the racers wins, on
SQLite and PostgreSQL alike), then, in the same transaction, inserts one ScheduleRun per due
time it enqueues (unique on schedule and due time) and the job itself. A rolled-back enqueue
leaves no claim; a claim always has its job, or the error that prevented it.

Cron expressions are evaluated by cronsim in the schedule's time zone (default
settings.TIME_ZONE), with Debian cron's rules at DST changes: a daily time that falls in the
skipped hour runs right after the jump (03:00 for 02:30), one that falls in the repeated hour
runs once (the first time), and an hourly or finer schedule runs at every real hour, so nothing
is skipped and nothing doubles.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from django.conf import settings
from django.core.checks import Error, register
from django.db import IntegrityError, transaction
from django.utils import timezone

from . import conf
from .models import MissedRuns, Schedule, ScheduleRun

__all__ = [
    "Declaration",
    "periodic",
    "declarations",
    "validate",
    "next_due",
    "latest_due",
    "sync",
    "tick",
    "pause",
    "resume",
    "explain",
    "check_schedules",
    "CATCH_UP_BATCH",
    "TICK_LIMIT",
]

logger = logging.getLogger(__name__)

# Due times one transaction enqueues for a schedule catching up with MISSED "all": small enough
# that a claim of another worker never waits long behind it on SQLite's write lock.
CATCH_UP_BATCH = 50
# Due times one tick enqueues per schedule before it looks at the others (the rest come next tick).
TICK_LIMIT = 1000
# Compare-and-swap rounds per schedule and tick (each lost round means another worker advanced it).
CAS_ROUNDS = 5
_NAME = re.compile(r"^[-a-zA-Z0-9_]{1,100}$")


@dataclass(frozen=True)
class Declaration:
    """One periodic task as declared: what to enqueue, and when."""

    name: str
    task_path: str
    cron: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    timezone: str = ""  # empty: settings.TIME_ZONE
    missed: str = MissedRuns.ONCE
    queue: str = ""  # empty: the task's own queue
    priority: int | None = None  # None: the task's own priority
    source: str = "code"  # "code" (periodic()) or "settings" (JOBS["SCHEDULES"])


_declared: dict[str, Declaration] = {}
_discovered = False


def periodic(
    name: str,
    task: Any,
    cron: str,
    *,
    args: list | tuple = (),
    kwargs: dict | None = None,
    timezone: str = "",
    missed: str = MissedRuns.ONCE,
    queue: str = "",
    priority: int | None = None,
) -> Declaration:
    """Declare a periodic task: ``task`` (a django.tasks Task, or its dotted path) enqueued with
    ``args``/``kwargs`` at every due time of ``cron`` in ``timezone``. ``missed``: "once" (one run
    for all due times missed while no worker ran; the default), "all" (one per missed due time)
    or "skip". Raises ValueError naming what is wrong; declaring a name twice replaces it."""
    path = task if isinstance(task, str) else getattr(task, "module_path", None)
    if not path:
        raise ValueError(f"periodic({name!r}): {task!r} is not a task (decorate it with @task) nor a dotted path.")
    declaration = Declaration(
        name=name, task_path=path, cron=cron, args=list(args), kwargs=dict(kwargs or {}), timezone=timezone,
        missed=str(missed), queue=queue, priority=priority,
    )
    problems = validate(declaration)
    if problems:
        raise ValueError(f"periodic({name!r}): {' '.join(problems)}")
    _declared[name] = declaration
    return declaration


def _from_settings() -> tuple[dict[str, Declaration], list[str]]:
    """JOBS["SCHEDULES"] as declarations, and the problems of the entries that are not valid."""
    configured = conf.get("SCHEDULES") or {}
    found: dict[str, Declaration] = {}
    problems: list[str] = []
    if not isinstance(configured, dict):
        return found, [f"JOBS['SCHEDULES'] must be a dict of name -> declaration, not {type(configured).__name__}."]
    keys = {"TASK", "CRON", "ARGS", "KWARGS", "TIMEZONE", "MISSED", "QUEUE", "PRIORITY"}
    for name, entry in configured.items():
        if not isinstance(entry, dict):
            problems.append(f"JOBS['SCHEDULES'][{name!r}] must be a dict with TASK and CRON.")
            continue
        unknown = sorted(set(entry) - keys)
        if unknown or "TASK" not in entry or "CRON" not in entry:
            problems.append(f"JOBS['SCHEDULES'][{name!r}] needs TASK and CRON and knows only {', '.join(sorted(keys))}"
                            + (f" (not {', '.join(unknown)})." if unknown else "."))
            continue
        declaration = Declaration(
            name=str(name), task_path=entry["TASK"], cron=entry["CRON"], args=entry.get("ARGS", []),
            kwargs=entry.get("KWARGS", {}), timezone=entry.get("TIMEZONE", ""), missed=entry.get("MISSED", MissedRuns.ONCE),
            queue=entry.get("QUEUE", ""), priority=entry.get("PRIORITY"), source="settings",
        )
        bad = validate(declaration)
        if bad:
            problems.append(f"JOBS['SCHEDULES'][{name!r}]: {' '.join(bad)}")
        else:
            found[declaration.name] = declaration
    return found, problems


def declarations() -> dict[str, Declaration]:
    """Every valid declaration: each app's ``schedules`` module is imported once (like admin.py),
    then JOBS["SCHEDULES"] is read (settings win over code for the same name)."""
    global _discovered
    if not _discovered:
        from django.utils.module_loading import autodiscover_modules

        autodiscover_modules("schedules")
        _discovered = True
    found, _ = _from_settings()
    return {**_declared, **found}


def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name or settings.TIME_ZONE)


def validate(declaration: Declaration) -> list[str]:
    """What is wrong with a declaration, one sentence per problem (empty when it is fine)."""
    from .backends import load_task

    problems = []
    if not isinstance(declaration.name, str) or not _NAME.match(declaration.name):
        problems.append(f"The name {declaration.name!r} must be 1 to 100 letters, digits, '-' or '_'.")
    try:
        load_task(declaration.task_path)
    except (ImportError, TypeError) as exc:
        problems.append(str(exc))
    try:
        zone = _zone(declaration.timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        problems.append(f"Unknown time zone {declaration.timezone!r} (an IANA name such as 'Europe/Paris').")
        zone = ZoneInfo("UTC")
    try:
        next(CronSim(declaration.cron, datetime.now(zone)))
    except (CronSimError, TypeError, StopIteration) as exc:
        problems.append(f"Invalid cron expression {declaration.cron!r}: {exc}")
    if declaration.missed not in MissedRuns.values:
        problems.append(f"missed must be one of {', '.join(MissedRuns.values)}, not {declaration.missed!r}.")
    if not isinstance(declaration.args, (list, tuple)) or not isinstance(declaration.kwargs, dict):
        problems.append("args must be a list and kwargs a dict.")
    if declaration.priority is not None and (
        isinstance(declaration.priority, bool) or not isinstance(declaration.priority, int)
        or not -100 <= declaration.priority <= 100
    ):
        problems.append(f"priority must be a whole number from -100 to 100, not {declaration.priority!r}.")
    return problems


@register()
def check_schedules(app_configs=None, **kwargs) -> list[Error]:
    """jobs.E101: a periodic task declared in JOBS["SCHEDULES"] that cannot run as declared."""
    _, problems = _from_settings()
    return [Error(problem, hint="See the README, Operations: schedules.", id="jobs.E101") for problem in problems]


# Due times ----------------------------------------------------------------------------------


def _aware(value: datetime) -> datetime:
    """A datetime read from the database as an aware one (USE_TZ=False stores local naive times)."""
    return value if timezone.is_aware(value) else timezone.make_aware(value)


def _stored(value: datetime) -> datetime:
    """An aware datetime as the database stores it."""
    return value if settings.USE_TZ else timezone.make_naive(value)


def next_due(cron: str, zone_name: str, after: datetime) -> datetime:
    """The first due time strictly after ``after``, in UTC."""
    zone = _zone(zone_name)
    return next(CronSim(cron, _aware(after).astimezone(zone))).astimezone(dt_timezone.utc)


def latest_due(cron: str, zone_name: str, at: datetime) -> datetime | None:
    """The last due time at or before ``at``, in UTC (None if the expression never matched)."""
    zone = _zone(zone_name)
    start = _aware(at).astimezone(zone).replace(microsecond=0) + timedelta(seconds=1)
    try:
        return next(CronSim(cron, start, reverse=True)).astimezone(dt_timezone.utc)
    except StopIteration:
        return None


def explain(cron: str) -> str:
    """The expression in words ("Every minute from 0 through 49 ..."), or the expression itself."""
    try:
        return CronSim(cron, datetime.now(dt_timezone.utc)).explain()
    except Exception:
        return cron


# Synchronising declarations to rows -----------------------------------------------------------


def sync(now: datetime | None = None) -> list[str]:
    """Create or update a Schedule row per declaration; returns the names declared.

    The definition (task, arguments, queue, priority, missed policy) follows the declaration;
    a new cron expression or time zone starts over from the first due time after now; the
    paused flag and the run history stay as the admin left them.
    """
    now = now or timezone.now()
    declared = declarations()
    for d in declared.values():
        definition = {"task_path": d.task_path, "args": list(d.args), "kwargs": dict(d.kwargs), "missed": d.missed,
                      "queue": d.queue, "priority": d.priority}
        row = Schedule.objects.filter(name=d.name).first()
        if row is None:
            try:
                with transaction.atomic():
                    Schedule.objects.create(name=d.name, cron=d.cron, time_zone=d.timezone, synced_at=now,
                                            next_run_at=_stored(next_due(d.cron, d.timezone, now)), **definition)
                logger.info("Schedule %s: declared (%s, %s)", d.name, d.cron, d.timezone or settings.TIME_ZONE)
            except IntegrityError:  # another worker created it a moment ago
                pass
            continue
        changes: dict[str, Any] = {k: v for k, v in definition.items() if getattr(row, k) != v}
        if row.cron != d.cron or row.time_zone != d.timezone:
            changes.update(cron=d.cron, time_zone=d.timezone, next_run_at=_stored(next_due(d.cron, d.timezone, now)))
            logger.info("Schedule %s: now %s (%s); next due %s", d.name, d.cron, d.timezone or settings.TIME_ZONE,
                        changes["next_run_at"])
        Schedule.objects.filter(pk=row.pk).update(synced_at=now, **changes)
    return sorted(declared)


# Enqueueing what is due ------------------------------------------------------------------------


def tick(now: datetime | None = None, *, names: list[str] | None = None, worker_id: str = "") -> int:
    """Enqueue every due time of the unpaused schedules (those in ``names``, default: every one
    declared in this process) up to ``now``; returns how many jobs were enqueued."""
    now = now or timezone.now()
    if names is None:
        names = sorted(declarations())
    if not names:
        return 0
    enqueued = 0
    due = Schedule.objects.filter(name__in=names, paused=False, next_run_at__lte=_stored(now)).values_list("pk", flat=True)
    for pk in list(due):
        enqueued += _catch_up(pk, now, worker_id)
    return enqueued


def _catch_up(pk: int, now: datetime, worker_id: str) -> int:
    enqueued = rounds = 0
    while enqueued < TICK_LIMIT and rounds < CAS_ROUNDS:
        schedule = Schedule.objects.filter(pk=pk, paused=False).first()
        if schedule is None or schedule.next_run_at is None or _aware(schedule.next_run_at) > now:
            break
        won, count = _advance(schedule, now, worker_id)
        enqueued += count
        if not won:
            rounds += 1
    return enqueued


def _plan(schedule: Schedule, now: datetime) -> tuple[list[datetime], datetime, int]:
    """The due times to enqueue now, the next due time after them, and how many were missed."""
    first = _aware(schedule.next_run_at)
    if schedule.missed == MissedRuns.ALL:
        dues = [first]
        following = next_due(schedule.cron, schedule.time_zone, first)
        while following <= now and len(dues) < CATCH_UP_BATCH:
            dues.append(following)
            following = next_due(schedule.cron, schedule.time_zone, following)
        return dues, following, 0
    latest = latest_due(schedule.cron, schedule.time_zone, now)
    if latest is None or latest < first:
        latest = first
    following = next_due(schedule.cron, schedule.time_zone, now)
    missed = 0 if latest == first else 1  # at least one earlier due time went by (counting them all could be long)
    if schedule.missed == MissedRuns.SKIP and latest < now - timedelta(seconds=float(conf.get("SCHEDULE_MISSED_AFTER"))):
        return [], following, missed + 1
    return [latest], following, missed


def _advance(schedule: Schedule, now: datetime, worker_id: str) -> tuple[bool, int]:
    """One transaction: win the schedule's next due time, then enqueue. (won, jobs enqueued)."""
    dues, following, missed = _plan(schedule, now)
    try:
        with transaction.atomic():
            changes: dict[str, Any] = {"next_run_at": _stored(following)}
            if dues:
                changes["last_run_at"] = _stored(dues[-1])
            won = Schedule.objects.filter(pk=schedule.pk, paused=False, next_run_at=schedule.next_run_at).update(**changes)
            if not won:
                return False, 0
            enqueued = sum(_enqueue(schedule, due, worker_id) for due in dues)
    except IntegrityError:
        # The unique (schedule, due_at) claim refused a due time enqueued already: nothing of
        # this transaction stays. Only possible when a definition changed under a tick.
        logger.warning("Schedule %s: a due time up to %s was enqueued already; nothing enqueued twice",
                       schedule.name, following.isoformat())
        return False, 0
    if missed:
        if schedule.missed == MissedRuns.SKIP and not dues:
            logger.warning("Schedule %s: skipped due times from %s to %s (missed, policy skip); next %s",
                           schedule.name, _aware(schedule.next_run_at).isoformat(), now.isoformat(), following.isoformat())
        else:
            logger.warning("Schedule %s: due times from %s were missed; enqueued one run for %s (policy %s)",
                           schedule.name, _aware(schedule.next_run_at).isoformat(), dues[-1].isoformat(), schedule.missed)
    return True, enqueued


def _enqueue(schedule: Schedule, due: datetime, worker_id: str) -> int:
    """Claim one due time and enqueue its job (inside the caller's transaction); 1 if a job was made."""
    from .api import job_options
    from .backends import load_task

    run = ScheduleRun.objects.create(schedule=schedule, due_at=_stored(due), worker_id=worker_id[:100])
    local = due.astimezone(_zone(schedule.time_zone))
    try:
        with transaction.atomic():  # a failing enqueue keeps the claim, with the reason
            task = load_task(schedule.task_path)
            overrides: dict[str, Any] = {}
            if schedule.queue:
                overrides["queue_name"] = schedule.queue
            if schedule.priority is not None:
                overrides["priority"] = schedule.priority
            if overrides:
                task = task.using(**overrides)
            with job_options(name=f"{schedule.name} @ {local:%Y-%m-%d %H:%M %Z}"):
                result = task.enqueue(*list(schedule.args or []), **dict(schedule.kwargs or {}))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
        logger.error("Schedule %s: could not enqueue the run due at %s: %s", schedule.name, due.isoformat(), error)
        ScheduleRun.objects.filter(pk=run.pk).update(error=error)
        Schedule.objects.filter(pk=schedule.pk).update(last_error=error)
        return 0
    from .backends import JobBackend
    from django.tasks import task_backends

    job_id = result.id if isinstance(task_backends[result.backend], JobBackend) else None
    ScheduleRun.objects.filter(pk=run.pk).update(job_id=job_id)
    Schedule.objects.filter(pk=schedule.pk).update(last_job_id=job_id, last_error="")
    logger.info("Schedule %s: enqueued job %s for %s", schedule.name, result.id, due.isoformat())
    return 1


# Pause and resume (the admin's actions) --------------------------------------------------------


def pause(schedule: Schedule) -> bool:
    """Stop enqueueing this schedule; True if it was running."""
    return bool(Schedule.objects.filter(pk=schedule.pk, paused=False).update(paused=True))


def resume(schedule: Schedule, now: datetime | None = None) -> bool:
    """Enqueue again from the first due time after now (nothing for the paused time); True if it was paused."""
    now = now or timezone.now()
    following = next_due(schedule.cron, schedule.time_zone, now)
    return bool(Schedule.objects.filter(pk=schedule.pk, paused=True).update(paused=False, next_run_at=_stored(following)))
