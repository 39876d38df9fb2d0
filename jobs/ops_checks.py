"""System checks for the operations settings of JOBS (ids jobs.E1xx; jobs.checks has jobs.E0xx)."""
from __future__ import annotations

from django.core.checks import Error, register

from . import conf
from .schedules import check_schedules

__all__ = ["check_operations_settings", "check_schedules"]

_POSITIVE = ("SCHEDULE_INTERVAL", "SCHEDULE_MISSED_AFTER", "HEALTH_MAX_READY_AGE", "HEALTH_BROKER_TIMEOUT")
_POSITIVE_OR_NONE = ("PRUNE_JOBS_AFTER", "PRUNE_WORKERS_AFTER", "PRUNE_INTERVAL")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@register()
def check_operations_settings(app_configs=None, **kwargs) -> list[Error]:
    """jobs.E102: a schedule, retention or health setting of the wrong type or sign."""
    errors = []
    for key in _POSITIVE:
        value = conf.get(key)
        if not _number(value) or value <= 0:
            errors.append(Error(f"JOBS[{key!r}] must be a positive number of seconds, not {value!r}.", id="jobs.E102"))
    for key in _POSITIVE_OR_NONE:
        value = conf.get(key)
        if value is not None and (not _number(value) or value <= 0):
            errors.append(Error(f"JOBS[{key!r}] must be None or a positive number of seconds, not {value!r}.",
                                id="jobs.E102"))
    batch = conf.get("PRUNE_BATCH")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        errors.append(Error(f"JOBS['PRUNE_BATCH'] must be a whole number of at least 1, not {batch!r}.", id="jobs.E102"))
    pause = conf.get("PRUNE_BATCH_PAUSE")
    if not _number(pause) or pause < 0:
        errors.append(Error(f"JOBS['PRUNE_BATCH_PAUSE'] must be zero or more seconds, not {pause!r}.", id="jobs.E102"))
    return errors
