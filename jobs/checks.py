"""System checks for the JOBS settings and the database the worker claims from (ids jobs.E0xx)."""
from __future__ import annotations

from django.core.checks import Error, register

from . import conf

__all__ = ["check_settings", "check_databases"]

_POSITIVE = ("POLL_INTERVAL", "HEARTBEAT_INTERVAL", "STALE_AFTER", "CANCEL_POLL_INTERVAL", "PROGRESS_INTERVAL", "RETRY_BACKOFF", "RETRY_BACKOFF_MAX")
_WHOLE = ("CONCURRENCY", "LOG_LIMIT", "MAX_ATTEMPTS")


@register()
def check_settings(app_configs=None, **kwargs):
    from django.conf import settings

    errors = []
    configured = getattr(settings, "JOBS", {}) or {}
    if not isinstance(configured, dict):
        return [Error("JOBS must be a dict.", id="jobs.E001")]
    unknown = sorted(set(configured) - set(conf.DEFAULTS))
    if unknown:
        errors.append(Error(f"Unknown JOBS key(s): {', '.join(unknown)}.",
                            hint=f"Known keys: {', '.join(sorted(conf.DEFAULTS))}.", id="jobs.E001"))
    for key in _POSITIVE:
        value = conf.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            errors.append(Error(f"JOBS[{key!r}] must be a positive number, not {value!r}.", id="jobs.E002"))
    for key in _WHOLE:
        value = conf.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            errors.append(Error(f"JOBS[{key!r}] must be a whole number of at least 1, not {value!r}.", id="jobs.E002"))
    for key in ("TIME_LIMIT",):
        value = conf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            errors.append(Error(f"JOBS[{key!r}] must be None or a positive number of seconds, not {value!r}.", id="jobs.E002"))
    grace = conf.get("SHUTDOWN_GRACE")
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
        errors.append(Error(f"JOBS['SHUTDOWN_GRACE'] must be zero or more seconds, not {grace!r}.", id="jobs.E002"))
    if not errors and conf.get("STALE_AFTER") <= 2 * conf.get("HEARTBEAT_INTERVAL"):
        errors.append(Error("JOBS['STALE_AFTER'] must be more than twice JOBS['HEARTBEAT_INTERVAL'], or live jobs look dead.",
                            id="jobs.E004"))

    errors.extend(check_databases(settings.DATABASES))
    return errors


def check_databases(databases: dict) -> list[Error]:
    """jobs.E003 for every SQLite database whose transactions would not take the write lock at BEGIN."""
    errors = []
    for alias, db in databases.items():
        if db.get("ENGINE") == "django.db.backends.sqlite3":
            mode = str((db.get("OPTIONS") or {}).get("transaction_mode") or "").upper()
            if mode not in {"IMMEDIATE", "EXCLUSIVE"}:
                errors.append(Error(
                    f"DATABASES[{alias!r}] is SQLite without transaction_mode IMMEDIATE: job claims would not be atomic "
                    "across worker processes.",
                    hint="Set DATABASES[...]['OPTIONS']['transaction_mode'] = 'IMMEDIATE'.",
                    id="jobs.E003",
                ))
    return errors
