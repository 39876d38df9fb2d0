"""System checks for the operations settings of JOBS (ids jobs.E1xx; jobs.checks has jobs.E0xx)."""
from __future__ import annotations

import ipaddress

from django.core.checks import Error, register

from . import conf
from .schedules import check_schedules

__all__ = ["check_operations_settings", "check_schedules"]

_POSITIVE = ("SCHEDULE_INTERVAL", "SCHEDULE_MISSED_AFTER", "HEALTH_MAX_READY_AGE", "HEALTH_BROKER_TIMEOUT")
_POSITIVE_OR_NONE = ("PRUNE_JOBS_AFTER", "PRUNE_WORKERS_AFTER", "PRUNE_INTERVAL", "OVERVIEW_INTERVAL")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@register()
def check_operations_settings(app_configs=None, **kwargs) -> list[Error]:
    """jobs.E102: a schedule, retention or health setting of the wrong type or sign; jobs.E103: metrics access."""
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
    token = conf.get("METRICS_TOKEN")
    if token is not None and (not isinstance(token, str) or len(token) < 16):
        errors.append(Error("JOBS['METRICS_TOKEN'] must be None or a string of at least 16 characters.",
                            hint="For example: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
                            id="jobs.E103"))
    networks = conf.get("METRICS_ALLOWED_IPS")
    if networks is not None:
        if not isinstance(networks, (list, tuple)):
            errors.append(Error("JOBS['METRICS_ALLOWED_IPS'] must be None or a list of addresses or networks.",
                                id="jobs.E103"))
        else:
            for net in networks:
                try:
                    ipaddress.ip_network(str(net), strict=False)
                except ValueError:
                    errors.append(Error(f"JOBS['METRICS_ALLOWED_IPS'] has {net!r}, not an address or network "
                                        "(e.g. '10.0.0.5' or '10.0.0.0/24').", id="jobs.E103"))
    pause = conf.get("PRUNE_BATCH_PAUSE")
    if not _number(pause) or pause < 0:
        errors.append(Error(f"JOBS['PRUNE_BATCH_PAUSE'] must be zero or more seconds, not {pause!r}.", id="jobs.E102"))
    return errors
